"""validate stage: ONNX Runtime vs the PyTorch checkpoint, and test metrics through ONNX Runtime.

Writes metrics/<exp>/validate.json (flat, deterministic) and plots/<exp>/validate/, then raises
GateError if parity or a configured threshold fails, so the stage exits non-zero after reporting.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import plots
from pipeline.config import Experiment, PipelineConfig
from pipeline.data.datamodule import Prepared
from pipeline.data.prepare import prepared_dir
from pipeline.errors import ConfigError, GateError
from pipeline.export.onnx_export import load_module
from pipeline.inference import run_onnx, session, to_original
from pipeline.io import atomic_dir, write_json
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


def classification_report(out, y, meta, plot_dir: Path) -> dict:
    from sklearn.metrics import f1_score

    pred = out.argmax(axis=1)
    labels = meta["labels"]
    plots.confusion([labels[i] for i in y], [labels[i] for i in pred], labels, plot_dir)
    return {
        "accuracy": float((pred == y).mean()),
        "f1_macro": float(f1_score(y, pred, average="macro")),
    }


def forecast_report(out, x, y, meta, plot_dir: Path) -> dict:
    truth, pred = to_original(y, meta), to_original(out, meta)
    name, base_scaled = baseline_forecast(x, meta)
    base = to_original(base_scaled, meta)
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


def frames_report(out, x, y, plot_dir: Path) -> dict:
    """Per-frame MSE and SSIM on [0, 1] intensities, beside the copy-last-frame baseline."""
    copy_last = np.repeat(x[:, -1:], y.shape[1], axis=1)
    report = {**_frame_scores(out, y), **_frame_scores(copy_last, y, "baseline_")}
    report["mse_ratio_to_baseline"] = report["mse"] / report["baseline_mse"]
    plots.frames(
        x[0], out[0], y[0], report["mse_per_step"], report["baseline_mse_per_step"], plot_dir
    )
    return report


def gates(report: dict, exp: Experiment, parity_tol: float) -> list[str]:
    """Failed gates, each as a readable line; empty when everything passed."""
    v = exp.validate_
    failed = []
    if report["parity_max_abs_diff"] > parity_tol:
        failed.append(f"parity_max_abs_diff {report['parity_max_abs_diff']:.3g} > {parity_tol:g}")
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
        if prepared.task == "classification":
            report.update(classification_report(out, y, meta, tmp))
        elif prepared.task == "frames":
            report.update(frames_report(out, x, y, tmp))
        else:
            report.update(forecast_report(out, x, y, meta, tmp))
    failed = gates(report, exp, exp.validate_.parity_tol)
    report.update(passed=not failed, failed_gates=failed)
    report_path = Path("metrics") / exp_name / "validate.json"
    write_json(report_path, report)
    onnx_metrics = {f"onnx/{k}": v for k, v in report.items() if isinstance(v, float)}
    log_to_training_run(
        cfg.tracking.experiment_name,
        model_dir(exp_name) / "model.ckpt",
        onnx_metrics,
        [report_path, model_dir(exp_name) / "model.onnx"],
    )
    if failed:
        raise GateError(f"{exp_name}: validation failed: " + "; ".join(failed))
    return report
