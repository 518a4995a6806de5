"""Inference latency: ONNX Runtime vs torch eager for each model family, plus int8 and streaming.

Each family is built with random weights (latency does not depend on them), exported exactly as
the export stage does, and timed at batch 1 and 64 and two sequence lengths: the median of at
least 20 calls after 3 warm-up calls (other processes share the cores).

Settings, chosen deliberately and the same for both sides:
- torch: eval mode, `torch.inference_mode()`, 1 intra-op thread on CPU (the pipeline's default).
- ONNX Runtime: CPUExecutionProvider, intra_op_num_threads=1, inter_op_num_threads=1,
  ORT_SEQUENTIAL, graph_optimization_level=ORT_ENABLE_ALL (constant folding plus fusions).
- int8: the validate stage's dynamic quantization (pipeline/export/quantize.py).
- streaming: the step model (one step + state), batch 1, vs the torch step module.
On a CUDA machine torch runs on the GPU and ONNX Runtime stays on the CPU (the project installs
the CPU `onnxruntime` wheel), so the ratio there compares deployment targets, not kernels.

Usage: python benchmarks/inference.py   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import device, machine, median_seconds

from pipeline.export.onnx_export import export_module, export_step
from pipeline.export.quantize import quantize_int8
from pipeline.export.streaming import StepModel
from pipeline.training.module import SequenceModule

FORECAST = {
    "task": "forecast",
    "horizon": 12,
    "targets": ["y"],
    "target_index": [0],
    "scaler": {"mean": [0.0], "std": [1.0]},
}
FAMILIES = {
    # the default experiments' shapes: airline-like LSTM, ItalyPowerDemand-like GRU, ...
    "lstm": ({"name": "lstm", "cell": "lstm", "hidden_size": 64, "num_layers": 1}, FORECAST),
    "gru": (
        {"name": "lstm", "cell": "gru", "hidden_size": 32, "num_layers": 2},
        {"task": "classification", "labels": ["1", "2"]},
    ),
    "attention_lstm": (
        {"name": "attention_lstm", "cell": "lstm", "hidden_size": 64, "attention_size": 32},
        FORECAST,
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
        {"task": "frames", "horizon": 8},
    ),
}
SEQ_LENGTHS = {"conv_lstm": (8, 16)}  # frames; the others: 36 and 144 steps
BATCHES = (1, 64)


def ort_session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build(name: str) -> SequenceModule:
    cfg, meta = FAMILIES[name]
    shape = [8, 1, 16, 16] if name == "conv_lstm" else [36, 1]
    torch.manual_seed(0)
    return SequenceModule(cfg, {**meta, "input_shape": shape}).eval()


def ms(seconds: float) -> float:
    return round(seconds * 1e3, 4)


def bench_family(name: str, tmp: Path) -> dict:
    module = build(name)
    fp32 = export_module(module, tmp / f"{name}.onnx", name)
    sessions = {"onnxruntime": ort_session(fp32)}
    if name != "conv_lstm":  # Conv is not quantized: see pipeline/export/quantize.py
        sessions["onnxruntime_int8"] = ort_session(quantize_int8(fp32, tmp / f"{name}.int8.onnx"))
    dev = device()
    model = module.model.to(dev)
    rows = []
    for seq in SEQ_LENGTHS.get(name, (36, 144)):
        for batch in BATCHES:
            shape = (batch, seq, *module.meta.input_shape[1:])
            x = np.random.default_rng(0).random(shape, dtype=np.float32)
            xt = torch.from_numpy(x).to(dev)
            runs = {"min_runs": 7} if name == "conv_lstm" and batch > 1 else {}  # ~0.5 s a call
            with torch.inference_mode():
                row = {
                    "batch": batch,
                    "seq": seq,
                    "torch_ms": ms(median_seconds(lambda xt=xt: model(xt), **runs)),
                }
            for key, sess in sessions.items():
                row[f"{key}_ms"] = ms(
                    median_seconds(lambda s=sess, x=x: s.run(None, {"x": x}), **runs)
                )
            row["ort_to_torch"] = round(row["onnxruntime_ms"] / row["torch_ms"], 3)
            rows.append(row)
    result = {"latency": rows}
    module.model.cpu()  # the step model is exported and timed on the CPU, as ORT runs it
    if module.model.streaming_unsupported() is None:
        result["streaming"] = bench_step(module, tmp, name)
    return result


def bench_step(module: SequenceModule, tmp: Path, name: str) -> dict:
    """Per-step latency of the streaming model at batch 1 (state carried in and out)."""
    sess = ort_session(export_step(module, tmp / f"{name}_step.onnx", name))
    state = {k: v.numpy() for k, v in module.model.initial_state(1).items()}
    x = np.zeros((1, *module.meta.input_shape[1:]), np.float32)
    feed = {"x": x, **state}
    step = StepModel(module.model, torch.from_numpy(x)).eval()
    args = (torch.from_numpy(x), *(torch.from_numpy(v) for v in state.values()))
    with torch.inference_mode():
        torch_s = median_seconds(lambda: step(*args), min_runs=200)
    ort_s = median_seconds(lambda: sess.run(None, feed), min_runs=200)
    return {"batch": 1, "torch_step_ms": ms(torch_s), "onnxruntime_step_ms": ms(ort_s)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--families", nargs="*", default=list(FAMILIES))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    ort.set_default_logger_severity(3)
    result = {"benchmark": "inference", "machine": machine(), "torch_device": device().type}
    result["settings"] = (
        "torch: eval, inference_mode, 1 intra-op thread; ORT: CPUExecutionProvider, "
        "intra_op=1, inter_op=1, ORT_SEQUENTIAL, ORT_ENABLE_ALL; median of >= 20 calls"
    )
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for name in args.families:
            result[name] = bench_family(name, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
