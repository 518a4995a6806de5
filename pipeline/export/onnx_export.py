"""export stage: models/<exp>/model.ckpt -> models/<exp>/model.onnx with symbolic batch and seq.

metadata_props carry what torch-free inference needs: task, family, scaler, labels, window...
"""

from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from pipeline.checkpoint import Trained, trained_for
from pipeline.config import PipelineConfig
from pipeline.data.prepared import Prepared
from pipeline.errors import PipelineError
from pipeline.export.parity import run_torch
from pipeline.export.streaming import StepModel, batch_axes
from pipeline.io import Outputs, held_lock, write_json
from pipeline.paths import model_dir, prepared_dir, resume_dir
from pipeline.tasks import task_of

DYNAMIC_DIMS = {0: "batch", 1: "seq"}
# The example's batch and length: export time does not depend on the data's length, and the
# symbolic dims are proven by validate's parity check at other batches and lengths.
EXAMPLE_BATCH, EXAMPLE_SEQ = 7, 5


def example_length(model: torch.nn.Module) -> int:
    """The export example's length: EXAMPLE_SEQ, or more for a model that needs longer windows
    (one step above its shortest, so that torch.export does not specialise on it)."""
    return max(EXAMPLE_SEQ, getattr(model, "min_length", 1) + 1)


class ExportError(PipelineError):
    exit_code = 5


def symbolic_dims_or_raise(model: onnx.ModelProto) -> None:
    """The exporter can silently fix a dim it was told is dynamic: refuse such a file."""
    x = next(i for i in model.graph.input if i.name == "x")
    dims = x.type.tensor_type.shape.dim
    fixed = [
        f"{name} (axis {axis}) = {dims[axis].dim_value}"
        for axis, name in DYNAMIC_DIMS.items()
        if not dims[axis].dim_param
    ]
    if fixed:
        raise ExportError(f"ONNX input 'x' has fixed dims where dynamic ones are needed: {fixed}")


def forget_example_length(model: onnx.ModelProto, extra_outputs: dict[str, tuple]) -> None:
    """torch.export can lose that the time axis is `seq` (it did behind an RNN's while_loop): it
    annotates tensors after the RNN, and outputs such as attention weights, with the example's
    length, and ONNX Runtime then warns at every other length (the values are right; validate's
    parity checks them). Drop those annotations (ORT infers shapes itself) and name the
    outputs' dims."""
    del model.graph.value_info[:]
    for output in model.graph.output:
        for axis, name in enumerate(extra_outputs.get(output.name, ())):
            output.type.tensor_type.shape.dim[axis].dim_param = name


def _rnn_shapes(input, hx, params, has_biases, layers, dropout, train, bidirectional, first):
    """aten.lstm/gru's outputs as empty tensors of the right (symbolic) shapes."""
    h = hx[0] if isinstance(hx, (list, tuple)) else hx
    out = input.new_empty((*input.shape[:2], (2 if bidirectional else 1) * h.shape[-1]))
    return out, *(t.new_empty(t.shape) for t in (hx if isinstance(hx, (list, tuple)) else [hx]))


@contextmanager
def rnn_shapes_only():
    """While exporting, aten.lstm/gru compute only their output shapes.

    torch.onnx keeps both ops whole (they become the native ONNX LSTM/GRU), but its passes run
    every op on fake tensors to learn output shapes, and for these two that meant running the
    RNN's decomposition: unrolled once per step of the example after its capture step (minutes
    for long series), or as a while_loop that torch compiles (seconds per export). Shapes are
    all those passes need. Should an op ever be decomposed instead of kept, the graph would lack
    its RNN node: `rnn_nodes_or_raise` refuses such a file, and validate's parity would fail.
    A dispatch cache would keep an op's previous kernel: it is cleared on the way in and out.
    torch.onnx's capture step installs its own while_loop kernels over these (torch.export's
    `_patches`), which torch then compiles with dynamo (≈ 3 s per export, for the same graph):
    those are made no-ops for as long as this holds."""
    from torch._decomp import global_decomposition_table
    from torch.export import _patches

    table, key = global_decomposition_table["post_autograd"], torch._C.DispatchKey
    ops = (torch.ops.aten.lstm.input, torch.ops.aten.gru.input)
    saved = [(table.get(op), op.py_kernels.get(key.CompositeImplicitAutograd)) for op in ops]
    while_loops = [f"register_{rnn}_while_loop_decomposition" for rnn in ("lstm", "gru")]
    saved_while_loops = [getattr(_patches, name) for name in while_loops]
    try:
        for name in while_loops:
            setattr(_patches, name, nullcontext)
        for op in ops:
            op._dispatch_cache.clear()
            table[op] = op.py_kernels[key.CompositeImplicitAutograd] = _rnn_shapes
        yield
    finally:
        for op, (decomposition, kernel) in zip(ops, saved, strict=True):
            for registry, k, old in (
                (table, op, decomposition),
                (op.py_kernels, key.CompositeImplicitAutograd, kernel),
            ):
                if old is None:
                    registry.pop(k, None)
                else:
                    registry[k] = old
            op._dispatch_cache.clear()
        for name, context in zip(while_loops, saved_while_loops, strict=True):
            setattr(_patches, name, context)


def rnn_nodes_or_raise(model: torch.nn.Module, proto: onnx.ModelProto) -> None:
    rnns = sum(isinstance(m, torch.nn.LSTM | torch.nn.GRU) for m in model.modules())
    nodes = sum(n.op_type in ("LSTM", "GRU") for n in proto.graph.node)
    if nodes < rnns:
        raise ExportError(f"the ONNX graph has {nodes} LSTM/GRU nodes for {rnns} RNN modules")


@contextmanager
def scan_loops(model: torch.nn.Module):
    """Switch hand-written time loops to torch's scan while exporting: scan becomes an ONNX Scan
    with a dynamic length, where a Python loop would be unrolled at the example's length.
    Training keeps the loop (scan is ~20x slower in eager); validate's parity proves they agree."""
    loops = [m for m in model.modules() if hasattr(m, "scan_for_export")]
    for m in loops:
        m.scan_for_export = True
    try:
        yield
    finally:
        for m in loops:
            m.scan_for_export = False


_OP_TABLES: dict[int, object] = {}  # opset -> torch.onnx's table of ATen -> ONNX functions


@contextmanager
def op_table_built_once():
    """torch.onnx builds its table of ATen -> ONNX functions anew for every export, parsing the
    source of ~1,000 onnxscript functions (0.8 s of each export here): while exporting, it gets
    a copy of the one this process built first. The table is the same, and so is the file."""
    from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    built = ONNXRegistry.__dict__["from_torchlib"]

    def from_torchlib(cls, opset_version=TORCHLIB_OPSET):
        if opset_version not in _OP_TABLES:
            _OP_TABLES[opset_version] = built.__func__(cls, opset_version)
        table = copy.copy(_OP_TABLES[opset_version])
        table.functions = {target: list(metas) for target, metas in table.functions.items()}
        return table

    ONNXRegistry.from_torchlib = classmethod(from_torchlib)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = built


def _onnx_program(model: torch.nn.Module, example: tuple, scan: bool = True, **kwargs):
    """torch.onnx.export (dynamo) with its chatter silenced; `scan`: time loops as ONNX Scan
    (a step model has no time loop to keep dynamic)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    loops = scan_loops(model) if scan else nullcontext()
    with (
        torch.no_grad(),
        rnn_shapes_only(),
        loops,
        op_table_built_once(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # tracer deprecation chatter, not actionable by users
        program = torch.onnx.export(model, example, dynamo=True, verbose=False, **kwargs)
    rnn_nodes_or_raise(model, program.model_proto)
    return program


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = torch.nn.GRU(1, 1, batch_first=True)
        self.lstm = torch.nn.LSTM(1, 1, batch_first=True)

    def forward(self, x):
        return torch.softmax(self.lstm(self.gru(x)[0])[0], dim=1).mean(dim=1)


def warm_up() -> None:
    """Export a tiny GRU + LSTM and drop it: a process's first export sets up torch.onnx's
    tables (seconds), which a warm server (pipeline/warm.py) then does once for all its
    children. Shapes only (rnn_shapes_only): no kernel runs, so no OpenMP pool starts before
    a fork."""
    _onnx_program(_Tiny(), (torch.zeros(1, 2, 1),))


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies a node carries (Scan, Loop, If)."""
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else a.graphs)]


def without_source_locations(nodes) -> None:
    """Drop the exporter's per-node metadata (stack traces with this checkout's absolute source
    paths, FX names), in subgraphs too: the same checkpoint then gives the same ONNX bytes in
    every clone, and a shipped model does not carry the builder's paths."""
    for node in nodes:
        del node.metadata_props[:]
        node.doc_string = ""
        for sub in subgraphs(node):
            without_source_locations(sub.node)


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name a node of `graph`, or of a body inside it, reads."""
    return {name for node in graph.node for name in node.input} | {
        name for node in graph.node for sub in subgraphs(node) for name in read_names(sub)
    }


def without_unused_initializers(graph: onnx.GraphProto) -> None:
    """The exporter can leave a constant that no node reads (the ConvLSTM had one), and ONNX
    Runtime then prints a warning at every session start, in validate and in users' predict."""
    read = read_names(graph) | {output.name for output in graph.output}
    kept = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _save(proto: onnx.ModelProto, props: dict[str, str], path: Path) -> Path:
    without_source_locations(proto.graph.node)
    without_unused_initializers(proto.graph)
    for function in proto.functions:
        without_source_locations(function.node)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)  # export() writes it beside its place and puts it there
    return path


def export_module(trained: Trained, path: Path, family: str, columns: dict | None = None) -> Path:
    """model.onnx: input `x` [batch, seq, ...], and for variable-length series `lengths`
    [batch] (int64, each series' steps; x padded at the end), for a forecaster with covariates
    `future` [batch, horizon, len(future)] and `static` [batch, len(static)]. `columns`: the
    training table's id_column and time_column, metadata for predict."""
    meta, model = trained.meta, trained.model
    shortest = getattr(model, "min_length", 1)  # e.g. season_norm's two periods
    example_seq = example_length(model)
    example = (torch.zeros(EXAMPLE_BATCH, example_seq, *meta.input_shape[1:]),)
    # min=2: otherwise torch.export guards "dim != 1" (0/1 specialisation), and torch.onnx
    # resolves that guard by silently fixing seq. The ONNX graph itself runs at size 1 too
    # (validate's parity check includes batch 1).
    batch = torch.export.Dim("batch", min=2)
    seq = torch.export.Dim("seq", min=max(2, shortest))
    extras = {
        "lengths": lambda: torch.arange(EXAMPLE_BATCH) % example_seq + 1,
        "future": lambda: torch.zeros(EXAMPLE_BATCH, meta.horizon, len(meta.future)),
        "static": lambda: torch.zeros(EXAMPLE_BATCH, len(meta.static)),
    }
    kwargs = {name: extras[name]() for name in meta.extra_inputs}
    dims = {"x": {0: batch, 1: seq}, **{name: {0: batch} for name in kwargs}}
    program = _onnx_program(
        model,
        example,
        kwargs=kwargs,
        input_names=["x", *kwargs],
        output_names=["y", *getattr(model, "extra_outputs", ())],
        dynamic_shapes=dims,
    )
    proto = program.model_proto
    symbolic_dims_or_raise(proto)
    forget_example_length(proto, getattr(model, "extra_outputs", {}))
    return _save(proto, trained.meta.to_props(family=family, **(columns or {})), path)


def export_step(trained: Trained, path: Path, family: str) -> Path:
    """The streaming variant (see streaming.py): one step + state in, outputs + state out."""
    model, batch = trained.model, EXAMPLE_BATCH
    state = model.initial_state(batch)
    x_t = torch.zeros(batch, *trained.meta.input_shape[1:])
    step = StepModel(model, x_t)
    dim = torch.export.Dim("batch", min=2)
    dims = {"x": {0: dim}, "state": tuple({axis: dim} for axis in batch_axes(model))}
    program = _onnx_program(
        step,
        (x_t, *state.values()),
        scan=False,
        input_names=["x", *state],
        output_names=step.output_names,
        dynamic_shapes=dims,
    )
    proto = program.model_proto
    x = proto.graph.input[0].type.tensor_type.shape.dim
    if not x[0].dim_param:
        raise ExportError(f"step model: input 'x' has a fixed batch ({x[0].dim_value})")
    return _save(proto, trained.meta.to_props(family=family, streaming_state=list(state)), path)


def calibrated(trained: Trained, prepared: Prepared) -> Trained:
    """The data contract plus what the task learns from the model on the validation split (a
    forecaster's conformal intervals), carried into the ONNX metadata."""

    def outputs(chunk: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the model's outputs, the truth, the inputs) on the validation split, read only when
        asked."""
        x, y = prepared.arrays("val")
        extra = prepared.extra_inputs("val")
        parts = [
            run_torch(
                trained.model,
                np.ascontiguousarray(x[i : i + chunk], dtype=np.float32),
                {k: v[i : i + chunk] for k, v in extra.items()},
            )[0]
            for i in range(0, len(x), chunk)
        ]
        return np.concatenate(parts), y, x

    update = task_of(trained.meta).calibrate(outputs, trained.meta)
    return replace(trained, meta=trained.meta.model_copy(update=update))


def model_lock(exp_name: str):
    """Held by export and validate: two of them at once replaced each other's files while one
    logged them to MLflow (exit 8, a file not found)."""
    lock = resume_dir(exp_name) / "export.lock"  # beside train's, outside every DVC output
    busy = f"{exp_name}: another export or validate of this experiment is running (it holds {lock})"
    return held_lock(lock, busy + "; wait for it to end")


def export(cfg: PipelineConfig, exp_name: str) -> Path:
    with model_lock(exp_name):
        return _export(cfg, exp_name)


def _export(cfg: PipelineConfig, exp_name: str) -> Path:
    exp = cfg.experiment(exp_name)
    out = model_dir(exp_name)
    prepared = Prepared.load(prepared_dir(exp_name))
    trained = calibrated(trained_for(out / "model.ckpt", exp.model.name, prepared.meta), prepared)
    # model.onnx and streaming/ (always there, a DVC out: the step model, or why there is none)
    # are put in place together: never the new model beside the old one's step model
    with Outputs() as place:
        with place.file(out / "model.onnx") as model_file:
            export_module(trained, model_file, exp.model.name, prepared.meta.columns)
        with place.folder(out / "streaming") as streaming:
            reason = trained.model.streaming_unsupported()
            if reason:
                write_json(streaming / "unsupported.json", {"reason": reason})
            else:
                export_step(trained, streaming / "model_step.onnx", exp.model.name)
    return out / "model.onnx"
