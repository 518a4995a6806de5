"""model.filter_temperature: the fit's validation (early stopping, selection) sees the motion
filter as trained; the kept checkpoint, its test metrics and everything after it are sharpened."""

import json

import numpy as np

from pipeline.checkpoint import load_trained
from pipeline.cli import main
from pipeline.data.prepared import Prepared
from pipeline.export.parity import run_torch
from tests.conftest import write_params

EXP = "conv_lstm_moving_digits"


def mse(model, prepared: Prepared, split: str) -> float:
    x, y = prepared.arrays(split)
    return float(((run_torch(model, np.asarray(x, np.float32))[0] - y) ** 2).mean())


def test_the_filter_is_sharpened_after_selection_not_during_the_fit(workdir, params):
    exp = params["experiments"][EXP]
    exp["data"].update(train_size=32, val_size=16, test_size=16)
    # on pixels, batch 8 and lr 2e-3: 12 steps of this tiny model on patches barely move the
    # filter from uniform, and the sharpening would change the test MSE by too little to tell
    exp["model"].update(hidden_channels=4, num_layers=1, filter_temperature=0.5, patch_size=1)
    # float32: the metrics below are compared to 1e-6 (bf16 autocast moves them by ~1e-6)
    exp["fit"].update(max_epochs=3, select="best", precision="32-true", batch_size=8, lr=0.002)
    params.update(experiments={EXP: exp}, trainer={**params["trainer"], "progress_bar": False})
    write_params(params)
    assert main(["prepare", EXP]) == 0
    assert main(["train", EXP]) == 0

    metrics = json.loads((workdir / f"metrics/{EXP}/train.json").read_text())
    model = load_trained(workdir / f"models/{EXP}/model.ckpt").model
    prepared = Prepared.load(workdir / f"data/prepared/{EXP}")
    assert float(model.temperature) == 0.5
    assert abs(mse(model, prepared, "test") - metrics["test/mse"]) < 1e-6
    model.temperature.fill_(1.0)  # as the fit's validation saw the kept weights
    assert abs(mse(model, prepared, "val") - metrics["best_val_loss"]) < 1e-6
    assert abs(mse(model, prepared, "test") - metrics["test/mse"]) > 1e-4
