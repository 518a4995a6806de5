import pytest
import torch

from pipeline.training.module import SequenceModule
from tests.models.checker import CLASSIFY, FORECAST, check_all


@pytest.mark.parametrize(
    "cell, bidirectional, meta",
    [("lstm", True, CLASSIFY), ("gru", False, FORECAST)],
    ids=["bilstm-classify", "gru-forecast"],
)
def test_stacked_lstm_passes_the_model_checks(tmp_path, cell, bidirectional, meta):
    cfg = {
        "name": "lstm",
        "cell": cell,
        "hidden_size": 16,
        "num_layers": 2,
        "bidirectional": bidirectional,
        "level_norm": meta["task"] == "forecast",
    }
    check_all(cfg, meta, tmp_path)


def test_level_norm_follows_a_shift_in_level():
    model = SequenceModule({"name": "lstm", "hidden_size": 8, "level_norm": True}, FORECAST)
    model = model.model.eval()
    x = torch.randn(2, 36, 2)
    shifted = x + torch.tensor([0.0, 5.0])
    with torch.no_grad():
        torch.testing.assert_close(model(shifted), model(x) + 5.0)
