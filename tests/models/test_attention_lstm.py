import pytest
import torch

from pipeline.training.module import SequenceModule
from tests.models.checker import CLASSIFY, FORECAST, check_all


@pytest.mark.parametrize(
    "meta, fcn_channels",
    [(CLASSIFY, [8, 16, 8]), (FORECAST, [])],
    ids=["classify-with-fcn", "forecast"],
)
def test_attention_lstm_passes_the_model_checks(tmp_path, meta, fcn_channels):
    cfg = {
        "name": "attention_lstm",
        "cell": "gru",
        "hidden_size": 16,
        "num_layers": 2,
        "bidirectional": True,
        "attention_size": 8,
        "fcn_channels": fcn_channels,
        "scale_norm": meta is FORECAST,
        "season_norm": 7 if meta is FORECAST else 0,
        "series_norm": meta is CLASSIFY,
    }
    check_all(cfg, meta, tmp_path)


def test_attention_weights_are_a_distribution_over_time():
    model = SequenceModule({"name": "attention_lstm", "hidden_size": 8}, CLASSIFY).model.eval()
    with torch.no_grad():
        _, alpha = model(torch.randn(3, 17, 3))
    assert alpha.shape == (3, 17) and (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(3))


def test_zero_length_sequence_is_refused_by_name():
    model = SequenceModule({"name": "attention_lstm", "hidden_size": 8}, CLASSIFY).model.eval()
    with pytest.raises(ValueError, match=r"attention_lstm: .* no time steps \(seq = 0\)"):
        model(torch.randn(2, 0, 3))
