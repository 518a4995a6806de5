"""`lstm-pipeline repro`: the default `dvc repro`, with experiments side by side.

DVC runs one stage at a time, and every stage here uses one thread (so that results do not depend
on the core count): a plain `dvc repro` leaves all cores but one idle. DVC releases its repository
lock while a stage's command runs, so `dvc repro validate@<exp>` for different experiments can run
at once; `--wait-for-lock` queues their short bookkeeping. Each experiment's stages still run in
order, into the same dvc.lock. Only experiments that `dvc status` finds changed get a lane (unless
forced); a last plain `dvc repro` runs whatever no experiment's chain reached, and says when all
is up to date. `lstm-pipeline repro a b` does the same for experiments a and b only.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

from pipeline.errors import ConfigError, Interrupted, PipelineError, handle

STOP_S = 60  # how long a stopped lane's stage may take to stop (a training: a few seconds)


class ReaderGone(PipelineError):
    """`lstm-pipeline repro | head`: the lanes stopped; no line, exit 141 (as SIGPIPE's)."""

    exit_code = 141


class DvcFailed(PipelineError):
    """A dvc repro failed: exit with dvc's own code (255 for a failed stage)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"  # the project's venv, whatever PATH says
    return str(beside) if beside.exists() else "dvc"


def _in_git(root: Path) -> bool:
    config = root / ".dvc/config"
    if config.is_file() and re.search(
        r"no_scm\s*=\s*true", config.read_text(errors="replace"), re.I
    ):
        return True
    return any((folder / ".git").exists() for folder in (root, *root.parents))


def _exit_code(rc: int) -> int:
    """A dvc a signal ended (rc -9) as a shell says it: 137."""
    return 128 - rc if rc < 0 else rc


def _status(rc: int) -> str:
    """`exit 255`, or `killed by SIGKILL` (the OOM killer's, say) where a signal ended dvc."""
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"


def _group_alive(pgid: int) -> bool:
    """A process of the group, other than a zombie, still runs (Linux's /proc)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _changed(experiments: list[str], env: dict | None) -> list[str]:
    """The experiments with a stage that dvc status finds changed, in the given order."""
    status = subprocess.run(
        [_dvc(), "--wait-for-lock", "status", "--json", "dvc.yaml"],
        capture_output=True,
        text=True,
        env=env,
    )
    if status.returncode:  # dvc's own message names what is wrong; the plain repro repeats it
        return experiments
    stages = json.loads(status.stdout or "{}")
    return [exp for exp in experiments if any(name.endswith(f"@{exp}") for name in stages)]


def repro(
    experiments: list[str], jobs: int, force: bool, named: bool = False, env: dict | None = None
) -> None:
    """Reproduce each experiment's chain (up to validate@<exp>) on `jobs` lanes, in the given
    order; after a failure no further experiment starts. Output lines carry `[exp] `. The last
    dvc call covers the whole pipeline, or with `named` only these experiments' chains."""
    here = Path.cwd().resolve()
    root = next((folder for folder in (here, *here.parents) if (folder / ".dvc").is_dir()), None)
    if root is None:
        raise ConfigError(f"{here}: not in a DVC repository (no .dvc/ here or above)")
    if not Path("dvc.yaml").is_file():
        raise ConfigError(f"{here / 'dvc.yaml'}: not found; run it in the project's folder")
    if not _in_git(root):  # dvc: `[exp] ERROR: ... is not a git repository`, then exit 255
        raise ConfigError(
            f"{root}: not in a git repository, which dvc needs here: `git init` (or "
            "`dvc config core.no_scm true`)"
        )
    # the stages run this install's lstm-pipeline, not another's first on PATH (or none)
    env = dict(env or os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    targets = [f"validate@{exp}" for exp in experiments] if named else []
    if not force:
        experiments = _changed(experiments, env)
    pending, failures = list(experiments), []
    lock, stopped, reader_gone = threading.Lock(), threading.Event(), threading.Event()
    running: set[subprocess.Popen] = set()

    def lane() -> None:
        while not stopped.is_set():
            with lock:
                if not pending:
                    return
                exp = pending.pop(0)
            forced = ["-f"] if force else []
            cmd = [_dvc(), "--wait-for-lock", "repro", *forced, f"validate@{exp}"]
            with subprocess.Popen(  # a session of its own: the signal reaches dvc and its stage
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True, env=env,
            ) as proc:  # fmt: skip
                running.add(proc)
                for line in proc.stdout:
                    try:
                        with lock:
                            print(f"[{exp}] {line}", end="", flush=True)
                    except BrokenPipeError:  # `| head`: the reader is gone; so are the lanes
                        reader_gone.set()
                        stop(signal.SIGTERM)
                        return
            running.discard(proc)
            if proc.returncode:
                failures.append((exp, proc.returncode))
                stopped.set()

    def stop(signum: int) -> None:
        """Each lane's dvc and stage get the signal (dvc passes none on: its stage wrote outputs
        after repro had exited) and repro waits until every process of the lane has ended (dvc
        ends at once, its stage after it: a training saves its resume point) and the lane has
        printed their last lines."""
        stopped.set()
        for proc in list(running):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)
        deadline = time.monotonic() + STOP_S
        for proc in list(running):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        for thread in lanes:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def terminate(signum, _) -> None:  # SIGTERM, or SIGHUP: its terminal closed
        stop(signum)
        name = signal.Signals(signum).name
        raise Interrupted(f"stopped by {name}; the stages stopped with it (run it again)")

    # one per experiment at most: `--jobs 99999999999` made a thread each (1 GB in 15 s)
    lanes = [threading.Thread(target=lane, daemon=True) for _ in range(min(jobs, len(pending)))]
    previous = handle((signal.SIGTERM, signal.SIGHUP), terminate)
    try:
        for thread in lanes:
            thread.start()
        for thread in lanes:
            thread.join()
        if not (reader_gone.is_set() or failures):
            # the whole pipeline (or the named chains), waited for as a lane is and stopped with
            # them (run after the handlers were put back, a SIGTERM ended repro with -15 and no
            # line, and left dvc running)
            cmd = [_dvc(), "--wait-for-lock", "repro", *targets]
            last = subprocess.Popen(cmd, env=env, start_new_session=True)
            running.add(last)
            lanes.append(threading.Thread(target=last.wait, daemon=True))
            lanes[-1].start()
            lanes[-1].join()
    except KeyboardInterrupt:
        stop(signal.SIGINT)  # Ctrl+C: the lanes' sessions are not the terminal's
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if reader_gone.is_set():
        raise ReaderGone()
    if failures:
        failed = "; ".join(
            f"validate@{exp}: dvc repro failed ({_status(rc)})" for exp, rc in failures
        )
        raise DvcFailed(f"{failed} (its lines above start with [exp])", _exit_code(failures[0][1]))
    if last.returncode:
        raise DvcFailed(
            f"dvc repro failed ({_status(last.returncode)})", _exit_code(last.returncode)
        )
