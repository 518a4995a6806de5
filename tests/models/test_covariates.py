"""Forecasters with covariates: the `future` and `static` inputs reach the prediction, in torch
and through ONNX Runtime, for each recurrent family and for a seed ensemble."""

import numpy as np
import pytest
import torch

from pipeline.checkpoint import Trained
from pipeline.export.onnx_export import export_module
from pipeline.export.parity import parity, run_torch
from pipeline.inference import session
from pipeline.meta import DataMeta
from pipeline.models.ensemble import Ensemble
from pipeline.training.module import SequenceModule
from tests.models.checker import FORECAST

META = {
    **FORECAST,
    "input_shape": [36, 4],  # x, y, then the future covariates' past: promo, day_of_week_sin
    "future": ["promo", "day_of_week_sin"],
    "calendar": [],
    "static": ["size"],
    "covariate_scaler": {"future": {"mean": [0, 0], "std": [1, 1]},
                         "static": {"mean": [0], "std": [1]}},
}  # fmt: skip
FAMILIES = {
    "lstm": {"name": "lstm", "hidden_size": 8, "num_layers": 1, "level_norm": True},
    "attention_lstm": {"name": "attention_lstm", "hidden_size": 8, "fcn_channels": [4, 8, 4]},
}


def _inputs(n: int, seed: int = 0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 36, 4)).astype(np.float32)
    extra = {"future": g.normal(size=(n, 12, 2)).astype(np.float32),
             "static": g.normal(size=(n, 1)).astype(np.float32)}  # fmt: skip
    return x, extra


@pytest.mark.parametrize("family", [*FAMILIES, "ensemble"])
def test_covariates_reach_the_forecast_in_torch_and_onnx(family, tmp_path):
    torch.manual_seed(0)
    meta = DataMeta.model_validate(META)
    assert meta.extra_inputs == ["future", "static"]
    if family == "ensemble":
        members = [SequenceModule(FAMILIES["lstm"], META).model for _ in range(2)]
        model = Ensemble(members, probabilities=False)
    else:
        model = SequenceModule(FAMILIES[family], META).model
    model.eval()
    path = export_module(Trained(model, meta), tmp_path / "model.onnx", "lstm")
    x, extra = _inputs(5)
    worst, _, shapes = parity(session(path), model, x, [1, 4], covariates=extra)
    assert worst <= 1e-5 and {t for _, t in shapes} == {18, 36, 72}
    y = run_torch(model, x, extra)[0]
    for name in extra:  # each covariate input changes the forecast
        moved = {**extra, name: extra[name] + 1.0}
        assert np.abs(run_torch(model, x, moved)[0] - y).max() > 1e-4, name
    with pytest.raises(ValueError, match="takes future covariates: pass `future`"):
        run_torch(model, x, {"static": extra["static"]})
