"""A local MLflow tracking server: SQLite backend, artifacts proxied through the server (kept in
its folder, or in an object store such as s3://bucket/prefix)."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import tempfile
from pathlib import Path

from pipeline.errors import ConfigError, SystemFault
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
    _check_destination(artifacts)
    _hold_port(host, port)
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


# where MLflow's server can put artifacts; another scheme started, and failed every upload
STORES = ("s3", "gs", "wasbs", "abfss", "hdfs", "viewfs", "ftp", "sftp", "oci", "file")


def _check_destination(artifacts: str | None) -> None:
    """A local destination must be writable: MLflow started on a read-only one, answered every
    upload with HTTP 500, and the trainings called it unresponsive two minutes later."""
    if artifacts is None:
        return
    scheme, sep, rest = artifacts.partition("://")
    if sep and scheme not in STORES:
        raise ConfigError(
            f"--artifacts-destination: {artifacts}: no artifact store {scheme}:// (known: "
            f"{', '.join(STORES)}, or a local path)"
        )
    if not sep or scheme == "file":
        check_writable(Path(rest if sep else artifacts).expanduser() / ".write-test")


def _hold_port(host: str, port: int) -> None:
    """A lock per address that the server holds while it runs (the descriptor survives exec):
    two servers started seconds apart both passed the bind test, and the second, finding the
    port taken by the time uvicorn bound it, logged that and exited 0."""
    lock = Path(tempfile.gettempdir()) / f"lstm-pipeline-mlflow-{host}-{port}.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemFault(
            f"{host}:{port}: cannot serve there (another lstm-pipeline mlflow-server holds it)"
        ) from None
    os.set_inheritable(fd, True)
