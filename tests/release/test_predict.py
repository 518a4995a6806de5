"""`lstm-pipeline predict` on real exported models: same numbers as torch, torch-free, bad input."""

import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from pipeline.cli import main
from pipeline.data.sources import covariate_windows
from pipeline.errors import DataError
from pipeline.export.onnx_export import export_module, export_step
from pipeline.meta import DataMeta
from pipeline.predict import _finite_or_raise
from pipeline.training.module import SequenceModule
from tests.conftest import BIN, free_port, without_file_rights

CLASSIFY = {
    "task": "classification",
    "input_shape": [10, 2],
    "features": ["a", "b"],
    "labels": ["down", "up"],
    "window": 10,
    "scaler": {"mean": [1.0, -2.0], "std": [2.0, 0.5]},
}
FORECAST = {
    "task": "forecast",
    "input_shape": [12, 2],
    "features": ["x", "y"],
    "targets": ["y"],
    "target_index": [1],
    "window": 12,
    "horizon": 4,
    "season": None,
    "transform": "log",
    "scaler": {"mean": [0.5, 3.0], "std": [0.2, 0.4]},
}
MONTHLY = {**FORECAST, "horizon": 12, "freq": "MS"}  # prepared from monthly dates
FRAMES = {
    "task": "frames",
    "input_shape": [4, 1, 8, 8],
    "features": ["intensity"],
    "window": 4,
    "horizon": 2,
    "scaler": {"mean": [0.0], "std": [255.0]},
}
LSTM = {"name": "lstm", "hidden_size": 8, "num_layers": 1}
CONV = {"name": "conv_lstm", "hidden_channels": 4, "num_layers": 1}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, cfg, meta in (
        ("classify", LSTM, CLASSIFY),
        ("forecast", LSTM, FORECAST),
        ("monthly", LSTM, MONTHLY),
        ("frames", CONV, FRAMES),
    ):
        module = SequenceModule(cfg, meta).eval()
        out[name] = module, export_module(module, root / f"{name}.onnx", cfg["name"])
    return out


def long_table(values: list[np.ndarray], features: list[str]) -> pd.DataFrame:
    """Rows shuffled and columns in another order than the model's: predict matches by name."""
    rows = [
        {"series_id": f"s{i}", "time": t, **dict(zip(features, step, strict=True))}
        for i, series in enumerate(values)
        for t, step in enumerate(series)
    ]
    frame = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    return frame[["time", *features[::-1], "series_id"]]


def torch_out(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = module.model(torch.from_numpy(x))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def test_classification_matches_torch(models, tmp_path):
    module, onnx_path = models["classify"]
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(n, 2)) for n in (10, 14, 11)]  # longer ones: last window used
    long_table(series, ["a", "b"]).to_csv(tmp_path / "in.csv", index=False)
    assert main(["predict", str(onnx_path), str(tmp_path / "in.csv"), "-o", "out.csv"]) == 0

    got = pd.read_csv("out.csv")
    x = np.stack([s[-10:] for s in series]).astype(np.float32)
    scaled = ((x - np.array([1.0, -2.0])) / np.array([2.0, 0.5])).astype(np.float32)
    logits = torch_out(module, scaled)
    probs = torch.softmax(torch.from_numpy(logits).double(), 1).numpy()
    assert list(got.columns) == ["series_id", "label", "prob_down", "prob_up"]
    assert list(got.series_id) == ["s0", "s1", "s2"]
    np.testing.assert_allclose(got[["prob_down", "prob_up"]], probs, atol=1e-5)
    assert list(got.label) == [["down", "up"][i] for i in logits.argmax(1)]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_forecast_on_original_scale(models, tmp_path):
    module, onnx_path = models["forecast"]
    rng = np.random.default_rng(1)
    series = [np.exp(rng.normal([0.5, 3.0], 0.2, size=(n, 2))) for n in (12, 20)]
    long_table(series, ["x", "y"]).to_parquet(tmp_path / "in.parquet")
    assert main(["predict", str(onnx_path), str(tmp_path / "in.parquet"), "-o", "f.csv"]) == 0

    got = pd.read_csv("f.csv")
    x = np.stack([s[-12:] for s in series])
    scaled = ((np.log(x) - np.array([0.5, 3.0])) / np.array([0.2, 0.4])).astype(np.float32)
    expected = np.exp(torch_out(module, scaled)[..., 0].astype(np.float64) * 0.4 + 3.0)
    assert list(got.columns) == ["series_id", "step", "y"]
    assert list(got.step) == [1, 2, 3, 4] * 2
    np.testing.assert_allclose(got.y.to_numpy().reshape(2, 4), expected, rtol=1e-5)


def test_the_training_tables_id_and_time_columns_are_predicts_defaults(models, tmp_path):
    """A model trained on a file whose columns are `meter` and `hour` read that file only when
    told `--id-column meter --time-column hour`; export now writes them into the metadata."""
    module, _ = models["forecast"]
    named = export_module(module, tmp_path / "named.onnx", "lstm", {"id_column": "meter",
                          "time_column": "hour"})  # fmt: skip
    series = [np.exp(np.random.default_rng(1).normal([0.5, 3.0], 0.2, size=(12, 2)))]
    table = long_table(series, ["x", "y"])
    table.rename(columns={"series_id": "meter", "time": "hour"}).to_csv("meters.csv", index=False)
    assert main(["predict", str(named), "meters.csv", "-o", "by_model.csv"]) == 0
    assert list(pd.read_csv("by_model.csv").columns) == ["meter", "step", "y"]
    table.to_csv("other.csv", index=False)  # what the flags say wins
    flags = ["--id-column", "series_id", "--time-column", "time"]
    assert main(["predict", str(named), "other.csv", "-o", "by_flags.csv", *flags]) == 0
    by_model, by_flags = pd.read_csv("by_model.csv"), pd.read_csv("by_flags.csv")
    np.testing.assert_array_equal(by_model.y, by_flags.y)


def test_a_column_name_in_the_metadata_that_is_not_json_is_named(models, tmp_path, capsys):
    """A hand-edited model file: it was `unexpected JSONDecodeError`, exit 1."""
    module, _ = models["forecast"]
    edited = export_module(module, tmp_path / "edited.onnx", "lstm", {"id_column": "meter"})
    model = onnx.load(edited)
    (prop,) = [p for p in model.metadata_props if p.key == "id_column"]
    prop.value = "meter"  # not JSON
    onnx.save(model, edited)
    long_table([np.ones((12, 2))], ["x", "y"]).to_csv("in.csv", index=False)
    assert main(["predict", str(edited), "in.csv", "-o", "out.csv"]) == 3
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lstm-pipeline predict: error: {edited}: the ONNX model's metadata is not a valid data "
        "contract: id_column: 'meter' is not a column name in JSON"
    ]
    assert not Path("out.csv").exists()


def test_parquet_in_a_folder_or_under_any_name_is_read_as_parquet(models, tmp_path):
    """Spark and Hive write folders (`series_id=001/part-0.parquet`); a file's name need not end
    in .parquet. The ids are the text of the folder names, as a CSV's are."""
    _, onnx_path = models["forecast"]
    rng = np.random.default_rng(1)
    series = [np.exp(rng.normal([0.5, 3.0], 0.2, size=(14, 2))) for _ in range(2)]
    frame = long_table(series, ["x", "y"])
    frame["series_id"] = frame.series_id.map({"s0": "001", "s1": "1"})
    frame.to_parquet(tmp_path / "in.parquet")
    frame.to_parquet(tmp_path / "in.data")
    frame.to_parquet(tmp_path / "hive", partition_cols=["series_id"])
    frame.set_index(["series_id", "time"]).to_parquet(tmp_path / "indexed.parquet")
    # a folder of plain files: its text column failed, "large_string vs string" (exit 1)
    (tmp_path / "files").mkdir()
    frame.iloc[:10].to_parquet(tmp_path / "files" / "part-0.parquet")
    frame.iloc[10:].to_parquet(tmp_path / "files" / "part-1.parquet")
    outputs = []
    for given in ("in.parquet", "in.data", "hive", "indexed.parquet", "files"):
        assert main(["predict", str(onnx_path), str(tmp_path / given), "-o", f"{given}.csv"]) == 0
        outputs.append((tmp_path / f"{given}.csv").read_text())
    assert outputs[1:] == outputs[:1] * 4
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(onnx_path), str(tmp_path / "empty"), "-o", "empty.csv"]) == 3
    # inside the folder read: it replaced a part (exit 0), or the next read took it as one
    before = (tmp_path / "files" / "part-0.parquet").read_bytes()
    for inside in ("part-0.parquet", "more/out.csv"):
        output = str(tmp_path / "files" / inside)
        assert main(["predict", str(onnx_path), str(tmp_path / "files"), "-o", output]) == 3
    assert (tmp_path / "files" / "part-0.parquet").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [
        "part-0.parquet",
        "part-1.parquet",
    ]
    assert list(pd.read_csv("in.parquet.csv", dtype=str).series_id.unique()) == ["001", "1"]


def test_forecast_dates_the_horizon_after_each_series_last_month(models, tmp_path, capsys):
    _, onnx_path = models["monthly"]
    rng = np.random.default_rng(4)
    series = [np.exp(rng.normal([0.5, 3.0], 0.2, size=(n, 2))) for n in (12, 30)]
    frame = long_table(series, ["x", "y"])
    numeric = _write_csv(tmp_path / "numeric.csv", frame)
    start = {"s0": pd.Timestamp("1959-07-01"), "s1": pd.Timestamp("1957-06-01")}
    frame["time"] = [(start[s] + pd.DateOffset(months=t)).strftime("%Y-%m")
                     for s, t in zip(frame.series_id, frame.time, strict=True)]  # fmt: skip
    frame = frame[~frame.time.isin(["1957-08", "1957-09"])]  # a gap: the model's MS still holds
    dated = _write_csv(tmp_path / "dated.csv", frame)
    assert main(["predict", str(onnx_path), dated, "-o", "dated_out.csv"]) == 0
    assert main(["predict", str(onnx_path), numeric, "-o", "numeric_out.csv"]) == 0

    got, steps = pd.read_csv("dated_out.csv"), pd.read_csv("numeric_out.csv")
    assert list(got.columns) == ["series_id", "time", "step", "y"]
    months = [pd.date_range(first, periods=12, freq="MS") for first in ("1960-07", "1959-12")]
    assert list(got.time) == [d.strftime("%Y-%m-%d") for m in months for d in m]
    assert list(steps.columns) == ["series_id", "step", "y"]  # numeric time: steps only
    assert list(got.step) == list(steps.step) == list(range(1, 13)) * 2
    np.testing.assert_allclose(got.y, steps.y, rtol=1e-6)  # the same last windows

    frame = frame[frame.time != "1959-05"]  # a gap inside s1's last window: refused (the line
    # is the shuffled file's own)
    gap = _write_csv(tmp_path / "gap.csv", frame)
    assert main(["predict", str(onnx_path), gap, "-o", "gap_out.csv"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.endswith(
        "gap.csv: line 3: series 's1': 1959-06-01 00:00:00 follows 1959-04-01 00:00:00; a 'MS' "
        "series steps to 1959-05-01 00:00:00 (the model's freq); fill the gap or fix the date"
    ), err


def test_forecast_dates_without_a_frequency_fall_back_to_steps(models, tmp_path, capfd):
    _, onnx_path = models["forecast"]  # its data had no dates: the input's own frequency
    series = [np.exp(np.random.default_rng(5).normal([0.5, 3.0], 0.2, size=(14, 2)))]
    frame = long_table(series, ["x", "y"])
    frame["time"] = pd.Timestamp("2024-02-27") + pd.to_timedelta(frame.time, unit="D")
    daily = _write_csv(tmp_path / "daily.csv", frame)
    assert main(["predict", str(onnx_path), daily, "-o", "daily_out.csv"]) == 0
    days = pd.read_csv("daily_out.csv").time
    assert list(days) == ["2024-03-12", "2024-03-13", "2024-03-14", "2024-03-15"]

    frame.loc[frame.time == frame.time.max(), "time"] += pd.Timedelta(hours=5)  # irregular
    irregular = _write_csv(tmp_path / "irregular.csv", frame)
    capfd.readouterr()
    assert main(["predict", str(onnx_path), irregular, "-o", "-"]) == 0
    out, err = capfd.readouterr()  # the note was the first line of the CSV on stdout
    assert out.splitlines()[0] == "series_id,step,y"
    assert "without one regular frequency" in err


def test_a_gap_in_numbered_steps_is_refused(models, tmp_path, capsys):
    """Where the other series step by 1, a series missing a step inside its window was
    forecast from the wrong steps (exit 0)."""
    _, onnx_path = models["forecast"]
    rng = np.random.default_rng(6)
    frame = long_table([np.exp(rng.normal(0.5, 0.2, size=(14, 2))) for _ in range(2)], ["x", "y"])
    frame = frame[~((frame.series_id == "s0") & (frame.time == 12))]
    gap = _write_csv(tmp_path / "gap.csv", frame)
    assert main(["predict", str(onnx_path), gap, "-o", "gap_out.csv"]) == 3
    assert "series 's0': 13 follows 11; the other series step by 1" in capsys.readouterr().err
    assert not Path("gap_out.csv").exists()


def test_frames_npy(models, tmp_path):
    module, onnx_path = models["frames"]
    frames = np.random.default_rng(2).integers(0, 256, size=(3, 5, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "in.npy", frames)
    assert main(["predict", str(onnx_path), str(tmp_path / "in.npy"), "-o", "p.npy"]) == 0
    expected = torch_out(module, frames.astype(np.float32) / np.float32(255.0)) * 255.0
    np.testing.assert_allclose(np.load("p.npy"), expected, atol=1e-3)
    np.savez(tmp_path / "archive.npz", frames=frames)  # np.load reads it whatever its name
    (tmp_path / "archive.npz").rename(tmp_path / "archive.npy")
    assert main(["predict", str(onnx_path), str(tmp_path / "archive.npy"), "-o", "a.npy"]) == 3
    assert not Path("a.npy").exists()


def test_predict_runs_where_torch_cannot_be_imported(models, tmp_path):
    _, onnx_path = models["classify"]
    series = [np.random.default_rng(3).normal(size=(10, 2)) for _ in range(4)]
    long_table(series, ["a", "b"]).to_csv(tmp_path / "in.csv", index=False)
    args = ["predict", str(onnx_path), str(tmp_path / "in.csv"), "-o", "no_torch.csv"]
    blocked = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "from pipeline.cli import main\n"
        f"code = main({args!r})\n"
        "assert sys.modules['torch'] is None\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert main([*args[:-1], "with_torch.csv"]) == 0
    assert (tmp_path / "no_torch.csv").read_text() == (tmp_path / "with_torch.csv").read_text()


def _write_csv(path, frame):
    frame.to_csv(path, index=False)
    return str(path)


def test_bad_input(models, tmp_path, capsys):
    _, onnx_path = models["classify"]
    good = long_table([np.ones((10, 2)), np.ones((10, 2))], ["a", "b"])
    nan = good.copy()
    nan.loc[nan.index[3], "b"] = np.nan
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 10)
    broken = onnx.load(onnx_path)
    next(p for p in broken.metadata_props if p.key == "input_shape").value = '"oops"'
    onnx.save(broken, tmp_path / "broken.onnx")
    other = onnx.load(onnx_path)  # a third label: exit 1, IndexError
    labels = next(p for p in other.metadata_props if p.key == "labels")
    labels.value = json.dumps([*json.loads(labels.value), "extra"])
    onnx.save(other, tmp_path / "other.onnx")
    cases = {
        "missing column": (
            onnx_path,
            _write_csv(tmp_path / "m.csv", good.drop(columns="b")),
            ["m.csv: missing column(s) 'b'"],
        ),
        "nan": (onnx_path, _write_csv(tmp_path / "n.csv", nan), ["n.csv: column 'b' line 5"]),
        "short series": (
            onnx_path,
            _write_csv(tmp_path / "s.csv", good.iloc[:15]),
            ["series", "window of 10"],
        ),
        "corrupt model": (
            corrupt,
            _write_csv(tmp_path / "g.csv", good),
            ["corrupt.onnx: not a loadable ONNX model"],
        ),
        "broken metadata": (
            tmp_path / "broken.onnx",
            _write_csv(tmp_path / "b.csv", good),
            ["broken.onnx: the ONNX model's metadata is not a valid data contract", "input_shape"],
        ),
        "metadata of another model": (
            tmp_path / "other.onnx",
            _write_csv(tmp_path / "o.csv", good),
            ["other.onnx: its metadata does not match its graph (output shape, extra inputs: "],
        ),
        "a folder for the model": (  # 'model file not found'
            onnx_path.parent,
            _write_csv(tmp_path / "f.csv", good),
            [f"{onnx_path.parent}: is a folder; the model is its .onnx file (model.onnx)"],
        ),
        "a column twice": (
            onnx_path,
            _write_csv(tmp_path / "t.csv", good.assign(c=good.b).rename(columns={"c": "b"})),
            ["t.csv: column 'b' appears twice in the header"],
        ),
        "values its float32 arithmetic cannot hold": (
            onnx_path,
            _write_csv(tmp_path / "h.csv", good.assign(b=3e38)),
            ["h.csv: series 's0': its values on the model's scale are NaN or inf in float32"],
        ),
    }
    for name, (model, data, expected) in cases.items():
        code = main(["predict", str(model), data, "-o", "out.csv"])
        err = capsys.readouterr().err
        assert code == 3, name
        assert err.count("\n") == 1 and all(e in err for e in expected), (name, err)
        assert not list(tmp_path.glob("*out.csv*")), name


def test_stdin_and_one_column_for_id_and_time_are_refused(models, tmp_path, capsys):
    """`-` was 'file not found'; the same column for both, 'duplicate (time, time)'."""
    _, onnx_path = models["classify"]
    assert main(["predict", str(onnx_path), "-", "-o", "out.csv"]) == 3
    assert "-: predict reads a file, not standard input" in capsys.readouterr().err
    data = _write_csv(tmp_path / "g.csv", long_table([np.ones((10, 2))] * 2, ["a", "b"]))
    assert main(["predict", str(onnx_path), data, "-o", "out.csv", "--id-column", "time"]) == 3
    assert "--id-column and --time-column both name 'time'" in capsys.readouterr().err


def test_ids_stay_the_text_of_the_file(models, tmp_path):
    _, onnx_path = models["classify"]
    series = long_table([np.ones((10, 2))] * 3, ["a", "b"])
    series["series_id"] = series["series_id"].map({"s0": "007", "s1": "NA", "s2": "1e3"})
    data = _write_csv(tmp_path / "ids.csv", series)
    assert main(["predict", str(onnx_path), data, "-o", "ids_out.csv"]) == 0
    assert (tmp_path / "ids_out.csv").read_text().split()[1:] and sorted(
        line.split(",")[0] for line in (tmp_path / "ids_out.csv").read_text().split()[1:]
    ) == ["007", "1e3", "NA"]


@pytest.mark.parametrize(
    "model, rename",
    [("classify", "label"), ("forecast", "step")],
)
def test_an_input_column_named_as_an_output_column_is_refused(
    models, tmp_path, capsys, model, rename
):
    """It was overwritten: the ids by the labels, or by the step numbers."""
    _, onnx_path = models[model]
    features = ["a", "b"] if model == "classify" else ["x", "y"]
    series = long_table([np.ones((16, 2))] * 2, features)
    data = _write_csv(tmp_path / "in.csv", series.rename(columns={"series_id": rename}))
    assert main(["predict", str(onnx_path), data, "-o", "out.csv", "--id-column", rename]) == 3
    assert f"column {rename!r}: the predictions would hold two columns" in capsys.readouterr().err
    assert not Path("out.csv").exists()


def test_a_parquet_output_is_parquet_and_a_format_predict_does_not_write_is_refused(
    models, tmp_path, capsys
):
    """`-o f.parquet` wrote CSV text under that name, and a frames model `.npy` under any."""
    _, onnx_path = models["forecast"]
    series = [np.exp(np.random.default_rng(1).normal([0.5, 3.0], 0.2, size=(12, 2)))] * 2
    data = _write_csv(tmp_path / "in.csv", long_table(series, ["x", "y"]))
    assert main(["predict", str(onnx_path), data, "-o", "f.csv"]) == 0
    assert main(["predict", str(onnx_path), data, "-o", "f.Parquet"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet("f.Parquet"), pd.read_csv("f.csv"))
    for model, name, formats in (("forecast", "f.npy", ".csv or .parquet"),
                                 ("frames", "p.csv", ".npy")):  # fmt: skip
        given = data if model == "forecast" else str(tmp_path / "in.npy")
        np.save(tmp_path / "in.npy", np.zeros((1, 5, 1, 8, 8), np.uint8))
        assert main(["predict", str(models[model][1]), given, "-o", name]) == 3
        assert (
            capsys.readouterr()
            .err.strip()
            .endswith(
                f"{name}: a {'forecast' if model == 'forecast' else 'frames'} model's predictions "
                f"are written as {formats}; name the output so"
            )
        )
        assert not Path(name).exists()


@pytest.mark.parametrize("option", ["--id-column", "--time-column"])
def test_an_input_column_given_as_the_id_or_time_column_is_refused(
    models, tmp_path, capsys, option
):
    """It ordered the rows (the last window: the largest values) or split the series: a wrong
    forecast, exit 0."""
    _, onnx_path = models["forecast"]
    series = [np.exp(np.random.default_rng(1).normal([0.5, 3.0], 0.2, size=(12, 2)))] * 2
    data = _write_csv(tmp_path / "in.csv", long_table(series, ["x", "y"]))
    assert main(["predict", str(onnx_path), data, "-o", "out.csv", option, "y"]) == 3
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"{option} y: is one of the model's input columns; name the input's "
            f"{option[2:].split('-')[0]} column"
        )
    )
    assert not Path("out.csv").exists()


def test_an_output_that_overflowed_names_its_series():
    """The attention model's convolutions and batch norm turn inputs of 1e36 (finite on its
    scale) into NaN, where this test's small LSTM saturates: the check, on such an output."""
    out = np.array([[0.1, 0.9], [np.nan, np.nan]], np.float32)
    keys = pd.DataFrame({"series_id": ["a", "a", "b", "b"], "step": [1, 2, 1, 2]})
    for k in (["a", "b"], keys):
        with pytest.raises(DataError, match="in.csv: series 'b': the model's output from its"):
            _finite_or_raise(
                out, k, Path("in.csv"), "series_id", "the model's output from its values is"
            )


def test_a_streaming_step_model_is_refused_naming_it(models, tmp_path, capsys):
    module, _ = models["classify"]
    step = export_step(module, tmp_path / "model_step.onnx", "lstm")
    data = _write_csv(tmp_path / "g.csv", long_table([np.ones((10, 2))] * 2, ["a", "b"]))
    assert main(["predict", str(step), data, "-o", "out.csv"]) == 3
    err = capsys.readouterr().err
    assert "model_step.onnx: a streaming step model (state inputs h, c); predict takes" in err, err


def test_the_output_is_never_the_input_or_the_model(models, tmp_path, capsys):
    _, onnx_path = models["classify"]
    data = _write_csv(tmp_path / "g.csv", long_table([np.ones((10, 2))] * 2, ["a", "b"]))
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_path.read_bytes())
    for out, what in ((data, "input"), (model, "model")):
        before = Path(out).read_bytes()
        assert main(["predict", str(model), data, "-o", str(out)]) == 3
        assert f"is the {what}; -o takes a new path" in capsys.readouterr().err
        assert Path(out).read_bytes() == before


@pytest.mark.parametrize(
    "name, expected",
    [
        ("empty", "not a .npy array (No data left in file)"),
        ("text", "not a .npy array (pickled objects, or not .npy)"),
        ("no sequences", "shape [0, 5, 1, 8, 8]; the model needs [n, frames, 1, 8, 8]"),
        ("strings", "<U1 values; pixels are numbers 0..255"),
        ("negative", "pixel -1 at [0, 0, 0, 0, 0]; pixels are 0..255"),
        ("0..1", "pixels 0..0.5; the model reads 0..255"),
    ],
)
def test_frames_that_are_not_pixels_0_to_255(models, tmp_path, capsys, name, expected):
    _, onnx_path = models["frames"]
    path = tmp_path / "in.npy"
    shape = (0 if name == "no sequences" else 2, 5, 1, 8, 8)
    arrays = {
        "strings": np.full(shape, "a"),
        "negative": -np.ones(shape),
        "0..1": np.full(shape, 0.5),
    }
    if name in ("empty", "text"):
        path.write_text("" if name == "empty" else "hi\n")
    else:
        np.save(path, arrays.get(name, np.zeros(shape, np.uint8)))
    assert main(["predict", str(onnx_path), str(path), "-o", "p.npy"]) == 3
    err = capsys.readouterr().err
    assert f"in.npy: {expected}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "p.npy").exists()


def test_an_unreadable_input_or_model_is_permission_denied(models, tmp_path):
    _, onnx_path = models["classify"]
    data = _write_csv(tmp_path / "g.csv", long_table([np.ones((10, 2))] * 2, ["a", "b"]))
    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_path.read_bytes())
    for locked in (Path(data), model):
        locked.chmod(0)
        cmd = [sys.executable, "-m", "pipeline", "predict", str(model), data, "-o", "out.csv"]
        proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=without_file_rights)
        locked.chmod(0o644)
        assert proc.returncode == 8, proc.stderr
        assert proc.stderr == f"lstm-pipeline predict: error: {locked}: Permission denied\n"


def test_an_output_path_the_system_refuses_is_one_line(models, tmp_path, capsys):
    _, onnx_path = models["classify"]
    data = _write_csv(tmp_path / "g.csv", long_table([np.ones((10, 2))] * 2, ["a", "b"]))
    (tmp_path / "taken").write_text("a file")
    for out, code, expected in (
        ("taken/out.csv", 8, "taken/out.csv: cannot write there (File exists: "),
        ("n" * 300 + ".csv", 3, "nnn.csv: File name too long"),
    ):
        assert main(["predict", str(onnx_path), data, "-o", str(tmp_path / out)]) == code, out
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err


def test_a_log_model_names_the_cell_that_is_not_positive(models, tmp_path, capsys):
    """A model that log-transforms its inputs names the first value <= 0 it would read."""
    _, onnx_path = models["forecast"]
    table = long_table([np.full((14, 2), 2.0), np.full((14, 2), 2.0)], ["x", "y"])
    where = ((table.series_id == "s1") & (table.time == 9)).to_numpy()
    table.loc[where, "y"] = 0.0
    line = int(np.flatnonzero(where)[0]) + 2  # the header is line 1
    data = _write_csv(tmp_path / "z.csv", table)
    assert main(["predict", str(onnx_path), data, "-o", "out.csv"]) == 3
    err = capsys.readouterr().err
    assert f"z.csv: column 'y' line {line}: 0; the model log-transforms" in err, err
    assert err.count("\n") == 1 and not list(tmp_path.glob("*out.csv*"))


def test_a_log_forecaster_with_covariates_names_the_cell_that_is_not_positive(tmp_path):
    """The same check on the covariate path (a static column here)."""
    meta = DataMeta.model_validate({**FORECAST, "static": ["size"], "covariate_scaler": {
        "static": {"mean": [0.0], "std": [1.0]}}})  # fmt: skip
    table = long_table([np.full((14, 2), 2.0), np.full((14, 2), 2.0)], ["x", "y"])
    table["size"] = table.series_id.map({"s0": 1.0, "s1": 2.0})
    where = ((table.series_id == "s0") & (table.time == 13)).to_numpy()
    table.loc[where, "x"] = -1.0
    line = int(np.flatnonzero(where)[0]) + 2
    path = Path(_write_csv(tmp_path / "c.csv", table))
    with pytest.raises(DataError, match=f"c.csv: column 'x' line {line}: -1; the model log"):
        covariate_windows(path, meta, "series_id", "time")


def test_a_registry_lookup_in_a_store_that_does_not_exist_creates_none(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/typo/mlflow.db")
    assert main(["predict", "models:/m@champion", __file__, "-o", "out.csv"]) == 6
    err = capsys.readouterr().err
    assert "typo/mlflow.db does not exist" in err and err.count("\n") == 1, err
    assert not (tmp_path / "typo").exists()


def test_unreachable_tracking_server_fails_fast(monkeypatch, tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    code = main(["predict", "models:/m@champion", __file__, "-o", "out.csv"])
    assert code == 6 and uri in capsys.readouterr().err
    assert time.monotonic() - start < 15
    assert not (tmp_path / "out.csv").exists()


class _Stalls(http.server.BaseHTTPRequestHandler):
    """An MLflow server whose database is stuck: /health answers, the API never does."""

    def do_GET(self):
        if self.path != "/health":
            time.sleep(60)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_):
        pass


@pytest.fixture
def stalling_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stalls)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_server_that_stalls_or_is_not_http_is_exit_6(stalling_server, monkeypatch, capsys):
    """One try of 10 s (MLflow's own client: 120 s, 8 times), then the server named."""
    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(var, raising=False)  # restored after the test, as it was
    with socket.create_server(("127.0.0.1", 0)) as other:  # answers with bytes that are not HTTP
        threading.Thread(target=lambda: other.accept()[0].sendall(b"\x00\x01garbage\r\n\r\n"),
                         daemon=True).start()  # fmt: skip
        for uri in (stalling_server, f"http://127.0.0.1:{other.getsockname()[1]}"):
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
            start = time.monotonic()
            assert main(["predict", "models:/m@champion", __file__, "-o", "out.csv"]) == 6
            err = capsys.readouterr().err
            assert uri in err and err.count("\n") == 1, err
            assert time.monotonic() - start < 30


def test_a_named_pipe_is_written_in_place_and_refused_as_input(models, tmp_path, capsys):
    """`-o /dev/stdout` or a FIFO: the temp file's rename put a regular file in its place (as
    root, over /dev/stdout itself) and exit 0, and the reader got nothing. As input, a pipe
    (`<(cat in.csv)`) was 'file not found'."""
    _, onnx_path = models["forecast"]
    rng = np.random.default_rng(1)
    good = _write_csv(tmp_path / "in.csv", long_table([rng.normal(3.0, 0.2, (14, 2))], ["x", "y"]))
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    assert main(["predict", str(onnx_path), good, "-o", str(fifo)]) == 0
    reader.join(timeout=30)
    assert got and got[0].startswith("series_id,step,y\n") and len(got[0].splitlines()) == 5
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert capsys.readouterr().err.strip() == f"wrote {fifo}"  # stdout holds the predictions only

    assert main(["predict", str(onnx_path), str(fifo), "-o", "p.csv"]) == 3
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("out.fifo: not a regular file (a pipe?); save the input to a file first")
    )


def test_stdout_and_a_tilde_are_written_where_the_user_meant(models, tmp_path, monkeypatch):
    """`-o /dev/stdout > f.csv` renamed a temp file onto the /dev/stdout link itself (as root,
    /dev's own) and f.csv got the `wrote` line; `--output=~/x.csv` (no shell expands that `~`)
    made a folder named `~`; `-o - | head` ended in a BrokenPipeError line, exit 1."""
    _, onnx_path = models["forecast"]
    rng = np.random.default_rng(1)
    series = [rng.normal(3.0, 0.2, (14, 2)) for _ in range(800)]
    good = _write_csv(tmp_path / "in.csv", long_table(series, ["x", "y"]))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["predict", str(onnx_path), good, "--output=~/ref.csv"]) == 0
    reference = (tmp_path / "home" / "ref.csv").read_bytes()
    assert len(reference) > 1 << 16  # more than a pipe holds

    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")  # what /dev/stdout is, outside /dev
    log = tmp_path / "log.csv"
    log.write_text("earlier\n")
    command = [BIN / "lstm-pipeline", "predict", onnx_path, good, "-o"]
    for output in ("-", stdout):
        with open(log, "ab") as appended:  # `>> log.csv`
            done = subprocess.run([*command, output], stdout=appended, stderr=subprocess.PIPE)
        assert done.returncode == 0 and done.stderr.decode().startswith("wrote "), done.stderr
    assert stdout.is_symlink() and log.read_bytes() == b"earlier\n" + reference * 2

    reader = subprocess.Popen([*command, "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.read(10) == reference[:10]
    reader.stdout.close()  # `| head -c 10`
    assert reader.wait(60) == 141 and reader.stderr.read() == b""
    # `>&-`: the rename put a regular file over /dev/stdout (as root)
    closed = subprocess.run(
        [*command, "-"], stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.close(1)
    )
    assert closed.returncode == 8 and closed.stderr.strip().endswith(
        "/dev/stdout: names a descriptor that is not open for writing"
    )
    assert Path("/dev/stdout").is_symlink() and not list(Path("/dev").glob(".stdout.*"))


def test_out_of_memory_in_predict_names_the_input_not_the_training(
    models, tmp_path, capsys, monkeypatch
):
    _, onnx_path = models["forecast"]
    rng = np.random.default_rng(1)
    good = _write_csv(tmp_path / "in.csv", long_table([rng.normal(3.0, 0.2, (14, 2))], ["x", "y"]))

    def no_memory(*args):
        raise MemoryError("Unable to allocate 1.49 GiB for an array")

    monkeypatch.setattr("pipeline.predict.run_onnx", no_memory)
    assert main(["predict", str(onnx_path), good, "-o", "p.csv"]) == 8
    assert capsys.readouterr().err.strip() == (
        f"lstm-pipeline predict: error: {good}: out of memory running the model over 1 "
        "sequences (the longest 12 steps); predict fewer or shorter ones at a time"
    )
    assert not (tmp_path / "p.csv").exists()
