"""Quality of the default classification recipe (pipeline/config/recipes.py) on the dev suite,
beside ROCKET and 1-NN DTW on the same splits and the papers' figures.

Dev sets: GunPoint, ItalyPowerDemand, BasicMotions (sktime's copies, official train/test split)
and three written here as long CSVs that keep that split (a `split` column): GunPoint-VL (each
series cut to its first L steps, L uniform in [T/2, T], seeded), GunPoint-1000 and
BasicMotions-1000 (each series linearly interpolated to 1,050 steps). Not in the default run:
GunPoint-AG, each series multiplied by a gain log-uniform in [0.2, 5] and shifted by an offset
N(0, 3²) (seeded): series recorded at different gains and offsets, for `model.series_norm`.
Outside the dev suite, for checks only (nothing is chosen on them): sktime's other shipped
classification sets (OUTSIDE), official splits.

Per set, in one temp working dir: the recipe unchanged as an N-member seed ensemble
(`fit: {ensemble: N}`, seeds 0..N-1) through prepare, train, export and validate (the val split
is carved from the official train split; nothing is selected on test). Reported: the ensemble's
test accuracy through ONNX Runtime (validate.json); each member's, exported alone from the
ensemble's checkpoint and run by ONNX Runtime on the same test split; each member's training wall
time (its nested MLflow run: the fit, then the test of the kept epoch; 1 torch thread).
Baselines fit on the official train split (the pipeline's train + val), raw, and score the same
test series: ROCKET (10,000 kernels) and 1-NN DTW (full window), 1 thread; their time is fit +
predict after a warm-up on a few series (numba compiles once per process).

Usage: python benchmarks/quality.py [--sets GunPoint ...] [--members 5] [--long-members 1]
       [--max-epochs K] [--model KEY=VALUE ...] [--fit KEY=VALUE ...] [--data KEY=VALUE ...]
Prints one JSON object and a Markdown table on stderr; the run of every default set with the
recipe as it is also writes the object to benchmarks/quality.json. --max-epochs caps every fit:
for smoke runs only. --model, --fit and --data override a key of the recipe's model or fit or of
every set's data (a comparison, never the default); none of these, and no --sets other than the
default list, writes quality.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import cli_env, machine, overrides
from sktime.classification.distance_based import KNeighborsTimeSeriesClassifier
from sktime.classification.kernel_based import RocketClassifier

from pipeline.checkpoint import Trained, load_trained
from pipeline.config import Tracking
from pipeline.config.recipes import RECIPES
from pipeline.data.prepared import Prepared
from pipeline.data.sources import Labelled, load_ucr
from pipeline.export.onnx_export import export_module
from pipeline.inference import run_onnx, session
from pipeline.paths import metrics_file, model_dir, prepared_dir

HERE = Path(__file__).resolve().parent
RECIPE = RECIPES["classification"]
LONG = ("GunPoint-1000", "BasicMotions-1000")
SETS = ("GunPoint", "ItalyPowerDemand", "BasicMotions", "GunPoint-VL", *LONG)
SHIFTED = "GunPoint-AG"
# sktime's other classification sets: a check of the recipe on data it was not chosen on
# (UnitTest: Chinatown's train split and 22 of its test cases, pedestrian counts, not z-normalised)
OUTSIDE = ("ArrowHead", "OSULeaf", "ACSF1", "JapaneseVowels", "PLAID", "UnitTest")
DERIVED = ("GunPoint-VL", SHIFTED, *LONG)  # written as long CSVs
LONG_STEPS, VL_SEED, AG_SEED = 1050, 0, 0
STAGES = ("prepare", "train", "export", "validate")
BASELINES = {
    "ROCKET": lambda: RocketClassifier(num_kernels=10000, random_state=0),
    "1-NN DTW": lambda: KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw"),
}
# Test accuracy on the official train/test split, as published (none found for BasicMotions).
PUBLISHED = {
    "GunPoint": {"LSTM-FCN": 1.0, "ALSTM-FCN": 1.0, "ROCKET": 1.0, "1-NN DTW": 0.907},
    "ItalyPowerDemand": {
        "LSTM-FCN": 0.9621,
        "ALSTM-FCN": 0.95918,
        "ROCKET": 0.96958,
        "1-NN DTW": 0.95,
    },
}
LSTM_FCN_TABLE = (
    "Karim et al. 2018, LSTM fully convolutional networks for time series classification, "
    "IEEE Access 6: the authors' revised table (checkpoint of least training loss), "
    "github.com/titu1994/LSTM-FCN Results/train_loss_old_datasets.csv"
)
PUBLISHED_SOURCES = {
    "LSTM-FCN": LSTM_FCN_TABLE,
    "ALSTM-FCN": LSTM_FCN_TABLE,
    "ROCKET": "Dempster et al. 2020, ROCKET, Data Min. Knowl. Disc. 34: mean of 10 runs, "
    "github.com/angus924/rocket results/results_ucr.csv",
    "1-NN DTW": "UCR archive, full-window DTW, as tabulated in " + LSTM_FCN_TABLE,
}


def stretch(series: np.ndarray, steps: int) -> np.ndarray:
    t = np.linspace(0, len(series) - 1, steps)
    return np.stack([np.interp(t, np.arange(len(series)), c) for c in series.T], axis=1)


def load(name: str) -> Labelled:
    """A dev set's raw series with the official train/test split."""
    data = load_ucr(name.split("-")[0])
    if name == "GunPoint-VL":
        rng = np.random.default_rng(VL_SEED)
        x = [s[: rng.integers(len(s) // 2, len(s) + 1)] for s in data.x]
        return replace(data, x=x, variable_length=True)
    if name in LONG:
        return replace(data, x=[stretch(s, LONG_STEPS) for s in data.x])
    if name == SHIFTED:
        rng = np.random.default_rng(AG_SEED)
        gains = np.exp(rng.uniform(np.log(0.2), np.log(5), len(data.x)))
        offsets = rng.normal(0, 3, len(data.x))
        return replace(data, x=[s * g + o for s, g, o in zip(data.x, gains, offsets, strict=True)])
    return data


def data_config(name: str, data: Labelled, work: Path) -> dict:
    """The experiment's `data`: sktime's set, or the derived set written as a long CSV."""
    if name not in DERIVED:
        return {"source": "ucr", "name": name}
    path = work / f"{name}.csv"
    pd.concat(
        pd.DataFrame(s, columns=data.features).assign(
            series_id=sid, time=np.arange(len(s)), label=label, split=split
        )
        for s, sid, label, split in zip(data.x, data.ids, data.y, data.split, strict=True)
    ).to_csv(path, index=False)
    cfg = {
        "source": "csv",
        "path": str(path),
        "task": "classification",
        "features": data.features,
        "label": "label",
    }
    # Equal lengths: a window of the whole series (no lengths input, no masking).
    return cfg if data.variable_length else {**cfg, "window": len(data.x[0])}


def run_stages(exp: str, work: Path, env: dict, stages: tuple[str, ...] = STAGES) -> dict:
    seconds = {}
    for stage in stages:
        start = time.perf_counter()
        proc = subprocess.run(
            ["lstm-pipeline", stage, exp], cwd=work, env=env, capture_output=True, text=True
        )
        if proc.returncode:
            sys.exit(f"lstm-pipeline {stage} {exp} failed:\n{proc.stderr[-3000:]}")
        seconds[stage] = round(time.perf_counter() - start, 1)
        print(f"{exp}: {stage} {seconds[stage]} s", file=sys.stderr)
    return seconds


def member_accuracies(exp: str, work: Path) -> list[float]:
    """Each member exported alone to ONNX and run by ONNX Runtime on the test split."""
    trained = load_trained(work / model_dir(exp) / "model.ckpt")
    prepared = Prepared.load(work / prepared_dir(exp))
    x, y = prepared.arrays("test")
    x, extra = np.ascontiguousarray(x, np.float32), prepared.extra_inputs("test")
    accuracies = []
    for i, member in enumerate(getattr(trained.model, "members", [trained.model])):
        path = work / f"{exp}-member{i}.onnx"
        export_module(Trained(member, trained.meta), path, RECIPE["model"]["name"])
        out = run_onnx(session(path), x, extra)[0]
        accuracies.append(float((out.argmax(axis=1) == y).mean()))
    return accuracies


def member_seconds(exp: str, uri: str) -> list[float]:
    """Wall time of each member's MLflow run (the experiment's run when there is one member)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(Tracking().experiment_name)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.exp = '{exp}' AND tags.stage = 'train'"
    )
    members = sorted(
        [r for r in runs if "member" in r.data.tags] or runs,
        key=lambda r: int(r.data.tags.get("member", 0)),
    )
    return [round((r.info.end_time - r.info.start_time) / 1000, 1) for r in members]


def numpy3d(xs: list[np.ndarray]) -> np.ndarray:
    """[n, channels, time], zero-padded at the end to the longest series."""
    out = np.zeros((len(xs), xs[0].shape[1], max(len(s) for s in xs)))
    for i, s in enumerate(xs):
        out[i, :, : len(s)] = s.T
    return out


def multiindex(xs: list[np.ndarray], features: list[str]) -> pd.DataFrame:
    return pd.concat(
        pd.DataFrame(s, columns=features, index=pd.MultiIndex.from_product([[i], range(len(s))]))
        for i, s in enumerate(xs)
    )


def baseline(make, data: Labelled) -> dict:
    """Fit on the official train split, score the test split; unequal lengths are passed as they
    are where the estimator takes them, else zero-padded."""
    unequal = len({len(s) for s in data.x}) > 1
    native = unequal and make().get_tag("capability:unequal_length")
    padded = numpy3d(data.x)

    def panel(rows):
        return multiindex([data.x[i] for i in rows], data.features) if native else padded[rows]

    y = data.y
    train, test = np.flatnonzero(data.split != "test"), np.flatnonzero(data.split == "test")
    few = np.concatenate([train[y[train] == c][:2] for c in np.unique(y[train])])
    make().fit(panel(few), y[few]).predict(panel(few))
    start = time.perf_counter()
    pred = make().fit(panel(train), y[train]).predict(panel(test))
    result = {
        "accuracy": float((pred == y[test]).mean()),
        "fit_predict_s": round(time.perf_counter() - start, 2),
    }
    if unequal:
        result["input"] = (
            "unequal lengths as they are"
            if native
            else f"zero-padded at the end to {padded.shape[2]} steps (the estimator does not "
            "take unequal lengths)"
        )
    return result


def measure(name: str, data: Labelled, members: int, work: Path, env: dict) -> dict:
    exp = name.lower().replace("-", "_")
    stage_s = run_stages(exp, work, env)
    validate = json.loads((work / metrics_file(exp, "validate")).read_text())
    accuracies = member_accuracies(exp, work)
    seconds = member_seconds(exp, env["MLFLOW_TRACKING_URI"])
    lengths = [len(s) for s in data.x]
    return {
        "series": {
            "train": int((data.split != "test").sum()),
            "test": int((data.split == "test").sum()),
            "channels": len(data.features),
            "length": [min(lengths), max(lengths)],
        },
        "members": members,
        "ensemble_accuracy": validate["accuracy"],
        "member_accuracy": accuracies,
        "member_accuracy_mean": round(statistics.mean(accuracies), 4),
        "member_accuracy_sd": round(statistics.stdev(accuracies), 4) if members > 1 else None,
        "member_train_s": seconds,
        "member_train_s_mean": round(statistics.mean(seconds), 1),
        "member_train_s_max": max(seconds),
        "stage_s": stage_s,
        "baselines": {b: baseline(make, data) for b, make in BASELINES.items()},
        "published": PUBLISHED.get(name, {}),
    }


def table(sets: dict) -> str:
    lines = [
        "| set | default recipe, mean ± sd over seeds | seed ensemble | ROCKET | 1-NN DTW "
        "| published | member train time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in sets.items():
        sd = "" if r["member_accuracy_sd"] is None else f" ± {r['member_accuracy_sd']:.3f}"
        published = ", ".join(f"{k} {v:.3f}" for k, v in r["published"].items()) or "none found"
        rocket, dtw = (r["baselines"][b]["accuracy"] for b in BASELINES)
        lines.append(
            f"| {name} | {r['member_accuracy_mean']:.3f}{sd} ({r['members']} seeds) "
            f"| {r['ensemble_accuracy']:.3f} ({r['members']} members) | {rocket:.3f} "
            f"| {dtw:.3f} | {published} | mean {r['member_train_s_mean']:.0f} s, "
            f"max {r['member_train_s_max']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=(*SETS, SHIFTED, *OUTSIDE))
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--long-members", type=int, default=1, help="members for the 1,000-step sets")
    p.add_argument("--max-epochs", type=int, help="cap every fit (smoke runs only)")
    p.add_argument("--model", nargs="*", default=[], help="KEY=VALUE over the recipe's model")
    p.add_argument("--fit", nargs="*", default=[], help="KEY=VALUE over the recipe's fit")
    p.add_argument("--data", nargs="*", default=[], help="KEY=VALUE over every set's data")
    args = p.parse_args()
    fit, model, data_keys = overrides(args.fit), overrides(args.model), overrides(args.data)
    members = {n: args.long_members if n in LONG else args.members for n in args.sets}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        work, env = Path(tmp), cli_env(tmp)
        data = {name: load(name) for name in args.sets}
        trainer = {"progress_bar": False}
        if args.max_epochs:
            trainer["max_epochs"] = args.max_epochs
        experiments = {
            name.lower().replace("-", "_"): {
                "data": {**data_config(name, d, work), **data_keys},
                **({"model": model} if model else {}),
                "fit": {**fit, "ensemble": members[name]},
                "validate": {"quantize": False},
            }
            for name, d in data.items()
        }
        params = {"seed": 0, "trainer": trainer, "experiments": experiments}
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sets = {name: measure(name, d, members[name], work, env) for name, d in data.items()}
    result = {
        "benchmark": "quality",
        "machine": machine(),
        "command": " ".join(["python benchmarks/quality.py", *sys.argv[1:]]),
        "recipe": RECIPE,
        "max_epochs": args.max_epochs,
        "model_override": model,
        "fit_override": fit,
        "data_override": data_keys,
        "published_sources": PUBLISHED_SOURCES,
        "sets": sets,
    }
    # a comparison, a smoke run or a subset of the sets is not the benchmark
    if not (fit or model or data_keys or args.max_epochs) and args.sets == list(SETS):
        (HERE / "quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(sets), file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
