import json

import numpy as np
import onnx
import pytest
import torch

from pipeline.export.onnx_export import (
    ExportError,
    export_module,
    rnn_nodes_or_raise,
    symbolic_dims_or_raise,
)
from pipeline.export.parity import parity
from pipeline.inference import session
from pipeline.training.module import SequenceModule
from tests.conftest import REPO

META = {
    "task": "forecast",
    "input_shape": [36, 2],
    "horizon": 12,
    "targets": ["y"],
    "target_index": [1],
    "transform": "log",
    "window": 36,
    "season": 12,
    "features": ["x", "y"],
    "scaler": {"mean": [0.0, 5.0], "std": [1.0, 0.3]},
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    cfg = {
        "name": "lstm",
        "cell": "lstm",
        "hidden_size": 16,
        "num_layers": 2,
        "bidirectional": True,
        "level_norm": True,
    }
    module = SequenceModule(cfg, META).eval()
    path = export_module(module, tmp_path_factory.mktemp("onnx") / "model.onnx", "lstm")
    return module, path


def test_inputs_are_symbolic_and_metadata_is_carried(exported):
    _, path = exported
    model = onnx.load(path)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"] and dims[2].dim_value == 2
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert props["task"] == "forecast" and props["family"] == "lstm"
    assert props["scaler"] == META["scaler"] and props["horizon"] == 12


def test_onnx_runtime_matches_torch_at_other_batch_and_sequence_lengths(exported):
    module, path = exported
    x = np.random.default_rng(0).normal(size=(5, 36, 2)).astype(np.float32)
    worst, scaled, shapes = parity(session(path), module.model, x, [1, 3, 8])
    assert worst <= 1e-5 and scaled <= worst  # scaled: divided by max(1, output magnitude)
    assert {t for _, t in shapes} == {18, 36, 72}


def test_a_session_uses_every_core_only_when_asked(exported):
    """validate runs ONNX Runtime at trainer.threads: one (the reports' order of float sums),
    or with `threads: null` (the gpu and ddp presets) one thread per core."""
    module, path = exported
    assert session(path).get_session_options().intra_op_num_threads == 1
    every_core = session(path, None)
    assert every_core.get_session_options().intra_op_num_threads == 0  # ORT: one per core
    x = np.random.default_rng(1).normal(size=(3, 36, 2)).astype(np.float32)
    worst, _, _ = parity(every_core, module.model, x, [3])
    assert worst <= 1e-5


def test_fixed_dims_are_refused():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 24, 1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 24, 1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    with pytest.raises(ExportError, match=r"fixed dims .*seq \(axis 1\) = 24"):
        symbolic_dims_or_raise(onnx.helper.make_model(graph))


def test_export_does_not_depend_on_the_data_length(exported, tmp_path):
    """The exporter traces a short example: a 1,000-step model is the same graph (one native
    LSTM node per stack, no unrolled steps), and it matches torch at 1,000 steps."""
    module, path = exported
    long = SequenceModule(module.hparams.model_cfg, {**META, "input_shape": [1000, 2]}).eval()
    long.load_state_dict(module.state_dict())
    long_path = export_module(long, tmp_path / "long.onnx", "lstm")
    ops = [[n.op_type for n in onnx.load(p).graph.node] for p in (path, long_path)]
    assert ops[0] == ops[1] and ops[0].count("LSTM") == 2  # 2 bidirectional layers
    x = np.random.default_rng(1).normal(size=(2, 1000, 2)).astype(np.float32)
    worst, _, _ = parity(session(long_path), long.model, x[:, :500], [2])
    assert worst <= 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_an_export_runs_no_rnn_while_loop_and_leaves_torch_as_it_was(monkeypatch, tmp_path, cell):
    """torch.onnx's capture step would run each LSTM/GRU as a while_loop that torch compiles
    (seconds per export) to learn shapes only: it must not run, and torch's hooks are back after."""
    from torch.export import _patches

    hooks = [f"register_{c}_while_loop_decomposition" for c in ("lstm", "gru")]
    before = [getattr(_patches, name) for name in hooks]
    layer, ran = f"one_layer_while_loop_{cell}", []
    run_layer = getattr(_patches, layer)
    monkeypatch.setattr(_patches, layer, lambda *a, **k: ran.append(1) or run_layer(*a, **k))
    module = SequenceModule({"name": "lstm", "cell": cell, "hidden_size": 4}, META).eval()
    export_module(module, tmp_path / "model.onnx", "lstm")
    assert ran == [] and [getattr(_patches, name) for name in hooks] == before


def test_a_graph_that_lost_its_rnn_is_refused():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "seq", 1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [x])
    with pytest.raises(ExportError, match="0 LSTM/GRU nodes for 1 RNN modules"):
        rnn_nodes_or_raise(torch.nn.GRU(1, 4), onnx.helper.make_model(graph))


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04 truncated"])
def test_an_unreadable_checkpoint_is_one_data_error_naming_it(tmp_path, content):
    from pipeline.checkpoint import load_trained
    from pipeline.errors import DataError

    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: not a model checkpoint of this pipeline"):
        load_trained(path)


def test_the_file_carries_no_source_paths_and_is_the_same_in_every_clone(exported):
    """The exporter's stack traces named this checkout's files: a clone elsewhere wrote other
    bytes for the same checkpoint (dvc.lock changed, `dvc checkout` found nothing in the cache)."""
    _, path = exported
    data = path.read_bytes()
    assert str(REPO).encode() not in data and b"site-packages" not in data
    graph = onnx.load(path).graph
    assert not any(node.metadata_props or node.doc_string for node in graph.node)


def test_an_export_with_the_op_table_built_before_writes_the_same_bytes(exported, tmp_path):
    """torch.onnx's ATen -> ONNX table is built once per process (onnx_export.op_table_built_once):
    an export that builds it and one that copies it give the same file, and torch.onnx gets its
    own builder back after each export."""
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    from pipeline.export import onnx_export

    module, _ = exported
    builder = ONNXRegistry.__dict__["from_torchlib"]
    onnx_export._OP_TABLES.clear()
    built = export_module(module, tmp_path / "built.onnx", "lstm").read_bytes()
    assert onnx_export._OP_TABLES and ONNXRegistry.__dict__["from_torchlib"] is builder
    assert export_module(module, tmp_path / "copied.onnx", "lstm").read_bytes() == built


def test_a_nan_output_fails_parity():
    """max() skipped a NaN: a model answering NaN in both runtimes had parity 0."""
    from pipeline.export.parity import abs_diff

    assert abs_diff(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == np.inf
    assert abs_diff(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == 0.5
