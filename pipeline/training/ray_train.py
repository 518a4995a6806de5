"""Multi-node data parallel: the train stage run by Ray Train's TorchTrainer.

`trainer.ray_workers` workers each run `train` with RayDDPStrategy and RayLightningEnvironment;
rank zero writes the stage outputs and the one MLflow run. The workers work in this directory,
so on a multi-node cluster the repo must sit on shared storage (or at the same path).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path

from pipeline.config import PipelineConfig, parse_config
from pipeline.errors import PipelineError, SystemFault, first_line
from pipeline.paths import model_dir
from pipeline.quiet import quiet
from pipeline.ray_cluster import end_if_head_lost, ray_session, resolve_address, when_head_lost
from pipeline.tracking import absolute_tracking_uri, end_tagged, ensure_reachable
from pipeline.training.train import train
from pipeline.training.trainer import TrainHooks

RUN_TAG = "ray_train_run"  # the training's own: its run is found by it once a worker is lost


def _worker(params: dict) -> None:
    import ray.train
    from lightning_fabric.utilities.rank_zero import rank_zero_only
    from lightning_utilities.core.rank_zero import rank_zero_only as utils_rank_zero_only
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    os.chdir(params["root"])
    quiet()  # a Ray worker
    os.environ["MLFLOW_TRACKING_URI"] = params["tracking_uri"]
    # The MLflow logger is created before the Trainer sets ranks: only rank zero may log.
    rank = ray.train.get_context().get_world_rank()
    rank_zero_only.rank = utils_rank_zero_only.rank = rank
    hooks = TrainHooks(
        strategy=RayDDPStrategy(),
        plugins=(RayLightningEnvironment(),),
        prepare=prepare_trainer,
        tags={"ray_train_workers": str(params["workers"]), RUN_TAG: params["run_tag"]},
        ckpt_dir=Path(params["ckpt_dir"]),  # one folder for every worker (rank zero writes)
    )
    train(parse_config(params["raw"]), params["exp_name"], hooks)


@contextmanager
def _removed(folder: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def train_on_ray(cfg: PipelineConfig, exp_name: str) -> Path:
    from mlflow import MlflowClient
    from ray.train import RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    ensure_reachable()
    # Every worker's MLflow logger opens the store: create a new SQLite file's tables first,
    # or the workers race to create them.
    MlflowClient(absolute_tracking_uri())
    raw = cfg.model_dump(by_alias=True)
    workers = cfg.trainer.ray_workers
    address, key = resolve_address(None)
    Path(".ray_results").mkdir(exist_ok=True)
    ckpt_dir = Path(tempfile.mkdtemp(prefix=f"train-{exp_name}-", dir=".ray_results")).resolve()
    key = key or "RAY_ADDRESS"
    # rank zero's run, where its worker was killed before it could end it
    end_runs = partial(end_tagged, cfg.tracking.experiment_name, RUN_TAG, ckpt_dir.name, "FAILED")
    with ray_session(address, key, "train"), _removed(ckpt_dir):
        when_head_lost(end_runs)  # its workers, rank zero's run with them
        trainer = TorchTrainer(
            _worker,
            train_loop_config={
                "raw": raw,
                "exp_name": exp_name,
                "root": str(Path.cwd()),
                "tracking_uri": absolute_tracking_uri(),
                "workers": workers,
                "ckpt_dir": str(ckpt_dir),
                "run_tag": ckpt_dir.name,
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=cfg.trainer.accelerator == "gpu"
            ),
            run_config=RunConfig(
                name=f"train-{exp_name}", storage_path=str(Path(".ray_results").resolve())
            ),
        )
        try:
            result = trainer.fit()
        except TrainingFailedError as err:
            end_if_head_lost(address, key, "train")
            with suppress(Exception):  # the error to report is the training's
                end_runs()
            raise _cause(err) from None
    if result.error:
        raise PipelineError(f"Ray Train failed: {first_line(result.error)}")
    return model_dir(exp_name)


def _cause(err: Exception) -> BaseException:
    """What ended the fit (Ray Train's TrainingFailedError), as the train stage states it: a
    worker process lost (its node or the process killed), else the first rank's own error (bad
    data: exit 3, ...)."""
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    failures = getattr(err, "worker_failures", {})
    for rank in sorted(failures):
        if isinstance(failures[rank], WorkerHealthCheckFailedError):
            lost = first_line(failures[rank].health_check_failure)[:200]
            return SystemFault(f"a Ray Train worker was lost ({lost}); run the command again")
    causes = [getattr(failures[rank], "_base_exc", failures[rank]) for rank in sorted(failures)]
    causes += [getattr(err, "controller_failure", err)]
    return next((c for c in causes if isinstance(c, PipelineError)), causes[0])
