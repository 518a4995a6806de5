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
    """

    tasks = ("classification", "forecast")
    extra_outputs = ("attention",)

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
        target_index: tuple[int, ...] = (),
    ):
        super().__init__()
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional)
        width = hidden_size * (2 if bidirectional else 1)
        self.score = nn.Sequential(
            nn.Linear(width, attention_size), nn.Tanh(), nn.Linear(attention_size, 1, bias=False)
        )
        self.dropout = nn.Dropout(dropout)
        self.output_shape = tuple(output_shape)
        self.head = nn.Linear(width, math.prod(self.output_shape))
        self.level_norm = level_norm
        self.register_buffer("target_index", torch.tensor(target_index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.level_norm:
            last = x[:, -1:, :]
            x = x - last
        states, _ = self.rnn(x)  # [batch, seq, width]
        alpha = torch.softmax(self.score(states).squeeze(-1), dim=1)
        context = torch.bmm(alpha.unsqueeze(1), states).squeeze(1)
        out = self.head(self.dropout(context)).reshape(-1, *self.output_shape)
        if self.level_norm:
            out = out + last.index_select(2, self.target_index)
        return out, alpha
