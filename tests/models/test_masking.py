"""Series of different lengths in one padded batch: the padding never changes a prediction,
in torch and through ONNX Runtime."""

import numpy as np
import pytest
import torch

from pipeline.checkpoint import Trained, model_for
from pipeline.export.onnx_export import export_module
from pipeline.export.parity import parity_inputs
from pipeline.inference import run_onnx, session
from pipeline.meta import DataMeta, padded
from pipeline.models.lstm import standardise
from pipeline.models.masking import MaskedBatchNorm1d, pool_steps

META = DataMeta(
    task="classification", input_shape=[20, 3], labels=["a", "b", "c"], variable_length=True
)
FAMILIES = {
    "gru-2-layers": {"name": "lstm", "cell": "gru", "hidden_size": 8, "num_layers": 2},
    "peephole": {"name": "lstm", "cell": "peephole", "hidden_size": 8, "num_layers": 1},
    "mlstm-fcn": {
        "name": "attention_lstm",
        "hidden_size": 8,
        "attention_size": 4,
        "fcn_channels": [8, 16, 8],
        "squeeze_excite": True,
    },
    # 20 steps read as means of 4 (the last group of the 13- and 2-step series is partial)
    "mlstm-fcn-pooled": {
        "name": "attention_lstm",
        "hidden_size": 8,
        "attention_size": 4,
        "fcn_channels": [8, 16, 8],
        "max_steps": 6,
    },
    "mlstm-fcn-pooled-extrema": {
        "name": "attention_lstm",
        "hidden_size": 8,
        "attention_size": 4,
        "fcn_channels": [8, 16, 8],
        "max_steps": 6,
        "pool_extrema": True,
    },
    "mlstm-fcn-series-norm": {
        "name": "attention_lstm",
        "hidden_size": 8,
        "attention_size": 4,
        "fcn_channels": [8, 16, 8],
        "series_norm": True,
    },
}
LENGTHS = [20, 13, 5, 2]


def _series(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 3)).astype(np.float32) for n in LENGTHS]


def _with_garbage_padding(series):
    x, lengths = padded(series)
    for row, n in zip(x, lengths, strict=True):
        row[n:] = 1e3  # anything: a masked model never reads it
    return torch.from_numpy(x), torch.from_numpy(lengths)


def _outputs(model, *args):
    with torch.no_grad():
        out = model(*args)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("cfg", FAMILIES.values(), ids=FAMILIES)
def test_padding_changes_no_prediction(cfg):
    torch.manual_seed(0)
    model = model_for(cfg, META).eval()
    series = _series()
    batch = _outputs(model, *_with_garbage_padding(series))
    for i, s in enumerate(series):
        alone = _outputs(model, torch.from_numpy(s)[None])
        torch.testing.assert_close(batch[0][i], alone[0][0], atol=1e-5, rtol=1e-5)
        if len(batch) > 1:  # attention: the same weights on the series' steps, none on padding
            torch.testing.assert_close(batch[1][i, : len(s)], alone[1][0], atol=1e-5, rtol=1e-5)
            assert (batch[1][i, len(s) :] == 0).all()
            torch.testing.assert_close(batch[1][i].sum(), torch.tensor(1.0))


def test_long_series_are_read_as_means_of_consecutive_steps():
    torch.manual_seed(0)
    model = model_for(FAMILIES["mlstm-fcn-pooled"], META).eval()
    assert model.time_pool == 4  # ceil(20 / 6)
    x = torch.randn(2, 20, 3)
    group_means = x.reshape(2, 5, 4, 3).mean(2).repeat_interleave(4, dim=1)
    with torch.no_grad():
        y, weights = model(x)
        torch.testing.assert_close(model(group_means)[0], y)
        assert not torch.allclose(model(x.roll(1, dims=1))[0], y)
    torch.testing.assert_close(weights[:, ::4], weights[:, 3::4])  # a group's weight, split


def test_pool_extrema_reads_each_groups_mean_min_and_max():
    x = torch.tensor([[0.0, 4.0, 1.0, 2.0, 9.0], [3.0, -1.0, 5.0, 7.0, 0.0]]).unsqueeze(2)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])  # 2nd: 3 steps
    pooled, share = pool_steps(x, 2, mask, extrema=True)
    expected = [[[2, 0, 4], [1.5, 1, 2], [9, 9, 9]], [[1, -1, 3], [5, 5, 5], [0, 0, 0]]]
    torch.testing.assert_close(pooled, torch.tensor(expected))
    torch.testing.assert_close(share, torch.tensor([[1, 1, 0.5], [1, 0.5, 0]]))


@pytest.mark.parametrize("name", ["lstm", "attention_lstm"])
def test_series_norm_reads_each_series_z_normalised_over_its_own_steps(name):
    """a*x + b (a > 0, per series and feature) is classified as x is, padded or not, and the
    model sees exactly the z-normalised series."""
    torch.manual_seed(0)
    model = model_for({"name": name, "hidden_size": 8, "series_norm": True}, META).eval()
    assert model.streaming_unsupported().startswith("series_norm: ")
    series = _series()
    rng = np.random.default_rng(2)
    scaled = [s * rng.uniform(0.1, 10, 3) + rng.normal(0, 50, 3) for s in series]
    z = [(s - s.mean(0)) / s.std(0) for s in series]
    got = _outputs(model, *_with_garbage_padding(scaled))[0]
    for i, s in enumerate(series):
        torch.testing.assert_close(got[i], _outputs(model, torch.from_numpy(s)[None])[0][0])
    model.series_norm = False
    expected = _outputs(model, *_with_garbage_padding([s.astype(np.float32) for s in z]))[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


class _Standardise(torch.nn.Module):
    series_norm = True

    def forward(self, x, lengths=None):
        return standardise(self, x, lengths)


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "whole"])
def test_series_norm_keeps_float32_precision_through_onnx_on_long_series(tmp_path, padded):
    """2,000-step series whose mean is 20 stds from their first step: ONNX Runtime's float32
    sums were 1.4e-5 off the exact z-scores (PLAID failed validate's parity gate)."""
    rng = np.random.default_rng(0)
    steps = np.arange(2000)
    x = 1 + 0.05 * np.sin(steps / 5)[None] * rng.uniform(0.5, 2, (4, 1))
    x[:, 0] = 0
    inputs = {"x": x[:, :, None].astype(np.float32)}
    if padded:
        inputs["lengths"] = np.array([2000, 1900, 1500, 1000])
    args = tuple(torch.from_numpy(v) for v in inputs.values())
    path = tmp_path / "standardise.onnx"
    torch.onnx.export(_Standardise(), args, path, dynamo=True, verbose=False)
    got = session(path).run(None, inputs)[0]
    with torch.no_grad():
        exact = _Standardise()(args[0].double(), *args[1:]).numpy()
    real = steps[None] < inputs.get("lengths", np.full(4, 2000))[:, None]
    # float32's rounding of z-scores up to 20: 1.2e-6
    np.testing.assert_allclose(got[real], exact[real], rtol=0, atol=2e-6)


def test_parity_reads_each_padded_series_own_steps():
    """validate's parity check of a model of padded series: at every length it tries, each
    row is its series' own steps from the start, tiled, never the padding."""
    series = _series()
    x, lengths = (t.numpy() for t in _with_garbage_padding(series))
    for seq in (10, 20, 40):
        rows = parity_inputs(x, 6, seq, lengths)
        assert rows.shape == (6, seq, 3) and not (rows == 1e3).any()
        for row, s in zip(rows, series + series, strict=False):
            np.testing.assert_array_equal(row, np.tile(s, (-(-seq // len(s)), 1))[:seq])


def test_batch_norm_statistics_skip_padding():
    torch.manual_seed(0)
    norm = MaskedBatchNorm1d(2, momentum=1.0)  # running stats = this batch's
    x, lengths = _with_garbage_padding([s[:, :2] for s in _series()])
    mask = torch.arange(x.shape[1])[None] < lengths[:, None]
    norm.train()(x.transpose(1, 2), mask)
    valid = torch.cat([x[i, :n] for i, n in enumerate(lengths)])
    torch.testing.assert_close(norm.running_mean, valid.mean(0))
    torch.testing.assert_close(norm.running_var, valid.var(0))


@pytest.mark.parametrize("cfg", FAMILIES.values(), ids=FAMILIES)
def test_a_padded_batch_trains_under_bf16_autocast(cfg):
    """fit.precision bf16-mixed (and the gpu preset) on series of different lengths: batch norm
    keeps float32 statistics (a bf16 batch mean cannot update float32 running ones)."""
    torch.manual_seed(0)
    model = model_for(cfg, META).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*_with_garbage_padding(_series()))
    (out[0] if isinstance(out, tuple) else out).float().square().mean().backward()
    for norm in (m for m in model.modules() if isinstance(m, MaskedBatchNorm1d)):
        assert norm.running_mean.dtype == torch.float32
        assert torch.isfinite(norm.running_mean).all() and torch.isfinite(norm.running_var).all()


def test_bidirectional_rnn_refuses_lengths():
    model = model_for({"name": "lstm", "hidden_size": 4, "bidirectional": True}, META)
    with pytest.raises(ValueError, match="unidirectional"):
        model(*_with_garbage_padding(_series()))


@pytest.mark.parametrize(
    "name",
    [
        "gru-2-layers",
        "mlstm-fcn",
        "mlstm-fcn-pooled",
        "mlstm-fcn-pooled-extrema",
        "mlstm-fcn-series-norm",
    ],
)
def test_onnx_takes_padded_series_and_lengths(tmp_path, name):
    torch.manual_seed(0)
    model = model_for(FAMILIES[name], META).eval()
    path = export_module(Trained(model, META), tmp_path / "model.onnx", FAMILIES[name]["name"])
    sess = session(path)
    inputs = {i.name: [d if isinstance(d, str) else None for d in i.shape]
              for i in sess.get_inputs()}  # fmt: skip
    assert inputs == {"x": ["batch", "seq", None], "lengths": ["batch"]}
    series = _series(1)
    x, lengths = _with_garbage_padding(series)
    got = run_onnx(sess, x.numpy(), {"lengths": lengths.numpy()})[0]
    for i, s in enumerate(series):
        alone = _outputs(model, torch.from_numpy(s)[None])[0][0].numpy()
        np.testing.assert_allclose(got[i], alone, atol=1e-5)
