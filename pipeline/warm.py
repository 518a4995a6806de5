"""Warm stage starts: prepare, train, export and validate run in a process forked from one that
has already imported the fixed stack (torch, Lightning, MLflow, ONNX, statsmodels, sktime...).

Importing that stack is 1-5 s of every stage process, and `dvc repro` starts twenty of them. A
stage that dvc runs (DVC_STAGE is set) and that finds no server runs as before and starts one in
the background: it imports the stage modules, exports a tiny model once (torch.onnx's
first-export set-up), listens on a Unix socket, and later imports what its children imported. Later
stages connect and hand it their argv, working folder and standard streams; it forks a child
that runs the stage as `lstm-pipeline` would. The client forwards its signals to the child, a
client stopped (Ctrl+Z, or SIGSTOP, which the server reads in its state) stops the child, the
child dies with its client or the server, and the client exits with the child's status. A train,
export or validate stage that finds a server still importing waits for it (START_WAIT_S at most
after the server's start) rather than import the same stack beside it.

A server serves only clients that match the one that started it: interpreter and its flags,
sys.path, environment (but PER_PROCESS, which each client sends: dvc's and the shell's own, the
tracking server's address), resource limits, umask, the pipeline/ sources and the installed
packages, all hashed into the socket's name (sys.path's entries relative to the working folder
made absolute). So the stages of another experiment or folder run warm as well. A child then
differs from a fresh process only in not paying for imports.
No server, or one that does not answer in time: the stage runs in its own process as before
(a server that could not start leaves `<key>.failed`, its traceback, and is not tried again).
Linux only; `LSTM_PIPELINE_WARM=0` (or false, off, no) turns it off. The server exits IDLE_S
seconds after its last client and the stage that started it have ended.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

COMMANDS = ("prepare", "train", "export", "validate")
PRELOAD = (  # the stage modules, and what they import only when run
    "pipeline.data.prepare",
    "sktime.datasets",
    "sklearn.datasets",
    "pipeline.training.train",
    "pipeline.export.onnx_export",
    "pipeline.export.validate",
    "pipeline.export.quantize",
    "pipeline.tasks.classical",
    "statsmodels.tsa.exponential_smoothing.ets",
    "matplotlib.pyplot",
    "mlflow.store.tracking.sqlalchemy_store",
    "torch.onnx._internal.exporter._core",
)
# Their warm_up() does what the first use in a process sets up: torch.onnx's first export
WARM_UPS = ("pipeline.export.onnx_export",)
IDLE_S = 60.0  # dvc starts the next stage within seconds; a user the next run within a minute
STALE_S = 7 * 24 * 3600.0  # a key whose server has not started for this long is deleted
ANSWER_S = 5.0  # a server that has not forked within this is not used
STOP_POLL_S = 0.25  # how often a server with stages running reads whether their clients stopped
# A stage that would import torch itself waits this long after a server's start for it to listen:
# the server is already part-way through the same imports (a second stage of a repro starts
# while the first stage's server imports). Quiet, a server listens 5-8 s after its start; with
# the cores shared, 15 s was seen passing and the stage then imported beside it.
START_WAIT_S = 60.0
IMPORT_TORCH = ("train", "export", "validate")
OFF = ("0", "false", "off", "no")  # LSTM_PIPELINE_WARM's values that turn it off
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
JOB_CONTROL = (signal.SIGTSTP, signal.SIGCONT)
LIMITS = [getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_")]
PR_SET_PDEATHSIG = 1
SOCKET_PATH_MAX = 108  # sun_path's size on Linux, its final NUL included
# Variables that differ between stages and that no import reads: sent with each stage, not
# hashed. dvc's (the stage, the experiment's name), the shell's, where runs are tracked, and a
# test runner's per-test name: stages of other experiments, folders and tests share a server.
PER_PROCESS = ("PWD", "OLDPWD", "SHLVL", "_", "PYTEST_CURRENT_TEST", "MLFLOW_TRACKING_URI",
               "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
               "MLFLOW_TRACKING_TOKEN")  # fmt: skip
PER_PROCESS_PREFIX = "DVC_"
_client_parent: int | None = None  # in a warm child: the parent of the client it runs for


def parent_pid() -> int:
    """The pid of the process that started this stage: the client's parent in a warm child."""
    return _client_parent or os.getppid()


def _folder() -> Path:
    path = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"lstm-pipeline-warm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid() or path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} is not private to this user")
    return path


def _per_process(name: str) -> bool:
    return name in PER_PROCESS or name.startswith(PER_PROCESS_PREFIX)


def _shared_env() -> dict[str, str]:
    """The environment a server and its clients share (hashed into its key)."""
    return {k: v for k, v in os.environ.items() if not _per_process(k)}


def _sent_env() -> dict[str, str]:
    """The rest, which each client sends with its stage."""
    return {k: v for k, v in os.environ.items() if _per_process(k)}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _import_paths() -> list[str]:
    """sys.path, its entries relative to the working folder ('' among them) made absolute: a
    child runs in its client's folder, which its imports read only through them."""
    return [
        os.path.abspath(p or ".") if not os.path.isabs(p) and os.path.isdir(p or ".") else p
        for p in sys.path
    ]


def _key() -> str:
    """What a child inherits from its server and must equal the client's."""
    package = Path(__file__).parent
    sources = sorted(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in package.rglob("*.py")
    )
    installed = [  # what pip installs or removes changes these
        name
        for folder in sys.path
        if os.path.isdir(folder)
        for name in sorted(os.listdir(folder))
        if name.endswith((".dist-info", ".egg-info", ".pth"))
    ]
    identity = {
        "python": [sys.executable, sys.flags, sys.warnoptions, sys._xoptions],
        "paths": _import_paths(),
        "installed": installed,
        "env": sorted(_shared_env().items()),
        "limits": [resource.getrlimit(n) for n in LIMITS],
        "umask": _umask(),
        "sources": sources,
    }
    return hashlib.sha256(json.dumps(identity, default=str).encode()).hexdigest()[:32]


def _send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(conn, [data], fds)
    else:
        conn.sendall(data)


class _Lines:
    """Newline-delimited JSON messages (and passed file descriptors) from a socket."""

    def __init__(self, conn: socket.socket):
        self.conn, self.buffer, self.fds, self.pending = conn, b"", [], []

    def read(self) -> bool:
        """Whatever is readable now into `pending`; False at end of stream."""
        data, fds, _, _ = socket.recv_fds(self.conn, 65536, 8)
        self.fds += fds
        if not data:
            return False
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        self.pending += [json.loads(line) for line in lines]
        return True


# --- client ------------------------------------------------------------------------------


def run() -> int | None:
    """The exit status of the command in sys.argv, run in a warm child; None: run it here."""
    if _client_parent or os.environ.get("LSTM_PIPELINE_WARM", "1").lower() in OFF:
        return None
    if sys.platform != "linux":  # fork, SCM_RIGHTS, pidfd, PR_SET_PDEATHSIG
        return None
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        return None
    try:
        folder, key = _folder(), _key()
    except OSError:
        return None
    path = folder / f"{key}.sock"
    if len(os.fsencode(path)) >= SOCKET_PATH_MAX or (folder / f"{key}.failed").exists():
        return None
    conn, lock = _connect(path), folder / f"{key}.lock"
    if conn is None and "DVC_STAGE" in os.environ:  # dvc runs a pipeline: more stages follow
        if sys.argv[1] in IMPORT_TORCH and _starting(lock):
            conn = _wait_for(path, lock)
        else:
            _start_server(key)
    if conn is None:
        return None
    with conn:
        return _run_in_child(conn)


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _starting(lock: Path) -> bool:
    """A server holds `lock` (it writes its pid there as it starts) and started less than
    START_WAIT_S ago."""
    try:
        pid, started = int(lock.read_text() or 0), lock.stat().st_mtime
        if pid <= 0 or time.time() - started >= START_WAIT_S:
            return False
        os.kill(pid, 0)  # alive: a server killed by SIGKILL leaves its pid behind
    except (OSError, ValueError):
        return False
    return True


def _wait_for(path: Path, lock: Path) -> socket.socket | None:
    """The starting server's connection once it listens; None if it ends or is late."""
    while _starting(lock):
        time.sleep(0.1)
        if conn := _connect(path):
            return conn
    return None


def _start_server(key: str) -> None:
    """Detached, in its own session: the client's exit does not end it."""
    # the client's sys.path before any import: `-c` puts the working folder first, and a
    # checkout there would shadow the installed pipeline
    code = "import sys; sys.path[:] = sys.argv[3:]; from pipeline import cli; "
    code += "cli.warm.serve(cli.console)"
    subprocess.Popen(
        [sys.executable, "-c", code, key, str(os.getpid()), *sys.path],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        env=_shared_env(),
    )


def _next(lines: _Lines) -> dict | None:
    """The next message; None at end of stream."""
    while not lines.pending:
        if not lines.read():
            return None
    return lines.pending.pop(0)


def _run_in_child(conn: socket.socket) -> int | None:
    lines = _Lines(conn)
    conn.settimeout(ANSWER_S)
    try:
        request = {"argv": sys.argv, "cwd": os.getcwd(), "env": _sent_env(), "parent": os.getppid()}
        _send(conn, request, [0, 1, 2])
        started = _next(lines)
    except (OSError, ValueError):
        return None  # no server that answers in time: run here
    if not started:
        return None
    conn.settimeout(None)
    previous = {s: signal.getsignal(s) for s in (*SIGNALS, *JOB_CONTROL)}
    for s in SIGNALS:
        if previous[s] is not signal.SIG_IGN:  # nohup's SIGHUP: not passed on either
            signal.signal(s, lambda number, _: _forward(conn, number))
    signal.signal(signal.SIGTSTP, lambda *_: _suspend(conn))
    signal.signal(signal.SIGCONT, lambda *_: _forward(conn, signal.SIGCONT))
    try:
        done = _next(lines)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if done is None:
        print(f"lstm-pipeline {sys.argv[1]}: error: its warm process was lost", file=sys.stderr)
        return 1
    return _exit_status(done["exit"])


def _forward(conn: socket.socket, number: int) -> None:
    try:
        _send(conn, {"signal": number})
    except OSError:  # the server is gone: the stage with it, as the next read will tell
        pass


def _suspend(conn: socket.socket) -> None:
    """Ctrl+Z: the child is in the server's session, not the terminal's job, so it is stopped
    here, then this process the way Ctrl+Z stops it; `fg` or `bg` continues both (SIGCONT)."""
    _forward(conn, signal.SIGSTOP)
    os.kill(os.getpid(), signal.SIGSTOP)


def _exit_status(status: int) -> int:
    """The child's exit code; a child killed by a signal kills this process the same way."""
    if status >= 0:
        return status
    signal.signal(-status, signal.SIG_DFL)
    os.kill(os.getpid(), -status)
    return 128 - status


# --- server ------------------------------------------------------------------------------


def serve(entry: Callable[[], None]) -> None:
    """The warm server for the key in sys.argv[1], started detached by the client in
    sys.argv[2]; `entry` runs a stage from sys.argv in a child, and exits."""
    import fcntl
    import importlib

    key, starter = sys.argv[1], int(sys.argv[2])
    if _key() != key:
        return  # something changed between the client and here
    folder = _folder()
    with open(folder / f"{key}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another client started it first
        lock.truncate(0)
        lock.write(str(os.getpid()))  # for whoever must stop it (tests do)
        lock.flush()
        _prune(folder, key)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        path = folder / f"{key}.sock"
        try:
            try:
                for module in PRELOAD:
                    importlib.import_module(module)
                _warm_up()
                path.unlink(missing_ok=True)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(str(path))
                listener.listen(16)
            except Exception:  # this key's stages run in their own processes from now on
                import traceback

                (folder / f"{key}.failed").write_text(traceback.format_exc())
                return
            _Server(listener, path, lock, folder / f"{key}.modules", starter, entry).loop()
        finally:
            path.unlink(missing_ok=True)
            lock.truncate(0)


def _warm_up() -> None:
    """The WARM_UPS, once here for every child. torch.onnx's tqdm bar starts a monitor thread,
    which a fork would not copy: it is ended, and a child's first bar starts its own, as in a
    fresh process."""
    import importlib

    from tqdm import tqdm

    for module in WARM_UPS:
        importlib.import_module(module).warm_up()
    if tqdm.monitor is not None:
        tqdm.monitor.exit()
        tqdm.monitor = None
    if threading.active_count() > 1:
        raise RuntimeError(f"the warm-up left threads: {threading.enumerate()}")


def _prune(folder: Path, key: str) -> None:
    """Delete the files of other keys whose server last started STALE_S ago (a lock's mtime):
    every edit of the code or the environment makes a new key, and /tmp keeps them."""
    import fcntl

    cutoff = time.time() - STALE_S
    for path in folder.glob("*.lock"):
        # OSError: its server runs (the lock is held), or another server pruned it first
        with suppress(OSError):
            if path.stem == key or path.stat().st_mtime > cutoff:
                continue
            with open(path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                for suffix in (".sock", ".modules", ".failed", ".lock"):
                    path.with_suffix(suffix).unlink(missing_ok=True)


class _Server:
    """One select loop: new clients, their messages (a request, a signal, their end) and the
    children's exits. Between them it imports what its children imported and it lacks."""

    def __init__(self, listener, path: Path, lock, learned: Path, starter: int, entry: Callable):
        self.listener, self.path, self.lock, self.learned = listener, path, lock, learned
        self.entry = entry
        try:  # readable once the stage that started this server has ended
            self.starter = os.pidfd_open(starter)
        except ProcessLookupError:
            self.starter = None
        self.to_import: list[str] = []
        self.failed: set[str] = set()
        self.clients: dict[socket.socket, _Lines] = {}
        self.children: dict[socket.socket, int] = {}  # a client's stage
        self.peers: dict[socket.socket, int] = {}  # a client's pid
        self.stopped: set[socket.socket] = set()  # clients seen stopped
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ)
        self.wake, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that it wakes us
        self.selector.register(self.wake, selectors.EVENT_READ)
        if self.starter is not None:
            self.selector.register(self.starter, selectors.EVENT_READ)

    def loop(self) -> None:
        """Until IDLE_S after the last client and the starter have ended."""
        idle_since = time.monotonic()
        while self.clients or self.starter is not None or time.monotonic() - idle_since < IDLE_S:
            poll = STOP_POLL_S if self.children else 1.0
            events = self.selector.select(timeout=0 if self.to_import else poll)
            if not events and self.to_import:
                self._learn()
            for event, _ in events:
                if event.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self.clients[conn] = _Lines(conn)
                    self.peers[conn] = _peer_pid(conn)
                    self.selector.register(conn, selectors.EVENT_READ)
                elif event.fileobj == self.starter:
                    self.selector.unregister(self.starter)
                    os.close(self.starter)
                    self.starter = None
                elif event.fileobj == self.wake:
                    os.read(self.wake, 512)
                    self._reap()
                elif event.fileobj in self.clients:
                    self._read(event.fileobj)
            self._follow_stops()
            if self.clients or self.starter is not None:
                idle_since = time.monotonic()

    def _follow_stops(self) -> None:
        """A client stopped by a signal it cannot catch (`kill -STOP`, a batch system's
        suspend) stops its stage too, and continues it when it continues (Ctrl+Z's SIGTSTP
        the client forwards itself, before it stops)."""
        for conn, child in self.children.items():
            stopped = _stopped(self.peers[conn])
            if stopped and conn not in self.stopped:
                _kill(child, signal.SIGSTOP)
                self.stopped.add(conn)
            elif not stopped and conn in self.stopped:
                _kill(child, signal.SIGCONT)
                self.stopped.discard(conn)

    def _learn(self, batch: int = 10) -> None:
        """Import a few of the modules a child used (one that fails is skipped). One that
        started a thread, which a fork would not copy, ends the service: the children running
        finish, new clients run their stages themselves."""
        import importlib

        for name in self.to_import[:batch]:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - a module that cannot be preloaded is not
                self.failed.add(name)
        del self.to_import[:batch]
        if threading.active_count() > 1:
            self.to_import = []
            self.selector.unregister(self.listener)
            self.listener.close()
            self.path.unlink(missing_ok=True)

    def _read(self, conn: socket.socket) -> None:
        lines = self.clients[conn]
        try:
            alive = lines.read()
        except (OSError, ValueError):
            alive = False
        if not alive:  # the client is gone: so is its stage
            if conn in self.children:
                _kill(self.children[conn], signal.SIGKILL)
            self._drop(conn)
            return
        while lines.pending:
            message = lines.pending.pop(0)
            if "argv" in message and conn not in self.children:
                fds, lines.fds = lines.fds, []
                self.children[conn] = self._fork(conn, message, fds)
            elif "signal" in message and conn in self.children:
                _kill(self.children[conn], message["signal"])

    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> int:
        pid = os.fork()
        if pid == 0:
            self._child(request, fds)  # never returns
        for fd in fds:
            os.close(fd)
        try:
            _send(conn, {"pid": pid})
        except OSError:  # the client has just gone: the next read of its end kills the child
            pass
        return pid

    def _child(self, request: dict, fds: list[int]) -> None:
        global _client_parent
        try:
            _client_parent = request["parent"]
            _die_with_parent()
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGCHLD, *SIGNALS):
                signal.signal(s, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.selector.close()
            for sock in (self.listener, *self.clients):
                sock.close()
            os.close(self.wake)
            if self.starter is not None:
                os.close(self.starter)
            self.lock.close()
            for target, fd in enumerate(fds):  # the client's stdin, stdout, stderr
                os.dup2(fd, target)
                os.close(fd)
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(line_buffering=stream is sys.stderr or stream.isatty())
            os.chdir(request["cwd"])
            for name in _sent_env():  # the server's own
                del os.environ[name]
            os.environ.update(request["env"])
            sys.argv = request["argv"]  # as given: Lightning's DDP relaunches it
            atexit.register(_tell_modules, self.learned)
            self.entry()
        finally:
            os._exit(1)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = next((c for c, p in self.children.items() if p == pid), None)
            if self.learned.exists():
                names = set(self.learned.read_text().split()) - self.failed
                self.to_import = sorted(names - set(sys.modules))
            if conn is not None:
                try:
                    _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
                except OSError:
                    pass
                self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self.selector.unregister(conn)
        self.children.pop(conn, None)
        self.peers.pop(conn, None)
        self.stopped.discard(conn)
        for fd in self.clients.pop(conn).fds:
            os.close(fd)
        conn.close()


def _tell_modules(path: Path) -> None:
    """What this child imported, for the server to import before the next one."""
    names = sorted(name for name in sys.modules if name != "__main__")
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text("\n".join(names))
    tmp.replace(path)


def _peer_pid(conn: socket.socket) -> int:
    """The pid of the process at the other end of a Unix socket (SO_PEERCRED: pid, uid, gid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def _stopped(pid: int) -> bool:
    """Stopped by a signal (state T in /proc/<pid>/stat; a debugger's `t` is not counted)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone: the end of its socket tells the server
        return False
    return stat[stat.rindex(")") + 2] == "T"


def _kill(pid: int, number: int) -> None:
    try:
        os.kill(pid, number)
    except ProcessLookupError:
        pass


def _die_with_parent() -> None:
    """SIGKILL when the server exits (Linux), so that no stage outlives both it and its client."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)
