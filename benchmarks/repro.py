"""Wall time of the default `dvc repro` from scratch and of a no-op repro, in a temp copy.

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


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        work, env = clone_repo(tmp)
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
