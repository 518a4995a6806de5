"""The forecasting recipe's `season_norm: auto` on several series (issue 13): each set trained
with season_norm on (its season) and off (0), a seed ensemble each, beside the `season_share`
prepare measures and what `auto` makes of it. Checks of the rule (Bandara, Bergmeir and
Hewamalage 2021: take the season out of series from disparate sources, leave it to one model
over series that share it), not a choice: nothing is tuned on these sets.

Sets, written as long CSVs with dates: `stores`, 4 daily stores 30-fold apart in size, one
weekly pattern, promotions on random days (a future covariate) and the size as a static one;
`meters`, 60 hourly meters, one daily cycle each peaking at its own hour, scales 4-fold apart;
`moved`, airline beside a copy whose seasonal profile is moved by 6 months; `copy`, airline
beside a 3-times-larger copy with 3 % noise of its own.

Usage: python benchmarks/season_share.py [--sets stores meters moved copy] [--members 3]
Reports each run's members' test MAPE from train.json (mean and sd over the seeds). Prints one
JSON object (written to benchmarks/season_share.json when every set ran) and a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import cli_env, machine
from quality import run_stages

from pipeline.data.prepared import Prepared
from pipeline.paths import metrics_file, prepared_dir

HERE = Path(__file__).resolve().parent


def stores(rng) -> tuple[pd.DataFrame, dict]:
    days = pd.date_range("2024-01-01", periods=200, freq="D")
    week = np.array([1.0, 0.9, 0.95, 1.0, 1.15, 1.45, 1.3])
    frames = []
    for i, size in enumerate((1, 3, 10, 30)):
        promo = (rng.random(len(days)) < 0.14).astype(int)
        trend = 1 + 0.002 * np.arange(len(days))
        noise = np.exp(rng.normal(0, 0.08, len(days)))
        sales = 60 * size * trend * week[days.dayofweek] * (1 + 0.4 * promo) * noise
        frames.append(pd.DataFrame({"id": f"st{i}", "time": days, "y": sales, "promo": promo,
                                    "size": size}))  # fmt: skip
    keys = {"future": ["promo"], "static": ["size"], "calendar": ["day_of_week"], "window": 28,
            "horizon": 7, "val_size": 21, "test_size": 21, "freq": "D"}  # fmt: skip
    return pd.concat(frames), keys


def meters(rng) -> tuple[pd.DataFrame, dict]:
    hours = pd.date_range("2022-01-01", periods=2000, freq="h")
    t, frames = np.arange(len(hours)), []
    for i in range(60):
        scale, peak = rng.uniform(10, 40), rng.uniform(0, 24)
        cycle = 1 + 0.3 * np.cos(2 * np.pi * (t - peak) / 24)
        load = scale * cycle + rng.normal(0, 0.05 * scale, len(t))
        frames.append(pd.DataFrame({"id": f"m{i}", "time": hours, "y": load}))
    keys = {"window": 48, "horizon": 24, "val_size": 96, "test_size": 96, "freq": "h"}
    return pd.concat(frames), keys


def _airline_pair(other) -> tuple[pd.DataFrame, dict]:
    from sktime.datasets import load_airline

    y = load_airline()
    months, a = y.index.to_timestamp(), y.to_numpy()
    frame = pd.concat([pd.DataFrame({"id": "a", "time": months, "y": a}),
                       pd.DataFrame({"id": "b", "time": months, "y": other(a)})])  # fmt: skip
    keys = {"window": 36, "horizon": 12, "val_size": 24, "test_size": 12, "transform": "log"}
    return frame, keys


def moved(rng) -> tuple[pd.DataFrame, dict]:
    from statsmodels.tsa.seasonal import seasonal_decompose

    def shift(a):
        log = np.log(a)
        profile, t = seasonal_decompose(log, period=12).seasonal[:12], np.arange(len(a))
        return np.exp(log - profile[t % 12] + profile[(t + 6) % 12])

    return _airline_pair(shift)


def copy(rng) -> tuple[pd.DataFrame, dict]:
    return _airline_pair(lambda a: 3 * a * np.exp(rng.normal(0, 0.03, len(a))))


SETS = {"stores": stores, "meters": meters, "moved": moved, "copy": copy}


def run(exp: str, work: Path, env: dict) -> dict:
    run_stages(exp, work, env, ("prepare", "train"))
    train = json.loads((work / metrics_file(exp, "train")).read_text())
    if "members/test/mape_mean" not in train:  # --members 1: one model, no spread
        return {"mape_mean": train["test/mape"], "mape_sd": 0.0}
    return {"mape_mean": train["members/test/mape_mean"], "mape_sd": train["members/test/mape_sd"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--members", type=int, default=3)
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-season-") as tmp:
        work, env = Path(tmp), cli_env(tmp)
        experiments = {}
        for name in args.sets:
            frame, keys = SETS[name](np.random.default_rng(0))
            frame.to_csv(work / f"{name}.csv", index=False)
            data = {"source": "csv", "path": f"{name}.csv", "task": "forecast", "id_column": "id",
                    "time_column": "time", "features": ["y"], **keys}  # fmt: skip
            for mode in ("auto", "on", "off"):
                experiments[f"{name}_{mode}"] = {"data": data, "fit": {"ensemble": args.members}}
        params = {"seed": 0, "trainer": {"progress_bar": False}, "experiments": experiments}
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for name in args.sets:
            run_stages(f"{name}_auto", work, env, ("prepare",))
            meta = Prepared.load(work / prepared_dir(f"{name}_auto")).meta
            rows[name] = {"season": meta.season, "season_share": meta.season_share,
                          "auto": meta.auto_season_norm()}  # fmt: skip
            for mode, norm in (("on", meta.season), ("off", 0)):
                experiments[f"{name}_{mode}"]["model"] = {"season_norm": norm}
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        for name in args.sets:
            for mode in ("on", "off"):
                rows[name][mode] = run(f"{name}_{mode}", work, env)
    result = {
        "benchmark": "season_share",
        "machine": machine(),
        "command": " ".join(["python benchmarks/season_share.py", *sys.argv[1:]]),
        "members": args.members,
        "sets": rows,
    }
    text = json.dumps(result, indent=2)
    if args.sets == list(SETS):
        (HERE / "season_share.json").write_text(text + "\n")
    print(text)
    print(table(rows), file=sys.stderr)


def table(rows: dict) -> str:
    lines = ["| set | season | season_share | on: MAPE, mean ± sd | off | auto chooses |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, r in rows.items():
        on, off = (f"{r[m]['mape_mean']:.2%} ± {r[m]['mape_sd']:.2%}" for m in ("on", "off"))
        choice = "on" if r["auto"] else "off"
        lines.append(f"| {name} | {r['season']} | {r['season_share']} | {on} | {off} | {choice} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
