"""Fail when the default run's metrics regress against a git ref (CI: against main).

Usage: python .ci/guard_metrics.py BASE_REF [BASE_DIR]   (after a full `dvc repro` here)

For every experiment whose metrics/<exp>/validate.json exists at BASE_REF, the fresh report
must pass its gates and its headline metric (accuracy, mape, mse) may be worse than the base's
by at most the tolerance: 0.01 absolute for accuracy, 10 % relative for error metrics. The base
is BASE_REF's committed report, or with BASE_DIR the report of BASE_REF's pipeline rerun in that
work tree on this machine: another CPU model ends the airline trainings elsewhere (README
"Default experiments"), so only a rerun on the same CPU compares like with like. Prints a
Markdown table; exit 1 on a regression (or a missing or unreadable report, fresh or rerun), 2
on a bad ref or BASE_DIR, 0 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEADLINES = {"accuracy": True, "mape": False, "mse": False}  # metric -> higher is better
ABS_TOL, REL_TOL = 0.01, 0.10


def at_ref(ref: str, path: str) -> dict | None:
    shown = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
    return json.loads(shown.stdout) if shown.returncode == 0 else None


def report(path: Path) -> dict | str:
    """A work tree's report, or why there is none ("missing", "not JSON")."""
    if not path.exists():
        return "missing"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return "not JSON"


def verdict(metric: str, base: float, new: float) -> tuple[str, bool]:
    if HEADLINES[metric]:
        floor = base - ABS_TOL
        return f">= {floor:.4f}", new >= floor
    ceiling = base * (1 + REL_TOL)
    return f"<= {ceiling:.4g}", new <= ceiling


def main(ref: str, base_dir: Path | None = None) -> int:
    listed = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", ref, "metrics/"], capture_output=True, text=True
    )
    if listed.returncode:
        print(
            f"guard_metrics: {ref!r} is not a git ref here: {listed.stderr.strip()}",
            file=sys.stderr,
        )
        return 2
    if base_dir and not (base_dir / "metrics").is_dir():
        print(f"guard_metrics: {base_dir}: no metrics/ folder (run {ref}'s pipeline there first)",
              file=sys.stderr)  # fmt: skip
        return 2
    rows, failed = [], False
    for path in sorted(p for p in listed.stdout.split() if p.endswith("/validate.json")):
        exp = path.split("/")[1]
        base = report(base_dir / path) if base_dir else at_ref(ref, path)
        new = report(Path(path))
        unread = [(got, name) for got, name in ((new, path), (base, base_dir and base_dir / path))
                  if isinstance(got, str)]  # fmt: skip
        if unread:
            rows += [f"| {exp} | | | | {why}: {name} | FAIL |" for why, name in unread]
            failed = True
            continue
        for metric in (m for m in HEADLINES if m in base):
            value = new.get(metric, float("nan"))
            bound, ok = verdict(metric, base[metric], value)
            ok = ok and bool(new.get("passed"))
            failed |= not ok
            if not new.get("passed"):
                bound += ", gates failed: " + "; ".join(new.get("failed_gates", []))
            cells = [exp, metric, f"{base[metric]:.4g}", f"{value:.4g}", bound]
            rows.append("| " + " | ".join([*cells, "pass" if ok else "FAIL"]) + " |")
    where = f"rerun in {base_dir}" if base_dir else "committed"
    print(f"### Default-run metrics vs {ref} ({where})\n")
    print("| experiment | metric | base | new | allowed | verdict |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python .ci/guard_metrics.py BASE_REF [BASE_DIR]")
    sys.exit(main(sys.argv[1], Path(sys.argv[2]) if len(sys.argv) == 3 else None))
