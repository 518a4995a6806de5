"""Which Ray to run on: `tune.address` (or RAY_ADDRESS) joins an existing cluster, checked for
reachability first so a wrong address fails fast; otherwise a private local Ray with its own
temp dir (never the host's default one, which other Ray instances may share)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from pipeline.config import Resources
from pipeline.errors import ConfigError, SystemFault, end_now, stops_held

CONNECT_TIMEOUT_S = 10
# a gRPC server sends its SETTINGS frame as it accepts; a head node stalled by load may take seconds
ANSWER_TIMEOUT_S = 10
# ray.init's attempts, a second apart, to reach the GCS of a cluster that check_reachable found
# answering: Ray's 20 make a client refused for its token wait 20 s for the error.
JOIN_ATTEMPTS = 4
LOOPBACK = "127.0.0.1"
_when_head_lost: list[Callable[[], None]] = []


def when_head_lost(action: Callable[[], None]) -> None:
    """`action` runs (its errors ignored) before a command whose cluster head is lost ends."""
    _when_head_lost.append(action)


def resolve_address(address: str | None) -> tuple[str | None, str]:
    """(address or None for a local Ray, the config key or variable it came from)."""
    if address:
        return address, "tune.address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, ""


# An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, the Ray
# Client server) answers with its own SETTINGS frame (frame type 4 in the 4th byte).
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def check_reachable(address: str, key: str) -> None:
    """The address answers, and answers as a gRPC server: ray.init waits without end on a port
    where something else listens."""
    if address.startswith("ray://"):  # exit 1, `unexpected ValueError: ... ray[client]`
        raise ConfigError(
            f"{key}: {address!r} is a Ray Client address, which needs ray[client] (not "
            "installed); give the head's GCS address, host:6379: this driver joins the cluster"
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{key}: {address!r} is not host:port (e.g. 10.0.0.5:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as conn:
            conn.settimeout(ANSWER_TIMEOUT_S)
            if os.environ.get("RAY_USE_TLS", "0").lower() not in ("1", "true"):  # as Ray reads it
                conn.sendall(_HTTP2_HELLO)
                try:
                    answer = conn.recv(9)
                except TimeoutError:
                    raise ConfigError(
                        f"{key}: {address} accepts connections but sent nothing within "
                        f"{ANSWER_TIMEOUT_S:g} s (not a Ray cluster, or its head node is "
                        "overloaded); check the host and port (`ray start --head` prints them)"
                    ) from None
                if len(answer) < 4 or answer[3] != 4:
                    raise ConfigError(
                        f"{key}: {address} answers, but not as a Ray cluster (no gRPC "
                        "handshake); check the host and port (`ray start --head` prints them)"
                    )
    except OSError as err:
        raise ConfigError(
            f"{key}: cannot reach a Ray cluster at {address} ({err.strerror or err}); "
            "start one with `ray start --head` or fix the address"
        ) from None


# what Ray's C++ side says as ray.init reads RAY_BACKEND_LOG_LEVEL (which quiet() sets)
RAY_LOG_LEVEL_LINE = "Set ray log level from environment variable"


@contextmanager
def held_stderr() -> Iterator[None]:
    """Ray's C++ client writes each refused connection attempt, once a second, to file
    descriptor 2: hold it back, and pass it on only if the block succeeds (the error that
    follows a failure says it in one line), less Ray's note of its log level."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        lines = held.read().decode(errors="replace").splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if RAY_LOG_LEVEL_LINE not in line))


AUTH_REFUSED = "its authentication token is missing or wrong here"


def refusal_reason(err: BaseException) -> str:
    """Why ray.init was refused, in a line: Ray wraps the authentication error in a
    ConnectionError whose text is empty or a traceback."""
    chain = []
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    text = "\n".join(chain)
    if "InvalidAuthToken" in text:
        return AUTH_REFUSED
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].split(" Traceback")[0][:150] if lines else "no reason given"


@contextmanager
def ray_session(
    address: str | None = None, key: str = "tune.address", command: str = "tune"
) -> Iterator[str | None]:
    """ray.init on the cluster at `address` (checked first, and watched while joined), else on
    a new local Ray; shut down on exit. Yields the address used (None: local)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp_dir = None
    if address:
        check_reachable(address, key)
        from ray._private import ray_constants

        attempts = ray_constants.NUM_REDIS_GET_RETRIES
        ray_constants.NUM_REDIS_GET_RETRIES = min(attempts, JOIN_ATTEMPTS)
        try:
            with held_stderr(), _ray_init_guarded():
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, ray.exceptions.AuthenticationError) as err:
            reason = refusal_reason(err)
            hint = (
                "; a cluster started with token authentication needs RAY_AUTH_MODE=token and "
                "its token (~/.ray/auth_token or RAY_AUTH_TOKEN) here too, as the README shows"
                if reason == AUTH_REFUSED or reason == "no reason given"
                else ""
            )
            raise ConfigError(
                f"{key}: the Ray cluster at {address} did not accept this client ({reason}){hint}"
            ) from None
        finally:
            ray_constants.NUM_REDIS_GET_RETRIES = attempts
    else:
        check_worker_python()
        # A short path: Ray's Unix sockets live under it (about 107 characters at most).
        temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    stop = threading.Event()
    try:
        if temp_dir:
            _start_local(temp_dir)
        else:
            watch = (address, key, command, stop)
            threading.Thread(target=_watch_head, args=watch, daemon=True).start()
        yield address
    finally:
        stop.set()
        _when_head_lost.clear()
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


def check_worker_python() -> None:
    """A local Ray starts its workers with this Python by a shell command that splits its path
    at a space (ray-project/ray#5288): every trial stayed PENDING, for ever."""
    if " " in sys.executable:
        raise ConfigError(
            f"{sys.executable}: a local Ray cannot start workers from a Python whose path has a "
            "space; move the clone (or its .venv) to a path without one"
        )


@contextmanager
def _ray_init_guarded() -> Iterator[None]:
    """ray.init replaces the SIGTERM handler twice (`sys.exit(15)`, then one that kills its
    local servers and exits 1): a SIGTERM in its first seconds ended the command with exit 15,
    a segfault, Ray's stack dump, or exit 0. The command's own handlers stay (tune's and
    train's: one line). A stop is held until ray.init has returned: raised inside the core
    worker's construction (at a Python callback) it left a half-made worker to shut down, and
    the core worker's SIGTERM handler, put in front of ours, set a 3 s alarm that aborted the
    process while ray.shutdown still ran (exit -6, nothing said)."""
    import ray._private.utils as ray_utils

    setter = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None
    with stops_held():  # puts ours back in front of the core worker's
        try:
            yield
        finally:
            ray_utils.set_sigterm_handler = setter
            signal.alarm(0)  # the core worker's, if a stop reached its handler first


def _start_local(temp_dir: str) -> None:
    import ray

    try:
        with held_stderr(), _ray_init_guarded():
            ray.init(
                address="local",
                _node_ip_address=LOOPBACK,  # private: its servers listen on loopback only
                _temp_dir=temp_dir,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,  # its "Started a local Ray instance" line
            )
    except Exception as err:  # Ray's own words, a bare Exception, after its fixed 30 s
        if "timed out during startup" not in str(err):
            raise
        raise SystemFault(
            "the local Ray did not start within 30 s (the machine too busy, or too few file "
            "descriptors: see ulimit -n); run the command again"
        ) from None


WATCH_S = 2  # how often a joined cluster's head is looked at; 3 misses in a row end the command


def _watch_head(address: str, key: str, command: str, stop: threading.Event) -> None:
    """Ray's client waits 60 s for a head node (its GCS) that is gone, then ends the process
    with its own lines and exit 1. Where the head's port refuses 3 times in a row, this ends the
    command first, with one line."""
    misses = 0
    while not stop.wait(WATCH_S):
        misses = 0 if _head_answers(address) else misses + 1
        if misses == 3:
            _end_for_lost_head(address, key, command)


def end_if_head_lost(address: str | None, key: str, command: str) -> None:
    """A Ray error that may be the head's loss (the tasks it ran die with it, before the watch
    has missed it 3 times): the command ends as the watch ends it, where the head is gone."""
    if address and not _head_answers(address):
        _end_for_lost_head(address, key, command)


def _head_answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=WATCH_S).close()
        return True
    except OSError:
        return False


def _end_for_lost_head(address: str, key: str, command: str) -> None:
    """Its when_head_lost actions, one line, and exit 2 at once, from whichever thread saw the
    loss (the process ends here, as Ray's own client would after its 60 s)."""
    for action in _when_head_lost:
        with suppress(Exception):
            action()
    end_now(
        command,
        ConfigError(
            f"{key}: the Ray cluster at {address} stopped answering (its head node is gone?); "
            "run the command again once it is back (a sweep: with --resume, which keeps its "
            "finished trials)"
        ),
    )


def check_local_cpus(per_trial: Resources) -> None:
    """A local Ray's one node is this machine, and it gets no more CPUs than the machine has:
    a trial that needs more is refused before Ray starts (10 s)."""
    cores = os.cpu_count() or 1
    if per_trial.cpu > cores:
        raise ConfigError(
            f"tune.resources_per_trial.cpu: {per_trial.cpu:g} exceeds this machine's {cores} "
            "CPUs (no tune.address: a local Ray)"
        )


def check_resources(per_trial: Resources) -> None:
    """A trial must fit on one node; otherwise Tune would wait forever."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        want = getattr(per_trial, key)
        most = max((n.get(ray_key, 0) for n in nodes), default=0)
        if want > most:
            raise ConfigError(
                f"tune.resources_per_trial.{key}: {want:g} exceeds the largest node of the "
                f"cluster ({most:g} {ray_key}s)"
            )
