"""Population Based Training: the scheduler (driver side) and the trial side of an exploit."""

from __future__ import annotations

import pytorch_lightning as pl
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler


class PBTKeepingLastEpoch(PopulationBasedTraining):
    """At its last epoch a trial is neither exploited nor paused: a clone or a restart from that
    checkpoint would have no epoch left to train, and the trial itself still has to test its
    best checkpoint and close its MLflow run."""

    def __init__(self, last_epoch: int, **kwargs):
        super().__init__(**kwargs)
        self.last_epoch = last_epoch

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self.last_epoch:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class ApplyTrialHparams(pl.Callback):
    """After a restore (PBT exploit), the optimizer state carries the old trial's lr and
    weight decay: put this trial's values back."""

    def on_train_start(self, trainer, pl_module):
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = pl_module.hparams.lr
                group["weight_decay"] = pl_module.hparams.weight_decay
