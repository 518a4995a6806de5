"""tune stage: a Ray Tune sweep over one experiment -> tune/<exp>/ (best_params.yaml, results).

MLflow: one parent run per sweep; each trial's train call is a nested child run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.data.prepare import prepared_dir
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.io import atomic_dir
from pipeline.tracking import git_commit, tracking_uri
from pipeline.tuning.cluster import (
    check_reachable,
    check_resources,
    ray_session,
    resolve_address,
)
from pipeline.tuning.results import ResultLog, best_params, results_table, write_results
from pipeline.tuning.spaces import pbt_mutations, search_space, to_ray
from pipeline.tuning.trial import METRIC, run_trial

PARENT_RUN_FILE = "mlflow_parent_run_id"
RESULT_LOG = "results.jsonl"


def tune_dir(exp_name: str) -> Path:
    return Path("tune") / exp_name


def absolute_tracking_uri() -> str:
    """Trials run in their own working dirs: a relative SQLite path must become absolute."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _scheduler(cfg: PipelineConfig, ray_space: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    if t.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            # One past the last epoch: at max_t ASHA stops the trial at its last report, before
            # train() has tested and logged it.
            max_t=t.max_epochs + 1,
            grace_period=t.grace_period,
            reduction_factor=t.reduction_factor,
        )
    if t.scheduler == "pbt":
        from pipeline.tuning.pbt import PBTKeepingLastEpoch  # imports Lightning

        mutations = pbt_mutations(ray_space)
        if not mutations:
            raise ConfigError(
                "tune.scheduler: pbt needs fit.lr, weight_decay or batch_size in space"
            )
        return PBTKeepingLastEpoch(
            t.max_epochs,
            time_attr="training_iteration",
            perturbation_interval=t.perturbation_interval,
            hyperparam_mutations=mutations,
        )
    return FIFOScheduler()


def _search_alg(cfg: PipelineConfig):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if cfg.tune.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=cfg.tune.seed))
    return BasicVariantGenerator(random_state=cfg.tune.seed)


def _parent_run(cfg: PipelineConfig, exp_name: str, state: Path, resume: bool, space) -> str:
    """The sweep's MLflow run (created here, before any trial, so that the experiment's artifact
    location is this repo's; reused on --resume)."""
    import json

    from mlflow import MlflowClient

    client = MlflowClient(absolute_tracking_uri())
    id_file = state / PARENT_RUN_FILE
    if resume and id_file.exists():
        return id_file.read_text().strip()
    experiment = client.get_experiment_by_name(cfg.tracking.experiment_name)
    exp_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(cfg.tracking.experiment_name)
    )
    tags = {"exp": exp_name, "stage": "tune"}
    if commit := git_commit():
        tags["git_commit"] = commit
    run = client.create_run(exp_id, run_name=f"tune-{exp_name}", tags=tags)
    t = cfg.tune
    for key in ("num_samples", "max_epochs", "search", "scheduler", "max_concurrent_trials"):
        client.log_param(run.info.run_id, f"tune/{key}", getattr(t, key))
    client.log_param(run.info.run_id, "tune/space", json.dumps(space, sort_keys=True))
    state.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    return run.info.run_id


def _finish_parent(parent: str, out: Path, best: dict | None, status: str, errored: set) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(absolute_tracking_uri())
    # A trial stopped by the scheduler ends inside fit: its run is left RUNNING or FAILED.
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent}' and attributes.status != 'FINISHED'",
    )
    for child in children:
        if child.data.tags.get("trial_id") not in errored:
            client.set_terminated(child.info.run_id, "KILLED")
    if best:
        client.log_metric(parent, "best/val_loss", best["val_loss"])
        client.log_param(parent, "best/trial", best["trial"])
        client.log_artifacts(parent, str(out))
    client.set_terminated(parent, status)


def _tuner(cfg: PipelineConfig, trainable, ray_space: dict, state: Path, resume: bool):
    from ray import tune as ray_tune

    if resume:
        return ray_tune.Tuner.restore(
            str(state), trainable, resume_unfinished=True, resume_errored=True
        )
    t = cfg.tune
    return ray_tune.Tuner(
        trainable,
        param_space=ray_space,
        tune_config=ray_tune.TuneConfig(
            metric=METRIC,
            mode="min",
            num_samples=t.num_samples,
            search_alg=_search_alg(cfg),
            scheduler=_scheduler(cfg, ray_space),
            max_concurrent_trials=t.max_concurrent_trials,
            reuse_actors=True,  # one Python + torch start per slot, not per trial
        ),
        run_config=ray_tune.RunConfig(
            name=state.name,
            storage_path=str(state.parent),
            failure_config=ray_tune.FailureConfig(max_failures=t.max_failures),
            # PBT exploits other trials' checkpoints: keep them all (tiny models here).
            checkpoint_config=ray_tune.CheckpointConfig(
                num_to_keep=None if t.scheduler == "pbt" else 1
            ),
            callbacks=[ResultLog(state / RESULT_LOG)],
            verbose=1,
        ),
    )


def _set_status(run_id: str, status: str) -> None:
    from mlflow import MlflowClient

    MlflowClient(absolute_tracking_uri()).set_terminated(run_id, status)


def expected_trials(num_samples: int, ray_space: dict) -> int:
    """num_samples, times the size of the grid when there are grid axes."""
    n = num_samples
    for keys in ray_space.values():
        for domain in keys.values():
            if isinstance(domain, dict) and "grid_search" in domain:
                n *= len(domain["grid_search"])
    return n


def tune(cfg: PipelineConfig, exp_name: str, resume: bool = False) -> Path:
    from ray import tune as ray_tune

    exp, t = cfg.experiment(exp_name), cfg.tune
    space = search_space(exp, t)
    ray_space = to_ray(space, t.search)
    address, key = resolve_address(t.address)
    if address:  # fail fast, before anything starts
        check_reachable(address, key)
    prepared = prepared_dir(exp_name).resolve()
    if not (prepared / "meta.json").exists():
        raise DataError(f"{prepared}: not prepared; run `dvc repro prepare@{exp_name}` first")
    state = Path(t.storage_path or ".ray_results").resolve() / f"tune-{exp_name}"
    if resume and not ray_tune.Tuner.can_restore(str(state)):
        raise ConfigError(f"--resume: no sweep state to resume at {state} (tune.storage_path)")
    if not resume and state.exists():
        shutil.rmtree(state)
    with ray_session(address, key):
        check_resources(t.resources_per_trial)
        parent = _parent_run(cfg, exp_name, state, resume, space)
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(
                run_trial,
                raw=cfg.model_dump(by_alias=True),
                exp_name=exp_name,
                max_epochs=t.max_epochs,
                prepared=str(prepared),
                tracking_uri=absolute_tracking_uri(),
                parent_run_id=parent,
                ckpt_root=str(state / "trial_checkpoints"),
            ),
            {"cpu": t.resources_per_trial.cpu, "gpu": t.resources_per_trial.gpu},
        )
        try:
            grid = _tuner(cfg, trainable, ray_space, state, resume).fit()
        except Exception:
            _set_status(parent, "FAILED")
            raise
    # Tune returns normally after Ctrl+C: the saved trial states tell an interrupted sweep.
    trials = ray_tune.ExperimentAnalysis(str(state)).trials
    done = [tr for tr in trials if tr.status in ("TERMINATED", "ERROR")]
    if len(done) < expected_trials(t.num_samples, ray_space):
        raise PipelineError(
            f"sweep interrupted: {len(done)} of {expected_trials(t.num_samples, ray_space)} "
            f"trials done; state kept in {state}; continue with "
            f"`lstm-pipeline tune {exp_name} --resume`"
        )
    errored = {tr.trial_id for tr in trials if tr.status == "ERROR"}
    # Ray's trial number (the start of experiment_tag), shown in its progress table too.
    numbers = {tr.trial_id: int(tr.experiment_tag.split("_", 1)[0]) for tr in trials}
    table = results_table(state / RESULT_LOG, numbers)
    out = tune_dir(exp_name)
    if table.empty:
        _finish_parent(parent, out, None, "FAILED", errored)
        first = next((r.error for r in grid if r.error), None)
        raise PipelineError(f"every trial failed; first error: {first}")
    best = best_params(table, exp_name, t.scheduler)
    with atomic_dir(out) as tmp:
        write_results(table, best, tmp)
    _finish_parent(parent, out, best, "FINISHED", errored)
    return out
