"""The Lightning Trainer of a fit, and what callers other than the train stage add to it."""

from __future__ import annotations

import errno
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO

from pipeline.config import Experiment, PipelineConfig
from pipeline.config.run import Fit, Trainer
from pipeline.errors import ConfigError, TrainingError, first_line, launched_rank
from pipeline.io import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning wrote a checkpoint in $TMPDIR, then moved it: where that is another file
    system (a tmpfs /tmp), a copy, so a kill mid-copy left a truncated resume point (the fit
    started over) or best.ckpt, and a full disk was named by the temp file's path."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)


class History(Callback):
    """Epoch-level losses for the learning-curve plot."""

    def __init__(self):
        self.rows: list[dict] = []

    # Kept in Lightning checkpoints, so that a resumed fit (Tune restore, PBT) has every epoch.
    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])

    def on_train_epoch_end(self, trainer, _):
        m = trainer.callback_metrics
        if "val/loss" in m:
            self.rows.append(
                {
                    "epoch": trainer.current_epoch,
                    "train_loss": float(m["train/loss"]),
                    "val_loss": float(m["val/loss"]),
                }
            )


class FiniteLoss(Callback):
    """Stop with an error naming the epoch when a loss turns NaN/inf: EarlyStopping alone would
    end the fit quietly and a NaN model would be saved. The epoch losses are synced across DDP
    ranks, so every rank stops together."""

    def on_train_epoch_end(self, trainer, _):
        for key in ("train/loss", "val/loss"):
            value = trainer.callback_metrics.get(key)
            if value is not None and not math.isfinite(float(value)):
                raise TrainingError(
                    f"{key} is {float(value)} at epoch {trainer.current_epoch}: training "
                    "diverged; lower fit.lr or set fit.gradient_clip_val"
                )


def bf16_native(accelerator: str) -> bool:
    """Whether the device the fit runs on computes bfloat16 in hardware (elsewhere torch emulates
    it, slower than float32)."""
    if accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def fit_precision(t: Trainer, fit: Fit) -> str:
    """The fit's precision: fit.precision (auto: bf16-mixed where native), else the trainer's.
    16-mixed off a GPU is bf16-mixed, as Lightning runs it (the run was tagged 16-mixed)."""
    if fit.precision == "auto":
        return "bf16-mixed" if bf16_native(t.accelerator) else "32-true"
    precision = fit.precision or t.precision
    gpu = t.accelerator == "gpu" or (
        t.accelerator == "auto" and (torch.cuda.is_available() or torch.backends.mps.is_available())
    )
    return "bf16-mixed" if precision == "16-mixed" and not gpu else precision


@dataclass(frozen=True)
class TrainHooks:
    """What a caller other than the train stage adds: a Tune trial, a Ray Train worker."""

    callbacks: tuple = ()
    resume_from: str | None = None  # a Lightning checkpoint to continue from (Tune restore, PBT)
    ckpt_dir: Path | None = None  # where ModelCheckpoint writes; None: a temporary folder
    run_name: str | None = None  # MLflow run name (default: the experiment name)
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags (mlflow.parentRunId)
    strategy: Any = None  # replaces trainer.strategy (Ray Train's RayDDPStrategy)
    plugins: tuple = ()
    prepare: Any = None  # called on the pl.Trainer (ray.train.lightning.prepare_trainer)
    resumable: bool = False  # save resume points in ckpt_dir (resume.py), and resume from one


def build_trainer(
    cfg: PipelineConfig,
    exp: Experiment,
    ckpt_dir: Path,
    logger,
    callbacks=(),
    hooks: TrainHooks = TrainHooks(),
    refit_epochs: int | None = None,
) -> pl.Trainer:
    """The fit's Trainer; with `refit_epochs`, one without validation that trains that many
    epochs and keeps the last weights."""
    t = cfg.trainer
    callbacks = [*callbacks, FiniteLoss()]
    if not refit_epochs:
        callbacks[:0] = [
            # strict=False: a fit resumed from a checkpoint taken at validation end (Tune restore,
            # PBT) reaches its first train-epoch end before val/loss is logged again.
            EarlyStopping("val/loss", patience=exp.fit.patience, strict=False),
            ModelCheckpoint(ckpt_dir, filename="best", monitor="val/loss", save_last=True),
        ]
    if t.progress_bar:
        callbacks.append(RichProgressBar())
    try:
        trainer = _trainer(t, exp, ckpt_dir, logger, callbacks, hooks, refit_epochs)
    # e.g. more devices than the machine has, a strategy Lightning does not know or that needs
    # a GPU: Lightning says which with a MisconfigurationException or a ValueError
    except (MisconfigurationException, ValueError) as err:
        raise trainer_error(t, exp.fit, first_line(err).split(". ")[0]) from None
    return hooks.prepare(trainer) if hooks.prepare else trainer


def trainer_error(t: Trainer, fit: Fit, why) -> ConfigError:
    return ConfigError(
        f"trainer (accelerator: {t.accelerator}, devices: {t.devices}, strategy: {t.strategy}, "
        f"{'fit.' if fit.precision else ''}precision: {fit_precision(t, fit)}): {why}"
    )


def check_rendezvous(t: Trainer) -> None:
    """Where set, MASTER_ADDR and MASTER_PORT are where a DDP fit's ranks meet (on this one
    machine). A port in use failed rank 0 (`EADDRINUSE`, exit 1) and left rank 1 waiting on it,
    orphaned; an address not this machine's had both ranks retry for torch's 30 minutes, deaf
    to SIGTERM."""
    if not (isinstance(t.devices, int) and t.devices > 1) or launched_rank():
        return
    addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "0")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"MASTER_PORT {port!r}: not a port number; unset it (one is picked)")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((addr, int(port)))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"MASTER_PORT {port}: in use on {addr}; unset it (a free one is picked)"
                ) from None
            raise ConfigError(
                f"MASTER_ADDR {addr}: not an address of this machine, where the DDP ranks of "
                f"trainer.devices {t.devices} meet ({err.strerror or err}); unset it"
            ) from None


def check_accelerator(t: Trainer, fit: Fit) -> None:
    """trainer=gpu where torch sees no GPU, refused before train opens an MLflow run: the
    Trainer that would refuse it is built later, and the run would be left RUNNING."""
    if t.accelerator == "gpu" and not (
        torch.cuda.is_available() or torch.backends.mps.is_available()
    ):
        raise trainer_error(t, fit, "No supported gpu backend found!")


def _trainer(t, exp, ckpt_dir, logger, callbacks, hooks, refit_epochs) -> pl.Trainer:
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=hooks.strategy or t.strategy,
        plugins=[AtomicCheckpointIO(), *hooks.plugins],
        precision=fit_precision(t, exp.fit),
        deterministic=t.deterministic,
        max_epochs=refit_epochs or min(exp.fit.max_epochs, t.max_epochs or exp.fit.max_epochs),
        limit_val_batches=0 if refit_epochs else None,
        enable_checkpointing=not refit_epochs,
        gradient_clip_val=exp.fit.gradient_clip_val or None,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=t.progress_bar,
        enable_model_summary=False,
        default_root_dir=ckpt_dir,
        log_every_n_steps=1,
    )
