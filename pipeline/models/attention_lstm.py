"""LSTM/GRU encoder with additive (Bahdanau) attention pooling over time steps."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.lstm import make_rnn


class AttentionLSTM(nn.Module):
    """x [batch, seq, features] -> (prediction, attention weights [batch, seq]).

    e_t = v^T tanh(W h_t + b), alpha = softmax_t(e), context = sum_t alpha_t h_t; the head reads
    the context. The weights say which time steps the prediction rests on, so they are a second
    model output (and a second ONNX output) rather than hidden state.

    `fcn_channels` adds the fully convolutional branch of ALSTM-FCN (Karim et al. 2017): Conv1d
    blocks (kernels 8, 5, 3, ...) with batch norm, globally average-pooled over time and
    concatenated to the context. Both branches take any sequence length.
    """

    tasks = ("classification", "forecast")
    # Default Ray Tune space over this family's config keys (pipeline/tuning; conf/tune overrides).
    search_space = {
        "cell": {"choice": ["lstm", "gru"]},
        "hidden_size": {"choice": [32, 64, 128]},
        "attention_size": {"choice": [16, 32, 64]},
        "dropout": {"uniform": [0.0, 0.3]},
    }
    extra_outputs = {"attention": ("batch", "seq")}

    def __init__(
        self,
        input_size: int,
        output_shape: tuple[int, ...],
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        cell: str = "lstm",
        attention_size: int = 32,
        level_norm: bool = False,
        fcn_channels: tuple[int, ...] = (),
        target_index: tuple[int, ...] = (),
    ):
        super().__init__()
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional)
        width = hidden_size * (2 if bidirectional else 1)
        self.fcn = fcn_branch(input_size, tuple(fcn_channels))
        self.score = nn.Sequential(
            nn.Linear(width, attention_size), nn.Tanh(), nn.Linear(attention_size, 1, bias=False)
        )
        self.dropout = nn.Dropout(dropout)
        self.output_shape = tuple(output_shape)
        fcn_width = fcn_channels[-1] if fcn_channels else 0
        self.head = nn.Linear(width + fcn_width, math.prod(self.output_shape))
        self.level_norm = level_norm
        self.register_buffer("target_index", torch.tensor(target_index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1] == 0:
            raise ValueError("attention_lstm: the input sequence has no time steps (seq = 0)")
        if self.level_norm:
            last = x[:, -1:, :]
            x = x - last
        states, _ = self.rnn(x)  # [batch, seq, width]
        alpha = torch.softmax(self.score(states).squeeze(-1), dim=1)
        context = torch.bmm(alpha.unsqueeze(1), states).squeeze(1)
        if self.fcn is not None:
            context = torch.cat([context, self.fcn(x.transpose(1, 2)).mean(dim=2)], dim=1)
        out = self.head(self.dropout(context)).reshape(-1, *self.output_shape)
        if self.level_norm:
            out = out + last.index_select(2, self.target_index)
        return out, alpha


def fcn_branch(input_size: int, channels: tuple[int, ...]) -> nn.Sequential | None:
    """Conv1d -> BatchNorm -> ReLU blocks with 'same' padding; None when `channels` is empty."""
    if not channels:
        return None
    kernels = (8, 5, 3) + (3,) * max(len(channels) - 3, 0)
    layers, c_in = [], input_size
    for c_out, k in zip(channels, kernels, strict=False):
        layers += [nn.Conv1d(c_in, c_out, k, padding="same"), nn.BatchNorm1d(c_out), nn.ReLU()]
        c_in = c_out
    return nn.Sequential(*layers)
