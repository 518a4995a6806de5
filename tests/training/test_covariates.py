"""Forecast covariates with roles (past features, future, static, calendar) through real
prepare -> train -> export -> validate, and predict from a CSV that gives the horizon's future
covariates."""

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.data.prepared import Prepared
from pipeline.inference import run_onnx, session
from tests.conftest import REPO, module_workdir, write_params

pytestmark = pytest.mark.slow

# the file's own id and time columns: predict reads them from the model, told nothing
DATA = {"source": "csv", "path": "sales.csv", "task": "forecast", "features": ["value"],
        "targets": ["value"], "window": 14, "horizon": 7, "val_size": 28, "test_size": 28,
        "season": 7, "freq": "D", "id_column": "store", "time_column": "day"}  # fmt: skip
COVARIATES = {"future": ["promo"], "static": ["size"], "calendar": ["day_of_week"]}


def sales() -> pd.DataFrame:
    """Daily sales of three stores: a level set by the store's size, +10 on promotion days (a
    coin flip, known ahead), +3 at weekends."""
    rng, frames = np.random.default_rng(0), []
    for store, size in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        days = pd.date_range("2024-01-01", periods=200, freq="D")
        promo = rng.integers(0, 2, len(days))
        value = 20 * size + 10 * promo + 3 * (days.dayofweek >= 5) + rng.normal(0, 0.3, 200)
        frames.append(pd.DataFrame({"store": store, "day": days.strftime("%Y-%m-%d"),
                                    "value": value, "promo": promo, "size": size}))  # fmt: skip
    return pd.concat(frames)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    """Two forecasters of the same sales, with and without the covariates."""
    import yaml

    from pipeline.data.prepare import prepare
    from pipeline.export.onnx_export import export
    from pipeline.export.validate import validate
    from pipeline.training.train import train

    with module_workdir(tmp_path_factory.mktemp("covariates"), mlflow_template) as root:
        sales().to_csv("sales.csv", index=False)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        common = {"model": {"name": "lstm", "hidden_size": 16, "num_layers": 1},
                  "fit": {"max_epochs": 30, "batch_size": 32}}  # fmt: skip
        params["experiments"] = {
            "cov": {"data": {**DATA, **COVARIATES}, **common},
            "plain": {"data": DATA, **common},
        }
        params["trainer"].update(progress_bar=False)
        cfg = parse_config(params)
        write_params(params)
        for exp in ("cov", "plain"):
            for stage in (prepare, train, export, validate):
                stage(cfg, exp)
        yield root


def report(root: Path, exp: str) -> dict:
    return json.loads((root / f"metrics/{exp}/validate.json").read_text())


def test_the_onnx_model_takes_named_covariate_inputs_and_they_pay(trained):
    graph = onnx.load(trained / "models/cov/model.onnx").graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in graph.input}  # fmt: skip
    # x: the value and the future covariates' past (promo, day-of-week sin and cos)
    assert dims == {"x": ["batch", "seq", 4], "future": ["batch", 7, 3], "static": ["batch", 1]}
    cov, plain = report(trained, "cov"), report(trained, "plain")
    assert cov["passed"] and cov["parity_max_scaled_diff"] <= 1e-5  # at several batches, lengths
    assert not cov["stream_supported"]
    # promotions drive the sales: only the model that knows them ahead forecasts them
    assert cov["mae"] < 0.6 * min(plain["mae"], cov["seasonal_naive_mae"], cov["ets_mae"])


def test_predict_reads_the_horizon_rows_and_reproduces_validate(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained)
    frame = sales()
    frame["value"] = frame["value"].astype(object)
    ahead = frame.groupby("store").cumcount(ascending=False) < 7  # each store's last week
    frame.loc[ahead, "value"] = None  # unknown: the forecast's horizon, promotions given
    frame = frame.sample(frac=1, random_state=0)  # any row order
    frame.to_csv("ahead.csv", index=False)
    assert main(["predict", "models/cov/model.onnx", "ahead.csv", "-o", "out.csv"]) == 0
    got = pd.read_csv("out.csv")
    assert list(got.columns[:3]) == ["store", "day", "step"]
    assert list(got.day[:7]) == [str(d.date()) for d in pd.date_range("2024-07-12", periods=7)]

    prepared = Prepared.load("data/prepared/cov")
    x, _ = prepared.arrays("test")
    out = run_onnx(session("models/cov/model.onnx"), x, prepared.extra_inputs("test"))[0]
    last = np.cumsum(prepared.npy("windows_test")[:, 1]) - 1  # each store's last test window
    expected = prepared.meta.to_original(out[last])[..., 0]
    np.testing.assert_allclose(got.value.to_numpy().reshape(3, 7), expected, rtol=1e-5)

    bad = {
        "no_promo.csv": (frame.drop(columns="promo"), "missing column(s) 'promo'"),
        "short.csv": (
            frame[frame.day != "2024-07-18"],
            "series 'a' ends with 6 rows without value; the model forecasts 7 steps and reads "
            "promo on each: give 7 rows after the last observed one",
        ),
        "empty_promo.csv": (
            frame.assign(promo=frame.promo.where(frame.day != "2024-07-15")),
            "column 'promo' line",
        ),
    }
    for name, (table, expected_error) in bad.items():
        table.to_csv(name, index=False)
        assert main(["predict", "models/cov/model.onnx", name, "-o", "bad.csv"]) == 3, name
        err = capsys.readouterr().err
        assert expected_error in err and err.strip().count("\n") == 0, err
    assert not Path("bad.csv").exists()


def test_a_release_gives_an_input_example_of_every_input(trained, monkeypatch, capsys, tmp_path):
    """It logged x alone, as an array: MLflow printed a tensor dump saying the example missed
    the signature's inputs, and the version's example could not be served."""
    import mlflow
    import yaml

    from pipeline.io import file_digest

    monkeypatch.chdir(trained)
    onnx_file, report_file = "models/cov/model.onnx", "metrics/cov/validate.json"
    stage = {"deps": [{"path": onnx_file, "md5": file_digest(onnx_file, "md5")}],
             "outs": [{"path": report_file, "md5": file_digest(report_file, "md5")}]}  # fmt: skip
    Path("dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"validate@cov": stage}})
    )
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["release"].update(beat_baseline=False, max={}, min={})
    write_params(params, Path("release.yaml"))
    assert main(["release", "--exp", "cov", "--params", "release.yaml"]) == 0
    assert "missing inputs" not in capsys.readouterr().err
    name = params["release"]["model_name"].format(exp="cov")
    folder = mlflow.artifacts.download_artifacts(f"models:/{name}/1", dst_path=str(tmp_path))
    example = json.loads((Path(folder) / "serving_input_example.json").read_text())["inputs"]
    shapes = {key: np.shape(value) for key, value in example.items()}
    assert shapes == {"x": (2, 14, 4), "future": (2, 7, 3), "static": (2, 1)}
