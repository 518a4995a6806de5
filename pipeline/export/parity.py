"""ONNX Runtime against PyTorch: the full model at several [batch, seq] and the step model
fed one step at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.errors import DataError, PipelineError
from pipeline.inference import run_onnx, session
from pipeline.io import read_json


def run_torch(model: nn.Module, x: np.ndarray, extra: dict | None = None):
    """Every output of the model (prediction first), as numpy arrays; `extra`: its inputs
    after x by name (lengths, future, static)."""
    with torch.no_grad():
        kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in (extra or {}).items()}
        out = model(torch.from_numpy(x), **kwargs)
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def parity_inputs(x: np.ndarray, batch: int, seq: int, lengths: np.ndarray | None = None):
    """Real test inputs resized to [batch, seq]: repeated samples, then truncated or tiled steps;
    padded series (`lengths`) each tiled from its own steps, so no row is padding."""
    rows = np.arange(batch) % len(x)
    if lengths is not None:
        return np.stack(
            [np.tile(x[i, : lengths[i]], (-(-seq // lengths[i]), 1))[:seq] for i in rows]
        )
    reps = -(-seq // x.shape[1])
    return np.ascontiguousarray(np.concatenate([x[rows]] * reps, axis=1)[:, -seq:])


def mixed_lengths(batch: int, seq: int) -> np.ndarray:
    """Series lengths of a parity batch of padded series: seq, 3/4, 1/2, 1/4 of it, ... (>= 2)."""
    return np.maximum(seq - (np.arange(batch) % 4) * seq // 4, min(2, seq)).astype(np.int64)


def parity(
    sess,
    model: nn.Module,
    x: np.ndarray,
    batch_sizes: list[int],
    lengths: np.ndarray | None = None,
    covariates: dict | None = None,
) -> tuple[float, float, list[list[int]]]:
    """The largest |ORT - torch| over every output, at half, equal and twice the length of `x`
    (padded series, `lengths` theirs, get a mix of lengths in each batch, a forecaster with
    covariates the test windows' `future` and `static` rows beside x's): absolute, and
    relative to the output's largest magnitude where that exceeds 1 (float32 keeps ~7 digits:
    a confident classifier's logits of 6 differed by 1.3e-5 between two correct runtimes)."""
    seq = x.shape[1]  # not below the model's shortest (a window of two seasons: one season)
    seqs = sorted({max(seq // 2, getattr(model, "min_length", 1)), seq, 2 * seq})
    worst, scaled, shapes = 0.0, 0.0, []
    for b in batch_sizes:
        for t in seqs:
            xb = parity_inputs(x, b, t, lengths)
            extra = {k: v[np.arange(b) % len(v)] for k, v in (covariates or {}).items()}
            if lengths is not None:
                extra["lengths"] = mixed_lengths(b, t)
            pairs = zip(run_onnx(sess, xb, extra), run_torch(model, xb, extra), strict=True)
            for got, expected in pairs:
                diff = abs_diff(got, expected)
                worst = max(worst, diff)
                scaled = max(scaled, diff / max(1.0, float(np.abs(expected).max())))
            shapes.append([b, t])
    return worst, scaled, shapes


def streaming_report(folder: Path, model: nn.Module, x: np.ndarray) -> dict:
    """Feed test sequences step by step through the step model; compare with the full model
    (prediction, and attention weights rebuilt from the step scores) at half and full length."""
    path, unsupported = folder / "model_step.onnx", folder / "unsupported.json"
    if not path.exists() and not unsupported.exists():
        raise PipelineError(f"{folder}: no step model and no reason; run the export stage")
    if not path.exists():
        reason = read_json(unsupported)["reason"]
        return {"stream_supported": False, "stream_unsupported_reason": reason}
    step = session(path)
    _same_state_or_raise(step, model, path)
    outputs = [o.name for o in step.get_outputs()]
    worst, shapes = 0.0, []
    for batch in (1, min(8, len(x))):
        xb, seq = x[:batch], x.shape[1]
        state = {k: v.numpy() for k, v in model.initial_state(batch).items()}
        scores = []
        for t in range(seq):
            out = dict(zip(outputs, step.run(None, {"x": xb[:, t], **state}), strict=True))
            state = {k: out[f"{k}_out"] for k in state}
            if "score" in out:
                scores.append(out["score"])
            if t + 1 in (max(seq // 2, 1), seq):
                expected = run_torch(model, np.ascontiguousarray(xb[:, : t + 1]))
                got = [out["y"]]
                if scores:  # alpha_t = exp(e_t - m) / s with the running max and sum
                    got.append(np.exp(np.stack(scores, 1) - state["att_max"]) / state["att_sum"])
                for g, e in zip(got, expected, strict=True):
                    worst = max(worst, abs_diff(g, e))
                shapes.append([batch, t + 1])
    return {"stream_supported": True, "stream_max_abs_diff": worst, "stream_shapes": shapes}


def _same_state_or_raise(step, model: nn.Module, path: Path) -> None:
    """A step model exported from another model (a stale or copied file) is named, not fed."""
    inputs = {i.name: i.shape for i in step.get_inputs()}
    for name, tensor in model.initial_state(1).items():
        shape = inputs.get(name)
        fixed = shape and [d for d in shape if isinstance(d, int)]
        if (
            shape is None
            or len(shape) != tensor.dim()
            or fixed != [n for n, d in zip(tensor.shape, shape, strict=True) if isinstance(d, int)]
        ):
            raise DataError(
                f"{path}: made for another model (its state input {name!r} is {shape}, the "
                f"model's {list(tensor.shape)}); run the export stage"
            )


def abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    """The largest |got - expected|; a NaN anywhere is inf (max() skipped it: NaN outputs
    passed parity with 0)."""
    return float(np.nan_to_num(np.abs(got - expected), nan=np.inf).max())
