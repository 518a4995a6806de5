"""Errors a user can fix. The CLI prints their message alone and exits with the code."""

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


class PipelineError(Exception):
    exit_code = 1


class ConfigError(PipelineError):
    exit_code = 2


class DataError(PipelineError):
    exit_code = 3


class GateError(PipelineError):
    """A validation gate failed; the report was written before this was raised."""

    exit_code = 4


class TrackingError(PipelineError):
    """The MLflow tracking server or registry cannot be used (unreachable, unknown model)."""

    exit_code = 6


class TrainingError(PipelineError):
    """Training cannot go on (the loss became NaN/inf)."""

    exit_code = 7


class SystemFault(PipelineError):
    """The machine refused: disk full, permission denied, out of memory. Names the path or key."""

    exit_code = 8


class Interrupted(PipelineError):
    """Stopped by a signal (SIGTERM, SIGUSR1); the resume point is kept."""

    exit_code = 143


class CtrlC(PipelineError):
    """Interrupted by Ctrl+C where the work keeps its state (a sweep)."""

    exit_code = 130


def first_line(err: BaseException) -> str:
    """An error's message as one line: its first (libraries' messages run on for lines), or the
    error's type where the message is empty."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def end_now(command: str, err: PipelineError) -> NoReturn:
    """The CLI's line for `err` and its exit code at once, from any thread: for a watcher that
    finds the process cannot go on, where the CLI's own handler would never be reached."""
    print(f"lstm-pipeline {command}: error: {err}", file=sys.stderr, flush=True)
    os._exit(err.exit_code)


def launched_rank() -> bool:
    """A DDP rank Lightning started beside the user's process (the launcher), which holds the
    training's lock and says, once, what stopped it."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


# What stops a command as SIGTERM does: SIGHUP, its terminal closed; SIGXCPU, a CPU-time limit
# passed (`ulimit -t`, a batch system's), which ended it with no line
STOPS = (signal.SIGTERM, signal.SIGHUP, signal.SIGXCPU)


def ignore_repeats(signum: int) -> None:
    """Ignore further `signum` from here on where it repeats: the kernel sends SIGXCPU again
    each second past the soft limit, which raised again in the stop's own cleanup."""
    if signum == signal.SIGXCPU:
        signal.signal(signum, signal.SIG_IGN)


def handle(signums: tuple[int, ...], handler) -> dict[int, object]:
    """`handler` for each of `signums` not ignored, and the handlers it replaced. An ignored one
    is ignored on purpose and stays so: SIGHUP under `nohup`, SIGINT in a background job of a
    shell without job control (a `nohup` training stopped when its terminal closed)."""
    return {
        signum: signal.signal(signum, handler)
        for signum in signums
        if signal.getsignal(signum) is not signal.SIG_IGN
    }


@contextmanager
def stops_held() -> Iterator[None]:
    """A stop (STOPS) or Ctrl+C that arrives during the block is sent again once it has ended
    (in the main thread, where signals are handled; an ignored one stays ignored)."""
    held: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        stops = (*STOPS, signal.SIGINT)
        handlers = {s: h for s in stops if callable(h := signal.getsignal(s))}
        for signum in handlers:
            signal.signal(signum, lambda signum, _: held.append(signum))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        if held:
            signal.raise_signal(held[0])
