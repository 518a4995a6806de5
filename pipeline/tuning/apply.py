"""Best trial -> params.yaml: compose conf/ with the sweep's overrides (or print the
`dvc exp run -S ...` line that does the same inside a DVC experiment)."""

from __future__ import annotations

import json
import math
import shlex
import sys

from pipeline.config import compose
from pipeline.errors import ConfigError, DataError, GateError, first_line
from pipeline.io import atomic_file, read_json, read_yaml
from pipeline.paths import metrics_file, tune_dir


def native(value):
    return value.item() if hasattr(value, "item") else value  # numpy scalars -> Python


def hydra_value(value) -> str:
    """A value as Hydra override syntax (what `dvc exp run -S key=value` takes)."""
    value = native(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


def best_trial(exp_name: str) -> dict:
    path = tune_dir(exp_name) / "best_params.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `lstm-pipeline tune {exp_name}` first")
    best = read_yaml(path, ConfigError)
    if not (isinstance(best, dict) and isinstance(best.get("overrides"), dict)
            and isinstance(best.get("val_loss"), int | float)
            and not isinstance(best["val_loss"], bool)
            and math.isfinite(best["val_loss"])):  # fmt: skip
        raise ConfigError(
            f"{path}: not a sweep's best trial (a finite number val_loss, a mapping overrides); "
            f"run `lstm-pipeline tune {exp_name}` again"
        )
    # a file copied from another experiment's folder rewrote that experiment's params
    if (named := best.get("experiment", exp_name)) != exp_name:
        raise ConfigError(f"{path}: the best trial of experiment {named!r}, not of {exp_name!r}")
    other = [k for k in best["overrides"] if not str(k).startswith(f"experiments.{exp_name}.")]
    if other:
        raise ConfigError(f"{path}: sets {other[0]}, outside experiment {exp_name!r}")
    return best


def check_improves(exp_name: str, best: dict) -> None:
    """Refuse a best trial whose val/loss is worse than the current model's (train.json)."""
    path = metrics_file(exp_name, "train")
    try:
        current = read_json(path).get("best_val_loss") if path.exists() else None
    except (ValueError, OSError, AttributeError) as err:
        raise DataError(f"{path}: not the train stage's report ({first_line(err)})") from None
    if current is not None and best["val_loss"] > current:
        raise GateError(
            f"the best trial's val/loss {best['val_loss']:.6g} is worse than the current "
            f"model's {current:.6g} ({path}); params unchanged (--force applies it anyway)"
        )


def best_overrides(exp_name: str, best: dict) -> list[str]:
    if note := best.get("note"):  # a PBT sweep: say so before anything is applied
        print(f"warning: {tune_dir(exp_name)}/best_params.yaml: {note}", file=sys.stderr)
    # ++: set the key even where conf/ leaves it to the default recipe (no model/fit there)
    return [f"++{key}={hydra_value(value)}" for key, value in best["overrides"].items()]


def dvc_exp_run_command(exp_name: str, extra_overrides: list[str] = (), force: bool = False) -> str:
    """The `dvc exp run -S ...` line that applies the best trial (and `extra_overrides`) inside
    a DVC experiment; the same gate as apply_best."""
    best = best_trial(exp_name)
    if not force:
        check_improves(exp_name, best)
    overrides = [*extra_overrides, *best_overrides(exp_name, best)]
    _composed(exp_name, overrides, extra_overrides)  # a line dvc would refuse is not printed
    return shlex.join(["dvc", "exp", "run", *(a for o in overrides for a in ("-S", o))])


def _composed(exp_name: str, overrides: list[str], extra_overrides) -> str:
    """conf/ composed with the overrides; an error names the file they came from."""
    try:
        return compose(overrides)
    except ConfigError as err:
        given = " and the command line's" if extra_overrides else ""
        source = tune_dir(exp_name) / "best_params.yaml"
        raise ConfigError(f"conf/ with the overrides of {source}{given}: {err}") from None


def apply_best(
    exp_name: str, params: str, extra_overrides: list[str] = (), force: bool = False
) -> list[str]:
    """Rewrite `params` as conf/ composed with the best overrides; returns them. A trial worse
    than the current model is refused (GateError) unless `force`."""
    best = best_trial(exp_name)
    if not force:
        check_improves(exp_name, best)
    overrides = [*extra_overrides, *best_overrides(exp_name, best)]
    text = _composed(exp_name, overrides, extra_overrides)
    with atomic_file(params) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return overrides
