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
import signal
import subprocess
import sys
import threading
from contextlib import suppress
from pathlib import Path

from pipeline.errors import ConfigError, Interrupted, PipelineError

STOP_S = 60  # how long a stopped lane's stage may take to stop (a training: a few seconds)


class DvcFailed(PipelineError):
    """A dvc repro failed: exit with dvc's own code (255 for a failed stage)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _dvc() -> str:
    beside = Path(sys.executable).parent / "dvc"  # the project's venv, whatever PATH says
    return str(beside) if beside.exists() else "dvc"


def _changed(experiments: list[str]) -> list[str]:
    """The experiments with a stage that dvc status finds changed, in the given order."""
    status = subprocess.run(
        [_dvc(), "--wait-for-lock", "status", "--json", "dvc.yaml"],
        capture_output=True,
        text=True,
    )
    if status.returncode:  # dvc's own message names what is wrong; the plain repro repeats it
        return experiments
    stages = json.loads(status.stdout or "{}")
    return [exp for exp in experiments if any(name.endswith(f"@{exp}") for name in stages)]


def repro(experiments: list[str], jobs: int, force: bool, named: bool = False) -> None:
    """Reproduce each experiment's chain (up to validate@<exp>) on `jobs` lanes, in the given
    order; after a failure no further experiment starts. Output lines carry `[exp] `. The last
    dvc call covers the whole pipeline, or with `named` only these experiments' chains."""
    here = Path.cwd().resolve()
    if not any((folder / ".dvc").is_dir() for folder in (here, *here.parents)):
        raise ConfigError(f"{here}: not in a DVC repository (no .dvc/ here or above)")
    if not Path("dvc.yaml").is_file():
        raise ConfigError(f"{here / 'dvc.yaml'}: not found; run it in the project's folder")
    targets = [f"validate@{exp}" for exp in experiments] if named else []
    if not force:
        experiments = _changed(experiments)
    pending, failures = list(experiments), []
    lock, stopped = threading.Lock(), threading.Event()
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
                start_new_session=True,
            ) as proc:  # fmt: skip
                running.add(proc)
                for line in proc.stdout:
                    with lock:
                        print(f"[{exp}] {line}", end="", flush=True)
            running.discard(proc)
            if proc.returncode:
                failures.append((exp, proc.returncode))
                stopped.set()

    def stop(signum: int) -> None:
        """Each lane's dvc and stage get the signal (dvc passes none on: its stage wrote outputs
        after repro had exited) and repro waits for them (a training keeps its resume point);
        daemon lanes do not hold the exit while a stage's last output drains."""
        stopped.set()
        for proc in list(running):
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)
        for proc in list(running):
            with suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_S)

    def terminate(signum, _) -> None:  # SIGTERM, or SIGHUP: its terminal closed
        stop(signum)
        name = signal.Signals(signum).name
        raise Interrupted(f"stopped by {name}; the stages stopped with it (run it again)")

    previous = {s: signal.signal(s, terminate) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        lanes = [threading.Thread(target=lane, daemon=True) for _ in range(max(1, jobs))]
        for thread in lanes:
            thread.start()
        for thread in lanes:
            thread.join()
    except KeyboardInterrupt:
        stop(signal.SIGINT)  # Ctrl+C: the lanes' sessions are not the terminal's
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if failures:
        failed = "; ".join(f"validate@{exp}: dvc repro failed (exit {rc})" for exp, rc in failures)
        raise DvcFailed(f"{failed} (its lines above start with [exp])", failures[0][1])
    rest = subprocess.run([_dvc(), "--wait-for-lock", "repro", *targets])
    if rest.returncode:
        raise DvcFailed(f"dvc repro failed (exit {rest.returncode})", rest.returncode)
