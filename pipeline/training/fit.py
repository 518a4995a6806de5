"""Fitting one model: seed it and its data, fit with early stopping on val, keep the best or the
last epoch (or refit on train + val for that many epochs), let the model set what the fit must
not see (`finish_fit`: a ConvLSTM's filter temperature), test the kept checkpoint. An
ensemble member is such a fit with seed + index, logged as a run nested under the experiment's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from pipeline.config import Experiment, PipelineConfig
from pipeline.data.prepared import Prepared
from pipeline.errors import TrainingError
from pipeline.paths import prepared_dir
from pipeline.tracking import redacted, tracking_uri
from pipeline.training.datamodule import PreparedDataModule
from pipeline.training.logger import PatientMLFlowLogger, failed_on_error
from pipeline.training.module import SequenceModule
from pipeline.training.resume import (
    RESUME_FILE,
    ResumeState,
    damaged,
    grace_before_killing_the_ranks,
    save_run_id,
    saved_run_id,
)
from pipeline.training.trainer import History, TrainHooks, build_trainer


@dataclass(frozen=True)
class Fitted:
    """The outcome of fit and select: the model to save and what the run reports."""

    ckpt: Path  # the selected (or refit) checkpoint
    history: list[dict]  # one row per epoch of the fit
    best_epoch: int  # the epoch whose weights are kept (fit.select)
    best_val_loss: float
    refit_epochs: int | None
    tested: dict[str, float]  # test/* metrics of `ckpt`
    world_size: int  # processes of the fit (DDP)
    is_global_zero: bool  # this process writes the outputs


def seeded_module_and_data(
    cfg: PipelineConfig, exp: Experiment, prepared: Prepared, seed: int, train_splits=("train",)
) -> tuple[SequenceModule, PreparedDataModule]:
    """A freshly initialised model (after seeding) and its data: the same start for a fit and
    its refit."""
    pl.seed_everything(seed, workers=True)
    meta = prepared.meta.contract().model_dump()
    fit = exp.fit.model_dump(
        include={"lr", "weight_decay", "schedule", "patience", "teacher_forcing",
                 "label_smoothing", "scaling", "jitter"}
    )  # fmt: skip
    model = {**exp.model.model_dump(), **resolved_autos(exp.model, prepared.meta)}
    module = SequenceModule(model, meta, **fit)
    data = PreparedDataModule(
        prepared, exp.fit.batch_size, cfg.trainer.num_workers, seed, train_splits
    )
    return module, data


def resolved_autos(model, meta) -> dict:
    """The model keys set to `auto` and what this data makes them (the checkpoint keeps that)."""
    autos = {"scale_norm": meta.auto_scale_norm, "season_norm": meta.auto_season_norm}
    return {key: value() for key, value in autos.items() if getattr(model, key, None) == "auto"}


def update_capped(exp: Experiment, prepared: Prepared) -> Experiment:
    """`fit.max_updates` as whole epochs of the train split: max_epochs lowered to the epoch in
    which the fit reaches that many batches (so schedules, early stopping and the learning curve
    see whole epochs)."""
    if not exp.fit.max_updates:
        return exp
    per_epoch = math.ceil(prepared.meta.sizes["train"] / exp.fit.batch_size)
    epochs = min(exp.fit.max_epochs, math.ceil(exp.fit.max_updates / per_epoch))
    return exp.model_copy(update={"fit": exp.fit.model_copy(update={"max_epochs": epochs})})


def refit(cfg, exp, prepared, seed: int, epochs: int, ckpt_dir: Path, hooks: TrainHooks):
    """Train again from the same seed on train + val for `epochs` (fit.refit): more data for the
    epoch count validation chose. Returns the Trainer, the model and its checkpoint."""
    module, data = seeded_module_and_data(cfg, exp, prepared, seed, ("train", "val"))
    trainer = build_trainer(cfg, exp, ckpt_dir, False, hooks=hooks, refit_epochs=epochs)
    trainer.fit(module, datamodule=data)
    path = ckpt_dir / "refit.ckpt"
    trainer.save_checkpoint(path)
    return trainer, module, path


def finished(trainer: pl.Trainer, module: SequenceModule, ckpt: Path) -> Path:
    """The kept checkpoint with what the model sets once its weights are chosen (a ConvLSTM's
    filter temperature), saved beside it; the fit's validation never saw it."""
    finish = getattr(module.model, "finish_fit", None)
    if finish is None:
        return ckpt
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    finish()
    path = ckpt.with_name("finished.ckpt")
    trainer.save_checkpoint(path)
    return path


def fit_and_select(
    cfg, exp, prepared, logger, hooks: TrainHooks, ckpt_dir: Path, seed: int
) -> Fitted:
    """Fit with early stopping on val/loss, keep the best (or last) epoch, or refit for that
    many epochs, and test the kept checkpoint."""
    exp = update_capped(exp, prepared)
    module, data = seeded_module_and_data(cfg, exp, prepared, seed)
    history = History()
    callbacks, resume_from = [history, *hooks.callbacks], hooks.resume_from
    if hooks.resumable:  # ResumeState last: it saves the other callbacks' epoch-end state
        point = ckpt_dir / RESUME_FILE
        callbacks.append(ResumeState(point))
        if point.exists() and not resume_from and (why := damaged(point)):
            rank_zero_only(print)(f"{point}: damaged ({why}); starting over")
            point.unlink(missing_ok=True)
        if point.exists() and not resume_from:
            rank_zero_only(print)(f"resuming from {point}")  # once, not per DDP rank
            resume_from = point
    trainer = build_trainer(cfg, exp, ckpt_dir, logger, callbacks, hooks)
    grace_before_killing_the_ranks(trainer)
    trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    rows = list(history.rows)  # test() restores the best checkpoint's (shorter) history
    best = trainer.checkpoint_callback
    if exp.fit.select == "best":
        best_epoch, final = min(rows, key=lambda r: r["val_loss"])["epoch"], best.best_model_path
    else:  # the weights in memory now (ModelCheckpoint's last.ckpt held an earlier epoch)
        best_epoch, final = rows[-1]["epoch"], Path(ckpt_dir) / "final.ckpt"
        trainer.save_checkpoint(final)
    final = Path(final)
    refit_epochs = best_epoch + 1 if exp.fit.refit else None
    if refit_epochs:
        trainer, module, final = refit(cfg, exp, prepared, seed, refit_epochs, ckpt_dir, hooks)
    final = finished(trainer, module, final)
    tested = trainer.test(module, datamodule=data, ckpt_path=final, verbose=False)
    check_finite(tested[0], best_epoch)
    score = float(best.best_model_score)
    return Fitted(
        final, rows, best_epoch, score, refit_epochs, tested[0], trainer.world_size,
        trainer.is_global_zero,
    )  # fmt: skip


def check_finite(tested: dict[str, float], epoch: int) -> None:
    """A loss that stayed finite while the test metrics overflowed (fit.lr 1e8 without clipping:
    val/loss 2e16, test/mae inf) ended exit 0, its model.ckpt replaced."""
    if bad := next((k for k, v in tested.items() if not math.isfinite(v)), None):
        raise TrainingError(
            f"{bad} is {tested[bad]} for the kept epoch {epoch}: training diverged; lower "
            "fit.lr or set fit.gradient_clip_val"
        )


def mlflow_logger(
    cfg: PipelineConfig, run_name: str, tags: dict, run_id=None, pending_dir=None
) -> PatientMLFlowLogger:
    """A new MLflow run, or with `run_id` the one a killed training started (continued);
    metrics the server does not take are kept (in `pending_dir` when the fit ends first)."""
    return PatientMLFlowLogger(
        experiment_name=cfg.tracking.experiment_name,
        tracking_uri=tracking_uri(),
        run_name=run_name,
        tags=dict(tags),  # Lightning adds mlflow.runName to it: each member warned it replaced it
        run_id=run_id,
        pending_dir=pending_dir,
    )


def continued_logger(cfg, run_name: str, tags: dict, ckpt_dir: Path, hooks) -> PatientMLFlowLogger:
    """The fit's logger; a resumable fit continues the MLflow run its resume point recorded."""
    if not hooks.resumable:
        return mlflow_logger(cfg, run_name, tags)
    run_id = saved_run_id(ckpt_dir)
    # the store was replaced, the URI points elsewhere, or the run was deleted (which refuses
    # every metric: continued, the stage failed at each rerun)
    if run_id and (stage := _run_stage(run_id)) != "active":
        print(f"MLflow run {run_id} of the resume point is {stage} in "
              f"{redacted(tracking_uri())}: the training goes on in a new run")  # fmt: skip
        run_id = None
    logger = mlflow_logger(cfg, run_name, tags, run_id, ckpt_dir)
    if logger.run_id:  # None on a DDP rank but rank zero's, which logs nothing
        save_run_id(ckpt_dir, logger.run_id)
    return logger


def _run_stage(run_id: str) -> str:
    """The run's lifecycle stage ("active", "deleted"), or "not found"."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        return MlflowClient(tracking_uri()).get_run(run_id).info.lifecycle_stage
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return "not found"
        raise


@dataclass(frozen=True)
class Parent:
    """The experiment's MLflow run, under which each ensemble member logs a nested run."""

    run_id: str
    run_name: str
    tags: dict[str, str]


def fit_member(cfg, exp_name: str, index: int, parent: Parent, hooks, ckpt_dir: Path) -> Fitted:
    """Ensemble member `index`: seed + index, a run nested under the experiment's."""
    exp, prepared = cfg.experiment(exp_name), Prepared.load(prepared_dir(exp_name))
    tags = {**parent.tags, "mlflow.parentRunId": parent.run_id, "member": str(index)}
    member_dir = ckpt_dir / f"member{index}"
    logger = continued_logger(cfg, f"{parent.run_name}/member{index}", tags, member_dir, hooks)
    with failed_on_error(logger):
        return fit_and_select(cfg, exp, prepared, logger, hooks, member_dir, cfg.seed + index)
