import pytest
import torch

from pipeline.models import build_model

CLASSIFY = {"task": "classification", "input_shape": [24, 3], "labels": ["a", "b", "c"]}
FORECAST = {
    "task": "forecast",
    "input_shape": [36, 2],
    "horizon": 12,
    "targets": ["y"],
    "target_index": [1],
}


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_output_shapes_at_any_length(cell, bidirectional):
    cfg = {
        "name": "lstm",
        "cell": cell,
        "hidden_size": 8,
        "num_layers": 2,
        "bidirectional": bidirectional,
    }
    clf = build_model(cfg, CLASSIFY)
    fc = build_model(cfg, FORECAST)
    for t in (5, 24, 60):
        assert clf(torch.randn(4, t, 3)).shape == (4, 3)
        assert fc(torch.randn(4, t, 2)).shape == (4, 12, 1)


def test_level_norm_follows_a_shift_in_level():
    model = build_model({"name": "lstm", "hidden_size": 8, "level_norm": True}, FORECAST).eval()
    x = torch.randn(2, 36, 2)
    shifted = x + torch.tensor([0.0, 5.0])
    with torch.no_grad():
        torch.testing.assert_close(model(shifted), model(x) + 5.0)


def test_gradients_reach_every_parameter():
    model = build_model(
        {"name": "lstm", "hidden_size": 8, "num_layers": 2, "bidirectional": True}, CLASSIFY
    )
    model(torch.randn(4, 10, 3)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
