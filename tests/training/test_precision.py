"""fit.precision: an experiment's own training precision; auto is bf16-mixed only where the device
computes bf16 natively. The weights stay float32, so export and parity are as for any model."""

import json
import os

import torch
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.config.run import Fit, Trainer
from pipeline.training.trainer import bf16_native, fit_precision
from tests.conftest import write_params

EXP = "conv_lstm_moving_digits"


def test_auto_falls_back_to_float32_where_bf16_would_be_emulated(monkeypatch):
    cpu = Trainer()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert fit_precision(cpu, Fit(precision="auto")) == "32-true"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert fit_precision(cpu, Fit(precision="auto")) == "bf16-mixed"
    assert fit_precision(cpu, Fit(precision="32-true")) == "32-true"
    assert fit_precision(cpu, Fit()) == "32-true"  # none: the trainer's
    assert fit_precision(Trainer(precision="bf16-mixed"), Fit()) == "bf16-mixed"
    # fp16 is for GPUs: Lightning ran 16-mixed as bf16-mixed on a CPU, and the run said 16-mixed
    assert fit_precision(cpu, Fit(precision="16-mixed")) == "bf16-mixed"
    assert fit_precision(Trainer(accelerator="gpu"), Fit(precision="16-mixed")) == "16-mixed"


def test_an_auto_fit_says_what_it_chose_and_exports_float32_weights(workdir, params, capfd):
    exp = params["experiments"][EXP]
    assert exp["fit"]["precision"] == "auto"  # the recipe's
    exp["data"].update(train_size=32, val_size=16, test_size=16)
    exp["model"].update(hidden_channels=4, num_layers=1)
    exp["fit"].update(max_epochs=2)
    exp["validate"].update(max={}, beat_baseline=False)
    params.update(experiments={EXP: exp}, trainer={**params["trainer"], "progress_bar": False})
    write_params(params)
    for stage in ("prepare", "train", "export", "validate"):
        assert main([stage, EXP]) == 0, stage

    chosen = "bf16-mixed" if bf16_native("cpu") else "32-true"  # bf16-mixed on the dev machine
    assert f"fit.precision: auto -> {chosen}" in capfd.readouterr().out
    ckpt = torch.load(workdir / f"models/{EXP}/model.ckpt", weights_only=False)
    dtypes = {t.dtype for t in ckpt["state_dict"].values() if t.is_floating_point()}
    assert dtypes == {torch.float32}
    report = json.loads((workdir / f"metrics/{EXP}/validate.json").read_text())
    assert report["parity_max_scaled_diff"] <= 1e-5
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # not the global URI a fit set
    experiment = client.get_experiment_by_name("lstm-pipeline")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    assert run.data.tags["precision"] == chosen
