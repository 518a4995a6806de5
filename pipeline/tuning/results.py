"""The sweep's files: results table (CSV + plot of val/loss per trial over epochs) and
best_params.yaml holding the Hydra overrides that reproduce the best trial."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from pipeline import plots
from pipeline.io import atomic_file
from pipeline.tuning.trial import METRIC


def flatten(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def results_table(grid, numbers: dict[str, int]) -> tuple[pd.DataFrame, dict[int, dict]]:
    """One row per (trial, epoch) reported: trial (its number in `numbers`, by trial id), epoch,
    val_loss, the trial's params; and each trial's params as sampled."""
    frames, configs = [], {}
    for result in grid:
        df = result.metrics_dataframe
        if df is None or METRIC not in df:
            continue
        # Each row's own trial id: after a PBT exploit a trial's file also holds rows reported
        # under the trial it was cloned from.
        trial = numbers[result.metrics["trial_id"]]
        params = configs[trial] = flatten(result.config)
        frame = pd.DataFrame(
            {
                "trial": df["trial_id"].map(numbers),
                "epoch": df["training_iteration"],
                "val_loss": df[METRIC],
            }
        )
        for key, value in params.items():
            frame[key] = json.dumps(value) if isinstance(value, list) else value
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["trial", "epoch", "val_loss"]), configs
    return pd.concat(frames).sort_values(["trial", "epoch"]).reset_index(drop=True), configs


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


def best_params(table: pd.DataFrame, configs: dict[int, dict], exp_name: str) -> dict:
    """The trial with the lowest val/loss at any epoch, as overrides of params.yaml. fit.max_epochs
    is the epochs it ran (ASHA may have stopped it early): the same computation, repeated."""
    row = table.loc[table["val_loss"].idxmin()]
    trial = table[table["trial"] == row["trial"]]
    params = dict(configs[int(row["trial"])])
    params["fit.max_epochs"] = int(trial["epoch"].max())
    prefix = f"experiments.{exp_name}."
    return {
        "experiment": exp_name,
        "trial": int(row["trial"]),
        "val_loss": float(row["val_loss"]),
        "epoch": int(row["epoch"]),
        "overrides": {prefix + k: native(v) for k, v in sorted(params.items())},
    }


def write_results(table: pd.DataFrame, best: dict, out: Path) -> None:
    """Into `out` (a fresh folder): results.csv, val_loss.{csv,png}, best_params.yaml."""
    with atomic_file(out / "results.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.9g")
    fig, ax = plots._figure(figsize=(6, 4))
    for trial, rows in table.groupby("trial"):
        ax.plot(rows["epoch"], rows["val_loss"], marker="o", label=f"trial {trial}")
    ax.set(xlabel="epoch", ylabel="val/loss", title="val/loss per trial")
    ax.legend(fontsize="small", ncol=2)
    plots._png(fig, out / "val_loss.png")
    with atomic_file(out / "best_params.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(best, sort_keys=False))
