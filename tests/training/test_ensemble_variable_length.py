"""A real prepare -> train -> export -> validate -> predict of a seed ensemble of the default
recipe on series of different lengths (the user's CSV with its own split column)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from pipeline.checkpoint import load_trained
from pipeline.cli import main
from pipeline.inference import session
from tests.conftest import module_workdir, write_params

pytestmark = pytest.mark.slow


def _series(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Rising or falling noisy ramps of 6 to 40 steps, two features."""
    rng = np.random.default_rng(seed)
    values, labels = [], []
    for i in range(n):
        steps = int(rng.integers(6, 41))
        sign = 1 if i % 2 else -1
        ramp = sign * np.linspace(0, 1, steps) + rng.normal(0, 0.2, steps)
        values.append(np.stack([ramp, rng.normal(size=steps)], axis=1))
        labels.append("up" if sign > 0 else "down")
    return values, labels


def _table(values, labels=None, split=None) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        for t, (a, b) in enumerate(v):
            row = {"series_id": f"s{i}", "time": t, "a": a, "b": b}
            if labels is not None:
                row |= {"label": labels[i], "split": split[i]}
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory, mlflow_template):
    with module_workdir(tmp_path_factory.mktemp("ensemble"), mlflow_template) as root:
        values, labels = _series(48, seed=0)
        split = ["test" if i % 4 == 3 else "train" for i in range(48)]
        _table(values, labels, split).to_csv("series.csv", index=False)
        data = {"source": "csv", "path": "series.csv", "task": "classification",
                "features": ["a", "b"], "label": "label"}  # fmt: skip
        write_params(
            {
                "trainer": {"max_epochs": 4, "progress_bar": False},
                "experiments": {
                    "mine": {
                        "data": data,
                        "fit": {"ensemble": 2, "batch_size": 8, "max_updates": 9},
                    }
                },
            }
        )
        codes = [main([stage, "mine"]) for stage in ("prepare", "train", "export", "validate")]
        yield root, codes


def test_every_stage_passes_and_parity_holds_with_mixed_lengths(run):
    root, codes = run
    assert codes == [0, 0, 0, 0]
    report = json.loads((root / "metrics/mine/validate.json").read_text())
    assert report["passed"] and report["parity_max_abs_diff"] < 1e-5
    longest = json.loads((root / "data/prepared/mine/meta.json").read_text())["input_shape"][0]
    assert [16, 2 * longest] in report["parity_shapes"]  # lengths mixed in each batch
    assert report["test_size"] == 12 and "int8_kept" in report


def test_one_onnx_file_averages_the_members_probabilities(run):
    root, _ = run
    trained = load_trained(root / "models/mine/model.ckpt")
    assert len(trained.model.members) == 2
    sess = session(root / "models/mine/model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["x", "lengths"]
    x = np.random.default_rng(1).normal(size=(3, 9, 2)).astype(np.float32)
    lengths = np.array([9, 4, 2])
    got = np.exp(sess.run(None, {"x": x, "lengths": lengths})[0])
    with torch.no_grad():
        probs = [
            torch.softmax(m(torch.from_numpy(x), torch.from_numpy(lengths))[0], -1).numpy()
            for m in trained.model.members
        ]
    np.testing.assert_allclose(got, np.mean(probs, axis=0), atol=1e-5)


def test_train_report_and_nested_member_runs(run):
    root, _ = run
    metrics = json.loads((root / "metrics/mine/train.json").read_text())
    assert metrics["members"] == 2
    assert {"members/test/acc_mean", "members/test/acc_sd", "member1/test/acc"} <= set(metrics)
    # fit.select: last keeps the weights of the last step, not an earlier checkpoint's; and
    # fit.max_updates: 9 ends the fit with the epoch that reaches 9 batches, before trainer's 4
    train = json.loads((root / "data/prepared/mine/meta.json").read_text())["sizes"]["train"]
    per_epoch = -(-train // 8)
    assert 9 < 4 * per_epoch
    ckpt = torch.load(root / "models/mine/model.ckpt", weights_only=False)
    assert ckpt["global_step"] == -(-9 // per_epoch) * per_epoch
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = client.search_runs(client.get_experiment_by_name("lstm-pipeline").experiment_id)
    parent = next(r for r in runs if r.info.run_name == "mine")
    members = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in members) == ["mine/member0", "mine/member1"]


def test_predict_takes_series_of_different_lengths(run, monkeypatch):
    root, _ = run
    values, _ = _series(5, seed=7)
    # in order of length, in chunks padded to their own longest (as if far longer than these)
    monkeypatch.setattr("pipeline.predict.CHUNK_VALUES", 100)
    _table(values).to_csv(root / "new.csv", index=False)
    out = root / "pred.csv"
    assert main(["predict", str(root / "models/mine/model.onnx"), str(root / "new.csv"),
                 "-o", str(out)]) == 0  # fmt: skip
    table = pd.read_csv(out)
    assert len(table) == 5 and set(table.label) <= {"up", "down"}
    # each series alone through the same file gives the same probabilities
    sess = session(root / "models/mine/model.onnx")
    meta = load_trained(root / "models/mine/model.ckpt").meta
    for i, v in enumerate(values):
        x = meta.to_model_scale(v.astype(np.float32))[None]
        probs = np.exp(sess.run(None, {"x": x, "lengths": np.array([len(v)])})[0][0])
        np.testing.assert_allclose(table.loc[i, ["prob_down", "prob_up"]], probs, atol=1e-5)


def test_predict_refuses_a_one_step_series_as_training_does(run, capsys):
    root, _ = run
    values, _ = _series(3, seed=7)
    _table([values[0], values[1][:1], values[2]]).to_csv(root / "short.csv", index=False)
    out = root / "short_pred.csv"
    assert main(["predict", str(root / "models/mine/model.onnx"), str(root / "short.csv"),
                 "-o", str(out)]) == 3  # fmt: skip
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "short.csv: series 's1' has 1 time step(s)" in err, err
    assert not out.exists()


def test_a_bidirectional_rnn_is_refused_before_a_run_opens(run, capsys):
    """It was 'unexpected ValueError' (exit 1) from the model's first batch, the run FAILED."""
    root, _ = run
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["experiments"]["mine"]["model"] = {"bidirectional": True}
    write_params(params, root / "bidirectional.yaml")
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    runs = len(client.search_runs(client.get_experiment_by_name("lstm-pipeline").experiment_id))
    assert main(["train", "mine", "--params", str(root / "bidirectional.yaml")]) == 2
    assert capsys.readouterr().err == (
        "lstm-pipeline train: error: experiments.mine.model.bidirectional: True; the data's "
        "series have different lengths (padded): they need a unidirectional RNN without "
        "level_norm, scale_norm or season_norm\n"
    )
    assert (
        len(client.search_runs(client.get_experiment_by_name("lstm-pipeline").experiment_id))
        == runs
    )
