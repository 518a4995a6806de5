"""The thin LightningModule: a model from the registry, the task's loss and torchmetrics."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torchmetrics import MetricCollection

from pipeline.meta import DataMeta
from pipeline.models import build_model
from pipeline.tasks import task_of


class SequenceModule(pl.LightningModule):
    def __init__(self, model_cfg: dict, meta: dict, lr: float = 1e-3, weight_decay: float = 0.0):
        """`meta`: the data contract as a dict (DataMeta.model_dump()), as checkpoints keep it."""
        super().__init__()
        self.save_hyperparameters()
        self.meta = DataMeta.model_validate(meta)
        self.task = task_of(self.meta)
        self.model = build_model(
            model_cfg,
            self.meta.input_shape[1],
            self.task.output_shape(self.meta),
            **self.task.model_kwargs(self.meta),
        )
        for name, tensor in self.task.buffers(self.meta).items():  # built once, not every step
            self.register_buffer(name, tensor, persistent=False)
        collection = MetricCollection(self.task.torchmetrics(self.meta))
        self.stage_metrics = torch.nn.ModuleDict(
            {
                "fit": collection.clone(prefix="train/"),
                "val": collection.clone(prefix="val/"),
                "test": collection.clone(prefix="test/"),
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction alone (models with extra outputs return them after it)."""
        out = self.model(x)
        return out[0] if isinstance(out, tuple) else out

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        out = self(x)
        loss = self.task.loss(out, y)
        # A ModuleDict key cannot be "train" (nn.Module.train): training metrics live under "fit".
        self.stage_metrics["fit" if stage == "train" else stage].update(
            *self.task.metric_inputs(self, out, y)
        )
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
