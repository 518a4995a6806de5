"""The thin LightningModule: a model from the registry, the task's loss and torchmetrics."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torchmetrics import MeanMetric, MetricCollection

from pipeline.checkpoint import model_for
from pipeline.meta import DataMeta
from pipeline.models.lstm import normalise
from pipeline.tasks import task_of


class SequenceModule(pl.LightningModule):
    def __init__(
        self,
        model_cfg: dict,
        meta: dict,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: str = "constant",
        patience: int = 20,
        teacher_forcing: float = 0.0,
        label_smoothing: float = 0.0,
        scaling: float = 0.0,
        jitter: float = 0.0,
    ):
        """`meta`: the data contract as a dict (DataMeta.model_dump()), as checkpoints keep it;
        the rest: fit.* (config/run.py)."""
        super().__init__()
        self.save_hyperparameters()
        self.meta = DataMeta.model_validate(meta)
        self.task = task_of(self.meta)
        self.model = model_for(model_cfg, self.meta)
        for name, tensor in self.task.buffers(self.meta).items():  # built once, not every step
            self.register_buffer(name, tensor, persistent=False)
        metrics = self.task.torchmetrics(self.meta)
        training = {k: m for k, m in metrics.items() if k not in self.task.not_in_training}
        collection = MetricCollection(metrics)
        self.stage_metrics = torch.nn.ModuleDict(
            {
                "fit": MetricCollection(training).clone(prefix="train/"),
                "val": collection.clone(prefix="val/"),
                "test": collection.clone(prefix="test/"),
            }
        )
        # The loss too is accumulated per step and logged once per epoch: self.log on every
        # step cost ~2 ms of Lightning bookkeeping per step (benchmarks/train_overhead.py).
        # A NaN loss must show in the mean (EarlyStopping stops on it), not be dropped: no NaN
        # check ("disable"), which on a GPU would also wait for the device every step. "disable"
        # ignores weights, so _step passes one value per sample.
        losses = {k: MeanMetric(nan_strategy="disable") for k in self.stage_metrics}
        self.stage_losses = torch.nn.ModuleDict(losses)

    def forward(self, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """The prediction alone (models with extra outputs return them after it); `extra`: the
        data's inputs after x (DataMeta.extra_inputs: padded series' lengths, covariates)."""
        out = self.model(x, **dict(zip(self.meta.extra_inputs, extra, strict=False)))
        return out[0] if isinstance(out, tuple) else out

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y, *extra = batch
        if self.meta.variable_length:  # padded to the data's longest series: cut to the batch's
            x = x[:, : int(extra[0].max())]
        hp, train = self.hparams, stage == "train"
        if train and hp.teacher_forcing:
            forced = torch.rand(y.shape[:2], device=y.device) < hp.teacher_forcing
            out = self.model(x, teacher=y, teacher_mask=forced)
        else:
            out = self(self._augmented(x) if train else x, *extra)
        smoothing = {"label_smoothing": hp.label_smoothing} if train and hp.label_smoothing else {}
        loss = self.task.loss(out, y, **smoothing)
        # A ModuleDict key cannot be "train" (nn.Module.train): training metrics live under "fit".
        key = "fit" if train else stage
        self.stage_losses[key].update(loss.detach().expand(len(x)))  # the mean over samples
        self.stage_metrics[key].update(*self.task.metric_inputs(self, out, y))
        return loss

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        """fit.scaling and fit.jitter: x [batch, seq, channels]. The jitter is in the units
        the network reads: each window's own std where `scale_norm` is on (a small series
        among large ones is not drowned); none on the future covariates' past values (x's
        last columns: a calendar or a plan, known exactly)."""
        if self.hparams.scaling:
            factor = torch.randn(x.shape[0], 1, x.shape[-1], device=x.device)
            x = x * (1 + self.hparams.scaling * factor)
        if self.hparams.jitter:
            width = x.shape[-1] - len(self.meta.future)
            noise = self.hparams.jitter * torch.randn_like(x[..., :width])
            if getattr(self.model, "scale_norm", False):
                noise = noise * normalise(self.model, x)[1][1]
            x = torch.cat([x[..., :width] + noise, x[..., width:]], dim=-1)
        return x

    def _log_epoch_metrics(self, key: str) -> None:
        # Logged once per epoch. torchmetrics sync their state across DDP ranks in compute():
        # every rank logs the same val/loss (early stopping and checkpoints agree).
        metrics, loss = self.stage_metrics[key], self.stage_losses[key]
        values = {**metrics.compute(), f"{metrics.prefix}loss": loss.compute()}
        self.log_dict(values, on_step=False, on_epoch=True)
        metrics.reset()
        loss.reset()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # At the epoch's last batch, not on_train_epoch_end: callbacks (History) read the epoch's
        # train metrics in their on_train_epoch_end, which Lightning calls before the module's.
        if self.trainer.is_last_batch:
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
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "cosine":  # annealed every step, to 0 at the last one
            steps = self.trainer.estimated_stepping_batches
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(int(steps), 1))
            return [optimizer], [{"scheduler": cosine, "interval": "step"}]
        if hp.schedule == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.5, patience=max(hp.patience // 4, 1)
            )
            return [optimizer], [{"scheduler": plateau, "monitor": "val/loss", "strict": False}]
        return optimizer
