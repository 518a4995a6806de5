"""train stage: prepared data -> models/<exp>/model.ckpt, metrics/<exp>/train.json, learning curve.

Named steps: fit and select (fit.py), write the outputs (rank zero only), log one MLflow run. An
ensemble (fit.ensemble) fits its members with seeds seed, seed+1... (in parallel on Ray when
RAY_ADDRESS is set) and keeps every member in one model.ckpt.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.loggers import MLFlowLogger

from pipeline import plots
from pipeline.checkpoint import PREFIX
from pipeline.config import PipelineConfig
from pipeline.data.prepared import Prepared
from pipeline.errors import ConfigError
from pipeline.io import Outputs, check_folders, dumps_json, file_digest
from pipeline.meta import SPREAD_LIMIT
from pipeline.paths import metrics_file, model_dir, plots_dir, prepared_dir
from pipeline.tracking import ensure_reachable, run_tags
from pipeline.training.fit import (
    Fitted,
    Parent,
    continued_logger,
    fit_and_select,
    fit_member,
    resolved_autos,
    update_capped,
)
from pipeline.training.logger import deliver, failed_on_error
from pipeline.training.resume import resume_point
from pipeline.training.trainer import (
    TrainHooks,
    check_accelerator,
    check_rendezvous,
    fit_precision,
)


def slim_checkpoint(srcs: list[Path], dst: Path) -> None:
    """Keep what loading needs; drop trainer state (absolute paths, optimizer) from model.ckpt
    (written at `dst` as it is: write_outputs puts it in place).
    Several members: their weights under model.members.<i>. and `members` in the hparams."""
    fulls = [torch.load(src, map_location="cpu", weights_only=False) for src in srcs]
    keep = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")
    ckpt = {k: fulls[0][k] for k in keep}
    if len(fulls) > 1:
        ckpt["hyper_parameters"] = {**ckpt["hyper_parameters"], "members": len(fulls)}
        ckpt["state_dict"] = {
            f"{PREFIX}members.{i}.{k.removeprefix(PREFIX)}": v
            for i, full in enumerate(fulls)
            for k, v in full["state_dict"].items()
            if k.startswith(PREFIX)
        }
    torch.save(ckpt, dst)


def fit_metrics(fitted: Fitted) -> dict:
    return {
        "best_epoch": fitted.best_epoch,
        "epochs_run": len(fitted.history),
        "best_val_loss": fitted.best_val_loss,
        **({"refit_epochs": fitted.refit_epochs} if fitted.refit_epochs else {}),
        **{k: _digits(v) for k, v in fitted.tested.items()},
    }


def _digits(value) -> float:
    """8 significant digits: 8 decimals turned the errors of a series in units of 1e-30 into 0."""
    return float(f"{float(value):.8g}")


def ensemble_metrics(members: list[Fitted]) -> dict:
    """Each member's metrics (member<i>/...) and their mean and sd over members."""
    rows = [fit_metrics(m) for m in members]
    spread = {}
    for key in rows[0]:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        spread[f"members/{key}_mean"] = _digits(values.mean())
        spread[f"members/{key}_sd"] = _digits(values.std(ddof=1))
    each = {f"member{i}/{k}": v for i, r in enumerate(rows) for k, v in r.items()}
    return {"members": len(members), **spread, **each}


def write_outputs(exp_name: str, members: list[Fitted]) -> dict:
    """model.ckpt, train.json and the (first member's) learning curve; returns the metrics."""
    metrics = fit_metrics(members[0]) if len(members) == 1 else ensemble_metrics(members)
    # put in place together: never a new model.ckpt beside the last training's report or curve
    with Outputs() as place:
        with place.file(model_dir(exp_name) / "model.ckpt") as ckpt:
            slim_checkpoint([m.ckpt for m in members], ckpt)
        with place.file(metrics_file(exp_name, "train")) as report:
            report.write_text(dumps_json(metrics))
        with place.folder(plots_dir(exp_name, "train")) as curve:
            plots.learning_curve(members[0].history, curve)
    return metrics


def log_run(logger: MLFlowLogger, exp_name: str, members: list[Fitted], metrics: dict) -> None:
    """What the logger did not log per epoch: the selection, the checkpoint, the plots."""
    run_id, client = logger.run_id, logger.experiment
    fitted = members[0]
    logged = ["best_epoch", "epochs_run", "best_val_loss"]
    if fitted.refit_epochs:  # the refit's Trainer has no logger: its epochs would overwrite
        logged += ["refit_epochs", *fitted.tested]
    if len(members) > 1:  # the members' runs hold their curves; this one their spread
        logged = [k for k in metrics if k.startswith("members")]
    for key in logged:
        client.log_metric(run_id, key, metrics[key])
    ckpt = model_dir(exp_name) / "model.ckpt"
    client.log_artifact(run_id, str(ckpt))
    client.set_tag(run_id, "ckpt_sha256", file_digest(ckpt))
    client.set_tag(run_id, "world_size", fitted.world_size)
    client.log_artifacts(run_id, str(plots_dir(exp_name, "train")), "plots")


def fit_members(cfg, exp_name: str, parent: Parent, hooks: TrainHooks, ckpt_dir: Path):
    """Every member of an ensemble: one after the other, or in parallel as Ray tasks when the
    plain train stage runs with RAY_ADDRESS set (see ensemble_ray.py)."""
    n = cfg.experiment(exp_name).fit.ensemble
    if os.environ.get("RAY_ADDRESS") and replace(hooks, resumable=False) == TrainHooks():
        from pipeline.training.ensemble_ray import fit_members_on_ray

        return fit_members_on_ray(cfg, exp_name, parent, n, ckpt_dir)
    return [fit_member(cfg, exp_name, i, parent, hooks, ckpt_dir) for i in range(n)]


def _auto_rule(key: str, meta) -> str:
    count = f"{len(meta.series_ids or [1])} series"
    if key == "scale_norm":
        return f"{count}; on for more than one"
    share = (
        "" if meta.season_share is None else f", {meta.season_share:.0%} of their seasons shared"
    )
    return (
        f"{count}, season {meta.season or 'none'}{share}; on where the window, {meta.window}, "
        "holds two seasons, for a single series or several that share under half of theirs"
    )


def _refuse_for_lengths(model, exp_name: str) -> None:
    """Before a run opens (the model itself refuses them at its first batch): padded series
    need a causal RNN, and no statistics of a window that padding would skew."""
    for key in ("bidirectional", "level_norm", "scale_norm", "season_norm"):
        if getattr(model, key, False):
            raise ConfigError(
                f"experiments.{exp_name}.model.{key}: {getattr(model, key)}; the data's series "
                "have different lengths (padded): they need a unidirectional RNN without "
                "level_norm, scale_norm or season_norm"
            )


def train(cfg: PipelineConfig, exp_name: str, hooks: TrainHooks | None = None) -> Path:
    """Fit, test the selected checkpoint, write the outputs (rank zero only), log one run."""
    hooks = hooks or TrainHooks()
    exp = cfg.experiment(exp_name)
    prepared = Prepared.load(prepared_dir(exp_name))
    if prepared.meta.variable_length:
        _refuse_for_lengths(exp.model, exp_name)
    period = getattr(exp.model, "season_norm", 0)
    if isinstance(period, int) and period and prepared.meta.window < 2 * period:
        # prepare chose the window for another season_norm (dvc.yaml's prepare reads only
        # data); the model would learn no profile for the phases its windows never reach
        raise ConfigError(
            f"experiments.{exp_name}.model.season_norm: {period} needs windows of 2 periods or "
            f"more; the prepared window is {prepared.meta.window} (chosen for another "
            f"season_norm): run `dvc repro -f prepare@{exp_name}`, or set data.window"
        )
    ensure_reachable()
    if getattr(exp.model, "series_norm", None) == "auto":
        on, spread = prepared.meta.auto_series_norm(), prepared.meta.std_spread or 1.0
        print(
            f"model.series_norm: auto -> {'on' if on else 'off'} (std_spread {spread:,.0f}: the "
            f"train split's series stds, 90th over 10th percentile; on above {SPREAD_LIMIT:,.0f})"
        )
    for key, value in resolved_autos(exp.model, prepared.meta).items():
        print(f"model.{key}: auto -> {value} ({_auto_rule(key, prepared.meta)})")
    epochs = update_capped(exp, prepared).fit.max_epochs
    if epochs < exp.fit.max_epochs:
        print(f"fit.max_updates: {exp.fit.max_updates} -> {epochs} of {exp.fit.max_epochs} epochs")
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data_sha256 = prepared.meta.content_sha256
    check_accelerator(cfg.trainer, exp.fit)
    check_rendezvous(cfg.trainer)
    precision = fit_precision(cfg.trainer, exp.fit)
    if precision != (asked := exp.fit.precision or cfg.trainer.precision):
        print(f"{'fit' if exp.fit.precision else 'trainer'}.precision: {asked} -> {precision}")
    tags = {
        **run_tags(exp_name, "train", data_sha256=data_sha256, precision=precision),
        **hooks.tags,
    }
    if hooks.ckpt_dir:  # a Tune trial or Ray Train worker: the caller keeps the checkpoints
        folder = nullcontext(hooks.ckpt_dir)
    else:  # the train stage: resumable after a kill, SIGTERM or SIGUSR1
        for output in (model_dir(exp_name) / "model.ckpt", metrics_file(exp_name, "train")):
            check_folders(output)  # e.g. a link to a disk not mounted: before the fit, not after
        folder, hooks = resume_point(cfg, exp_name, data_sha256), replace(hooks, resumable=True)
    with folder as ckpt_dir:
        logger = continued_logger(cfg, hooks.run_name or exp_name, tags, Path(ckpt_dir), hooks)
        with failed_on_error(logger):
            logger.log_hyperparams({"seed": cfg.seed, **exp.model_dump(by_alias=True)})
            if exp.fit.ensemble == 1:
                fitted = fit_and_select(cfg, exp, prepared, logger, hooks, Path(ckpt_dir), cfg.seed)
                members = [fitted]
            else:
                parent = Parent(logger.run_id, hooks.run_name or exp_name, tags)
                members = fit_members(cfg, exp_name, parent, hooks, Path(ckpt_dir))
            if not members[0].is_global_zero:
                return model_dir(exp_name)
            metrics = write_outputs(exp_name, members)
            deliver(logger, lambda: log_run(logger, exp_name, members, metrics), Path(ckpt_dir))
    return model_dir(exp_name)
