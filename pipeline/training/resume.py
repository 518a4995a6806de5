"""Resumable training: a checkpoint of the whole fit (weights, optimizer, loops, callbacks, RNG)
at epoch ends (the first, then at most one per SAVE_EVERY_S, and the last), in a folder that
survives a kill, a preemption and DVC's output cleanup. The next training of the same config
continues from it and ends with the same outputs as a run that was never stopped."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from pipeline import warm
from pipeline.config import PipelineConfig
from pipeline.errors import (
    CtrlC,
    Interrupted,
    PipelineError,
    end_now,
    first_line,
    handle,
    ignore_repeats,
    launched_rank,
)
from pipeline.io import held_lock, system_fault
from pipeline.paths import resume_dir

RESUME_FILE = "resume.ckpt"
RUN_ID_FILE = "mlflow_run_id"
# A kill redoes at most this much training. Saving at every epoch end cost a 300-epoch airline
# training (epochs of a few ms) ~2 s of its ~10.
SAVE_EVERY_S = 30.0
# How long a DDP launcher has to end by itself once a rank has exited non-zero, before every rank
# is killed. Lightning's child-process observer SIGKILLs it within 5 s: a rank stopped by SIGTERM
# exits 143 while the launcher is still stopping at the same batch, which then died with -9 and no
# line instead of its own "stopped by SIGTERM".
RANK_EXIT_GRACE_S = 30.0
# Before the ranks have joined, the launcher waits in torch's rendezvous (deaf to SIGTERM, for
# 30 minutes) for a rank that is gone: there is nothing to wait for but a launcher stopping itself.
RANK_JOIN_GRACE_S = 5.0
RUNS_END_WAIT_S = 30.0  # then for its MLflow run to be ended FAILED
OBSERVER_LOGGER = "lightning_fabric.strategies.launchers.subprocess_script"


class ResumeState(Checkpoint):
    """Saves the resume checkpoint at train-epoch ends (after validation, early stopping and
    History): the first, then once SAVE_EVERY_S has passed since the last save, and the fit's
    last. With the global RNGs (the datamodule saves its shuffle): a resumed fit draws the same
    batches and dropout masks as a fit that was never stopped.
    A Checkpoint: Lightning calls the epoch-end hooks of EarlyStopping and the Checkpoints after
    every other callback's, Checkpoints last and in order, so this one saves their state of this
    epoch (as a plain Callback it saved the epoch before's: a fit resumed from its best epoch kept
    another model), and after FiniteLoss has refused a diverged epoch."""

    def __init__(self, path: Path):
        self.path, self.pending = path, None
        self.stopped = False  # early stopping ended the fit at the saved epoch
        self.saved_at: float | None = None  # time.monotonic() of the last save
        self.epoch_log: dict | None = None  # the saved epoch's train metrics, see below

    def state_dict(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            # as plain lists: a checkpoint holds nothing torch.load(weights_only=True) refuses
            "numpy": [
                v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()
            ],
            "python": random.getstate(),
            "stopped": self.stopped,
            "epoch_log": self.epoch_log,
        }

    def load_state_dict(self, state: dict) -> None:
        self.pending = state  # applied when the next epoch starts

    def on_train_start(self, trainer, _):
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _sigterm_without_collectives(trainer))
        if not self.pending:
            return
        if self.pending["stopped"]:  # the restored epoch was the last one
            trainer.should_stop = True
        if trainer.logger and (log := self.pending.get("epoch_log")):
            # sent again: the logger drops what the continued run already holds
            trainer.logger.log_metrics({**log["metrics"], "epoch": log["epoch"]}, log["step"])

    def on_train_epoch_start(self, trainer, _):
        if self.pending is None:
            return
        state, self.pending = self.pending, None
        torch.set_rng_state(state["torch"])
        np.random.set_state(tuple(state["numpy"]))
        random.setstate(state["python"])

    def on_train_epoch_end(self, trainer, _):
        self.stopped = trainer.should_stop
        last = trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        due = self.saved_at is None or time.monotonic() - self.saved_at >= SAVE_EVERY_S
        # every rank decides as rank zero does: save_checkpoint waits for all of them
        if trainer.strategy.broadcast(last or due):
            # Lightning logs this epoch's train metrics after these hooks, at the epoch's last
            # step, and a resumed fit does not: a kill right after the save would lose them
            log = trainer._logger_connector.metrics["log"]
            self.epoch_log = {
                "metrics": {k: float(v) for k, v in log.items()},
                "step": trainer.fit_loop.epoch_loop._batches_that_stepped - 1,
                "epoch": trainer.current_epoch,
            }
            try:
                trainer.save_checkpoint(self.path, weights_only=False)  # atomic, by rank zero
            except (OSError, RuntimeError) as err:  # torch names no file (disk full, too large)
                if fault := system_fault(err, self.path):
                    raise fault from err
                raise
            self.saved_at = time.monotonic()


def _sigterm_without_collectives(trainer):
    """A DDP fit's SIGTERM handler in place of Lightning's, which broadcasts from inside the
    handler, wherever its rank is: a collective the other ranks are not in (gloo aborts on the
    mismatch, or waits out its 30-minute timeout). This one only marks the fit stopped (each
    batch, rank zero's mark is broadcast and every rank stops at the same batch), passes the
    signal on to the ranks the launcher started, and calls the handler it replaced
    (resume_point's)."""
    connector = trainer._signal_connector
    before = connector._original_handlers.get(signal.SIGTERM)

    def handler(signum, frame):
        if not connector.received_sigterm and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)
        connector.received_sigterm = True
        if callable(before):
            before(signum, frame)

    return handler


def grace_before_killing_the_ranks(trainer) -> None:
    """Before a DDP fit starts its ranks: in the launcher, Lightning's observer of the ranks it
    starts (a thread) waits RANK_EXIT_GRACE_S after a rank's non-zero exit before it kills every
    rank, ends the tracked runs FAILED and ends the launcher with one line; the launcher usually
    ends first, the thread with it. Its log line ("Forcefully terminating all other processes")
    is silenced: most often nothing is killed now. (Set once the fit had started, a SIGTERM while
    the ranks started still had the launcher SIGKILLed as it ended: exit -9, its run RUNNING.)"""
    from lightning_fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    if trainer.world_size < 2:
        return
    logging.getLogger(OBSERVER_LOGGER).setLevel(logging.WARNING)
    before_exit = partial(_end_runs_failed, trainer.loggers)
    _ChildProcessObserver._terminate_all = lambda observer: _kill_ranks_after_grace(
        observer._child_processes, before_exit
    )


def _end_runs_failed(loggers: list) -> None:
    """Rank zero's MLflow run FAILED rather than RUNNING for ever (best effort)."""
    for logger in loggers:
        with suppress(Exception):
            logger.finalize("failed")


def _kill_ranks_after_grace(ranks: list, before_exit: Callable[[], None]) -> None:
    joined = torch.distributed.is_initialized()
    time.sleep(RANK_EXIT_GRACE_S if joined else RANK_JOIN_GRACE_S)
    codes = ", ".join(f"rank {i}: {p.returncode}" for i, p in enumerate(ranks, 1) if p.returncode)
    for rank in ranks:
        rank.kill()
    # bounded: the launcher may be stuck in the tracking store itself
    ending = threading.Thread(target=before_exit, daemon=True)
    ending.start()
    ending.join(RUNS_END_WAIT_S)
    why = (
        f"and rank 0 had not ended {RANK_EXIT_GRACE_S:.0f} s later; every rank killed; run it "
        "again to resume from its last saved epoch"
        if joined
        else "before the ranks had joined; every rank killed; run it again"
    )
    exits = {p.returncode for p in ranks if p.returncode}  # a stop's code is the launcher's too
    said_as = next((e for e in (Interrupted, CtrlC) if exits == {e.exit_code}), PipelineError)
    end_now("train", said_as(f"DDP: a rank exited ({codes}) {why}"))


def damaged(point: Path) -> str | None:
    """Why the resume checkpoint at `point` cannot be loaded (truncated, emptied, not one), or
    None. Written atomically, it is damaged only from outside; the fit then starts over rather
    than failing the same way at every run."""
    try:
        state = torch.load(point, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError...
        return f"{type(err).__name__}: {first_line(err)[:120]}"
    return None if isinstance(state, dict) and "state_dict" in state else "not a checkpoint"


def _key(cfg: PipelineConfig, exp_name: str, data_sha256: str) -> str:
    """What the fit depends on: a resume point of another config, data or code is never used
    (one of other code resumed, and its model mixed both)."""
    trainer = cfg.trainer.model_dump(exclude={"progress_bar", "gates"})
    blob = {
        "experiment": cfg.experiment(exp_name).model_dump(by_alias=True),
        "seed": cfg.seed,
        "trainer": trainer,
        "data": data_sha256,
        "code": _code_sha256(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


@cache
def _code_sha256() -> str:
    """The pipeline package's sources (train's code deps in dvc.yaml are among them)."""
    package = Path(__file__).parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@cache  # one watcher per process, however many trainings (ensemble members) it runs
def stop_with_dvc() -> None:
    """Under `dvc repro` (which sets DVC_STAGE), a killed `dvc` sends this training SIGTERM (it
    stops and keeps its resume point) instead of leaving it running unsupervised."""
    if "DVC_STAGE" not in os.environ or sys.platform != "linux":
        return
    try:
        dvc = os.pidfd_open(_dvc_pid())
    except (ProcessLookupError, ValueError):  # dvc died before this line
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_terminate_when_closed, args=(dvc,), daemon=True).start()


def _dvc_pid() -> int:
    """The nearest ancestor started without DVC_STAGE. Not always the parent: /bin/sh (dash)
    does not exec the stage's command, and that shell outlives a killed dvc."""
    pid = warm.parent_pid()
    while pid > 1 and b"DVC_STAGE=" in _read(f"/proc/{pid}/environ"):
        stat = _read(f"/proc/{pid}/stat")
        pid = int(stat.rsplit(b")", 1)[1].split()[1]) if stat else 0  # 0: it has just ended
    if pid <= 1:
        raise ValueError("dvc is gone")
    return pid


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:  # another user's process: not one this training was started by
        return b""


def _terminate_when_closed(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has ended
    os.kill(os.getpid(), signal.SIGTERM)


class _Terminate:
    """SIGTERM: inside a Lightning fit (whose handler calls this one) the fit stops at its next
    check; anywhere else at once. Either way the resume point is kept."""

    def __init__(self, exp_name: str, folder: Path):
        self.exp_name, self.folder, self.received, self.by = exp_name, folder, False, "SIGTERM"

    @property
    def message(self) -> str:
        return (
            f"{self.exp_name}: stopped by {self.by}; run the train stage again to resume from "
            f"{self.folder}"
        )

    def __call__(self, *_):
        self.received = True
        if signal.getsignal(signal.SIGTERM) is self:  # no Lightning handler in between
            raise Interrupted(self.message)

    def passed_on(self, signum: int, _) -> None:
        """SIGUSR1 (SLURM's before a preemption), SIGHUP (its terminal closed) and SIGXCPU (a
        CPU-time limit passed) stop it as SIGTERM does, named (SIGHUP stopped the fit where it
        was, without the resume point's path)."""
        ignore_repeats(signum)
        self.by = signal.Signals(signum).name
        os.kill(os.getpid(), signal.SIGTERM)


@contextmanager
def resume_point(cfg: PipelineConfig, exp_name: str, data_sha256: str) -> Iterator[Path]:
    """The checkpoint folder of this training: kept when it fails or is killed (SIGUSR1 stops it
    as SIGTERM does; so does a killed `dvc`), removed when it succeeds. Resume points of other
    configs of the experiment are removed first. A lock makes a second training of the same
    experiment (a second `dvc repro`) refuse to start."""
    root = resume_dir(exp_name)
    folder = root / _key(cfg, exp_name, data_sha256)
    terminate = _Terminate(exp_name, folder)
    with _signals_to(terminate):
        stop_with_dvc()
        try:
            if launched_rank():  # a DDP rank: the launcher holds the lock and owns the folder
                yield folder
                return
            lock = root / ".lock"
            busy = f"{exp_name}: another training of this experiment is running (it holds {lock})"
            with held_lock(lock, busy + "; wait for it to end"):
                for other in root.iterdir():
                    if other.is_dir() and other != folder:
                        _end_runs_of(other)
                        shutil.rmtree(other)
                folder.mkdir(exist_ok=True)
                yield folder
                if terminate.received:  # after the fit's last check: not finished either
                    raise Interrupted(terminate.message)
                # done: nothing of this training is left behind; other commands' locks stay
                # (deleting .resume/<exp>/ let a second export start beside a running one)
                shutil.rmtree(folder)
                lock.unlink(missing_ok=True)
                with suppress(OSError):
                    root.rmdir()
        except SIGTERMException:
            raise Interrupted("" if launched_rank() else terminate.message) from None
        except Exception:
            if not terminate.received:
                raise
            # a DDP rank that stopped first broke the collective this one was waiting in
            raise Interrupted("" if launched_rank() else terminate.message) from None


@contextmanager
def _signals_to(terminate: _Terminate) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signals are the main's
        yield
        return
    before = handle((signal.SIGUSR1, signal.SIGHUP, signal.SIGXCPU), terminate.passed_on)
    before |= handle((signal.SIGTERM,), terminate)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _end_runs_of(folder: Path) -> None:
    """The MLflow runs a resume point of another config was continuing (its members' too) end
    KILLED: no training will continue them. Best effort: the store may be another by now."""
    from mlflow import MlflowClient

    from pipeline.tracking import tracking_uri

    with suppress(Exception):
        client = MlflowClient(tracking_uri())
        for id_file in folder.rglob(RUN_ID_FILE):
            run_id = id_file.read_text().strip()
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")


def saved_run_id(folder: Path) -> str | None:
    path = folder / RUN_ID_FILE
    return path.read_text().strip() if path.exists() else None


def save_run_id(folder: Path, run_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_ID_FILE).write_text(run_id)
