"""predict: the user's file -> predictions CSV (or .npy frames), through ONNX Runtime only.

The model is an ONNX file from export, or `models:/<name>@<alias>` in the MLflow registry. Its
metadata_props say what it needs (task, features, scaler, labels, window, horizon), so nothing
here imports torch: a deployment needs numpy, pandas and onnxruntime (plus mlflow for models:/).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.sources import read_series_table, series_bounds
from pipeline.errors import DataError, TrackingError
from pipeline.inference import onnx_meta, run_onnx, session, softmax, to_model_scale, to_original
from pipeline.io import atomic_file


@contextmanager
def local_model(model: str) -> Iterator[Path]:
    """A path to the ONNX file; registry models are downloaded to a temp folder first."""
    if not model.startswith("models:/"):
        if not Path(model).is_file():
            raise DataError(f"{model}: model file not found")
        yield Path(model)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import ensure_reachable, tracking_uri

    uri = tracking_uri()
    ensure_reachable(uri)
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                model, dst_path=tmp, tracking_uri=uri, registry_uri=uri
            )
        except MlflowException as err:
            raise TrackingError(f"{model} at {uri}: {err.message.splitlines()[0]}") from None
        found = sorted(Path(local).rglob("*.onnx"))
        if not found:
            raise TrackingError(f"{model} at {uri}: the registered model holds no .onnx file")
        yield found[0]


def _last_windows(path: Path, meta: dict, id_column: str, time_column: str):
    """Each series' last `window` steps as [n, window, features], with the series ids."""
    source = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
    frame, values = read_series_table(path, source, id_column, time_column, meta["features"])
    ids = frame[id_column].astype(str).to_numpy()
    window, bounds, x = meta["window"], series_bounds(ids), []
    for a, b in bounds:
        if b - a < window:
            raise DataError(
                f"{path}: series {ids[a]!r} has {b - a} time steps; the model needs its "
                f"window of {window}"
            )
        x.append(values[b - window : b])
    if meta.get("transform") == "log" and any((w <= 0).any() for w in x):
        raise DataError(f"{path}: the model log-transforms its inputs; all values must be > 0")
    return np.stack(x), [ids[a] for a, _ in bounds]


def _classify(sess, meta, x, ids, id_column) -> pd.DataFrame:
    probs = softmax(run_onnx(sess, to_model_scale(x, meta))[0].astype(np.float64))
    labels = np.asarray(meta["labels"])
    table = pd.DataFrame({id_column: ids, "label": labels[probs.argmax(axis=1)]})
    for j, label in enumerate(labels):
        table[f"prob_{label}"] = probs[:, j]
    return table


def _forecast(sess, meta, x, ids, id_column) -> pd.DataFrame:
    pred = to_original(run_onnx(sess, to_model_scale(x, meta))[0], meta)  # [n, horizon, targets]
    n, horizon, _ = pred.shape
    table = pd.DataFrame(
        {id_column: np.repeat(ids, horizon), "step": np.tile(np.arange(1, horizon + 1), n)}
    )
    for j, target in enumerate(meta["targets"]):
        table[target] = pred[:, :, j].reshape(-1)
    return table


def _frames(sess, meta, path: Path, output: Path) -> np.ndarray:
    for file, role in ((path, "reads"), (output, "writes")):
        if file.suffix.lower() != ".npy":
            raise DataError(f"{file}: a frames model {role} .npy arrays [n, frames, C, H, W]")
    x = np.load(path)
    expected = tuple(meta["input_shape"][1:])
    if x.ndim != 5 or x.shape[2:] != expected:
        raise DataError(
            f"{path}: shape {list(x.shape)}; the model needs [n, frames, "
            f"{', '.join(map(str, expected))}]"
        )
    if not np.isfinite(x).all():
        raise DataError(f"{path}: holds NaN or inf pixels")
    out = run_onnx(sess, to_model_scale(x, meta))[0]
    return (out * np.float32(meta["scaler"]["std"][0])).astype(np.float32)  # back to 0..255


def predict(
    model: str, input_path: str, output: str, id_column="series_id", time_column="time"
) -> Path:
    """Predict every series (or frame sequence) of `input_path`; write `output` atomically."""
    path, output = Path(input_path), Path(output)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with local_model(model) as onnx_file:
        sess = session(onnx_file)
        meta = onnx_meta(sess)
        if meta["task"] == "frames":
            frames = _frames(sess, meta, path, output)
            with atomic_file(output) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, frames)
            return output
        x, ids = _last_windows(path, meta, id_column, time_column)
        build = _classify if meta["task"] == "classification" else _forecast
        table = build(sess, meta, x, ids, id_column)
    with atomic_file(output) as tmp:
        table.to_csv(tmp, index=False)
    return output
