import ctypes
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PR_CAPBSET_DROP = 24  # linux/prctl.h

for var, value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "DVC_NO_ANALYTICS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}.items():
    os.environ[var] = value


def pytest_collection_modifyitems(items):
    """Under xdist (`make test`), the modules with slow tests first. loadscope hands modules to
    the workers in this order (`--no-loadscope-reorder`; by default it starts with the modules of
    most tests), so the long ones start at once and the short ones fill the end, instead of one
    long module running alone while the other worker idles."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        slow = {item.path for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: item.path not in slow)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run small models: one intra-op thread is faster than two fighting over 2 cores
    (a training check went from 4.95 s to 0.65 s). Stage subprocesses set their own."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_warm_servers():
    """The warm servers that stages start (pipeline/warm.py) live in this session's folder, a
    short path (a Unix socket's is at most 107 bytes), and are stopped by their pid at its end."""
    folder = Path(tempfile.mkdtemp(prefix="lp-"))
    os.environ["XDG_RUNTIME_DIR"] = str(folder)
    yield folder
    stop_warm_servers(folder)
    shutil.rmtree(folder)


def stop_warm_servers(folder: Path) -> None:
    """SIGTERM each server by the pid in its lock file, then wait for it (it removes its
    socket on the way out)."""
    servers = []
    for lock in folder.glob("*/*.lock"):
        with suppress(psutil.NoSuchProcess, ValueError):
            servers.append(psutil.Process(int(lock.read_text())))
            servers[-1].terminate()
    psutil.wait_procs(servers, timeout=30)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once: creating one costs ~6 s of migrations."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@contextmanager
def module_workdir(root: Path, mlflow_template: Path):
    """`workdir` for a module-scoped fixture (monkeypatch is per test): cwd and MLflow store in
    `root`, both restored on the way out."""
    cwd = Path.cwd()
    os.chdir(root)
    shutil.copy(mlflow_template, root / "mlflow.db")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    try:
        yield root
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
        os.chdir(cwd)


@pytest.fixture
def workdir(tmp_path, monkeypatch, mlflow_template):
    """A working directory with its own (empty) MLflow store; stages write relative to it."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
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


def as_in_a_terminal() -> None:
    """A preexec_fn: Ctrl+C and a closing terminal's SIGHUP reach the command as in a terminal.
    A test run in the background or under `nohup` passes them on ignored, and the command
    keeps an ignored signal ignored (pipeline/errors.py, `handle`)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def free_port() -> int:
    """A loopback port nothing listens on (for a server to take, or to find unreachable)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A real `mlflow server` (the command the README gives; `make mlflow-server` runs it) on a
    loopback port, its database and artifacts in `root`; returns once /health answers."""
    cmd = [BIN / "lstm-pipeline", "mlflow-server", "--port", str(port), "--root", root, *args]
    return start_process(cmd, root / "server.log", f"http://127.0.0.1:{port}/health", env)


def start_process(cmd: list, log: Path, url: str, env: dict | None = None) -> subprocess.Popen:
    """Start a server in its own process group; returns once `url` answers (60 s at most)."""
    proc = subprocess.Popen(
        cmd,
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its children share the group: stopped together below
    )
    for _ in range(120):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                pytest.fail(log.read_text()[-2000:])
            time.sleep(0.5)
    stop_server(proc)
    pytest.fail(f"{cmd[0]} did not answer {url} in 60 s")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    os.killpg(proc.pid, sig)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port, one per test module; yields its URI."""
    port = free_port()
    proc = start_server(tmp_path_factory.mktemp("mlflow-server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)


def tracked_runs(root: Path) -> list[tuple[str, str]]:
    """(name, status) of every MLflow run in root/mlflow.db, by name."""
    with sqlite3.connect(root / "mlflow.db") as db:
        return db.execute("SELECT name, status FROM runs ORDER BY name").fetchall()


def without_file_rights() -> None:
    """A subprocess's preexec_fn: as root, drop the capabilities to read and write any file
    (Linux's CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH) from its bounding set, so that the
    program it starts finds chmod 000 and 444 binding, as any other user would."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
