"""release: a validated experiment's ONNX model -> the MLflow model registry, behind gates.

Every gate is decided before anything is written, so a refused candidate leaves the registry as it
was. A registered version gets the alias `challenger`; with `promote` it takes `champion` instead.
A file already registered (same sha256) is never registered twice: release names the version that
holds it and, with `promote`, moves `champion` there. A version's run is the training run that
made the checkpoint, when this tracking server has it; the release run holds validate's report.
Earlier versions are never deleted: a former champion stays reachable as `models:/<name>/<version>`.
Each version carries a model card, and each alias move is recorded (registry.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import PipelineConfig
from pipeline.data.prepared import Prepared
from pipeline.errors import DataError, GateError, TrackingError
from pipeline.evaluation import gate_table, release_gates
from pipeline.inference import onnx_meta, session
from pipeline.io import atomic_file, check_writable, file_digest, held_lock, read_json, read_yaml
from pipeline.paths import metrics_file, model_dir, plots_dir, prepared_dir, resume_dir
from pipeline.registry import history, history_table, model_card, move_alias
from pipeline.tasks import task_of
from pipeline.tracking import (
    ensure_reachable,
    experiment_id,
    redacted,
    run_tags,
    tracking_uri,
    training_run,
)

CHAMPION, CHALLENGER = "champion", "challenger"
RELEASE_RUN = "release_run_id"  # version tag: the run that holds validate's metrics


def validated_report(exp: str, require_passed: bool = True) -> dict:
    """metrics/<exp>/validate.json, only if dvc.lock says validate made it from this model.onnx
    (a failed one, which the release gates refuse anyway, as it is)."""
    report_path = metrics_file(exp, "validate")
    if not report_path.exists():
        raise GateError(f"{exp}: never validated ({report_path} not found); run `dvc repro`")
    try:
        report = read_json(report_path)
    except (ValueError, OSError) as err:
        raise GateError(f"{report_path}: not valid JSON ({err}); run `dvc repro`") from None
    if not isinstance(report, dict) or not isinstance(report.get("passed"), bool):
        raise GateError(f"{report_path}: has no boolean 'passed'; run `dvc repro`")
    if not report["passed"] and require_passed:
        return report  # refused by the gates, with the reasons validate recorded
    lock = read_yaml("dvc.lock", GateError) if Path("dvc.lock").exists() else {}
    stage = (lock or {}).get("stages", {}).get(f"validate@{exp}")
    if stage is None:
        raise GateError(f"{exp}: dvc.lock has no stage validate@{exp}; run `dvc repro`")
    recorded = {e["path"]: e.get("md5") for e in stage.get("deps", []) + stage.get("outs", [])}
    for path in (model_dir(exp) / "model.onnx", report_path):
        if not path.exists():  # a clone without the DVC outputs
            raise GateError(f"{path}: not found; `dvc pull` fetches it, `dvc repro` makes it")
        if recorded.get(path.as_posix()) != file_digest(path, "md5"):
            raise GateError(
                f"{path} differs from what dvc.lock recorded for validate@{exp}; run `dvc repro`"
            )
    if changed := _changed_params(exp):  # a gate tightened since: the report passed the old one
        raise GateError(
            f"{report_path} was made with other params than params.yaml's ({changed[0]} "
            "changed); run `dvc repro`"
        )
    return report


def _changed_params(exp: str) -> list[str]:
    """The params of validate@<exp> that differ from what dvc.lock recorded, as DVC reads them
    (none where DVC cannot tell: not installed, as in a serving install, or no DVC repo)."""
    try:
        from dvc.exceptions import DvcException
        from dvc.repo import Repo
    except ImportError:
        return []
    try:
        with Repo(".") as repo:
            status = repo.status(targets=[f"validate@{exp}"])
    except DvcException:
        return []
    changed = [
        e.get("changed deps", {}) for e in status.get(f"validate@{exp}", []) if isinstance(e, dict)
    ]
    return sorted(k for deps in changed for k in (deps.get("params.yaml") or {}))


def verified_files(client, run_id: str | None, exp: str) -> None:
    """The report and model.onnx are the ones validate logged to the training run (their sha256
    tags there), not only what dvc.lock says: editing a metric and its dvc.lock checksum is not
    enough to release it. Someone who can also write to the tracking server can still forge."""
    if run_id is None:
        return
    tags = client.get_run(run_id).data.tags
    if "validate_json_sha256" not in tags:  # validate logged elsewhere, or never ran
        raise GateError(
            f"training run {run_id} of this checkpoint holds no report from validate (it logs "
            "to the run that trained the checkpoint, at the same tracking URI); run `dvc repro`"
        )
    for path, tag in (
        (metrics_file(exp, "validate"), "validate_json_sha256"),
        (model_dir(exp) / "model.onnx", "onnx_sha256"),
    ):
        if tag in tags and tags[tag] != file_digest(path):
            raise GateError(
                f"{path} differs from what validate logged to training run {run_id} ({tag}); "
                "run `dvc repro`"
            )


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingError(
            f"registry {redacted(tracking_uri())}: {err.message.splitlines()[0]}"
        ) from None
    return client.get_model_version(name, version) if version else None


def _signature(sess):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(arg):
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorSpec(_dtype(arg), shape, arg.name)

    return ModelSignature(
        Schema([spec(a) for a in sess.get_inputs()]), Schema([spec(a) for a in sess.get_outputs()])
    )


def _dtype(arg) -> np.dtype:
    return np.dtype(np.int64 if arg.type == "tensor(int64)" else np.float32)  # lengths: int64


def _input_example(sess, prepared: Prepared):
    """Two test samples under the model's input names: x, and `lengths`, `future` or `static`
    where the model takes them (a dict; x alone, the array)."""
    x, _ = prepared.arrays("test")
    given = {"x": x[:2], **{k: v[:2] for k, v in prepared.extra_inputs("test").items()}}
    example = {a.name: np.ascontiguousarray(given[a.name], _dtype(a)) for a in sess.get_inputs()}
    return example if len(example) > 1 else example["x"]


def _registered(client, name: str, sha256: str, champion) -> str | None:
    """The version that already holds this exact ONNX file (the champion first), or None."""
    if champion and champion.tags.get("onnx_sha256") == sha256:
        return champion.version
    found = client.search_model_versions(f"name = '{name}' and tags.onnx_sha256 = '{sha256}'")
    return min((v.version for v in found), key=int, default=None)


def _register(
    cfg: PipelineConfig, exp: str, report: dict, name: str, training: str | None
) -> tuple[str, str, dict]:
    """Log and register model.onnx; returns the version, the release run and its tags."""
    import mlflow
    import onnx

    onnx_path = model_dir(exp) / "model.onnx"
    sess = session(onnx_path)
    prepared = Prepared.load(prepared_dir(exp))
    tags = run_tags(
        exp,
        "release",
        task=onnx_meta(sess, onnx_path).task,
        onnx_sha256=file_digest(onnx_path),
        dvc_lock_sha256=file_digest("dvc.lock"),
        data_sha256=prepared.meta.content_sha256,
    )
    mlflow.set_tracking_uri(tracking_uri())
    tracked = experiment_id(mlflow.MlflowClient(), cfg.tracking.experiment_name)
    mlflow.set_experiment(experiment_id=tracked)
    lineage = {"training_run_id": training} if training else {}
    with mlflow.start_run(run_name=f"release-{exp}", tags={**tags, **lineage}) as run:
        mlflow.log_metrics({k: v for k, v in report.items() if isinstance(v, float)})
        mlflow.log_artifact(str(metrics_file(exp, "validate")), "validate")
        mlflow.log_artifacts(str(plots_dir(exp, "validate")), "validate/plots")
        with _registry_lines_off():  # release says what it registered, in its own line
            info = mlflow.onnx.log_model(
                onnx.load(onnx_path),
                name="model",
                signature=_signature(sess),
                input_example=_input_example(sess, prepared),
                registered_model_name=name,
                onnx_execution_providers=["CPUExecutionProvider"],
                # what MLflow would infer, without the subprocess (seconds) loading the model
                pip_requirements=[
                    *mlflow.onnx.get_default_pip_requirements(),
                    f"numpy=={np.__version__}",
                ],
                tags={**tags, RELEASE_RUN: run.info.run_id},  # on the model and the version
                run_id=training,  # the model and the version belong to the run that trained it
            )
    return str(info.registered_model_version), run.info.run_id, {**tags, **lineage}


def _registry_lines_off():
    """MLflow's `Successfully registered model ...` and `Created version ...` (stderr): MLflow's
    own switch, which counts who turned it off (log_model turns it on and off inside)."""
    from mlflow.utils.autologging_utils import MlflowEventsAndWarningsBehaviorGlobally

    return MlflowEventsAndWarningsBehaviorGlobally(True, False, False)


def _reuse(client, name: str, version: str, champion, promote: bool, path: Path, commit) -> str:
    """`path` is already `version`: nothing registered; with `promote` it becomes champion."""
    aliases = client.get_model_version(name, version).aliases
    held = f"{name} version {version}" + "".join(f" @{a}" for a in aliases)
    if not promote and not aliases:  # a release that stopped between registering and aliasing
        move_alias(client, name, CHALLENGER, version, commit)
        print(f"{held} already holds {path} (same sha256): made it @{CHALLENGER}")
        return version
    if not promote or CHAMPION in aliases:
        print(f"{held} already holds {path} (same sha256): nothing registered, aliases unchanged")
        return version
    _promote(client, name, version, commit)
    before = f" (previous: version {champion.version})" if champion else ""
    print(f"{held} already holds {path} (same sha256): promoted it to @{CHAMPION}{before}")
    return version


def _promote(client, name: str, version: str, commit: str | None) -> None:
    move_alias(client, name, CHAMPION, version, commit)
    if client.get_registered_model(name).aliases.get(CHALLENGER) == version:
        move_alias(client, name, CHALLENGER, None, commit)


def _write_card(card: str, path: Path | None) -> None:
    if path is not None:
        with atomic_file(path, stream=True) as tmp:
            tmp.write_text(card, encoding="utf-8")


def _pipeline_file(path: Path) -> bool:
    """In a stage's output folders, conf/ or pipeline/, or one of DVC's files (a card
    written to stdout, /dev/stdout, is none of them)."""
    where = path.resolve()
    folders = ("models", "data", "metrics", "plots", "conf", "pipeline")
    files = ("dvc.yaml", "dvc.lock", "params.yaml")
    return where in {Path(f).resolve() for f in files} or any(
        where.is_relative_to(Path(f).resolve()) for f in folders
    )


def release_history(cfg: PipelineConfig, exp_name: str) -> str:
    """The recorded alias moves of the experiment's registered model, as a Markdown table."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    cfg.experiment(exp_name)
    uri = tracking_uri()
    ensure_reachable(uri, create=False)  # it only reads: a typo'd path must not leave a store
    name = cfg.release.model_name.format(exp=exp_name)
    client = MlflowClient(uri)
    try:
        return history_table(history(client, name))
    except MlflowException as err:
        raise TrackingError(f"{name} at {redacted(uri)}: {err.message.splitlines()[0]}") from None


def release(
    cfg: PipelineConfig, exp_name: str, promote: bool = False, card: Path | None = None
) -> str:
    """Gate, register and alias the model of `exp_name`; returns its version number. `card`:
    where to write the version's model card too (the GitHub release notes). Two at once here
    registered the same model twice, each naming the same previous champion: a lock (on this
    machine; releases from elsewhere still find the version by its sha256 once it is there)."""
    cfg.experiment(exp_name)
    lock = resume_dir(exp_name) / "release.lock"
    busy = f"{exp_name}: another release of this experiment is running (it holds {lock})"
    with held_lock(lock, busy + "; wait for it to end"):
        return _release(cfg, exp_name, promote, card)


def _release(cfg: PipelineConfig, exp_name: str, promote: bool, card: Path | None) -> str:
    from mlflow import MlflowClient

    if card is not None:  # found before the registry changes, not after
        if card.is_dir():
            raise DataError(f"{card}: is a folder; --card takes the card's file path")
        if _pipeline_file(card):  # `--card models/<exp>/model.onnx` wrote Markdown over it
            raise DataError(f"{card}: one of the pipeline's files; --card takes a new path")
        check_writable(card)
    uri = tracking_uri()
    ensure_reachable(uri)
    report = validated_report(exp_name, cfg.release.require_passed)
    onnx_path = model_dir(exp_name) / "model.onnx"
    task = task_of(onnx_meta(session(onnx_path), onnx_path))
    client = MlflowClient(uri)
    ckpt = model_dir(exp_name) / "model.ckpt"
    training = training_run(cfg.tracking.experiment_name, ckpt, validated=True)
    verified_files(client, training, exp_name)
    name = cfg.release.model_name.format(exp=exp_name)
    champion = _champion(client, name)
    champion_metrics = None
    if champion:  # a version released before release_run_id existed has the release run as run
        run = champion.tags.get(RELEASE_RUN, champion.run_id)
        champion_metrics = client.get_run(run).data.metrics
    gates = release_gates(report, cfg.release, task, champion_metrics)
    holder = f", champion: version {champion.version}" if champion else ""
    print(f"release {name} ({redacted(uri)}){holder}")
    print(gate_table(gates))
    failed = [g.name for g in gates if not g.passed]
    if failed:
        raise GateError(f"{name}: release refused by {', '.join(failed)}; registry unchanged")

    if same := _registered(client, name, file_digest(onnx_path), champion):
        _write_card(client.get_model_version(name, same).description or "", card)
        commit = run_tags(exp_name, "release").get("git_commit")
        return _reuse(client, name, same, champion, promote, onnx_path, commit)
    version, release_run, tags = _register(cfg, exp_name, report, name, training)
    text = model_card(
        name, version, report, tags, gate_table(gates),
        champion and (champion.version, champion_metrics),
    )  # fmt: skip
    client.update_model_version(name, version, description=text)
    client.log_text(release_run, text, "model_card.md")
    _write_card(text, card)
    source = f"training run {training}" if training else "no run here trained this checkpoint"
    if not promote:
        move_alias(client, name, CHALLENGER, version, tags.get("git_commit"))
        print(f"registered {name} version {version} as @{CHALLENGER} ({source})")
        return version
    _promote(client, name, version, tags.get("git_commit"))
    before = f" (previous: version {champion.version})" if champion else ""
    print(f"registered {name} version {version} as @{CHAMPION}{before} ({source})")
    return version
