"""Stacked (optionally bidirectional) LSTM/GRU with a linear head."""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.peephole_lstm import PeepholeLSTM

# nn.LSTM/GRU export to native ONNX LSTM/GRU ops; the peephole cell is ours (a Scan in ONNX).
RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "peephole": PeepholeLSTM}


def make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional) -> nn.Module:
    return RNN_CELLS[cell](
        input_size,
        hidden_size,
        num_layers=num_layers,
        dropout=dropout if num_layers > 1 else 0.0,  # between layers only
        bidirectional=bidirectional,
        batch_first=True,
    )


class StackedLSTM(nn.Module):
    """x [batch, seq, features] -> logits [batch, classes] or forecast [batch, horizon, targets].

    `level_norm` (forecasting): inputs are shifted by the last observed step and the forecast is
    added back onto it, so the network models changes rather than absolute levels; this is what
    lets it follow a trend beyond the range seen in training.
    """

    tasks = ("classification", "forecast")
    # Default Ray Tune space over this family's config keys (pipeline/tuning; conf/tune overrides).
    search_space = {
        "cell": {"choice": ["lstm", "gru"]},
        "hidden_size": {"choice": [16, 32, 64]},
        "num_layers": {"choice": [1, 2]},
        "dropout": {"uniform": [0.0, 0.5]},
    }

    def __init__(
        self,
        input_size: int,
        output_shape: tuple[int, ...],
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        bidirectional: bool = False,
        cell: str = "lstm",
        level_norm: bool = False,
        target_index: tuple[int, ...] = (),
    ):
        super().__init__()
        self.rnn = make_rnn(cell, input_size, hidden_size, num_layers, dropout, bidirectional)
        self.dropout = nn.Dropout(dropout)
        self.output_shape = tuple(output_shape)
        self.head = nn.Linear(
            hidden_size * (2 if bidirectional else 1), math.prod(self.output_shape)
        )
        self.level_norm = level_norm
        self.register_buffer("target_index", torch.tensor(target_index, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.level_norm:
            last = x[:, -1:, :]
            x = x - last
        _, state = self.rnn(x)
        h = state[0] if isinstance(state, tuple) else state  # LSTM gives (h, c), GRU gives h
        directions = 2 if self.rnn.bidirectional else 1
        final = torch.cat(list(h[-directions:]), dim=-1)  # last layer, every direction
        out = self.head(self.dropout(final)).reshape(-1, *self.output_shape)
        if self.level_norm:
            out = out + last.index_select(2, self.target_index)
        return out
