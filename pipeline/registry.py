"""The registry's paper trail: a model card per registered version, and a record of every alias
move release makes (registered-model tags `alias_log.NNNNNN`), which `release --history` prints.
A move made by hand in the MLflow UI is not recorded."""

from __future__ import annotations

import getpass
import json
import os
import socket
from datetime import UTC, datetime

LOG_TAG = "alias_log."


def _actor() -> tuple[str, str]:
    """Who moved an alias, and through what."""
    if os.environ.get("GITHUB_ACTIONS") == "true":
        run = (
            f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/"
            f"{os.environ.get('GITHUB_REPOSITORY', '')}/actions/runs/"
            f"{os.environ.get('GITHUB_RUN_ID', '')}"
        )
        return os.environ.get("GITHUB_ACTOR", "github-actions"), f"GitHub Actions {run}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (docker run -u 1234), no $USER
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()}", "lstm-pipeline release"


def move_alias(client, name: str, alias: str, version: str | None, commit: str | None) -> None:
    """Point `alias` at `version` (None: remove it) and record the move."""
    model = client.get_registered_model(name)
    before = model.aliases.get(alias)
    if before == version:
        return
    by, via = _actor()  # before the move: a move must never go unrecorded
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)
    event = {
        "alias": alias,
        "from": before,
        "to": version,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "by": by,
        "via": via,
        "commit": commit,
    }
    count = sum(k.startswith(LOG_TAG) for k in model.tags)
    client.set_registered_model_tag(name, f"{LOG_TAG}{count + 1:06d}", json.dumps(event))


def history(client, name: str) -> list[dict]:
    """Every recorded alias move of `name`, oldest first."""
    tags = client.get_registered_model(name).tags
    return [json.loads(tags[k]) for k in sorted(tags) if k.startswith(LOG_TAG)]


def history_table(events: list[dict]) -> str:
    def v(version):
        return f"v{version}" if version else "-"

    rows = ["| when (UTC) | alias | from | to | by | via | commit |", "|---" * 7 + "|"]
    rows += [
        f"| {e['at']} | @{e['alias']} | {v(e['from'])} | {v(e['to'])} | {e['by']} | {e['via']} "
        f"| {(e['commit'] or '-')[:12]} |"
        for e in events
    ]
    return "\n".join(rows)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _metric_table(version: str, report: dict, champion: tuple[str, dict] | None) -> list[str]:
    checks = ("parity", "stream", "int8")
    metrics = {k: v for k, v in report.items() if isinstance(v, float) and not k.startswith(checks)}
    columns = [f"v{version}"] + ([f"champion v{champion[0]}"] if champion else [])
    rows = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for key, value in sorted(metrics.items()):
        cells = [_number(value)] + ([_number(champion[1].get(key))] if champion else [])
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return rows


def model_card(
    name: str, version: str, report: dict, tags: dict, gates: str, champion: tuple | None
) -> str:
    """Markdown: what the version is made of, its test metrics beside those of the champion it
    would replace (`champion`: its version and metrics), the export checks and the gates."""
    dirty = {"true": " (uncommitted changes)", "unknown": " (changes unknown)"}.get(
        tags.get("git_dirty"), ""
    )
    facts = {
        "data sha256": tags.get("data_sha256"),
        "dvc.lock sha256": tags.get("dvc_lock_sha256"),
        "model.onnx sha256": tags.get("onnx_sha256"),
        "git commit": f"{tags.get('git_commit', '-')}{dirty}",
        "training run": tags.get("training_run_id", "-"),
    }
    stream = (
        f"max abs diff {report['stream_max_abs_diff']:.2e}"
        if report.get("stream_supported")
        else "not supported by this model"
    )
    int8 = (
        f"kept, metric drop {report['int8_metric_drop']:.4f} (bound {report['int8_max_drop']})"
        if report.get("int8_kept")
        else "not kept (beyond its bound, or not applicable)"
    )
    return "\n".join(
        [
            f"## {name} version {version}",
            "",
            *(f"- {label}: `{value}`" for label, value in facts.items()),
            "",
            "### Test metrics",
            "",
            *_metric_table(version, report, champion),
            "",
            "### Export checks",
            "",
            f"- ONNX Runtime vs PyTorch: max abs diff {report.get('parity_max_abs_diff', 0):.2e}",
            f"- streaming step model: {stream}",
            f"- int8: {int8}",
            "",
            "### Release gates",
            "",
            "```",
            gates,
            "```",
            "",
        ]
    )
