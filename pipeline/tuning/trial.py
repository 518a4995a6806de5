"""One Tune trial = one call of the train stage's `train` with the sampled params.

The trial runs the same computation as `lstm-pipeline train` on the composed params with the
best overrides applied (same seed, threads, data order), which is what lets `dvc repro`
reproduce the best trial's val/loss.
"""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path

from pipeline.config import PipelineConfig, parse_config
from pipeline.paths import prepared_dir
from pipeline.quiet import quiet

METRIC = "val/loss"
# Tune hands a trial's actor to the next trial once the trial's thread has ended, waiting 2 s
# for it by default: an ending that logs to a busy MLflow server takes longer, the next trial then
# fails at its start, and a sweep limited by max_concurrent_trials waits for that trial without end
# (Ray 2.53). The actor reads this at each reuse. An hour: the logger's final wait stops trying
# after 120 s, but a try under way may still make a dozen requests of up to 10 s each.
REUSE_WAIT_S = 3600


def trial_config(raw: dict, exp_name: str, params: dict, max_epochs: int) -> PipelineConfig:
    """The composed params with a trial's {"model": {...}, "fit": {...}} applied."""
    raw = copy.deepcopy(raw)
    exp = raw["experiments"][exp_name]
    for group, values in params.items():
        exp.setdefault(group, {}).update(values)
    exp.setdefault("fit", {})["max_epochs"] = max_epochs
    raw["trainer"]["progress_bar"] = False
    # DDP inside a trial is fragile (Lightning would re-launch the Ray worker): one process.
    if raw["trainer"].get("devices") != 1:
        raw["trainer"].update(devices=1, strategy="auto")
    return parse_config(raw)


def run_trial(
    params: dict,
    *,
    raw: dict,
    exp_name: str,
    max_epochs: int,
    prepared: str,
    tracking_uri: str,
    parent_run_id: str,
    ckpt_root: str,
) -> None:
    import ray
    from ray import tune
    from ray.tune.integration.pytorch_lightning import TuneReportCheckpointCallback

    from pipeline.training.train import train
    from pipeline.training.trainer import TrainHooks
    from pipeline.tuning.pbt import ApplyTrialHparams

    quiet()  # a Ray worker
    cfg = trial_config(raw, exp_name, params, max_epochs)
    trial_id = tune.get_context().get_trial_id()
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(REUSE_WAIT_S)
    # Ray runs the trial in its own working dir: the stage outputs land there, the data is linked.
    link = prepared_dir(exp_name)
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(prepared, target_is_directory=True)
    checkpoint = tune.get_checkpoint()  # a restored trial's (PBT's exploits, retries)
    # as_directory: the checkpoint in place where it is local, else a copy removed at the end
    # (to_directory() left a /tmp/checkpoint_tmp_* behind at each restore)
    with checkpoint.as_directory() if checkpoint else nullcontext() as folder:
        resume_from = str(Path(folder) / "checkpoint") if folder else None
        hooks = TrainHooks(
            callbacks=(
                TuneReportCheckpointCallback({METRIC: METRIC}, filename="checkpoint"),
                ApplyTrialHparams(),
            ),
            resume_from=resume_from,
            ckpt_dir=Path(ckpt_root) / trial_id,
            run_name=f"{exp_name}-{trial_id}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "stage": "tune-trial",
                "trial_id": trial_id,
                "ray_node_id": ray.get_runtime_context().get_node_id(),
            },
        )
        train(cfg, exp_name, hooks)
