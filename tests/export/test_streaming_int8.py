"""Streaming step models and int8 quantization, through real ONNX Runtime sessions."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.data.prepared import Prepared
from pipeline.errors import DataError
from pipeline.export.onnx_export import export_module, export_step
from pipeline.export.parity import streaming_report
from pipeline.export.quantize import int8_report, quantize_int8
from pipeline.inference import run_onnx, session
from pipeline.io import atomic_dir
from pipeline.tracking import tracking_uri
from pipeline.training.module import SequenceModule
from tests.conftest import write_params

META = {"task": "classification", "input_shape": [20, 3], "labels": ["a", "b", "c"]}
X = np.random.default_rng(0).normal(size=(8, 20, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "lstm", "cell": "lstm", "num_layers": 2},
        {"name": "lstm", "cell": "gru", "num_layers": 2},
        {"name": "lstm", "cell": "peephole", "num_layers": 1},
        {"name": "attention_lstm", "cell": "lstm", "num_layers": 1},
        {"name": "attention_lstm", "cell": "gru", "num_layers": 2},
    ],
    ids=lambda c: f"{c['name']}-{c['cell']}",
)
def test_step_by_step_equals_full_sequence(tmp_path, cfg):
    torch.manual_seed(0)
    module = SequenceModule({**cfg, "hidden_size": 16}, META).eval()
    path = export_step(module, tmp_path / "model_step.onnx", cfg["name"])
    inputs = [i.name for i in session(path).get_inputs()]
    assert inputs[0] == "x" and "h" in inputs
    assert ("att_max" in inputs) == (cfg["name"] == "attention_lstm")
    props = {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props}
    assert props["streaming_state"] == inputs[1:] and props["task"] == "classification"
    # prediction (and, for attention, every step's weight) at half and full length, batch 1 and 8
    report = streaming_report(tmp_path, module.model, X)
    assert report["stream_supported"] and report["stream_max_abs_diff"] <= 1e-5
    assert report["stream_shapes"] == [[1, 10], [1, 20], [8, 10], [8, 20]]


def test_a_step_model_of_another_model_is_named_not_fed(tmp_path):
    """A stale or copied model_step.onnx with another hidden size: ORT's 'Got invalid
    dimensions for input: h' was an unexpected error (exit 1)."""
    cfg = {"name": "lstm", "cell": "gru", "num_layers": 1}
    export_step(
        SequenceModule({**cfg, "hidden_size": 8}, META).eval(), tmp_path / "model_step.onnx", "lstm"
    )
    model = SequenceModule({**cfg, "hidden_size": 16}, META).model.eval()
    with pytest.raises(DataError) as err:
        streaming_report(tmp_path, model, X)
    assert str(err.value) == (
        f"{tmp_path}/model_step.onnx: made for another model (its state input 'h' is [1, 'batch', "
        "8], the model's [1, 1, 16]); run the export stage"
    )


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"bidirectional": True}, "bidirectional"),
        ({"level_norm": True}, "level_norm"),
        ({"name": "attention_lstm", "fcn_channels": [4, 4, 4]}, "fcn_channels"),
    ],
)
def test_non_causal_models_have_no_step_model(change, reason):
    forecast = {"task": "forecast", "input_shape": [12, 1], "horizon": 3, "targets": ["y"]}
    meta = {**forecast, "target_index": [0], "scaler": {"mean": [0.0], "std": [1.0]}}
    model = SequenceModule({"name": "lstm", "hidden_size": 8, **change}, meta).model
    assert reason in model.streaming_unsupported()


def test_int8_model_quantizes_the_lstm_and_keeps_metadata(tmp_path):
    torch.manual_seed(0)
    module = SequenceModule({"name": "lstm", "cell": "lstm", "hidden_size": 32}, META).eval()
    fp32 = export_module(module, tmp_path / "model.onnx", "lstm")
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx")
    model = onnx.load(int8)
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= ops and "LSTM" not in ops
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["family"] == "lstm" and props["quantization"] == "dynamic int8"
    # seq stays dynamic; int8 weights move logits a little, not a lot
    x = np.concatenate([X, X], axis=1)
    got, expected = run_onnx(session(int8), x)[0], run_onnx(session(fp32), x)[0]
    assert np.abs(got - expected).max() < 0.05


def session_meta(path: str) -> dict:
    return session(path).get_modelmeta().custom_metadata_map


@pytest.mark.slow
def test_validate_stage_checks_streaming_and_keeps_int8_within_the_bound(
    workdir, params, monkeypatch, capsys
):
    """prepare -> train (2 epochs) -> export -> validate on a causal attention-LSTM forecaster."""
    from pipeline.data.prepare import prepare
    from pipeline.export.onnx_export import export
    from pipeline.export.validate import validate
    from pipeline.training.train import train

    exp = params["experiments"]["attention_lstm_airline"]
    exp["model"].update(level_norm=False, season_norm=0, hidden_size=16)  # causal: streams
    exp["validate"] = {"beat_baseline": False, "int8_max_drop": 0.01}
    params["experiments"] = {"att": exp}
    params["trainer"].update(max_epochs=2, progress_bar=False)
    cfg = parse_config(params)
    write_params(params)
    for stage in (prepare, train, export):
        stage(cfg, "att")
    assert (Path("models/att/streaming/model_step.onnx")).exists()

    report = validate(cfg, "att")
    saved = json.loads(Path("metrics/att/validate.json").read_text())
    assert saved == json.loads(json.dumps(report)) and saved["passed"]
    assert saved["stream_supported"] and saved["stream_max_abs_diff"] <= 1e-5
    assert saved["int8_kept"] and abs(saved["int8_metric_drop"]) <= 0.01
    assert Path("models/att/int8/model.onnx").exists()
    assert not any(isinstance(v, float) and "latency" in k for k, v in saved.items())
    # conformal intervals calibrated on the validation split, checked on the test split
    intervals = json.loads(session_meta("models/att/model.onnx")["intervals"])
    assert set(intervals) <= {"0.5", "0.8", "0.9", "0.95"} and "0.8" in intervals
    assert 0 < saved["interval_80_coverage"] <= 1 and saved["interval_80_width"] > 0
    assert saved["ets_mape"] > 0  # the classical baseline, fitted on the train part
    client = MlflowClient(tracking_uri())
    run = client.search_runs([client.get_experiment_by_name("lstm-pipeline").experiment_id])[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.onnx", "model_step.onnx", "int8"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "int8")] == ["int8/model.onnx"]

    # out of memory in the parity check: its own key named, not the training's advice
    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr("pipeline.export.validate.parity", no_memory)
    before = Path("metrics/att/validate.json").read_bytes()
    assert main(["validate", "att"]) == 8
    assert capsys.readouterr().err.strip() == (
        "lstm-pipeline validate: error: out of memory checking parity at up to 16 x 72 steps "
        "(twice the test series' length); lower validate.parity_batch_sizes"
    )
    assert Path("metrics/att/validate.json").read_bytes() == before
    assert run.data.metrics["int8/latency_ms_batch1"] > 0  # timings go to MLflow only

    # A float model scored perfect makes any int8 error a drop beyond the bound: the int8 file
    # is not kept, and the one kept before is removed.
    x, y = Prepared.load("data/prepared/att").arrays("test")
    x = np.ascontiguousarray(x, dtype=np.float32)
    with atomic_dir(Path("models/att/int8")) as keep:
        entries, timings = int8_report(
            cfg.experiment("att"),
            Path("models/att"),
            keep,
            {**saved, "mape": 0.0},
            x,
            y,
            Prepared.load("data/prepared/att").meta,
        )
    assert not entries["int8_kept"] and entries["int8_metric_drop"] > 0.01
    assert not Path("models/att/int8/model.onnx").exists()
    reason = json.loads(Path("models/att/int8/not_kept.json").read_text())["reason"]
    assert reason.startswith("mape drops by ") and "validate.int8_max_drop (0.01)" in reason
    assert timings["int8/latency_ms_batch1"] > 0
