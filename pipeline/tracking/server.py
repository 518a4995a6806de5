"""A local MLflow tracking server: SQLite backend, artifacts proxied through the server (kept in
its folder, or in an object store such as s3://bucket/prefix)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from pipeline.errors import SystemFault
from pipeline.io import check_writable


def serve(port: int, root: str | Path, artifacts: str | None = None, host="127.0.0.1") -> None:
    """Replace this process with `mlflow server` (same PID; Ctrl-C stops it). For an S3
    `artifacts` destination the server reads AWS_* (and MLFLOW_S3_ENDPOINT_URL) from the env."""
    root = Path(root).resolve()
    db = root / "mlflow.db"
    check_writable(db)
    if db.exists():  # not a database, locked, read-only: one line, not the server's traceback
        from pipeline.tracking import ensure_reachable

        ensure_reachable(f"sqlite:///{db}")
    with socket.socket() as probe:  # as uvicorn binds it, or it logs the error and exits 0
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise SystemFault(f"{host}:{port}: cannot serve there ({err.strerror})") from None
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", artifacts or str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    # Job execution spawns a pool of workers (about 10 processes, 1.9 GB) that tracking never uses.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow server on http://{host}:{port} (data in {root})", flush=True)
    os.execve(cmd[0], cmd, env)
