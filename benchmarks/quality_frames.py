"""Quality of the next-frame recipe (`conv_lstm_moving_digits`, as params.yaml composes it) over
seeds: per seed, in one temp working dir, prepare, train, export and validate, and the ORT test
MSE and SSIM (mean over the predicted frames, and per step) beside copy-last-frame's.

Usage: python benchmarks/quality_frames.py [--seeds 5] [--fit KEY=VALUE ...] [--model KEY=VALUE ...]
--fit and --model override a key of the experiment's (a comparison). Prints one JSON object
(written to benchmarks/quality_frames.json unless an override is given) and a summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from common import cli_env, machine, overrides
from quality import run_stages

from pipeline.paths import metrics_file

HERE = Path(__file__).resolve().parent
EXP = "conv_lstm_moving_digits"
KEYS = ("mse", "ssim", "mse_ratio_to_baseline", "ssim_per_step")


def spread(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--fit", nargs="*", default=[], help="KEY=VALUE over the experiment's fit")
    p.add_argument("--model", nargs="*", default=[], help="KEY=VALUE over its model")
    args = p.parse_args()
    fit, model = overrides(args.fit), overrides(args.model)
    raw = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    exp = raw["experiments"][EXP]
    exp["fit"].update(fit)
    exp["model"].update(model)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as tmp:
        work, env = Path(tmp), cli_env(tmp)
        for seed in range(args.seeds):
            params = {"seed": seed, "trainer": {"progress_bar": False}, "experiments": {EXP: exp}}
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            seconds = run_stages(EXP, work, env)
            report = json.loads((work / metrics_file(EXP, "validate")).read_text())
            runs.append({"seed": seed, **{k: report[k] for k in KEYS}, "stage_s": seconds})
    baseline = {k: report[f"baseline_{k}"] for k in ("mse", "ssim", "ssim_per_step")}
    result = {
        "benchmark": "quality_frames",
        "machine": machine(),
        "command": " ".join(["python benchmarks/quality_frames.py", *sys.argv[1:]]),
        "fit": exp["fit"],
        "model": exp["model"],
        **{k: spread([r[k] for r in runs]) for k in ("mse", "ssim", "mse_ratio_to_baseline")},
        "copy_last_frame": baseline,
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    if not (fit or model):
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
