"""Dynamic int8 quantization of an exported model with onnxruntime.quantization, and the
validate report on whether the int8 model is kept.

Which ops are quantized, measured with ONNX Runtime 1.31 on the 2-core CPU (batch 1):
- LSTM -> DynamicQuantizeLSTM and MatMul/Gemm -> MatMulInteger: ~20-25 % faster, 4x smaller.
- GRU stays float (ORT has no int8 GRU kernel); only the heads' MatMuls are quantized.
- Conv is never quantized: ConvInteger ran 2.7x (ALSTM-FCN) to 3x (ConvLSTM) slower than the
  float Conv, so a ConvLSTM has nothing worth quantizing (`validate.quantize: false`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

from pipeline.config import Experiment
from pipeline.evaluation import validate_failures
from pipeline.inference import feeds, run_onnx, session
from pipeline.io import write_json
from pipeline.tasks import task_of

QUANTIZED_OPS = ["MatMul", "Gemm", "LSTM"]
NOT_KEPT = "not_kept.json"  # why int8/ holds no model


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """Write the int8 (dynamic, weights QInt8) version of `src` to `dst`, metadata kept."""
    original = onnx.load(src)
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        # The exporter builds the LSTM weights with Slice/Concat at run time; the quantizer only
        # rewrites an LSTM whose W and R are initializers, so fold constants first (basic level:
        # standard ONNX ops only). The exporter's value_info also trips the quantizer's shape
        # inference (stale dims), so drop it; shapes are re-inferred.
        folded = Path(tmp) / "folded.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(folded)
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(folded)
        del model.graph.value_info[:]
        quantize_dynamic(
            model, dst, op_types_to_quantize=QUANTIZED_OPS, weight_type=QuantType.QInt8
        )
    quantized = onnx.load(dst)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)
    quantized.metadata_props.add(key="quantization", value='"dynamic int8"')
    onnx.save(quantized, dst)
    return Path(dst)


def median_latency_ms(
    sess: ort.InferenceSession, x: np.ndarray, extra: dict | None = None, runs: int = 50
) -> float:
    inputs = feeds(sess, x, extra)
    for _ in range(5):
        sess.run(None, inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def int8_report(
    exp: Experiment,
    folder: Path,
    keep: Path,
    report: dict,
    x,
    y,
    meta,
    fp32: ort.InferenceSession | None = None,
    extra: dict | None = None,
) -> tuple[dict, dict]:
    """Quantize `folder`/model.onnx, score it like the float model, and keep it as
    `keep`/model.onnx (the folder that becomes models/<exp>/int8) only when the task's headline
    metric drops by at most validate.int8_max_drop and the metric gates still pass. Returns
    (report entries, timings for MLflow only: never in metrics files)."""
    v, task = exp.validation, task_of(meta)
    if not v.quantize:
        write_json(keep / NOT_KEPT, {"reason": "validate.quantize is false"})
        return {"int8_kept": False}, {}
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
        path = quantize_int8(folder / "model.onnx", Path(tmp) / "model.onnx")
        fp32 = fp32 or session(folder / "model.onnx")
        sess8 = session(path, fp32.get_session_options().intra_op_num_threads or None)
        scores, _ = task.evaluate(run_onnx(sess8, x, extra)[0], x, y, meta)
        metric = task.headline
        drop = report[metric] - scores[metric]
        drop = drop if task.directions[metric] else -drop
        passes = not validate_failures({**scores, "parity_max_abs_diff": 0.0}, v, task)
        kept = drop <= v.int8_max_drop and passes
        if kept:
            shutil.copy(path, keep / "model.onnx")
        else:
            why = (
                f"{metric} drops by {drop:.4g}, more than validate.int8_max_drop"
                f" ({v.int8_max_drop})"
                if drop > v.int8_max_drop
                else "the int8 model fails validate's gates"
            )
            write_json(keep / NOT_KEPT, {"reason": why})
        sample = np.ascontiguousarray(x[:1])
        first = {k: v[:1] for k, v in (extra or {}).items()}
        fp32_ms = median_latency_ms(fp32, sample, first)
        int8_ms = median_latency_ms(sess8, sample, first)
    entries = {
        f"int8_{metric}": scores[metric],
        "int8_metric_drop": float(drop),
        "int8_max_drop": v.int8_max_drop,
        "int8_kept": kept,
    }
    timings = {"int8/latency_ms_batch1": int8_ms, "onnx/latency_ms_batch1": fp32_ms}
    print(f"int8: {metric} drop {drop:+.4g}, batch-1 latency {fp32_ms:.3f} -> {int8_ms:.3f} ms")
    return entries, timings
