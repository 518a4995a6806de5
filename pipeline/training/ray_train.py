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
from contextlib import contextmanager
from pathlib import Path

from pipeline.config import PipelineConfig, parse_config
from pipeline.errors import PipelineError
from pipeline.paths import model_dir
from pipeline.quiet import quiet
from pipeline.ray_cluster import ray_session, resolve_address
from pipeline.tracking import absolute_tracking_uri, ensure_reachable
from pipeline.training.train import train
from pipeline.training.trainer import TrainHooks


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
        tags={"ray_train_workers": str(params["workers"])},
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
    from ray.train import RunConfig, ScalingConfig
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
    with ray_session(address, key or "RAY_ADDRESS", "train"), _removed(ckpt_dir):
        trainer = TorchTrainer(
            _worker,
            train_loop_config={
                "raw": raw,
                "exp_name": exp_name,
                "root": str(Path.cwd()),
                "tracking_uri": absolute_tracking_uri(),
                "workers": workers,
                "ckpt_dir": str(ckpt_dir),
            },
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=cfg.trainer.accelerator == "gpu"
            ),
            run_config=RunConfig(
                name=f"train-{exp_name}", storage_path=str(Path(".ray_results").resolve())
            ),
        )
        result = trainer.fit()
    if result.error:
        raise PipelineError(f"Ray Train failed: {result.error}")
    return model_dir(exp_name)
