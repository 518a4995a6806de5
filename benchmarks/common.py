"""Shared by the benchmark scripts: the machine's description, timing and the device to use."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def clone_repo(tmp: str) -> tuple[Path, dict[str, str]]:
    """A git clone of this repo in `tmp`, and an environment that runs its CLI with this venv,
    an MLflow store inside `tmp` and telemetry off."""
    work = Path(tmp) / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    return work, cli_env(tmp)


def cli_env(tmp: str) -> dict[str, str]:
    """An environment that runs the CLI with this venv, an MLflow store in `tmp`, telemetry off."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        "DO_NOT_TRACK": "1",
    }


def overrides(pairs: list[str]) -> dict:
    """KEY=VALUE arguments as a dict, each value read as YAML (5 -> int, true -> bool)."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in pairs)}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine() -> str:
    """What ran the benchmark: CPU model and cores, plus the GPU when one was used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], min_runs: int = 20, budget_s: float = 0.5) -> float:
    """Median wall time of fn() over at least `min_runs` calls (more while within budget_s),
    after 3 warm-up calls. Medians, because other processes share the cores."""
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < budget_s and len(times) < 2000):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
