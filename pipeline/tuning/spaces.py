"""Search spaces: the model family's default (`search_space` in its config schema) plus the fit
keys below, overridden key by key by `tune.space`; checked against the experiment's schema."""

from __future__ import annotations

from typing import Any

from pipeline.config import Experiment, Fit, Tune
from pipeline.errors import ConfigError

FIT_SPACE = {
    "lr": {"loguniform": [3e-4, 1e-2]},
    "batch_size": {"choice": [16, 32, 64]},
    "weight_decay": {"loguniform": [1e-6, 1e-2]},
}
# PBT restarts a trial from another's checkpoint: only keys that keep the weights' shapes mutate.
PBT_MUTABLE = {"fit": ("lr", "weight_decay", "batch_size")}


def search_space(exp: Experiment, tune: Tune) -> dict[str, dict[str, dict]]:
    """{"model": {key: spec}, "fit": {key: spec}} for this experiment, keys validated."""
    space = {"model": dict(type(exp.model).search_space), "fit": dict(FIT_SPACE)}
    allowed = {"model": set(type(exp.model).model_fields) - {"name"}, "fit": set(Fit.model_fields)}
    allowed["fit"].discard("max_epochs")  # set by tune.max_epochs
    for group, keys in tune.space.items():
        for key, spec in keys.items():
            if (group, key) == ("fit", "max_epochs"):
                raise ConfigError(
                    "tune.space.fit.max_epochs: a trial's epochs are tune.max_epochs, not sampled"
                )
            if key not in allowed[group]:
                raise ConfigError(
                    f"tune.space.{group}.{key}: {group} of model {exp.model.name!r} has no key "
                    f"{key!r}; keys: {', '.join(sorted(allowed[group]))}"
                )
            if spec is None:
                space[group].pop(key, None)
            else:
                space[group][key] = spec
    return {group: keys for group, keys in space.items() if keys}


def check_values(raw: dict, exp_name: str, space: dict, max_epochs: int) -> None:
    """Each choice, and each range's ends, through the config's schema before Ray starts: a
    value the model refuses failed every trial that drew it, inside Ray."""
    from pipeline.tuning.trial import trial_config

    for group, keys in space.items():
        for key, spec in keys.items():
            kind, values = next(iter(spec.items()))
            if kind not in ("choice", "grid"):  # randint's high is exclusive
                values = [values[0], values[1] - 1 if kind == "randint" else values[1]]
            if kind in ("uniform", "loguniform"):  # floats between: an integer key refuses them
                values.append(round(values[0] + (values[1] - values[0]) * 0.618, 4))
            for value in values:
                try:
                    trial_config(raw, exp_name, {group: {key: value}}, max_epochs)
                except ConfigError as err:
                    raise ConfigError(
                        f"tune.space.{group}.{key}: {kind} {spec[kind]} draws {value!r}: {err}"
                    ) from None


def to_ray(space: dict[str, dict[str, dict]], search: str) -> dict[str, dict[str, Any]]:
    """Our YAML samplers -> ray.tune domains (grid search: every choice becomes a grid axis)."""
    from ray import tune

    def domain(where: str, kind: str, values: list):
        if search == "grid" and kind not in ("choice", "grid"):
            raise ConfigError(f"{where}: grid search needs choice or grid values (got {kind})")
        if search == "optuna" and kind == "grid":
            raise ConfigError(f"{where}: optuna search cannot take grid values; use choice")
        if kind == "grid" or (kind == "choice" and search == "grid"):
            return tune.grid_search(list(values))
        if kind == "choice":
            return tune.choice(list(values))
        lo, hi = values
        return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[
            kind
        ](lo, hi)

    return {
        group: {
            key: domain(f"tune.space.{group}.{key}", *next(iter(spec.items())))
            for key, spec in keys.items()
        }
        for group, keys in space.items()
    }


def pbt_mutations(ray_space: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The mutable keys of the space; PBT explores a grid axis's values as a list."""

    def mutation(domain):
        return domain["grid_search"] if isinstance(domain, dict) else domain

    return {
        group: {k: mutation(v) for k, v in ray_space.get(group, {}).items() if k in keys}
        for group, keys in PBT_MUTABLE.items()
        if ray_space.get(group)
    }
