"""Ensemble members as parallel Ray tasks on the cluster at RAY_ADDRESS.

Each task fits one member in the repo's directory (on a multi-node cluster the repo must sit on
shared storage, or at the same path, as for Ray Train) and keeps its checkpoint under
.ray_results/, which the driver reads back; each member logs its own nested MLflow run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from pipeline.config import PipelineConfig, parse_config
from pipeline.errors import PipelineError, SystemFault, first_line
from pipeline.quiet import quiet
from pipeline.ray_cluster import end_if_head_lost, ray_session, resolve_address, when_head_lost
from pipeline.tracking import absolute_tracking_uri, end_with_children
from pipeline.training.fit import Fitted, Parent, fit_member
from pipeline.training.trainer import TrainHooks


def _member(raw: dict, exp_name: str, index: int, parent: Parent, root: str, where: dict):
    import ray
    import torch

    os.chdir(root)
    quiet()  # a Ray worker
    os.environ["MLFLOW_TRACKING_URI"] = where["tracking_uri"]
    cfg = parse_config(raw)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    node = ray.get_runtime_context().get_node_id()
    tagged = Parent(parent.run_id, parent.run_name, {**parent.tags, "ray_node_id": node})
    return fit_member(cfg, exp_name, index, tagged, TrainHooks(), Path(where["ckpt_dir"]))


def fit_members_on_ray(
    cfg: PipelineConfig, exp_name: str, parent: Parent, n: int, keep: Path
) -> list[Fitted]:
    """The n members, fitted in parallel; their checkpoints are copied into `keep`."""
    import ray

    address, key = resolve_address(None)
    Path(".ray_results").mkdir(exist_ok=True)
    shared = tempfile.mkdtemp(prefix=f"ensemble-{exp_name}-", dir=".ray_results")
    where = {"tracking_uri": absolute_tracking_uri(), "ckpt_dir": str(Path(shared).resolve())}
    gpus = 1 if cfg.trainer.accelerator == "gpu" else 0
    task = ray.remote(num_cpus=cfg.trainer.threads or 1, num_gpus=gpus, max_retries=0)(_member)
    raw = cfg.model_dump(by_alias=True)

    def end_runs() -> None:  # the ensemble's and its members' (a dead worker's is RUNNING)
        end_with_children(parent.run_id, "FAILED")

    try:
        with ray_session(address, key, "train"):
            when_head_lost(end_runs)
            refs = [task.remote(raw, exp_name, i, parent, os.getcwd(), where) for i in range(n)]
            try:
                members = ray.get(refs)
            except ray.exceptions.RayTaskError as err:
                cause = str(err.cause).strip().splitlines() or [type(err.cause).__name__]
                raise PipelineError(f"an ensemble member failed on Ray: {cause[-1]}") from None
            except ray.exceptions.RayError as err:  # its worker or node died, not its code
                end_if_head_lost(address, key, "train")
                with suppress(Exception):  # the error to report is Ray's
                    end_runs()
                raise SystemFault(
                    f"an ensemble member's Ray worker was lost ({first_line(err)[:200]}); run "
                    "the command again"
                ) from None
        copies = [keep / f"member{i}.ckpt" for i in range(n)]
        for m, copy in zip(members, copies, strict=True):
            shutil.copy(m.ckpt, copy)
        return [replace(m, ckpt=copy) for m, copy in zip(members, copies, strict=True)]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
