"""validate stage: ONNX Runtime vs the PyTorch checkpoint, and test metrics through ONNX Runtime.

Writes metrics/<exp>/validate.json (flat, deterministic) and plots/<exp>/validate/, then raises
GateError if parity or a configured threshold fails, so the stage exits non-zero after reporting.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pipeline import plots
from pipeline.config import Experiment, PipelineConfig
from pipeline.data.datamodule import Prepared
from pipeline.data.prepare import prepared_dir
from pipeline.errors import ConfigError, GateError, PipelineError
from pipeline.export.onnx_export import load_module
from pipeline.export.quantize import quantize_int8
from pipeline.export.streaming import initial_state
from pipeline.inference import run_onnx, session, to_original
from pipeline.io import atomic_dir, read_json, write_json
from pipeline.tracking import log_to_training_run
from pipeline.training.train import model_dir


def run_torch(module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module.model(torch.from_numpy(x))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def parity_inputs(x: np.ndarray, batch: int, seq: int) -> np.ndarray:
    """Real test inputs resized to [batch, seq]: repeated samples, then truncated or tiled steps."""
    rows = x[np.arange(batch) % len(x)]
    reps = -(-seq // rows.shape[1])
    return np.ascontiguousarray(np.concatenate([rows] * reps, axis=1)[:, -seq:])


def parity(sess, module, x: np.ndarray, batch_sizes: list[int]) -> tuple[float, list[list[int]]]:
    seq = x.shape[1]
    lengths = sorted({max(seq // 2, 1), seq, 2 * seq})
    worst, shapes = 0.0, []
    for b in batch_sizes:
        for t in lengths:
            xb = parity_inputs(x, b, t)
            for got, expected in zip(run_onnx(sess, xb), run_torch(module, xb), strict=True):
                worst = max(worst, float(np.abs(got - expected).max()))
            shapes.append([b, t])
    return worst, shapes


def streaming_report(folder: Path, module, x: np.ndarray) -> dict:
    """Feed test sequences step by step through the step model; compare with the full model
    (prediction, and attention weights rebuilt from the step scores) at half and full length."""
    path, unsupported = folder / "model_step.onnx", folder / "unsupported.json"
    if not path.exists() and not unsupported.exists():
        raise PipelineError(f"{folder}: no step model and no reason; run the export stage")
    if not path.exists():
        reason = read_json(unsupported)["reason"]
        return {"stream_supported": False, "stream_unsupported_reason": reason}
    step = session(path)
    outputs = [o.name for o in step.get_outputs()]
    worst, shapes = 0.0, []
    for batch in (1, min(8, len(x))):
        xb, seq = x[:batch], x.shape[1]
        state = {k: v.numpy() for k, v in initial_state(module.model, batch).items()}
        scores = []
        for t in range(seq):
            out = dict(zip(outputs, step.run(None, {"x": xb[:, t], **state}), strict=True))
            state = {k: out[f"{k}_out"] for k in state}
            if "score" in out:
                scores.append(out["score"])
            if t + 1 in (max(seq // 2, 1), seq):
                expected = run_torch(module, np.ascontiguousarray(xb[:, : t + 1]))
                got = [out["y"]]
                if scores:  # alpha_t = exp(e_t - m) / s with the running max and sum
                    got.append(np.exp(np.stack(scores, 1) - state["att_max"]) / state["att_sum"])
                for g, e in zip(got, expected, strict=True):
                    worst = max(worst, float(np.abs(g - e).max()))
                shapes.append([batch, t + 1])
    return {"stream_supported": True, "stream_max_abs_diff": worst, "stream_shapes": shapes}


# The metric the int8 bound applies to, per task, and whether higher is better.
INT8_METRIC = {
    "classification": ("accuracy", True),
    "forecast": ("mape", False),
    "frames": ("mse", False),
}


def median_latency_ms(sess: ort.InferenceSession, x: np.ndarray, runs: int = 50) -> float:
    for _ in range(5):
        sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def int8_report(exp: Experiment, folder: Path, report: dict, x, y, meta) -> tuple[dict, dict]:
    """Quantize model.onnx, score it like the float model, and keep models/<exp>/int8/model.onnx
    only when the metric drop is within validate.int8_max_drop and the metric gates still pass.
    Returns (report entries, timings for MLflow only: timings never go into metrics files)."""
    v = exp.validate_
    with atomic_dir(folder / "int8") as keep:
        if not v.quantize:
            return {"int8_kept": False}, {}
        with tempfile.TemporaryDirectory(prefix="int8-") as tmp:
            path = quantize_int8(folder / "model.onnx", Path(tmp) / "model.onnx")
            sess8 = session(path)
            scores = task_report(exp.task, run_onnx(sess8, x)[0], x, y, meta)
            metric, higher_is_better = INT8_METRIC[exp.task]
            drop = report[metric] - scores[metric]
            drop = drop if higher_is_better else -drop
            passes = not gates({**scores, "parity_max_abs_diff": 0.0}, exp, v.parity_tol)
            kept = drop <= v.int8_max_drop and passes
            if kept:
                shutil.copy(path, keep / "model.onnx")
            sample = np.ascontiguousarray(x[:1])
            fp32_ms = median_latency_ms(session(folder / "model.onnx"), sample)
            int8_ms = median_latency_ms(sess8, sample)
    entries = {
        f"int8_{metric}": scores[metric],
        "int8_metric_drop": float(drop),
        "int8_max_drop": v.int8_max_drop,
        "int8_kept": kept,
    }
    timings = {"int8/latency_ms_batch1": int8_ms, "onnx/latency_ms_batch1": fp32_ms}
    print(f"int8: {metric} drop {drop:+.4g}, batch-1 latency {fp32_ms:.3f} -> {int8_ms:.3f} ms")
    return entries, timings


def _errors(pred: np.ndarray, truth: np.ndarray, prefix: str = "") -> dict[str, float]:
    err = pred - truth
    return {
        f"{prefix}mae": float(np.abs(err).mean()),
        f"{prefix}rmse": float(np.sqrt((err**2).mean())),
        f"{prefix}mape": float((np.abs(err) / np.maximum(np.abs(truth), 1e-12)).mean()),
    }


def baseline_forecast(x: np.ndarray, meta: dict) -> tuple[str, np.ndarray]:
    """Seasonal naive (repeat the last season) or naive (repeat the last value), scaled units."""
    season = meta["season"] or 1
    last = x[:, -season:, meta["target_index"]]
    reps = -(-meta["horizon"] // season)
    name = "seasonal_naive" if meta["season"] else "naive"
    return name, np.concatenate([last] * reps, axis=1)[:, : meta["horizon"]]


def classification_report(out, y, meta, plot_dir: Path | None) -> dict:
    from sklearn.metrics import f1_score

    pred = out.argmax(axis=1)
    labels = meta["labels"]
    if plot_dir:
        plots.confusion([labels[i] for i in y], [labels[i] for i in pred], labels, plot_dir)
    return {
        "accuracy": float((pred == y).mean()),
        "f1_macro": float(f1_score(y, pred, average="macro")),
    }


def forecast_report(out, x, y, meta, plot_dir: Path | None) -> dict:
    truth, pred = to_original(y, meta), to_original(out, meta)
    name, base_scaled = baseline_forecast(x, meta)
    base = to_original(base_scaled, meta)
    if plot_dir:
        plots.forecast(truth[..., 0], pred[..., 0], base[..., 0], plot_dir)
    return {**_errors(pred, truth), **_errors(base, truth, f"{name}_")}


def _frame_scores(pred: np.ndarray, truth: np.ndarray, prefix: str = "") -> dict:
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    per_step = ((pred - truth) ** 2).mean(axis=(0, 2, 3, 4))
    score = ssim(
        torch.from_numpy(pred).flatten(0, 1), torch.from_numpy(truth).flatten(0, 1), data_range=1.0
    )
    return {
        f"{prefix}mse": float(per_step.mean()),
        f"{prefix}ssim": float(score),
        f"{prefix}mse_per_step": [float(v) for v in per_step],
    }


def frames_report(out, x, y, plot_dir: Path | None) -> dict:
    """Per-frame MSE and SSIM on [0, 1] intensities, beside the copy-last-frame baseline."""
    copy_last = np.repeat(x[:, -1:], y.shape[1], axis=1)
    report = {**_frame_scores(out, y), **_frame_scores(copy_last, y, "baseline_")}
    report["mse_ratio_to_baseline"] = report["mse"] / report["baseline_mse"]
    if plot_dir:
        plots.frames(
            x[0], out[0], y[0], report["mse_per_step"], report["baseline_mse_per_step"], plot_dir
        )
    return report


def task_report(task: str, out, x, y, meta, plot_dir: Path | None = None) -> dict:
    if task == "classification":
        return classification_report(out, y, meta, plot_dir)
    if task == "frames":
        return frames_report(out, x, y, plot_dir)
    return forecast_report(out, x, y, meta, plot_dir)


def gates(report: dict, exp: Experiment, parity_tol: float) -> list[str]:
    """Failed gates, each as a readable line; empty when everything passed."""
    v = exp.validate_
    failed = []
    for key in ("parity_max_abs_diff", "stream_max_abs_diff"):
        if report.get(key, 0.0) > parity_tol:
            failed.append(f"{key} {report[key]:.3g} > {parity_tol:g}")
    for bound, sign in ((v.min, ">="), (v.max, "<=")):
        for metric, threshold in bound.items():
            if metric not in report:
                known = sorted(k for k, val in report.items() if isinstance(val, float))
                raise ConfigError(f"validate thresholds: unknown metric {metric!r}; known: {known}")
            ok = report[metric] >= threshold if sign == ">=" else report[metric] <= threshold
            if not ok:
                failed.append(f"{metric} {report[metric]:.6g} not {sign} {threshold:g}")
    if v.beat_baseline and exp.task != "classification":
        metric, base = (
            ("mape", next(k for k in report if k.endswith("naive_mape")))
            if exp.task == "forecast"
            else ("mse", "baseline_mse")
        )
        if not report[metric] < report[base]:
            failed.append(f"{metric} {report[metric]:.6g} not below {base} {report[base]:.6g}")
    return failed


def deployable_files(folder: Path) -> list[tuple[Path, str | None]]:
    """The ONNX files validate passed, as MLflow artifacts: the model, its step model and its
    kept int8 version (in an `int8/` artifact folder, beside the float model.onnx)."""
    files = [
        (folder / "model.onnx", None),
        (folder / "streaming/model_step.onnx", None),
        (folder / "int8/model.onnx", "int8"),
    ]
    return [(path, where) for path, where in files if path.exists()]


def validate(cfg: PipelineConfig, exp_name: str) -> dict:
    exp = cfg.experiment(exp_name)
    prepared = Prepared.load(prepared_dir(exp_name))
    meta = prepared.meta
    sess = session(model_dir(exp_name) / "model.onnx")
    module = load_module(model_dir(exp_name) / "model.ckpt")
    x, y = prepared.arrays("test")
    x = np.ascontiguousarray(x, dtype=np.float32)

    max_diff, shapes = parity(sess, module, x, exp.validate_.parity_batch_sizes)
    report = {
        "parity_max_abs_diff": max_diff,
        "parity_shapes": shapes,
        "export_seq_len": meta["input_shape"][0],
        "test_size": len(x),
    }
    out, *extra = run_onnx(sess, x)
    plot_dir = Path("plots") / exp_name / "validate"
    with atomic_dir(plot_dir) as tmp:
        if extra:  # attention weights
            plots.attention(x[:, :, 0], extra[0], tmp)
        report.update(task_report(prepared.task, out, x, y, meta, tmp))
    report.update(streaming_report(model_dir(exp_name) / "streaming", module, x))
    failed = gates(report, exp, exp.validate_.parity_tol)
    int8, timings = int8_report(exp, model_dir(exp_name), report, x, y, meta)
    report.update(int8)
    report.update(passed=not failed, failed_gates=failed)
    report_path = Path("metrics") / exp_name / "validate.json"
    write_json(report_path, report)
    onnx_metrics = {f"onnx/{k}": v for k, v in report.items() if isinstance(v, float)}
    log_to_training_run(
        cfg.tracking.experiment_name,
        model_dir(exp_name) / "model.ckpt",
        {**onnx_metrics, **timings},
        [report_path, *deployable_files(model_dir(exp_name))],
    )
    if failed:
        raise GateError(f"{exp_name}: validation failed: " + "; ".join(failed))
    return report
