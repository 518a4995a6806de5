"""predict: the user's file -> predictions CSV (or .npy frames), through ONNX Runtime only.

The model is an ONNX file from export, or `models:/<name>@<alias>` in the MLflow registry. Its
metadata_props say what it needs (task, features, scaler, labels, window, horizon, the data's
time frequency), so nothing here imports torch: a deployment needs numpy, pandas and onnxruntime
(plus mlflow for models:/).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline.errors import DataError, SystemFault, TrackingError
from pipeline.inference import onnx_meta, run_onnx, session
from pipeline.meta import DataMeta, padded
from pipeline.tasks import task_of
from pipeline.tracking import ensure_reachable, redacted, tracking_uri


@contextmanager
def local_model(model: str) -> Iterator[Path]:
    """A path to the ONNX file; registry models are downloaded to a temp folder first."""
    if not model.startswith("models:/"):
        if Path(model).is_dir():
            raise DataError(f"{model}: is a folder; the model is its .onnx file (model.onnx)")
        if not Path(model).is_file():
            raise DataError(f"{model}: model file not found")
        yield Path(model)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    ensure_reachable(uri, create=False)
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                model, dst_path=tmp, tracking_uri=uri, registry_uri=uri
            )
        except MlflowException as err:
            raise TrackingError(
                f"{model} at {redacted(uri)}: {err.message.splitlines()[0]}"
            ) from None
        found = sorted(Path(local).rglob("*.onnx"))
        if not found:
            raise TrackingError(
                f"{model} at {redacted(uri)}: the registered model holds no .onnx file"
            )
        yield found[0]


def _kind(path: Path) -> str | None:
    """'file', 'folder', 'other' (a pipe, a device) or None (nothing there); a name the system
    refuses (too long) is bad input, named."""
    try:
        if path.is_dir():
            return "folder"
        return "file" if path.is_file() else "other" if path.exists() else None
    except OSError as err:
        raise DataError(f"{path}: {err.strerror}") from None


def _finite_or_raise(values: np.ndarray, keys, path: Path, id_column: str, what: str) -> None:
    """Values far beyond the training data's (e.g. 1e36) overflow float32, on the model's scale
    or inside it: no prediction may be made from them, or hold NaN."""
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if not bad.size:
        return
    i = int(bad[0])
    if keys is None:
        which = f"sequence {i}"
    else:  # a forecast's keys: one row per step, in the order of the series
        ids = keys[id_column].unique() if hasattr(keys, "columns") else keys
        which = f"series {str(ids[i])!r}"  # not numpy's repr, np.str_('s1')
    raise DataError(f"{path}: {which}: {what} NaN or inf in float32; rescale the values")


CHUNK_VALUES = 1 << 20


def _run_by_length(sess, series: list[np.ndarray], ids, path: Path, id_column: str):
    """The model over series of different lengths in order of length, each chunk padded to its
    own longest: one series of 200,000 steps padded 2,000 short ones to its length (7 GB)."""
    sizes = [s.size for s in series]
    order, out, start = np.argsort(sizes, kind="stable"), None, 0
    while start < len(order):  # one series, and more while the chunk holds CHUNK_VALUES at most
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * sizes[order[stop]] <= CHUNK_VALUES:
            stop += 1
        rows = order[start:stop]
        x, lengths = padded([series[i] for i in rows])
        what = "its values on the model's scale are"
        _finite_or_raise(x, np.asarray(ids)[rows], path, id_column, what)
        part = run_onnx(sess, x, {"lengths": lengths})[0]
        if out is None:
            out = np.empty((len(series), *part.shape[1:]), part.dtype)
        out[rows], start = part, stop
    return out


def _trained_column(props: dict[str, str], key: str, default: str, model: str) -> str:
    """The training table's column name that export wrote into the metadata, else `default`."""
    try:
        name = json.loads(props.get(key, json.dumps(default)))
    except ValueError:
        name = None
    if not isinstance(name, str) or not name:
        raise DataError(
            f"{model}: the ONNX model's metadata is not a valid data contract: {key}: "
            f"{props[key][:80]!r} is not a column name in JSON"
        )
    return name


def _not_a_model_column(meta: DataMeta, **given: str) -> None:
    """An id or time column that is one of the model's inputs would order or split its values."""
    inputs = {*meta.features, *meta.future, *meta.static}
    for option, column in given.items():
        if column in inputs:
            raise DataError(
                f"--{option.replace('_', '-')} {column}: is one of the model's input columns; "
                f"name the input's {option.split('_')[0]} column"
            )


def predict(model: str, input_path: str, output: str, id_column=None, time_column=None) -> Path:
    """Predict every series (or frame sequence) of `input_path`; write `output` atomically.
    The id and time columns, where not given: the training table's (the model's metadata, from
    export), else series_id and time."""
    for given, what in ((model, "the model"), (input_path, "the input"), (output, "-o")):
        if not given:  # Path('') is the working folder: the line named another argument
            raise DataError(f"{what}: an empty path; name a file")
    if output.endswith("/"):  # Path() drops it: a folder's path wrote a file, or over one
        raise DataError(f"{output}: a folder's path; -o takes the predictions' file path")
    path, output = Path(input_path), Path(output)
    kind = _kind(path)  # a folder: a Parquet data set
    if kind is None and input_path == "-":
        raise DataError("-: predict reads a file, not standard input; save the input to a file")
    if kind is None:
        raise DataError(f"{path}: file not found")
    if kind == "other":  # read more than once: the header, then the rows
        raise DataError(f"{path}: not a regular file (a pipe?); save the input to a file first")
    if _kind(output) == "folder":
        raise DataError(f"{output}: is a folder; -o takes the predictions' file path")
    if kind == "folder" and output.resolve().is_relative_to(path.resolve()):
        raise DataError(  # it replaced a part of a Parquet folder, or was read as one next time
            f"{output}: is inside the input folder {path}; -o takes a path outside it"
        )
    with local_model(model) as onnx_file:
        for given, what in ((path, "input"), (onnx_file, "model")):
            if output.exists() and output.samefile(given):
                raise DataError(f"{output}: is the {what}; -o takes a new path for predictions")
        sess = session(onnx_file, name=model)
        meta = onnx_meta(sess, model)
        state = [i.name for i in sess.get_inputs()[1:] if i.name not in meta.extra_inputs]
        if state and state != ["lengths"]:
            raise DataError(
                f"{model}: a streaming step model (state inputs {', '.join(state)}); predict "
                "takes the whole model, models/<exp>/model.onnx"
            )
        task = task_of(meta)
        graph = [sess.get_outputs()[0].shape[1:], [i.name for i in sess.get_inputs()[1:]]]
        contract = [list(task.output_shape(meta)), list(meta.extra_inputs)]
        if graph != contract:  # its metadata copied from another model: exit 1, IndexError
            raise DataError(
                f"{model}: its metadata does not match its graph (output shape, extra inputs: "
                f"{graph} in the graph, {contract} in the metadata); export it again"
            )
        suffix = output.suffix.lower()  # a pipe or device takes the first format, named as it is
        if suffix and suffix not in task.output_formats and _kind(output) != "other":
            raise DataError(
                f"{output}: a {task.name} model's predictions are written as "
                f"{' or '.join(task.output_formats)}; name the output so"
            )
        trained_on = sess.get_modelmeta().custom_metadata_map
        id_column = id_column or _trained_column(trained_on, "id_column", "series_id", model)
        time_column = time_column or _trained_column(trained_on, "time_column", "time", model)
        _not_a_model_column(meta, id_column=id_column, time_column=time_column)
        if id_column == time_column:  # it was read as duplicate (id, time) pairs
            raise DataError(f"--id-column and --time-column both name {id_column!r}")
        x, keys, extra = task.read_inputs(path, output, meta, id_column, time_column)
        with np.errstate(over="ignore", invalid="ignore"):  # refused below, by series
            x = task.scale_inputs(x, meta)
        try:
            if meta.variable_length:  # series of different lengths: padded, with their lengths
                out = _run_by_length(sess, x, keys, path, id_column)
            else:
                _finite_or_raise(x, keys, path, id_column, "its values on the model's scale are")
                out = run_onnx(sess, x, extra)[0]
        except MemoryError:  # not the training's advice (model size, batch size)
            longest = max(len(s) for s in x)
            raise SystemFault(
                f"{path}: out of memory running the model over {len(x)} sequences (the longest "
                f"{longest} steps); predict fewer or shorter ones at a time"
            ) from None
    _finite_or_raise(out, keys, path, id_column, "the model's output from its values is")
    task.write(task.predictions(out, x, meta, keys, id_column), output)
    return output
