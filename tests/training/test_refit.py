"""fit.refit: the epoch count chosen on val, then a second fit on train + val that is saved."""

import json
import math
import os

import numpy as np
import torch
from mlflow import MlflowClient

from pipeline.checkpoint import load_trained
from pipeline.cli import main
from tests.conftest import write_params

EXP = "lstm_italypowerdemand"


def test_refit_trains_on_train_and_val_for_the_chosen_epochs_and_saves_that_model(workdir, params):
    params["experiments"] = {EXP: params["experiments"][EXP]}
    params["trainer"]["progress_bar"] = False
    params["experiments"][EXP]["fit"].update(max_epochs=6, batch_size=16, refit=True)
    write_params(params)
    assert main(["prepare", EXP]) == 0
    assert main(["train", EXP]) == 0

    metrics = json.loads((workdir / f"metrics/{EXP}/train.json").read_text())
    assert metrics["epochs_run"] == 6
    assert metrics["refit_epochs"] == metrics["best_epoch"] + 1

    # model.ckpt is the refit: its steps are refit_epochs passes over train + val.
    prepared = workdir / f"data/prepared/{EXP}"
    n_train, n_val = (len(np.load(prepared / f"x_{s}.npy")) for s in ("train", "val"))
    ckpt = torch.load(workdir / f"models/{EXP}/model.ckpt", weights_only=False)
    assert ckpt["global_step"] == metrics["refit_epochs"] * math.ceil((n_train + n_val) / 16)

    # ...and the model train.json's test metrics describe.
    module = load_trained(workdir / f"models/{EXP}/model.ckpt")
    x, y = (np.load(prepared / f"{a}_test.npy") for a in ("x", "y"))
    with torch.no_grad():
        predicted = module.model(torch.from_numpy(x)).argmax(-1).numpy()
    assert abs((predicted == y).mean() - metrics["test/acc"]) < 1e-6

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("lstm-pipeline").experiment_id])
    assert run.data.metrics["refit_epochs"] == metrics["refit_epochs"]
    assert abs(run.data.metrics["test/acc"] - metrics["test/acc"]) < 1e-6
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 6  # selection only
