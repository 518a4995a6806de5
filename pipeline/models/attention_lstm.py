"""LSTM/GRU encoder with additive (Bahdanau) attention pooling over time steps."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.lstm import (
    State,
    covariate_width,
    denormalise,
    make_rnn,
    min_length,
    normalise,
    refuse_lengths,
    rnn_initial_state,
    rnn_step,
    standardise,
    why_not_streamable,
    with_covariates,
)
from pipeline.models.masking import conv_branch, pool_steps, step_mask, unpool_weights


class AttentionLSTM(nn.Module):
    """x [batch, seq, features] -> (prediction, attention weights [batch, seq]).

    e_t = v^T tanh(W h_t + b), alpha = softmax_t(e), context = sum_t alpha_t h_t; the head reads
    the context. The weights say which time steps the prediction rests on, so they are a second
    model output (and a second ONNX output) rather than hidden state.

    `fcn_channels` adds the fully convolutional branch of ALSTM-FCN (Karim et al. 2017): Conv1d
    blocks (kernels 8, 5, 3, ...) with batch norm (`squeeze_excite`: MLSTM-FCN's blocks),
    globally average-pooled over time and concatenated to the context; dropout applies to the
    RNN's context, as after LSTM-FCN's LSTM. Both branches take any sequence length, and with
    `lengths` a batch of padded series (see masking.py).

    `time_pool` k > 1: both branches read the means of k consecutive steps (a long series at a
    scale the FCN's kernels and the RNN can span), and with `pool_extrema` their min and max
    too; the attention weights are spread back over the steps each group pooled.

    Streaming (`step`): the softmax over time becomes an online softmax over the step scores e_t:
    running max m, running sum s = sum exp(e - m) and running weighted sum a = sum exp(e - m) h,
    rescaled by exp(m_old - m_new) when the max grows; the context is a / s. A past step's
    weight is exp(e_t - m) / s with the final m and s.
    """

    extra_outputs = {"attention": ("batch", "seq")}

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
        attention_size: int,
        level_norm: bool,
        scale_norm: bool,
        series_norm: bool,
        season_norm: int,
        fcn_channels: tuple[int, ...],
        squeeze_excite: bool,
        time_pool: int,
        pool_extrema: bool,
        target_index: tuple[int, ...] = (),
        future_size: int = 0,
        static_size: int = 0,
    ):
        super().__init__()
        self.time_pool = time_pool
        self.pool_extrema = pool_extrema and time_pool > 1
        input_size *= 3 if self.pool_extrema else 1
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional)
        width = hidden_size * (2 if bidirectional else 1)
        self.fcn = conv_branch(input_size, tuple(fcn_channels), squeeze_excite)
        self.score = nn.Sequential(
            nn.Linear(width, attention_size), nn.Tanh(), nn.Linear(attention_size, 1, bias=False)
        )
        self.dropout = nn.Dropout(dropout)
        self.output_shape = tuple(output_shape)
        fcn_width = fcn_channels[-1] if fcn_channels else 0
        self.future_size, self.static_size = future_size, static_size
        covariates = covariate_width(self.output_shape, future_size, static_size)
        self.head = nn.Linear(width + fcn_width + covariates, math.prod(self.output_shape))
        self.level_norm, self.scale_norm, self.season_norm = level_norm, scale_norm, season_norm
        self.series_norm = series_norm
        # export traces two pooled steps or more (one would make torch.export fix seq)
        self.min_length = max(min_length(season_norm), time_pool + 1)
        self.register_buffer("target_index", torch.tensor(target_index, dtype=torch.long))

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, future=None, static=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 0:
            raise ValueError("attention_lstm: the input sequence has no time steps (seq = 0)")
        x, stats = normalise(self, standardise(self, x, lengths))
        seq, mask = x.shape[1], None
        if lengths is not None:
            refuse_lengths(self)
            mask = step_mask(lengths, seq)
        step_level_mask = mask
        if self.time_pool > 1:
            x, share = pool_steps(x, self.time_pool, mask, self.pool_extrema)
            mask = None if mask is None else share > 0
        states, _ = self.rnn(x)  # [batch, seq, width]
        scores = self.score(states).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, -math.inf)
        alpha = torch.softmax(scores, dim=1)
        context = self.dropout(torch.bmm(alpha.unsqueeze(1), states).squeeze(1))
        if self.fcn is not None:
            context = torch.cat([context, self.fcn(x.transpose(1, 2), mask)], dim=1)
        context = with_covariates(self, context, future, static)
        out = self.head(context).reshape(-1, *self.output_shape)
        if self.time_pool > 1:
            alpha = unpool_weights(alpha, share, self.time_pool, step_level_mask, seq)
        return denormalise(self, out, stats), alpha

    def streaming_unsupported(self) -> str | None:
        fcn = "fcn_channels: the convolutional branch pools over the whole window"
        pool = f"max_steps: the model reads groups of {self.time_pool} steps"
        return (
            why_not_streamable(self)
            or (fcn if self.fcn is not None else None)
            or (pool if self.time_pool > 1 else None)
        )

    def initial_state(self, batch: int) -> State:
        """The RNN's zeros and an empty softmax (max -inf, sums 0)."""
        state = rnn_initial_state(self.rnn, batch)
        state["att_max"] = torch.full((batch, 1), -math.inf)
        state["att_sum"] = torch.zeros(batch, 1)
        state["att_acc"] = torch.zeros(batch, self.rnn.hidden_size)
        return state

    def step(self, x_t: torch.Tensor, state: State) -> tuple[State, State]:
        """({"y": prediction as if the sequence ended at t, "score": e_t}, new state)."""
        rnn_state = {k: v for k, v in state.items() if not k.startswith("att_")}
        out, new = rnn_step(self.rnn, x_t, rnn_state)
        h_t = out[:, 0]
        score = self.score(h_t)  # [batch, 1]
        m = torch.maximum(state["att_max"], score)
        decay, weight = torch.exp(state["att_max"] - m), torch.exp(score - m)
        s = state["att_sum"] * decay + weight
        acc = state["att_acc"] * decay + weight * h_t
        y = self.head(acc / s).reshape(-1, *self.output_shape)
        return {"y": y, "score": score.squeeze(1)}, {
            **new,
            "att_max": m,
            "att_sum": s,
            "att_acc": acc,
        }
