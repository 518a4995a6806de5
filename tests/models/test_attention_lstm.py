import pytest
import torch

from pipeline.models import build_model
from tests.models.checker import CLASSIFY, FORECAST, check_all


@pytest.mark.parametrize("meta", [CLASSIFY, FORECAST], ids=["classify", "forecast"])
def test_attention_lstm_passes_the_model_checks(tmp_path, meta):
    cfg = {
        "name": "attention_lstm",
        "cell": "gru",
        "hidden_size": 16,
        "num_layers": 2,
        "bidirectional": True,
        "attention_size": 8,
    }
    check_all(cfg, meta, tmp_path)


def test_attention_weights_are_a_distribution_over_time():
    model = build_model({"name": "attention_lstm", "hidden_size": 8}, CLASSIFY).eval()
    with torch.no_grad():
        _, alpha = model(torch.randn(3, 17, 3))
    assert alpha.shape == (3, 17) and (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(3))
