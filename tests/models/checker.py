"""The checks every model family must pass; each model's test file drives them."""

from __future__ import annotations

import copy

import onnx
import torch

from pipeline.config import parse_model
from pipeline.export.onnx_export import export_module, read_names
from pipeline.export.parity import parity
from pipeline.inference import session
from pipeline.training.module import SequenceModule

CLASSIFY = {
    "task": "classification",
    "input_shape": [24, 3],
    "labels": ["a", "b", "c"],
    "scaler": {"mean": [0.0] * 3, "std": [1.0] * 3},
}
FORECAST = {
    "task": "forecast",
    "input_shape": [36, 2],
    "horizon": 12,
    "targets": ["y"],
    "target_index": [1],
    "transform": "none",
    "window": 36,
    "season": None,
    "features": ["x", "y"],
    "scaler": {"mean": [0.0, 0.0], "std": [1.0, 1.0]},
}


FRAMES = {
    "task": "frames",
    "input_shape": [6, 1, 8, 8],
    "horizon": 3,
    "window": 6,
    "features": ["intensity"],
    "scaler": {"mean": [0.0], "std": [255.0]},
}


def _inputs(meta, n: int, t: int, generator=None) -> torch.Tensor:
    x = torch.randn(n, t, *meta["input_shape"][1:], generator=generator)
    return x.sigmoid() if meta["task"] == "frames" else x  # frames live in [0, 1]


def _target_shape(meta, n: int) -> tuple[int, ...]:
    if meta["task"] == "classification":
        return (n, len(meta["labels"]))
    if meta["task"] == "frames":
        return (n, meta["horizon"], *meta["input_shape"][1:])
    return (n, meta["horizon"], len(meta["targets"]))


def prediction(out):
    return out[0] if isinstance(out, tuple) else out


def check_shapes(module: SequenceModule, batch: int = 4):
    meta = module.hparams.meta
    for t in (max(5, getattr(module.model, "min_length", 1)), meta["input_shape"][0], 60):
        out = module.model(_inputs(meta, batch, t))
        assert prediction(out).shape == _target_shape(meta, batch)
        for extra in out[1:] if isinstance(out, tuple) else ():
            assert extra.shape[:2] == (batch, t)


def _batch(meta, n=8):
    g = torch.Generator().manual_seed(0)
    x = _inputs(meta, n, meta["input_shape"][0], g)
    if meta["task"] == "classification":
        return x, torch.randint(0, len(meta["labels"]), (n,), generator=g)
    if meta["task"] == "frames":  # learnable: the last frame, held
        return x, x[:, -1:].expand(_target_shape(meta, n)).contiguous()
    return x, torch.randn(_target_shape(meta, n), generator=g)


def check_training_lowers_loss(module: SequenceModule, steps: int = 30, ratio: float = 0.5):
    torch.manual_seed(0)
    batch = _batch(module.hparams.meta)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(module, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < ratio * losses[0], losses


def _loss(module, batch):
    x, y = batch
    return module.task.loss(module(x), y)


def check_gradients_reach_every_parameter(module: SequenceModule):
    module.zero_grad()
    _loss(module, _batch(module.hparams.meta)).backward()
    dead = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not dead, dead


def check_state_dict_round_trip(module: SequenceModule):
    clone = copy.deepcopy(module)
    for p in clone.parameters():
        torch.nn.init.normal_(p)
    clone.load_state_dict(module.state_dict())
    x = _batch(module.hparams.meta)[0]
    module.eval(), clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(prediction(clone.model(x)), prediction(module.model(x)))


def check_onnx_parity(module: SequenceModule, tmp_path):
    module.eval()
    path = export_module(module, tmp_path / "model.onnx", "test")
    graph = onnx.load(path).graph
    assert {init.name for init in graph.initializer} <= read_names(graph)  # no ORT warning
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"]
    for name, names in getattr(module.model, "extra_outputs", {}).items():
        output = next(o for o in graph.output if o.name == name)
        assert [d.dim_param for d in output.type.tensor_type.shape.dim] == list(names)
    t = module.meta.input_shape[0]
    x = _inputs(module.hparams.meta, 3, t, torch.Generator().manual_seed(0)).numpy()
    worst, _, shapes = parity(session(path), module.model, x, [1, 5])
    shortest = max(t // 2, getattr(module.model, "min_length", 1))  # a seasonal model's: 2 seasons
    assert worst <= 1e-5 and {s for _, s in shapes} == {shortest, t, 2 * t}


def check_loop_and_scan_agree(model: torch.nn.Module, inputs, lengths) -> None:
    """A hand-written time loop and its scan twin (used for export) compute the same outputs."""
    model.eval()
    for seq in lengths:
        x = inputs(4, seq)
        with torch.no_grad():
            model.scan_for_export = False
            loop = model(x)
            model.scan_for_export = True
            scanned = model(x)
        model.scan_for_export = False
        torch.testing.assert_close(scanned, loop, rtol=0, atol=1e-6)


# What makes a family causal; non-causal variants have no exact step (see streaming_unsupported).
CAUSAL = {"bidirectional": False, "level_norm": False, "scale_norm": False, "season_norm": 0,
          "series_norm": False, "fcn_channels": []}  # fmt: skip


def check_step_equals_forward(model_cfg: dict, meta: dict):
    """Fed one step at a time from `initial_state`, the family's `step` predicts what `forward`
    predicts on the sequence so far (checked on the causal variant of `model_cfg`)."""
    keys = type(parse_model(model_cfg)).model_fields
    causal = {**model_cfg, **{k: v for k, v in CAUSAL.items() if k in keys}}
    torch.manual_seed(0)
    model = SequenceModule(causal, meta).model.eval()
    t = meta["input_shape"][0]
    x = _inputs(meta, 3, t, torch.Generator().manual_seed(1))
    state = model.initial_state(3)
    with torch.no_grad():
        for i in range(t):
            outputs, state = model.step(x[:, i], state)
            if i + 1 in (1, t // 2, t):
                expected = prediction(model(x[:, : i + 1]))
                torch.testing.assert_close(outputs["y"], expected, rtol=1e-5, atol=1e-5)


def check_all(model_cfg: dict, meta: dict, tmp_path, loss_ratio: float = 0.5):
    torch.manual_seed(0)
    module = SequenceModule(model_cfg, meta)
    check_shapes(module)
    check_gradients_reach_every_parameter(module)
    check_state_dict_round_trip(module)
    check_onnx_parity(module, tmp_path)
    check_training_lowers_loss(module, ratio=loss_ratio)
    check_step_equals_forward(model_cfg, meta)
