"""Quality of the next-frame recipe (`conv_lstm_moving_digits`, as params.yaml composes it) over
seeds: per seed, in one temp working dir, prepare, train, export and validate, and the ORT test
MSE and SSIM (mean over the predicted frames, and per step) beside copy-last-frame's.

Usage: python benchmarks/quality_frames.py [--seeds 5] [--fit KEY=VALUE ...] [--model KEY=VALUE ...]
                                          [--data KEY=VALUE ...] [--temperatures T ...]
--fit, --model and --data override a key of the experiment's (a comparison). --temperatures
also scores each seed's kept checkpoint (in torch) with the motion filter's temperature set to
each T, on the validation and test splits: the fit does not depend on it (the train stage sets
it after selection). Prints one JSON object (written to benchmarks/quality_frames.json unless
an override or --temperatures is given) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from common import cli_env, machine, overrides
from quality import run_stages

from pipeline.checkpoint import load_trained
from pipeline.data.prepared import Prepared
from pipeline.export.parity import run_torch
from pipeline.paths import metrics_file, model_dir, prepared_dir
from pipeline.tasks.frames import frame_scores

HERE = Path(__file__).resolve().parent
EXP = "conv_lstm_moving_digits"
KEYS = ("mse", "ssim", "mse_ratio_to_baseline", "ssim_per_step")


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
    }


def by_temperature(work: Path, temperatures: list[float]) -> dict:
    """{split: {T: {mse, ssim}}} of the kept checkpoint with the filter's temperature set to T."""
    model = load_trained(work / model_dir(EXP) / "model.ckpt").model
    prepared = Prepared.load(work / prepared_dir(EXP))
    scores = {}
    for split in ("val", "test"):
        x, y = prepared.arrays(split)
        scores[split] = {}
        for t in temperatures:
            model.temperature.fill_(t)
            out = run_torch(model, np.asarray(x, np.float32))[0]
            report = frame_scores(out, np.asarray(y, np.float32))
            scores[split][str(t)] = {k: report[k] for k in ("mse", "ssim")}
    return scores


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fit", nargs="*", default=[], help="KEY=VALUE over the experiment's fit")
    p.add_argument("--model", nargs="*", default=[], help="KEY=VALUE over its model")
    p.add_argument("--data", nargs="*", default=[], help="KEY=VALUE over its data")
    p.add_argument("--temperatures", nargs="*", type=float, default=[])
    args = p.parse_args()
    fit, model, data = overrides(args.fit), overrides(args.model), overrides(args.data)
    raw = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    exp = raw["experiments"][EXP]
    exp["fit"].update(fit)
    exp["model"].update(model)
    exp["data"].update(data)
    if args.temperatures and not exp["model"].get("motion_filter"):
        p.error(
            "--temperatures sets the motion filter's temperature: the model has no motion_filter"
        )
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        work, env = Path(tmp), cli_env(tmp)
        for seed in range(args.seeds):
            params = {"seed": seed, "trainer": {"progress_bar": False}, "experiments": {EXP: exp}}
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            seconds = run_stages(EXP, work, env)
            report = json.loads((work / metrics_file(EXP, "validate")).read_text())
            runs.append({"seed": seed, **{k: report[k] for k in KEYS}, "stage_s": seconds})
            if args.temperatures:
                runs[-1]["by_temperature"] = by_temperature(work, args.temperatures)
    baseline = {k: report[f"baseline_{k}"] for k in ("mse", "ssim", "ssim_per_step")}
    result = {
        "benchmark": "quality_frames",
        "machine": machine(),
        "command": " ".join(["python benchmarks/quality_frames.py", *sys.argv[1:]]),
        "fit": exp["fit"],
        "model": exp["model"],
        "data": exp["data"],
        **{k: spread([r[k] for r in runs]) for k in ("mse", "ssim", "mse_ratio_to_baseline")},
        "copy_last_frame": baseline,
        "runs": runs,
    }
    if args.temperatures:
        result["by_temperature"] = {
            split: {
                str(t): {
                    k: statistics.mean(r["by_temperature"][split][str(t)][k] for r in runs)
                    for k in ("mse", "ssim")
                }
                for t in args.temperatures
            }
            for split in ("val", "test")
        }
    text = json.dumps(result, indent=2)
    if not (fit or model or data or args.temperatures):
        (HERE / "quality_frames.json").write_text(text + "\n")
    print(text)
    print(
        f"SSIM {result['ssim']['mean']:.3f} ± {result['ssim']['sd'] or 0:.3f} "
        f"(copy-last {baseline['ssim']:.3f}), MSE {result['mse']['mean']:.4f} ± "
        f"{result['mse']['sd'] or 0:.4f} (copy-last {baseline['mse']:.4f}), {args.seeds} seeds",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
