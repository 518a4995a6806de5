"""The thin LightningModule: a model from the registry, a task loss, torchmetrics."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import (
    MeanAbsoluteError,
    MeanAbsolutePercentageError,
    MeanSquaredError,
    MetricCollection,
)
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from torchmetrics.image import StructuralSimilarityIndexMeasure

from pipeline.models import build_model

# What the model, its metrics and torch-free inference need to know of the data (a subset of
# prepare's meta.json, kept in the checkpoint and, by export, in the ONNX metadata_props).
META_KEYS = (
    "task",
    "input_shape",
    "features",
    "labels",
    "window",
    "horizon",
    "season",
    "targets",
    "target_index",
    "transform",
    "scaler",
)


def model_meta(meta: dict) -> dict:
    return {k: meta[k] for k in META_KEYS if k in meta}


class SequenceModule(pl.LightningModule):
    def __init__(self, model_cfg: dict, meta: dict, lr: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.meta = meta
        self.model = build_model(model_cfg, meta)
        self.classify = meta["task"] == "classification"
        self.frames = meta["task"] == "frames"
        if self.classify:
            k = len(meta["labels"])
            metrics = {
                "acc": MulticlassAccuracy(k, average="micro"),
                "f1": MulticlassF1Score(k, average="macro"),
            }
        elif self.frames:  # on [0, 1] intensities, frame by frame
            metrics = {
                "mse": MeanSquaredError(),
                "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
            }
        else:  # on the original scale
            idx = meta["target_index"]
            for name in ("mean", "std"):  # built once, not on every step
                stats = torch.tensor([meta["scaler"][name][i] for i in idx])
                self.register_buffer(f"target_{name}", stats, persistent=False)
            metrics = {
                "mae": MeanAbsoluteError(),
                "rmse": MeanSquaredError(squared=False),
                "mape": MeanAbsolutePercentageError(),
            }
        collection = MetricCollection(metrics)
        self.stage_metrics = torch.nn.ModuleDict(
            {
                "fit": collection.clone(prefix="train/"),
                "val": collection.clone(prefix="val/"),
                "test": collection.clone(prefix="test/"),
            }
        )

    def to_original(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled forecast [..., targets] -> original units (undo standard scaling, then log).
        validate.to_original is the numpy twin used on ONNX Runtime outputs."""
        y = z * self.target_std + self.target_mean
        return torch.exp(y) if self.meta["transform"] == "log" else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction alone (models with extra outputs return them after it)."""
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        out = self(x)
        # A ModuleDict key cannot be "train" (nn.Module.train): training metrics live under "fit".
        metrics = self.stage_metrics["fit" if stage == "train" else stage]
        if self.classify:
            loss = F.cross_entropy(out, y)
            metrics.update(out, y)
        elif self.frames:
            loss = F.mse_loss(out, y)
            metrics.update(out.flatten(0, 1), y.flatten(0, 1))
        else:
            loss = F.mse_loss(out, y)
            metrics.update(self.to_original(out), self.to_original(y))
        # sync_dist: under DDP every rank must see the same val/loss (early stopping, checkpoint);
        # torchmetrics sync their own state.
        self.log(
            f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True
        )
        return loss

    def _log_epoch_metrics(self, key: str) -> None:
        # Logged once per epoch (the value Lightning would compute from the Metric objects):
        # logging the collection on every step cost ~1.7 ms of Lightning bookkeeping per step
        # (benchmarks/train_overhead.py).
        metrics = self.stage_metrics[key]
        self.log_dict(metrics.compute())
        metrics.reset()

    def on_train_epoch_end(self):
        self._log_epoch_metrics("fit")

    def on_validation_epoch_end(self):
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self):
        self._log_epoch_metrics("test")

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")

    def test_step(self, batch, _):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
