"""Best trial -> params.yaml: compose conf/ with the sweep's overrides (or print the
`dvc exp run -S ...` line that does the same inside a DVC experiment)."""

from __future__ import annotations

import json
import shlex
import sys

import yaml

from pipeline.config import CONF_DIR, compose
from pipeline.errors import ConfigError
from pipeline.io import atomic_file
from pipeline.paths import tune_dir


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


def best_overrides(exp_name: str) -> list[str]:
    path = tune_dir(exp_name) / "best_params.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: not found; run `lstm-pipeline tune {exp_name}` first")
    best = yaml.safe_load(path.read_text())
    if note := best.get("note"):  # a PBT sweep: say so before anything is applied
        print(f"warning: {path}: {note}", file=sys.stderr)
    # ++: set the key even where conf/ leaves it to the default recipe (no model/fit there)
    return [f"++{key}={hydra_value(value)}" for key, value in best["overrides"].items()]


def dvc_exp_run_command(exp_name: str) -> str:
    return shlex.join(
        ["dvc", "exp", "run", *(a for o in best_overrides(exp_name) for a in ("-S", o))]
    )


def apply_best(exp_name: str, params: str, extra_overrides: list[str] = ()) -> list[str]:
    """Rewrite `params` as conf/ composed with the best overrides; returns them."""
    overrides = [*extra_overrides, *best_overrides(exp_name)]
    text = compose(overrides, CONF_DIR)
    with atomic_file(params) as tmp:
        tmp.write_text(text)
    return overrides
