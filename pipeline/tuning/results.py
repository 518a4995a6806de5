"""The sweep's files: results table (CSV + plot of val/loss per trial over epochs) and
best_params.yaml holding the Hydra overrides that reproduce the best trial."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import yaml
from ray.tune import Callback

from pipeline import plots
from pipeline.errors import TrainingError
from pipeline.io import atomic_file
from pipeline.paths import tune_dir
from pipeline.tuning.apply import native
from pipeline.tuning.trial import METRIC

PBT_NOTE = (
    "PBT changed this trial's hyperparameters while it trained (results.csv has each epoch's "
    "values): dvc repro trains these last values from scratch and does not replay that schedule"
)


def flatten(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class ResultLog(Callback):
    """Every result the driver receives, as a JSON line (trial, epoch, val/loss, the config it
    ran under). Ray's per-trial result.json loses rows when PBT restarts a trial and keeps only
    the config a trial ended with; this file survives --resume in the sweep's state folder."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.opened = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = {
            "trial_id": trial.trial_id,
            "epoch": result["training_iteration"],
            "val_loss": result[METRIC],
            "params": flatten(result["config"]),
        }
        with open(self.path, "a+") as f:
            if not self.opened and f.tell():  # a line a kill cut off stays a line of its own
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            self.opened = True
            f.write(json.dumps(row, default=native) + "\n")


def results_table(log: Path, numbers: dict[str, int]) -> pd.DataFrame:
    """One row per (trial, epoch): trial (its number in `numbers`, by trial id), epoch, val_loss
    and the params it ran under. A restored trial reports its epochs again: the last report wins."""
    rows, cut = [], []
    for number, line in enumerate(log.read_text().splitlines() if log.exists() else [], 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            cut.append(str(number))
    if cut:  # (it ended the sweep, exit 1, `unexpected JSONDecodeError`, at every --resume)
        print(f"warning: {log}: line {', '.join(cut)} is not a whole result (a write a kill cut "
              "off?); left out", file=sys.stderr)  # fmt: skip
    latest = {(r["trial_id"], r["epoch"]): r for r in rows}
    table = pd.DataFrame(
        [
            {"trial": numbers[r["trial_id"]], "epoch": r["epoch"], "val_loss": r["val_loss"]}
            | r["params"]
            for r in latest.values()
        ],
        columns=None if latest else ["trial", "epoch", "val_loss"],
    )
    return table.sort_values(["trial", "epoch"]).reset_index(drop=True)


def best_params(table: pd.DataFrame, exp_name: str, scheduler: str) -> dict:
    """The trial with the lowest val/loss at any epoch, as overrides of params.yaml (the params
    of that epoch). fit.max_epochs is the epochs the trial ran (ASHA may have stopped it early):
    the same computation, repeated."""
    finite = table["val_loss"].astype(float).map(math.isfinite)
    if not finite.any():
        raise TrainingError(
            "every trial diverged (val/loss NaN or inf at every epoch); lower the space's fit.lr "
            f"or set fit.gradient_clip_val; {tune_dir(exp_name)} unchanged"
        )
    i = table.loc[finite, "val_loss"].idxmin()
    row = table.loc[i]
    # Column by column: a row of mixed columns would turn every int into a float.
    params = {k: native(table.at[i, k]) for k in table.columns.drop(["trial", "epoch", "val_loss"])}
    params["fit.max_epochs"] = int(table.loc[table["trial"] == row["trial"], "epoch"].max())
    prefix = f"experiments.{exp_name}."
    best = {
        "experiment": exp_name,
        "trial": int(row["trial"]),
        "val_loss": float(row["val_loss"]),
        "epoch": int(row["epoch"]),
        "overrides": {prefix + k: v for k, v in sorted(params.items())},
    }
    return best | ({"reproducible": False, "note": PBT_NOTE} if scheduler == "pbt" else {})


def write_results(table: pd.DataFrame, best: dict, out: Path) -> None:
    """Into `out` (a fresh folder): results.csv, val_loss.{csv,png}, best_params.yaml."""
    lists_as_json = table.map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    with atomic_file(out / "results.csv") as tmp:
        lists_as_json.to_csv(tmp, index=False, float_format="%.9g")
    fig, ax = plots.figure(figsize=(6, 4))
    for trial, rows in table.groupby("trial"):
        ax.plot(rows["epoch"], rows["val_loss"], marker="o", label=f"trial {trial}")
    ax.set(xlabel="epoch", ylabel="val/loss", title="val/loss per trial")
    ax.legend(fontsize="small", ncol=2)
    plots.save_png(fig, out / "val_loss.png")
    with atomic_file(out / "best_params.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(best, sort_keys=False))
