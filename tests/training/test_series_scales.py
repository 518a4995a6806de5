"""One global forecaster over series of very different scales (issue: per-series scaling), through
real prepare -> train -> export -> validate and predict."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sktime.datasets import load_airline

from pipeline.checkpoint import load_trained
from pipeline.cli import main
from pipeline.config import parse_config
from tests.conftest import write_params

pytestmark = pytest.mark.slow


def test_a_series_1000_times_larger_gets_a_forecast_1000_times_larger(workdir, params):
    from pipeline.data.prepare import prepare
    from pipeline.export.onnx_export import export
    from pipeline.export.validate import validate
    from pipeline.training.train import train

    airline = load_airline()
    y, months = airline.to_numpy(), airline.index.to_timestamp().strftime("%Y-%m-%d")
    table = pd.concat(
        pd.DataFrame({"series_id": sid, "time": months, "value": y * factor})
        for sid, factor in (("small", 1.0), ("large", 1000.0))
    )
    table.to_csv("series.csv", index=False)
    data = {"source": "csv", "path": "series.csv", "task": "forecast", "features": ["value"],
            "targets": ["value"], "window": 24, "horizon": 6, "val_size": 18,
            "test_size": 12}  # fmt: skip
    model = {"hidden_size": 16}  # else the default recipe: its `auto`s are decided by the data
    params["experiments"] = {"scales": {"data": data, "model": model,
                                        "fit": {"max_epochs": 20, "batch_size": 32}}}  # fmt: skip
    params["trainer"].update(progress_bar=False)
    cfg = parse_config(params)
    write_params(params)
    for stage in (prepare, train, export, validate):
        stage(cfg, "scales")

    model = load_trained("models/scales/model.ckpt").model
    assert model.scale_norm is True  # two series
    assert model.season_norm == 0  # season 12 found, left to the model (tests/test_tasks.py)
    report = json.loads(Path("metrics/scales/validate.json").read_text())
    assert report["passed"] and report["parity_max_scaled_diff"] <= 1e-5  # the norm is in the graph
    assert report["ets_mape"] > 0 and report["seasonal_naive_mape"] > 0
    assert main(["predict", "models/scales/model.onnx", "series.csv", "-o", "f.csv"]) == 0
    forecast = pd.read_csv("f.csv").set_index(["series_id", "step"])
    # one shared scaler maps the large series to an affine copy of the small one: the model
    # undoes it, so the forecasts differ by the factor alone; so do the intervals, each a
    # multiple of its window's own spread (one absolute width would fit neither series)
    for column in ("value", "value_lo80", "value_hi80", "value_lo50", "value_hi90"):
        large, small = forecast.loc["large", column], forecast.loc["small", column]
        np.testing.assert_allclose(large, 1000 * small, rtol=1e-4)


def test_train_json_keeps_the_digits_of_metrics_in_tiny_units():
    """A series in units of 1e-30: 8 decimals wrote its test MAE as 0.0 in train.json."""
    from types import SimpleNamespace

    from pipeline.training.train import ensemble_metrics, fit_metrics

    def fitted(mae):
        tested = {"test/mae": mae, "test/mape": 0.123456789}
        return SimpleNamespace(best_epoch=3, history=[0] * 5, best_val_loss=0.5, refit_epochs=0,
                               tested=tested)  # fmt: skip

    assert fit_metrics(fitted(4.7912345678e-32))["test/mae"] == 4.7912346e-32
    assert fit_metrics(fitted(4.7912345678e-32))["test/mape"] == 0.12345679
    spread = ensemble_metrics([fitted(4e-32), fitted(6e-32)])
    assert spread["members/test/mae_mean"] == 5e-32 and spread["members/test/mae_sd"] > 0
