"""Peephole LSTM (Gers & Schmidhuber 2000): a drop-in for `nn.LSTM(..., batch_first=True)`.

    i = σ(W_ii x + W_hi h + w_ci∘c + b_i)        f = σ(W_if x + W_hf h + w_cf∘c + b_f)
    g = tanh(W_ig x + W_hg h + b_g)              c' = f∘c + i∘g
    o = σ(W_io x + W_ho h + w_co∘c' + b_o)       h' = o∘tanh(c')

Two execution paths for the time loop with the same math: a plain Python loop (training; fast
in eager) and `torch._higher_order_ops.scan` (export). torch.onnx unrolls a Python loop over
seq, which silently fixes seq (or worse, claims it dynamic and is wrong at other lengths);
scan exports to an ONNX `Scan` node and keeps seq symbolic. The exporter sets
`module.scan_for_export = True` before `torch.onnx.export`; on a `PeepholeLSTM` that setting
reaches every layer and direction it owns.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch._higher_order_ops.scan import scan


class PeepholeLSTMLayer(nn.Module):
    """One direction of one layer: x [batch, seq, in] -> (outputs [batch, seq, hidden], (h, c))."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reverse: bool = False):
        super().__init__()
        self.hidden_size = hidden_size
        self.reverse = reverse
        self.scan_for_export = False
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size)) if bias else None
        # peephole weights, diagonal (Hadamard) per gate: input, forget, output
        self.weight_ci = nn.Parameter(torch.empty(hidden_size))
        self.weight_cf = nn.Parameter(torch.empty(hidden_size))
        self.weight_co = nn.Parameter(torch.empty(hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # nn.LSTM's initialisation
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _step(
        self, h: torch.Tensor, c: torch.Tensor, gx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step given the precomputed input projection gx = W_i* x + b [batch, 4h]."""
        gates = gx + h @ self.weight_hh.t()
        i, f, g, o = gates.chunk(4, dim=-1)
        i = torch.sigmoid(i + self.weight_ci * c)
        f = torch.sigmoid(f + self.weight_cf * c)
        c = f * c + i * torch.tanh(g)
        o = torch.sigmoid(o + self.weight_co * c)
        return o * torch.tanh(c), c

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if state is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
            c = x.new_zeros(x.shape[0], self.hidden_size)
        else:
            h, c = state
        gx = nn.functional.linear(x, self.weight_ih, self.bias)  # every step at once
        if self.reverse:
            gx = gx.flip(1)
        if self.scan_for_export:
            out, (h, c) = self._run_scan(gx, h, c)
        else:
            out, (h, c) = self._run_loop(gx, h, c)
        if self.reverse:
            out = out.flip(1)
        return out, (h, c)

    def _run_loop(self, gx, h, c):
        outs = []
        for t in range(gx.shape[1]):
            h, c = self._step(h, c, gx[:, t])
            outs.append(h)
        return torch.stack(outs, dim=1), (h, c)

    def _run_scan(self, gx, h, c):
        def combine(carry, gx_t):
            h_new, c_new = self._step(carry[0], carry[1], gx_t)
            return (h_new, c_new), h_new.clone()  # scan forbids an output aliasing the carry

        (h, c), out = scan(combine, (h, c), gx.transpose(0, 1))  # time-major: outputs stack on 0
        return out.transpose(0, 1), (h, c)


class PeepholeLSTM(nn.Module):
    """Same constructor keywords and return value as `nn.LSTM` (no `proj_size`):
    forward(x[, (h_0, c_0)]) -> (outputs [batch, seq, dirs*hidden],
    (h_n [layers*dirs, batch, hidden], c_n [layers*dirs, batch, hidden])).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = True,
        dropout: float = 0.0,
        bidirectional: bool = False,
    ):
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be in [0, 1]; got {dropout}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        dirs = 2 if bidirectional else 1
        # layers[l * dirs + d], the order of nn.LSTM's h_n / c_n
        self.layers = nn.ModuleList(
            PeepholeLSTMLayer(
                input_size if layer == 0 else hidden_size * dirs,
                hidden_size,
                bias=bias,
                reverse=d == 1,
            )
            for layer in range(num_layers)
            for d in range(dirs)
        )
        self.drop = nn.Dropout(dropout)

    @property
    def scan_for_export(self) -> bool:
        return all(layer.scan_for_export for layer in self.layers)

    @scan_for_export.setter
    def scan_for_export(self, value: bool) -> None:
        for layer in self.layers:
            layer.scan_for_export = bool(value)

    def forward(
        self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 3:
            raise ValueError(
                f"PeepholeLSTM expects input [batch, seq, features]; got shape {tuple(x.shape)}"
            )
        if not self.batch_first:
            x = x.transpose(0, 1)
        dirs = 2 if self.bidirectional else 1
        hs, cs = [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = self.drop(x)  # between layers only, as nn.LSTM
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                state = None if hx is None else (hx[0][k], hx[1][k])
                out, (h, c) = self.layers[k](x, state)
                outs.append(out)
                hs.append(h)
                cs.append(c)
            x = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x, (torch.stack(hs), torch.stack(cs))
