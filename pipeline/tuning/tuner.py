"""The Ray Tune objects of a sweep: scheduler, search algorithm and Tuner."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.config.run import Fit
from pipeline.errors import ConfigError, DataError, first_line
from pipeline.tuning.results import ResultLog
from pipeline.tuning.spaces import pbt_mutations
from pipeline.tuning.trial import METRIC

RESULT_LOG = "results.jsonl"


def scheduler(cfg: PipelineConfig, fit: Fit, ray_space: dict):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    t = cfg.tune
    if t.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            # One past the last epoch: at max_t ASHA stops the trial at its last report, before
            # train() has tested and logged it.
            max_t=t.trial_epochs(fit) + 1,
            grace_period=t.grace_epochs(fit),
            reduction_factor=t.reduction_factor,
        )
    if t.scheduler == "pbt":
        from pipeline.tuning.pbt import PBTKeepingLastEpoch  # imports Lightning

        return PBTKeepingLastEpoch(
            t.trial_epochs(fit),
            time_attr="training_iteration",
            perturbation_interval=t.perturbation_interval,
            hyperparam_mutations=pbt_mutations(ray_space),
        )
    return FIFOScheduler()


def check_scheduler(cfg: PipelineConfig, fit: Fit, ray_space: dict) -> None:
    """What the scheduler refuses, before Ray starts and before an earlier sweep's state goes
    (ASHA asserted it inside Tune: exit 1, `unexpected AssertionError`)."""
    t = cfg.tune
    if t.scheduler == "asha" and t.grace_epochs(fit) > t.trial_epochs(fit):
        raise ConfigError(
            f"tune.grace_period: {t.grace_epochs(fit)} epochs before ASHA may stop a trial, "
            f"more than a trial's {t.trial_epochs(fit)} (tune.max_epochs)"
        )
    if t.scheduler == "pbt" and not any(pbt_mutations(ray_space).values()):
        raise ConfigError("tune.scheduler: pbt needs fit.lr, weight_decay or batch_size in space")


def search_alg(cfg: PipelineConfig):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if cfg.tune.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(sampler=TPESampler(seed=cfg.tune.seed))
    # given here: Tune applies max_concurrent_trials to a Searcher only (it warned and ignored
    # it). Not with PBT: it exploits within the trials that exist, and this generator makes them
    # only as slots free (2 alive: no quantile to clone from); its population runs as resources
    # allow.
    t = cfg.tune
    return BasicVariantGenerator(
        random_state=t.seed, max_concurrent=0 if t.scheduler == "pbt" else t.max_concurrent_trials
    )


def tuner(cfg: PipelineConfig, fit: Fit, trainable, ray_space: dict, state: Path, resume: bool):
    from ray import tune as ray_tune

    if resume:
        try:
            return ray_tune.Tuner.restore(
                str(state), trainable, resume_unfinished=True, resume_errored=True
            )
        except Exception as err:  # exit 1, `unexpected ValueError: invalid literal for int()`
            raise DataError(
                f"{state}: the sweep's saved state cannot be read ({type(err).__name__}: "
                f"{first_line(err)}); start over without --resume"
            ) from None
    t = cfg.tune
    return ray_tune.Tuner(
        trainable,
        param_space=ray_space,
        tune_config=ray_tune.TuneConfig(
            metric=METRIC,
            mode="min",
            num_samples=t.num_samples,
            search_alg=search_alg(cfg),
            scheduler=scheduler(cfg, fit, ray_space),
            max_concurrent_trials=t.max_concurrent_trials if t.search == "optuna" else None,
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


def expected_trials(num_samples: int, ray_space: dict) -> int:
    """num_samples, times the size of the grid when there are grid axes."""
    n = num_samples
    for keys in ray_space.values():
        for domain in keys.values():
            if isinstance(domain, dict) and "grid_search" in domain:
                n *= len(domain["grid_search"])
    return n
