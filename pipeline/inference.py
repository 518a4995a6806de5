"""ONNX Runtime without torch: sessions, running a model, reading its data contract.

Shared by the validate stage and by `predict`, which must run where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from pipeline.errors import DataError, first_line
from pipeline.io import system_fault
from pipeline.meta import DataMeta, first_error


def session(
    path: str | Path, threads: int | None = 1, name: str | None = None
) -> ort.InferenceSession:
    """`threads`: ONNX Runtime's intra-op threads; None: one per core. One keeps reports the same
    on every machine (the thread count changes the order of float sums). `name`: what errors
    call the model (a registry URI for its downloaded copy); default its path."""
    name = name or path
    try:  # ONNX Runtime's own error for a file it cannot open does not say why
        open(path, "rb").close()
    except OSError as err:
        raise system_fault(err, name) or DataError(f"{name}: {err.strerror}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # a failed run is raised as an error, and stated in one line
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own pybind types for missing or corrupt files
        raise DataError(f"{name}: not a loadable ONNX model ({first_line(err)})") from None


def onnx_meta(sess: ort.InferenceSession, path: str | Path) -> DataMeta:
    """The data contract export wrote into metadata_props (task, scaler, labels, window...) of
    the model at `path` (named in errors)."""
    props = sess.get_modelmeta().custom_metadata_map
    if "task" not in props:
        raise DataError(f"{path}: the ONNX model carries no lstm-pipeline metadata (task, ...)")
    try:
        return DataMeta.from_props(props)
    except (ValidationError, ValueError) as err:
        raise DataError(
            f"{path}: the ONNX model's metadata is not a valid data contract: {first_error(err)}"
        ) from None


def feeds(sess: ort.InferenceSession, x: np.ndarray, extra: dict | None = None) -> dict:
    """The session's inputs: `x`, then its other inputs from `extra` by name (DataMeta.
    extra_inputs): a model of variable-length series takes `lengths` (each series' steps;
    missing: every series fills x), a forecaster with covariates `future` and `static`."""
    inputs, extra = {"x": x}, extra or {}
    for i in sess.get_inputs()[1:]:
        if i.name == "lengths":
            lengths = extra.get("lengths", np.full(len(x), x.shape[1]))
            inputs["lengths"] = np.asarray(lengths, dtype=np.int64)
        elif i.name in extra:
            inputs[i.name] = np.ascontiguousarray(extra[i.name], dtype=np.float32)
        else:
            raise DataError(f"the ONNX model needs its input {i.name!r}, which was not given")
    return inputs


def run_onnx(
    sess: ort.InferenceSession, x: np.ndarray, extra: dict | None = None
) -> list[np.ndarray]:
    """Every output of the model (prediction first), run in chunks of at most 512 samples and
    2^20 input values: ConvLSTM's intermediate tensors are ~50x its input (200 sequences of
    10 64x64 frames in one run took 10 GB)."""
    parts, extra = [], extra or {}
    chunk = max(1, min(512, (1 << 20) // max(1, int(np.prod(x.shape[1:])))))
    for i in range(0, len(x), chunk):
        part = {name: v[i : i + chunk] for name, v in extra.items()}
        parts.append(sess.run(None, feeds(sess, x[i : i + chunk], part)))
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
