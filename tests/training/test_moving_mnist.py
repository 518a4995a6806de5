"""conv_lstm_moving_mnist, the GPU-sized next-frame experiment (64x64 frames, 10 -> 10), as
`lstm-pipeline compose` adds it, shrunk to a few sequences and a tiny model so that it runs end
to end on the CPU (the full run needs a GPU: README, Next-frame quality). test_gpu.py runs the same
under the `gpu` preset where CUDA is present."""

import json

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import compose
from pipeline.evaluation import lost_to_baseline
from pipeline.tasks import TASKS
from tests.conftest import write_params

EXP = "conv_lstm_moving_mnist"


@pytest.mark.slow
def test_the_moving_mnist_experiment_runs_end_to_end_shrunk(workdir, capfd):
    run_shrunk(workdir, "cpu")
    # validate.beat_baseline off: the stage passes, and says where copying the last frame wins
    report = json.loads((workdir / f"metrics/{EXP}/validate.json").read_text())
    lost = lost_to_baseline(report, TASKS["frames"])
    assert lost  # one epoch on 8 sequences
    said = [line for line in capfd.readouterr().out.splitlines() if "naive prediction" in line]
    assert said == [
        f"{EXP}: {line}: no better than the naive prediction (validate.beat_baseline: true fails "
        "the stage on it)"
        for line in lost
    ]


def run_shrunk(workdir, trainer: str) -> None:
    raw = yaml.safe_load(compose([f"trainer={trainer}", f"+experiment@experiments.{EXP}={EXP}"]))
    exp = raw["experiments"][EXP]
    data = exp["data"]
    assert (data["frame_size"], data["input_frames"], data["output_frames"]) == (64, 10, 10)
    data.update(train_size=8, val_size=4, test_size=4)
    exp["model"].update(hidden_channels=4)
    exp["fit"].update(max_epochs=1)
    exp["validate"].update(max={}, beat_baseline=False)  # one epoch on 8 sequences
    raw.update(
        experiments={EXP: exp}, trainer={**raw["trainer"], "progress_bar": False, "num_workers": 0}
    )
    write_params(raw)
    for stage in ("prepare", "train", "export", "validate"):
        assert main([stage, EXP]) == 0, stage

    report = json.loads((workdir / f"metrics/{EXP}/validate.json").read_text())
    assert report["passed"] and report["test_size"] == 4
    assert report["parity_max_abs_diff"] <= 1e-4
    assert len(report["mse_per_step"]) == len(report["ssim_per_step"]) == 10
    assert report["sse_per_frame"] == pytest.approx(report["mse"] * 64 * 64, rel=1e-5)
    assert (workdir / f"plots/{EXP}/validate/frames.png").stat().st_size > 0
