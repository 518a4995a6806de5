"""ONNX Runtime inference without torch: sessions, the model's own metadata, scaling both ways.

Shared by the validate stage and by `predict`, which must run where torch is not installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.errors import DataError


def session(path: str | Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # thread count changes float summation order: keep reports stable
    opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own pybind types for missing or corrupt files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a loadable ONNX model ({first_line})") from None


def onnx_meta(sess: ort.InferenceSession) -> dict:
    """The metadata_props written by export (JSON values): task, scaler, labels, window..."""
    props = sess.get_modelmeta().custom_metadata_map
    if "task" not in props:
        raise DataError("the ONNX model carries no lstm-pipeline metadata (task, scaler, ...)")
    return {k: json.loads(v) for k, v in props.items()}


def run_onnx(sess: ort.InferenceSession, x: np.ndarray, chunk: int = 512) -> list[np.ndarray]:
    """Every output of the model (prediction first), run in chunks over the batch."""
    parts = [sess.run(None, {"x": x[i : i + chunk]}) for i in range(0, len(x), chunk)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def to_model_scale(x: np.ndarray, meta: dict) -> np.ndarray:
    """Raw feature values -> the scaled float32 inputs the model was trained on."""
    mean, std = np.asarray(meta["scaler"]["mean"]), np.asarray(meta["scaler"]["std"])
    if meta["task"] == "frames":  # uint8 pixels, divided in float32 as the training data was
        return x.astype(np.float32) / np.float32(std[0])
    if meta["task"] == "classification":  # prepare holds these sequences as float32 before scaling
        x = x.astype(np.float32)
    if meta.get("transform") == "log":
        x = np.log(x)
    return ((x - mean) / std).astype(np.float32)


def to_original(z: np.ndarray, meta: dict) -> np.ndarray:
    """Scaled forecasts [.., targets] -> the original units (undoing scaling and log)."""
    idx = meta["target_index"]
    mean = np.asarray(meta["scaler"]["mean"])[idx]
    std = np.asarray(meta["scaler"]["std"])[idx]
    y = z.astype(np.float64) * std + mean
    return np.exp(y) if meta["transform"] == "log" else y


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
