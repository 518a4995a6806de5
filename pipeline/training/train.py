"""train stage: prepared data -> models/<exp>/model.ckpt, metrics/<exp>/train.json, learning curve.

Named steps: seed the model and data, fit and select (early stopping on val, optionally a refit
on train + val), test, write the outputs (rank zero only), log one MLflow run.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import MLFlowLogger

from pipeline import plots
from pipeline.config import Experiment, PipelineConfig
from pipeline.data.prepared import Prepared
from pipeline.io import atomic_dir, atomic_file, file_digest, write_json
from pipeline.paths import metrics_file, model_dir, plots_dir, prepared_dir
from pipeline.tracking import run_tags, tracking_uri
from pipeline.training.datamodule import PreparedDataModule
from pipeline.training.module import SequenceModule
from pipeline.training.trainer import History, TrainHooks, build_trainer


@dataclass(frozen=True)
class Fitted:
    """The outcome of fit and select: the model to save and what the run reports."""

    trainer: pl.Trainer
    ckpt: Path  # the selected (or refit) checkpoint
    history: list[dict]  # one row per epoch of the fit
    best_epoch: int
    best_val_loss: float
    refit_epochs: int | None
    tested: dict[str, float]  # test/* metrics of `ckpt`


def seeded_module_and_data(
    cfg: PipelineConfig, exp: Experiment, prepared: Prepared, train_splits=("train",)
) -> tuple[SequenceModule, PreparedDataModule]:
    """A freshly initialised model (after seeding) and its data: the same start for a fit and
    its refit."""
    pl.seed_everything(cfg.seed, workers=True)
    meta = prepared.meta.contract().model_dump()
    module = SequenceModule(exp.model.model_dump(), meta, exp.fit.lr, exp.fit.weight_decay)
    data = PreparedDataModule(
        prepared, exp.fit.batch_size, cfg.trainer.num_workers, cfg.seed, train_splits
    )
    return module, data


def refit(cfg, exp, prepared: Prepared, epochs: int, ckpt_dir: Path, hooks: TrainHooks):
    """Train again from the same seed on train + val for `epochs` (fit.refit): more data for the
    epoch count validation chose. Returns the Trainer, the model and its checkpoint."""
    module, data = seeded_module_and_data(cfg, exp, prepared, ("train", "val"))
    trainer = build_trainer(cfg, exp, ckpt_dir, False, hooks=hooks, refit_epochs=epochs)
    trainer.fit(module, datamodule=data)
    path = ckpt_dir / "refit.ckpt"
    trainer.save_checkpoint(path)
    return trainer, module, path


def fit_and_select(cfg, exp, prepared, logger, hooks: TrainHooks, ckpt_dir: Path) -> Fitted:
    """Fit with early stopping on val/loss, keep the best epoch (or refit for that many epochs),
    and test the kept checkpoint."""
    module, data = seeded_module_and_data(cfg, exp, prepared)
    history = History()
    trainer = build_trainer(cfg, exp, ckpt_dir, logger, [history, *hooks.callbacks], hooks)
    trainer.fit(module, datamodule=data, ckpt_path=hooks.resume_from)
    rows = list(history.rows)  # test() restores the best checkpoint's (shorter) history
    best = trainer.checkpoint_callback
    best_epoch = min(rows, key=lambda r: r["val_loss"])["epoch"]
    refit_epochs = best_epoch + 1 if exp.fit.refit else None
    final = Path(best.best_model_path)
    if refit_epochs:
        trainer, module, final = refit(cfg, exp, prepared, refit_epochs, ckpt_dir, hooks)
    tested = trainer.test(module, datamodule=data, ckpt_path=final, verbose=False)
    return Fitted(
        trainer, final, rows, best_epoch, float(best.best_model_score), refit_epochs, tested[0]
    )


def slim_checkpoint(src: Path, dst: Path) -> None:
    """Keep what loading needs; drop trainer state (absolute paths, optimizer) from model.ckpt."""
    full = torch.load(src, map_location="cpu", weights_only=False)
    keep = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")
    with atomic_file(dst) as tmp:
        torch.save({k: full[k] for k in keep}, tmp)


def write_outputs(exp_name: str, fitted: Fitted) -> dict:
    """model.ckpt, train.json and the learning curve; returns the metrics."""
    out = model_dir(exp_name)
    out.mkdir(parents=True, exist_ok=True)
    slim_checkpoint(fitted.ckpt, out / "model.ckpt")
    metrics = {
        "best_epoch": fitted.best_epoch,
        "epochs_run": len(fitted.history),
        "best_val_loss": fitted.best_val_loss,
        **({"refit_epochs": fitted.refit_epochs} if fitted.refit_epochs else {}),
        **{k: round(v, 8) for k, v in fitted.tested.items()},
    }
    write_json(metrics_file(exp_name, "train"), metrics)
    with atomic_dir(plots_dir(exp_name, "train")) as tmp:
        plots.learning_curve(fitted.history, tmp)
    return metrics


def log_run(logger: MLFlowLogger, exp_name: str, fitted: Fitted, metrics: dict) -> None:
    """What the logger did not log per epoch: the selection, the checkpoint, the plots."""
    run_id, client = logger.run_id, logger.experiment
    logged = ["best_epoch", "epochs_run", "best_val_loss"]
    if fitted.refit_epochs:  # the refit's Trainer has no logger: its epochs would overwrite
        logged += ["refit_epochs", *fitted.tested]
    for key in logged:
        client.log_metric(run_id, key, metrics[key])
    ckpt = model_dir(exp_name) / "model.ckpt"
    client.log_artifact(run_id, str(ckpt))
    client.set_tag(run_id, "ckpt_sha256", file_digest(ckpt))
    client.set_tag(run_id, "world_size", fitted.trainer.world_size)
    client.log_artifacts(run_id, str(plots_dir(exp_name, "train")), "plots")


def train(cfg: PipelineConfig, exp_name: str, hooks: TrainHooks | None = None) -> Path:
    """Fit, test the selected checkpoint, write the outputs (rank zero only), log one run."""
    hooks = hooks or TrainHooks()
    exp = cfg.experiment(exp_name)
    prepared = Prepared.load(prepared_dir(exp_name))
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    tags = run_tags(exp_name, "train", data_sha256=prepared.meta.content_sha256)
    logger = MLFlowLogger(
        experiment_name=cfg.tracking.experiment_name,
        tracking_uri=tracking_uri(),
        run_name=hooks.run_name or exp_name,
        tags={**tags, **hooks.tags},
    )
    logger.log_hyperparams({"seed": cfg.seed, **exp.model_dump(by_alias=True)})
    keep_dir = nullcontext(hooks.ckpt_dir) if hooks.ckpt_dir else None
    with keep_dir or tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt_dir:
        fitted = fit_and_select(cfg, exp, prepared, logger, hooks, Path(ckpt_dir))
        if not fitted.trainer.is_global_zero:
            return model_dir(exp_name)
        metrics = write_outputs(exp_name, fitted)
    log_run(logger, exp_name, fitted, metrics)
    return model_dir(exp_name)
