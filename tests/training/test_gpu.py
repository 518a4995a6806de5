"""The `gpu` and `ddp` trainer presets, end to end through the CLI. They run only where CUDA is
present (no GPU machine runs this suite's CI); on one, a shrunk experiment trains in bf16-mixed,
exports and passes validate's parity check, and under `ddp` (NCCL, one process per GPU) writes
one model from rank zero."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.config import CONF_DIR
from tests.conftest import write_params
from tests.training.test_moving_mnist import run_shrunk

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
EXP = "attention_lstm_gunpoint"  # cuDNN LSTM + convolutions (the default recipe)


@pytest.mark.parametrize("preset", ["gpu", "ddp"])
def test_gpu_presets_train_export_and_validate(workdir, params, preset):
    params["trainer"] = yaml.safe_load((CONF_DIR / "trainer" / f"{preset}.yaml").read_text())
    params["trainer"].update(max_epochs=3, progress_bar=False, num_workers=0)
    params["experiments"] = {EXP: params["experiments"][EXP]}
    params["experiments"][EXP]["validate"] = {"min": {"accuracy": 0.0}}
    write_params(params)
    cli = Path(sys.executable).parent / "lstm-pipeline"  # ddp re-launches it once per GPU
    for stage in ("prepare", "train", "export", "validate"):
        proc = subprocess.run([cli, stage, EXP], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-3000:]}"
    report = json.loads((workdir / f"metrics/{EXP}/validate.json").read_text())
    assert report["passed"] and report["parity_max_abs_diff"] <= 1e-4
    train = json.loads((workdir / f"metrics/{EXP}/train.json").read_text())
    assert train["epochs_run"] == 3


def test_the_moving_mnist_experiment_on_the_gpu_preset(workdir):
    run_shrunk(workdir, "gpu")
