"""Streaming (one step at a time) variants of the recurrent models, for real-time inference.

A step model takes one time step x_t [batch, features] plus the recurrent state and returns the
prediction as if the sequence ended at t, plus the new state: O(1) work per step instead of
re-running the whole window. Attention pooling becomes an online softmax over the step scores
e_t: running max m, running sum s = sum exp(e - m) and running weighted sum a = sum exp(e - m) h,
rescaled by exp(m_old - m_new) when the max grows; the context is a / s. A past step's attention
weight is exp(e_t - m) / s with the final m and s.

Only causal models stream: `level_norm` subtracts the *last* step from every input, a
bidirectional RNN reads the future, and the ALSTM-FCN branch pools 'same'-padded convolutions
over the whole window. For those `streaming_unsupported` says why and no step model is made.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.attention_lstm import AttentionLSTM
from pipeline.models.lstm import StackedLSTM


def streaming_unsupported(model: nn.Module) -> str | None:
    """Why `model` has no exact O(1)-per-step form, or None when it has one."""
    if not isinstance(model, StackedLSTM | AttentionLSTM):
        return f"{type(model).__name__}: streaming covers the lstm and attention_lstm families"
    if model.rnn.bidirectional:
        return "bidirectional: the backward direction needs the whole sequence"
    if model.level_norm:
        return "level_norm: every input is shifted by the last step, unknown until the end"
    if getattr(model, "fcn", None) is not None:
        return "fcn_channels: the convolutional branch pools over the whole window"
    return None


def state_names(model: nn.Module) -> list[str]:
    """Names of the state inputs (the outputs carry the same names with an `_out` suffix)."""
    names = ["h", "c"] if isinstance(model.rnn, nn.LSTM) or hasattr(model.rnn, "layers") else ["h"]
    if isinstance(model, AttentionLSTM):
        names += ["att_max", "att_sum", "att_acc"]
    return names


def initial_state(model: nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """The state before the first step: zeros, and an empty softmax (max -inf, sums 0)."""
    rnn = model.rnn
    zeros = torch.zeros(rnn.num_layers, batch, rnn.hidden_size)
    state = {name: zeros.clone() for name in state_names(model) if name in ("h", "c")}
    if isinstance(model, AttentionLSTM):
        state["att_max"] = torch.full((batch, 1), -math.inf)
        state["att_sum"] = torch.zeros(batch, 1)
        state["att_acc"] = torch.zeros(batch, rnn.hidden_size)
    return state


class StepModel(nn.Module):
    """(x_t, *state) -> (prediction, [attention score e_t,] *new state) for a streamable model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        reason = streaming_unsupported(model)
        if reason:
            raise ValueError(f"no streaming form: {reason}")
        self.model = model
        self.names = state_names(model)
        self.attention = isinstance(model, AttentionLSTM)

    @property
    def output_names(self) -> list[str]:
        extra = ["score"] if self.attention else []
        return ["y", *extra, *(f"{n}_out" for n in self.names)]

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        state = dict(zip(self.names, state, strict=True))
        rnn_state = (state["h"], state["c"]) if "c" in state else state["h"]
        out, new = self.model.rnn(x.unsqueeze(1), rnn_state)
        new = new if isinstance(new, tuple) else (new,)
        if not self.attention:
            y = self.model.head(new[0][-1]).reshape(-1, *self.model.output_shape)
            return (y, *new)
        h_t = out[:, 0]
        score = self.model.score(h_t)  # [batch, 1]
        m = torch.maximum(state["att_max"], score)
        decay, weight = torch.exp(state["att_max"] - m), torch.exp(score - m)
        s = state["att_sum"] * decay + weight
        acc = state["att_acc"] * decay + weight * h_t
        y = self.model.head(acc / s).reshape(-1, *self.model.output_shape)
        return (y, score.squeeze(1), *new, m, s, acc)
