"""Wall time of the default `dvc repro` from scratch and of a no-op repro, in a temp copy.

Usage: python benchmarks/repro.py   (prints one JSON object)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import machine

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        work = Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
            "DVC_NO_ANALYTICS": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
        }
        shutil.rmtree(work / "metrics", ignore_errors=True)
        experiments = yaml.safe_load((work / "params.yaml").read_text())["experiments"]
        result = {
            "benchmark": "repro",
            "machine": machine(),
            "timed": f"the {len(experiments)} default experiments x 4 stages, committed HEAD",
            "repro_from_scratch_s": timed(["dvc", "repro"], work, env),
            "repro_noop_s": timed(["dvc", "repro"], work, env),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
