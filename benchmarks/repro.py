"""Wall time of the default `dvc repro` from scratch (and of each stage in it: from the line
where dvc starts the stage to the next one, so DVC's own hashing and caching included), of a
no-op repro, of `dvc repro -f` again with warm stage starts off (`LSTM_PIPELINE_WARM=0`:
every stage in a fresh process, as before pipeline/warm.py), and of `lstm-pipeline repro -f`
(the experiments on one lane per core, as `make repro` runs them) from scratch, in a temp copy.

Usage: python benchmarks/repro.py   (prints one JSON object)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import yaml
from common import clone_repo, machine

from pipeline.io import usable_cores


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def timed_stages(cmd: list[str], cwd: Path, env: dict) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    starts: dict[str, float] = {}
    with subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1"},  # each line when dvc prints it
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        for line in proc.stdout:
            if line.startswith("Running stage '"):
                starts[line.split("'")[1]] = time.perf_counter()
    end = time.perf_counter()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode})")
    ends = [*list(starts.values())[1:], end]
    stages = {name: round(e - s, 2) for (name, s), e in zip(starts.items(), ends, strict=True)}
    return round(end - start, 2), stages


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        work, env = clone_repo(tmp)
        env["XDG_RUNTIME_DIR"] = tmp  # its own warm servers: none left by other work serves it
        shutil.rmtree(work / "metrics", ignore_errors=True)
        experiments = yaml.safe_load((work / "params.yaml").read_text())["experiments"]
        total, stages = timed_stages(["dvc", "repro"], work, env)
        result = {
            "benchmark": "repro",
            "machine": machine(),
            "timed": f"the {len(experiments)} default experiments x 4 stages, committed HEAD",
            "repro_from_scratch_s": total,
            "stages_s": stages,
            "repro_noop_s": timed(["dvc", "repro"], work, env),
        }
        cold = {**env, "LSTM_PIPELINE_WARM": "0"}
        result["cold_from_scratch_s"], result["cold_stages_s"] = timed_stages(
            ["dvc", "repro", "-f"], work, cold
        )
        for path in ("data/prepared", "models", "metrics"):
            shutil.rmtree(work / path)
        result["lanes"] = usable_cores()
        result["lanes_from_scratch_s"] = timed(["lstm-pipeline", "repro", "-f"], work, env)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
