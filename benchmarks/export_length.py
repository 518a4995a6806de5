"""Export time against sequence length: the export stage's work (model + step model) for each
family of the default experiments, at data lengths up to 1,000 steps.

Each (family, length) runs in a fresh process, as the stage does: the figure is the process's
wall time (imports, building the model, both exports) and the export calls alone. The symbolic
length is then proven as validate proves it: ONNX Runtime against torch at the data's length.

Usage: python benchmarks/export_length.py [--lengths 24 250 1000]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = {  # the model configs of the default experiments (params.yaml), on this data shape
    "lstm (gru, 2 layers)": (
        {"name": "lstm", "cell": "gru", "hidden_size": 32, "num_layers": 2},
        {"task": "classification", "input_shape": [0, 1], "labels": ["a", "b"]},
    ),
    "lstm (peephole)": (
        {"name": "lstm", "cell": "peephole", "hidden_size": 32},
        {"task": "classification", "input_shape": [0, 1], "labels": ["a", "b"]},
    ),
    "attention_lstm (gru + fcn)": (
        {
            "name": "attention_lstm",
            "cell": "gru",
            "hidden_size": 64,
            "fcn_channels": [128, 256, 128],
        },
        {"task": "classification", "input_shape": [0, 1], "labels": ["a", "b"]},
    ),
    "conv_lstm": (
        {
            "name": "conv_lstm",
            "hidden_channels": 32,
            "num_layers": 2,
            "kernel_size": 3,
            "motion_filter": 5,
            "frame_differences": True,
            "patch_size": 4,
        },
        {"task": "frames", "input_shape": [0, 1, 16, 16], "horizon": 8},
    ),
}


def one(family: str, length: int) -> dict:
    start = time.perf_counter()
    import numpy as np
    import torch

    from pipeline.checkpoint import Trained, model_for
    from pipeline.export.onnx_export import export_module, export_step
    from pipeline.export.parity import run_torch
    from pipeline.inference import run_onnx, session
    from pipeline.meta import DataMeta

    torch.set_num_threads(1)
    cfg, meta = FAMILIES[family]
    meta = DataMeta.model_validate({**meta, "input_shape": [length, *meta["input_shape"][1:]]})
    trained = Trained(model_for(cfg, meta).eval(), meta)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_module(trained, Path(tmp) / "model.onnx", cfg["name"])
        full_s = time.perf_counter() - t
        t = time.perf_counter()
        streams = trained.model.streaming_unsupported() is None
        if streams:
            export_step(trained, Path(tmp) / "model_step.onnx", cfg["name"])
        step_s = time.perf_counter() - t
        process_s = time.perf_counter() - start
        x = np.random.default_rng(0).standard_normal((2, *meta.input_shape), dtype=np.float32)
        got = run_onnx(session(Path(tmp) / "model.onnx"), x)
        diff = max(
            float(np.abs(g - e).max())
            for g, e in zip(got, run_torch(trained.model, x), strict=True)
        )
    return {
        "family": family,
        "length": length,
        "stage_s": round(process_s, 2),
        "export_s": round(full_s, 2),
        "step_export_s": round(step_s, 2) if streams else None,
        "parity_max_abs_diff_at_length": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[24, 250, 1000])
    p.add_argument("--one", nargs=2, metavar=("FAMILY", "LENGTH"))
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]))))
        return
    from common import machine

    rows = []
    for family in FAMILIES:
        for length in args.lengths:
            cmd = [sys.executable, __file__, "--one", family, str(length)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    print(json.dumps({"benchmark": "export_length", "machine": machine(), "rows": rows}))


if __name__ == "__main__":
    main()
