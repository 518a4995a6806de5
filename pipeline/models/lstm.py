"""Stacked (optionally bidirectional) LSTM/GRU with a linear head."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.masking import last_step, step_mask
from pipeline.models.peephole_lstm import PeepholeLSTM

# nn.LSTM/GRU export to native ONNX LSTM/GRU ops; the peephole cell is ours (a Scan in ONNX).
RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "peephole": PeepholeLSTM}

State = dict[str, torch.Tensor]
SCALE_EPS = 1e-10  # the variance's floor: a window 1e5 times smaller than the scaler still counts


def floored_std(var: torch.Tensor) -> torch.Tensor:
    # A floor, not `var + SCALE_EPS`: torch.onnx's optimizer drops an Add of a constant within
    # 1e-8 of 0 (onnxscript's add_0 rule), which left the ONNX graph dividing by a zero std.
    return torch.sqrt(var.clamp(min=SCALE_EPS))


def make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional) -> nn.Module:
    return RNN_CELLS[cell](
        input_size,
        hidden_size,
        num_layers=num_layers,
        dropout=dropout if num_layers > 1 else 0.0,  # between layers only
        bidirectional=bidirectional,
        batch_first=True,
    )


def rnn_initial_state(rnn: nn.Module, batch: int) -> State:
    """Zero (h[, c]) of a unidirectional RNN, each [layers, batch, hidden]; a GRU has no c."""
    zeros = torch.zeros(rnn.num_layers, batch, rnn.hidden_size)
    names = ("h",) if isinstance(rnn, nn.GRU) else ("h", "c")
    return {name: zeros.clone() for name in names}


def rnn_step(rnn: nn.Module, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    """One time step x_t [batch, features]: (top layer output [batch, 1, hidden], new state)."""
    out, new = rnn(x_t.unsqueeze(1), (state["h"], state["c"]) if "c" in state else state["h"])
    new = new if isinstance(new, tuple) else (new,)
    return out, dict(zip(state, new, strict=True))


def why_not_streamable(model: nn.Module) -> str | None:
    """The recurrent families stream only when causal: None, or why not."""
    if model.rnn.bidirectional:
        return "bidirectional: the backward direction needs the whole sequence"
    if model.level_norm:
        return "level_norm: every input is shifted by the last step, unknown until the end"
    if model.scale_norm:
        return "scale_norm: every input is divided by the whole window's std"
    if model.series_norm:
        return "series_norm: every step is standardised by the whole series' mean and std"
    if model.season_norm:
        return "season_norm: the seasonal profile is estimated from the whole window"
    if model.future_size or model.static_size:
        return "covariates: the forecast reads the horizon's future and the static covariates"
    return None


def refuse_lengths(model: nn.Module) -> None:
    """Padded series need a causal RNN: a backward direction would read the padding first."""
    if model.rnn.bidirectional or model.level_norm or model.scale_norm or model.season_norm:
        raise ValueError(
            "series of different lengths need a unidirectional RNN, no level_norm, scale_norm "
            "or season_norm"
        )


Stats = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]


def phases(length: torch.Tensor | int, period: int, start: int = 0) -> torch.Tensor:
    """One-hot [length, period]: row t marks the phase (start + t) mod period."""
    t = torch.arange(length) + start
    return (t.unsqueeze(1) % period == torch.arange(period).unsqueeze(0)).float()


def min_length(season_norm: int) -> int:
    """The shortest window whose every phase season_norm's profile reaches: two periods."""
    return 2 * season_norm if season_norm else 1


def seasonal_profile(x: torch.Tensor, period: int) -> torch.Tensor:
    """Classical decomposition of each window, in the graph: x [batch, seq, features] minus its
    centred moving average (2 x period for an even period), averaged per phase and centred:
    [batch, period, features], phase 0 at the window's first step. A phase the detrended part
    never reaches (a window shorter than 2 periods) gets 0."""
    batch, seq, features = x.shape
    even = period % 2 == 0
    weights = torch.ones(period + even, dtype=x.dtype)
    if even:
        weights[0] = weights[-1] = 0.5
    weights = (weights / period).view(1, 1, -1)
    series = x.transpose(1, 2).reshape(batch * features, 1, seq)
    trend = nn.functional.conv1d(series, weights).reshape(batch, features, -1).transpose(1, 2)
    offset = period // 2
    detrended = x[:, offset : offset + trend.shape[1], :] - trend
    onehot = phases(trend.shape[1], period, offset)  # [n, period]
    sums = torch.einsum("bnf,np->bpf", detrended, onehot)
    profile = sums / onehot.sum(0).clamp(min=1).view(1, period, 1)
    return profile - profile.mean(dim=1, keepdim=True)


def season_at(profile: torch.Tensor, length: torch.Tensor | int, start) -> torch.Tensor:
    """The profile laid over `length` steps from phase `start`: [batch, length, features]."""
    return torch.einsum("np,bpf->bnf", phases(length, profile.shape[1], start), profile)


def normalise(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """Forecasting's per-window normalisation, inside the graph: `season_norm` first takes out
    the window's seasonal profile, `level_norm` subtracts the last observed step, `scale_norm`
    divides by the window's std per feature (RevIN-style). With the last two, a series a*x + b
    gets the forecast a*y + b, whatever scale and level each series has. The future covariates'
    past values (x's last columns) are left as they are. Stats: (shift, scale, profile, seq)."""
    covariates = None
    if model.future_size:
        x, covariates = x[..., : -model.future_size], x[..., -model.future_size :]
    season = None
    if model.season_norm:
        season = seasonal_profile(x, model.season_norm)
        x = x - season_at(season, x.shape[1], 0)
    shift = x[:, -1:, :] if model.level_norm else None
    scale = None
    if model.scale_norm:
        scale = floored_std(torch.var(x, dim=1, keepdim=True, unbiased=False))
    if shift is not None:
        x = x - shift
    if scale is not None:
        x = x / scale
    if covariates is not None:
        x = torch.cat([x, covariates], dim=-1)
    return x, (shift, scale, season, x.shape[1])


def standardise(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """`series_norm` (classification): each series z-normalised per feature over its own steps,
    the UCR archive's convention, so a series a*x + b (a > 0) is classified as x is; padded
    steps are left out of the mean and std."""
    if not model.series_norm:
        return x
    # In float64: ONNX Runtime's float32 sums over a thousand steps lose about 1e-5 of their
    # value, which dividing by a small std magnifies (PLAID's z-scores were 1.7e-5 off, torch's
    # 5e-7, and the exported model failed validate's parity gate).
    x64 = x.double()
    if lengths is None:
        mean = x64.mean(dim=1, keepdim=True)
        var = (x64 - mean).square().mean(dim=1, keepdim=True)
    else:
        real = step_mask(lengths, x.shape[1]).unsqueeze(2)
        count = lengths.view(-1, 1, 1).to(x64.dtype)
        mean = torch.where(real, x64, 0.0).sum(dim=1, keepdim=True) / count
        var = torch.where(real, x64 - mean, 0.0).square().sum(dim=1, keepdim=True) / count
    return ((x64 - mean) / floored_std(var)).to(x.dtype)


def with_covariates(model: nn.Module, final: torch.Tensor, future, static) -> torch.Tensor:
    """The head's input: the encoding, then the horizon's future covariates and the static ones."""
    parts = [final]
    for name, size, value in (
        ("future", model.future_size, future),
        ("static", model.static_size, static),
    ):
        if size and value is None:
            raise ValueError(f"this forecaster takes {name} covariates: pass `{name}`")
        if size:
            parts.append(value.flatten(1))
    return torch.cat(parts, dim=1) if len(parts) > 1 else final


def covariate_width(output_shape: tuple[int, ...], future_size: int, static_size: int) -> int:
    """What with_covariates adds to the head's input: horizon x future, plus static."""
    return output_shape[0] * future_size + static_size


def denormalise(model: nn.Module, out: torch.Tensor, stats: Stats) -> torch.Tensor:
    """The forecast [batch, horizon, targets] back on the inputs' scale and level."""
    *stats, seq = stats
    shift, scale, season = (
        s.index_select(2, model.target_index) if s is not None else s for s in stats
    )
    if scale is not None:
        out = out * scale
    if shift is not None:
        out = out + shift
    if season is not None:  # the horizon's phases continue the window's
        out = out + season_at(season, out.shape[1], seq)
    return out


class StackedLSTM(nn.Module):
    """x [batch, seq, features] -> logits [batch, classes] or forecast [batch, horizon, targets].

    `level_norm` (forecasting): inputs are shifted by the last observed step and the forecast is
    added back onto it, so the network models changes rather than absolute levels; this is what
    lets it follow a trend beyond the range seen in training. `scale_norm`: see `normalise`.
    """

    def __init__(
        self,
        input_size: int,
        output_shape: tuple[int, ...],
        *,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        bidirectional: bool,
        cell: str,
        level_norm: bool,
        scale_norm: bool,
        series_norm: bool,
        season_norm: int,
        target_index: tuple[int, ...] = (),
        future_size: int = 0,
        static_size: int = 0,
    ):
        super().__init__()
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.output_shape = tuple(output_shape)
        self.future_size, self.static_size = future_size, static_size
        width = hidden_size * (2 if bidirectional else 1)
        self.head = nn.Linear(
            width + covariate_width(self.output_shape, future_size, static_size),
            math.prod(self.output_shape),
        )
        self.level_norm, self.scale_norm, self.season_norm = level_norm, scale_norm, season_norm
        self.series_norm = series_norm
        self.min_length = min_length(season_norm)
        self.register_buffer("target_index", torch.tensor(target_index, dtype=torch.long))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, future=None, static=None
    ) -> torch.Tensor:
        """`lengths`: a batch of series padded at the end, each read up to its own length;
        `future` [batch, horizon, future_size], `static` [batch, static_size]: covariates."""
        x, stats = normalise(self, standardise(self, x, lengths))
        states, state = self.rnn(x)
        if lengths is not None:
            refuse_lengths(self)
            final = last_step(states, lengths)
        else:
            h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c); GRU: h
            directions = 2 if self.rnn.bidirectional else 1
            final = torch.cat(list(h[-directions:]), dim=-1)  # last layer, every direction
        final = with_covariates(self, self.dropout(final), future, static)
        return denormalise(self, self.head(final).reshape(-1, *self.output_shape), stats)

    def streaming_unsupported(self) -> str | None:
        return why_not_streamable(self)

    def initial_state(self, batch: int) -> State:
        return rnn_initial_state(self.rnn, batch)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[State, State]:
        """({"y": prediction as if the sequence ended at t}, new state)."""
        _, new = rnn_step(self.rnn, x_t, state)
        return {"y": self.head(new["h"][-1]).reshape(-1, *self.output_shape)}, new
