import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

for var, value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ[var] = value


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory with its own MLflow store; stages write relative to it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


@pytest.fixture
def params():
    """The real composed config as a dict, to shrink or change per test."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write_params(raw: dict, path: Path = Path("params.yaml")) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def copy_repo(dst: Path) -> Path:
    """The repo's files as git sees them (tracked, or new and not ignored) copied to `dst`."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def free_port() -> int:
    """A loopback port nothing listens on (for a server to take, or to find unreachable)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
