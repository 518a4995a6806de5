"""A local MLflow tracking server: SQLite backend, artifacts proxied through the server (kept in
its folder, or in an object store such as s3://bucket/prefix)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def serve(port: int, root: str | Path, artifacts: str | None = None, host="127.0.0.1") -> None:
    """Replace this process with `mlflow server` (same PID; Ctrl-C stops it). For an S3
    `artifacts` destination the server reads AWS_* (and MLFLOW_S3_ENDPOINT_URL) from the env."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", artifacts or str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    # Job execution spawns a pool of workers (about 10 processes, 1.9 GB) that tracking never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow server on http://{host}:{port} (data in {root})", flush=True)
    os.execve(cmd[0], cmd, env)
