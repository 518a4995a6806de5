import pytest
import torch
from torch import nn

from pipeline.models.peephole_lstm import PeepholeLSTM
from tests.models.checker import CLASSIFY, FORECAST, check_all, check_loop_and_scan_agree

F, HIDDEN, T = 3, 5, 6


def make(seed: int = 0, **kw) -> PeepholeLSTM:
    torch.manual_seed(seed)
    kw = {"num_layers": 2, "bidirectional": True, "dropout": 0.2, **kw}
    return PeepholeLSTM(F, HIDDEN, **kw)


def series(batch: int, seq: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, seq, F, generator=torch.Generator().manual_seed(seed))


class Everything(nn.Module):
    """outputs, h_n and c_n as three tensors, so the ONNX file returns all of them."""

    def __init__(self, lstm: PeepholeLSTM):
        super().__init__()
        self.lstm = lstm

    @property
    def scan_for_export(self) -> bool:
        return self.lstm.scan_for_export

    @scan_for_export.setter
    def scan_for_export(self, value: bool) -> None:
        self.lstm.scan_for_export = value

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return out, h, c


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("seq", [1, T, 13])
def test_shapes_match_nn_lstm(bidirectional, seq):
    kw = {"num_layers": 3, "bidirectional": bidirectional, "dropout": 0.1, "batch_first": True}
    ours, ref = PeepholeLSTM(F, HIDDEN, **kw).eval(), nn.LSTM(F, HIDDEN, **kw).eval()
    x = series(4, seq)
    with torch.no_grad():
        out, (h, c) = ours(x)
        ref_out, (ref_h, ref_c) = ref(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_zero_peepholes_compute_exactly_nn_lstm(bidirectional):
    """With w_c* = 0 the cell is the classic LSTM: copy nn.LSTM's weights and compare."""
    torch.manual_seed(0)
    ref = nn.LSTM(F, HIDDEN, num_layers=2, bidirectional=bidirectional, batch_first=True).eval()
    ours = PeepholeLSTM(F, HIDDEN, num_layers=2, bidirectional=bidirectional).eval()
    dirs = 2 if bidirectional else 1
    with torch.no_grad():
        for k, layer in enumerate(ours.layers):
            sfx = f"l{k // dirs}" + ("_reverse" if k % dirs else "")
            layer.weight_ih.copy_(getattr(ref, f"weight_ih_{sfx}"))
            layer.weight_hh.copy_(getattr(ref, f"weight_hh_{sfx}"))
            layer.bias.copy_(getattr(ref, f"bias_ih_{sfx}") + getattr(ref, f"bias_hh_{sfx}"))
            for name in ("weight_ci", "weight_cf", "weight_co"):
                getattr(layer, name).zero_()
        h0 = torch.randn(2 * dirs, 3, HIDDEN)
        c0 = torch.randn(2 * dirs, 3, HIDDEN)
        x = series(3, T)
        for got, expected in zip(
            [ours(x), ours(x, (h0, c0))], [ref(x), ref(x, (h0, c0))], strict=True
        ):
            torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(got[1][0], expected[1][0], rtol=0, atol=1e-5)
            torch.testing.assert_close(got[1][1], expected[1][1], rtol=0, atol=1e-5)


def test_batch_first_false_is_time_major():
    model = make().eval()
    x = series(3, T)
    with torch.no_grad():
        out, (h, c) = model(x)
        model.batch_first = False
        out_tm, (h_tm, c_tm) = model(x.transpose(0, 1).contiguous())
    torch.testing.assert_close(out_tm.transpose(0, 1), out)
    torch.testing.assert_close(h_tm, h)


def test_setting_scan_for_export_reaches_every_layer_and_direction():
    model = make(num_layers=3)
    assert len(model.layers) == 6 and not any(m.scan_for_export for m in model.layers)
    model.scan_for_export = True
    assert model.scan_for_export and all(m.scan_for_export for m in model.layers)
    model.scan_for_export = False
    assert not any(m.scan_for_export for m in model.layers)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_loop_and_scan_paths_agree(bidirectional):
    check_loop_and_scan_agree(make(bidirectional=bidirectional), series, (1, T))


def test_dropout_acts_between_layers_in_training_only():
    model = make(dropout=0.5)
    x = series(4, T)
    torch.manual_seed(1)
    a = model(x)[0]
    b = model(x)[0]
    assert not torch.equal(a, b)
    model.eval()
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)
    single = make(num_layers=1, dropout=0.5)  # nothing between layers: dropout is a no-op
    torch.testing.assert_close(single(x)[0], single(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, meta", [("lstm", FORECAST), ("attention_lstm", CLASSIFY)], ids=["lstm", "attention"]
)
def test_peephole_cell_passes_the_model_checks_in_both_families(tmp_path, name, meta):
    cfg = {
        "name": name,
        "cell": "peephole",
        "hidden_size": 16,
        "num_layers": 2,
        "bidirectional": True,
    }
    check_all(cfg, meta, tmp_path)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="dropout"):
        PeepholeLSTM(F, HIDDEN, dropout=1.5)
    with pytest.raises(ValueError, match="num_layers"):
        PeepholeLSTM(F, HIDDEN, num_layers=0)
    with pytest.raises(ValueError, match=r"PeepholeLSTM expects input \[batch, seq, features\]"):
        make()(torch.randn(T, F))
