"""train stage: prepared data -> models/<exp>/model.ckpt, metrics/<exp>/train.json, learning curve.

One MLflow run per call: params, per-epoch metrics, the checkpoint and plots as artifacts.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from pytorch_lightning.loggers import MLFlowLogger

from pipeline import plots
from pipeline.config import Experiment, PipelineConfig
from pipeline.data.datamodule import Prepared, PreparedDataModule
from pipeline.data.prepare import prepared_dir
from pipeline.io import atomic_dir, atomic_file, write_json
from pipeline.tracking import file_sha256, git_commit, tracking_uri
from pipeline.training.module import SequenceModule, model_meta


def model_dir(exp: str) -> Path:
    return Path("models") / exp


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


def build_trainer(
    cfg: PipelineConfig,
    exp: Experiment,
    ckpt_dir: Path,
    logger,
    callbacks=(),
    hooks=None,
    refit_epochs: int | None = None,
):
    """The fit's Trainer; with `refit_epochs`, one without validation that trains that many
    epochs and keeps the last weights."""
    t = cfg.trainer
    hooks = hooks or TrainHooks()
    callbacks = list(callbacks)
    if not refit_epochs:
        callbacks[:0] = [
            # strict=False: a fit resumed from a checkpoint taken at validation end (Tune restore,
            # PBT) reaches its first train-epoch end before val/loss is logged again.
            EarlyStopping("val/loss", patience=exp.fit.patience, strict=False),
            ModelCheckpoint(ckpt_dir, filename="best", monitor="val/loss", save_last=True),
        ]
    if t.progress_bar:
        callbacks.append(RichProgressBar())
    trainer = pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=hooks.strategy or t.strategy,
        plugins=list(hooks.plugins) or None,
        precision=t.precision,
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
    return hooks.prepare(trainer) if hooks.prepare else trainer


def slim_checkpoint(src: Path, dst: Path) -> None:
    """Keep what loading needs; drop trainer state (absolute paths, optimizer) from model.ckpt."""
    full = torch.load(src, map_location="cpu", weights_only=False)
    keep = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")
    with atomic_file(dst) as tmp:
        torch.save({k: full[k] for k in keep}, tmp)


def seeded_module_and_data(
    cfg: PipelineConfig, exp: Experiment, prepared: Prepared, train_splits=("train",)
) -> tuple[SequenceModule, PreparedDataModule]:
    """A freshly initialised model (after seeding) and its data: the same start for a fit and
    its refit."""
    pl.seed_everything(cfg.seed, workers=True)
    module = SequenceModule(
        exp.model.model_dump(), model_meta(prepared.meta), exp.fit.lr, exp.fit.weight_decay
    )
    data = PreparedDataModule(
        prepared, exp.fit.batch_size, cfg.trainer.num_workers, cfg.seed, train_splits
    )
    return module, data


def refit(
    cfg: PipelineConfig, exp: Experiment, prepared: Prepared, epochs: int, ckpt_dir: Path, hooks
) -> tuple[pl.Trainer, SequenceModule, Path]:
    """Train again from the same seed on train + val for `epochs` (fit.refit): more data for the
    epoch count validation chose. Returns the Trainer, the model and its checkpoint."""
    module, data = seeded_module_and_data(cfg, exp, prepared, ("train", "val"))
    trainer = build_trainer(cfg, exp, ckpt_dir, False, hooks=hooks, refit_epochs=epochs)
    trainer.fit(module, datamodule=data)
    path = ckpt_dir / "refit.ckpt"
    trainer.save_checkpoint(path)
    return trainer, module, path


def train(cfg: PipelineConfig, exp_name: str, hooks: TrainHooks | None = None) -> Path:
    """Fit, test the best checkpoint, write the outputs (rank zero only), log one MLflow run."""
    if cfg.trainer.ray_workers and hooks is None:
        from pipeline.training.ray_train import train_on_ray

        return train_on_ray(cfg, exp_name)
    hooks = hooks or TrainHooks()
    exp = cfg.experiment(exp_name)
    prepared = Prepared.load(prepared_dir(exp_name))
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    module, data = seeded_module_and_data(cfg, exp, prepared)
    tags = {"exp": exp_name, "stage": "train", "data_sha256": prepared.meta["content_sha256"]}
    if commit := git_commit():
        tags["git_commit"] = commit
    logger = MLFlowLogger(
        experiment_name=cfg.tracking.experiment_name,
        tracking_uri=tracking_uri(),
        run_name=hooks.run_name or exp_name,
        tags={**tags, **hooks.tags},
    )
    logger.log_hyperparams({"seed": cfg.seed, **exp.model_dump(by_alias=True)})
    history = History()

    keep_dir = nullcontext(hooks.ckpt_dir) if hooks.ckpt_dir else None
    with keep_dir or tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt_dir:
        callbacks = [history, *hooks.callbacks]
        trainer = build_trainer(cfg, exp, Path(ckpt_dir), logger, callbacks, hooks)
        trainer.fit(module, datamodule=data, ckpt_path=hooks.resume_from)
        rows = list(history.rows)  # test() restores the best checkpoint's (shorter) history
        best = trainer.checkpoint_callback
        best_epoch = min(rows, key=lambda r: r["val_loss"])["epoch"]
        refit_epochs = best_epoch + 1 if exp.fit.refit else None
        final = Path(best.best_model_path)
        if refit_epochs:
            trainer, module, final = refit(cfg, exp, prepared, refit_epochs, Path(ckpt_dir), hooks)
        tested = trainer.test(module, datamodule=data, ckpt_path=final, verbose=False)
        if not trainer.is_global_zero:
            return model_dir(exp_name)
        out = model_dir(exp_name)
        out.mkdir(parents=True, exist_ok=True)
        slim_checkpoint(final, out / "model.ckpt")

    metrics = {
        "best_epoch": best_epoch,
        "epochs_run": len(rows),
        "best_val_loss": float(best.best_model_score),
        **({"refit_epochs": refit_epochs} if refit_epochs else {}),
        **{k: round(v, 8) for k, v in tested[0].items()},
    }
    metrics_dir = Path("metrics") / exp_name
    write_json(metrics_dir / "train.json", metrics)
    with atomic_dir(Path("plots") / exp_name / "train") as tmp:
        plots.learning_curve(rows, tmp)

    run_id = logger.run_id
    client = logger.experiment
    logged = ["best_epoch", "epochs_run", "best_val_loss"]
    if refit_epochs:  # the refit's Trainer has no logger: its epochs would overwrite the curves
        logged += ["refit_epochs", *tested[0]]
    for key in logged:
        client.log_metric(run_id, key, metrics[key])
    client.log_artifact(run_id, str(out / "model.ckpt"))
    client.set_tag(run_id, "ckpt_sha256", file_sha256(out / "model.ckpt"))
    client.set_tag(run_id, "world_size", trainer.world_size)
    client.log_artifacts(run_id, str(Path("plots") / exp_name / "train"), "plots")
    return out
