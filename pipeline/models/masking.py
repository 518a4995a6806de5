"""Padding masks for batches of series of different lengths (padded at the end).

A model given `lengths` reads only the first lengths[i] steps of series i: the RNNs are causal,
so their outputs before the padding are the unpadded ones; attention and pooling skip padded
steps; convolutions see zeros past the end, as 'same' padding of the unpadded series would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def step_mask(lengths: torch.Tensor, seq: int) -> torch.Tensor:
    """[batch, seq] bool: True at the steps of each series, False at its padding."""
    return torch.arange(seq, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """x [batch, channels, seq] -> [batch, channels], averaged over the unpadded steps."""
    if mask is None:
        return x.mean(dim=2)
    m = mask.unsqueeze(1).to(x.dtype)
    return (x * m).sum(dim=2) / m.sum(dim=2)


def pool_steps(
    x: torch.Tensor, k: int, mask: torch.Tensor | None, extrema: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [batch, seq, features] -> the means of k consecutive steps [batch, ceil(seq / k),
    features] (the last group may be shorter), padded steps left out; and the share of real steps
    in each group [batch, ceil(seq / k)] (0: a group of padding only, whose mean is 0).
    `extrema`: each group's min and max follow its mean ([batch, groups, 3 * features]; 0 for a
    group of padding only), so a spike shorter than k steps is not averaged away.

    Padded at the end by a fixed k - 1 steps, never by seq's remainder: torch.export keeps seq
    symbolic then."""
    real = torch.ones_like(x[:, :, :1]) if mask is None else mask.unsqueeze(2).to(x.dtype)
    share = F.avg_pool1d(F.pad(real.transpose(1, 2), (0, k - 1)), k, k)
    means = F.avg_pool1d(F.pad((x * real).transpose(1, 2), (0, k - 1)), k, k)
    stats = [means / share.clamp(min=0.5 / k)]
    if extrema:
        hidden = real.transpose(1, 2) == 0  # padding never wins a min or a max
        for sign in (-1, 1):  # min = -max(-x)
            signed = (sign * x.transpose(1, 2)).masked_fill(hidden, -math.inf)
            signed = F.pad(signed, (0, k - 1), value=-math.inf).unsqueeze(2)
            # max_pool2d over [.., 1, seq]: torch.export fixes seq through max_pool1d (and unfold)
            peak = sign * F.max_pool2d(signed, (1, k), (1, k)).squeeze(2)
            stats.append(torch.where(share > 0, peak, torch.zeros_like(peak)))
    return torch.cat(stats, dim=1).transpose(1, 2), share.squeeze(1)


def unpool_weights(
    weights: torch.Tensor, share: torch.Tensor, k: int, mask: torch.Tensor | None, seq: int
) -> torch.Tensor:
    """Weights over pool_steps' groups [batch, groups] -> over the steps [batch, seq], each
    group's weight split evenly among its real steps (so they still sum as before)."""
    per_step = weights / (share * k).clamp(min=1)
    spread = per_step.unsqueeze(2).expand(-1, -1, k).reshape(weights.shape[0], -1)[:, :seq]
    return spread if mask is None else spread * mask.to(weights.dtype)


def last_step(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """states [batch, seq, width] -> each series' state at its last step [batch, width]."""
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, states.shape[2])
    return states.gather(1, index).squeeze(1)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics skip padded steps (at inference it is the plain
    affine BatchNorm, exported as such)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        x = x.to(self.running_mean.dtype)  # float32 statistics, as BatchNorm's under autocast
        m = mask.unsqueeze(1).to(x.dtype)  # [batch, 1, seq]
        n = m.sum()
        mean = (x * m).sum(dim=(0, 2)) / n
        var = (torch.square(x - mean[:, None]) * m).sum(dim=(0, 2)) / n
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * n / torch.clamp(n - 1, min=1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        scale = self.weight / torch.sqrt(var + self.eps)
        return (x - mean[:, None]) * scale[:, None] + self.bias[:, None]


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation over channels (Hu et al. 2018; MLSTM-FCN's conv blocks)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        inner = max(channels // reduction, 1)
        self.gate = nn.Sequential(
            nn.Linear(channels, inner), nn.ReLU(), nn.Linear(inner, channels), nn.Sigmoid()
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x * self.gate(masked_mean(x, mask)).unsqueeze(2)


class ConvBranch(nn.Sequential):
    """Conv1d -> BatchNorm -> ReLU blocks ('same' padding) [-> squeeze-excite], then the mean
    over time: x [batch, features, seq] -> [batch, channels]. With a mask, padded steps are
    zeroed after every block, so no step of a series ever reads another value than zero past
    its end."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        m = None if mask is None else mask.unsqueeze(1).to(x.dtype)
        if m is not None:
            x = x * m
        for layer in self:
            takes_mask = isinstance(layer, MaskedBatchNorm1d | SqueezeExcite)
            x = layer(x, mask) if takes_mask else layer(x)
            if m is not None and isinstance(layer, nn.ReLU | SqueezeExcite):
                x = x * m
        return masked_mean(x, mask)


def conv_branch(input_size: int, channels: tuple[int, ...], squeeze_excite: bool):
    """The FCN branch of (M)LSTM-FCN (Karim et al. 2017, 2019): kernels 8, 5, 3, ...;
    squeeze-excite after every block but the last. None when `channels` is empty."""
    if not channels:
        return None
    kernels = (8, 5, 3) + (3,) * max(len(channels) - 3, 0)
    layers, c_in = [], input_size
    for i, (c_out, k) in enumerate(zip(channels, kernels, strict=False)):
        layers += [nn.Conv1d(c_in, c_out, k, padding="same"), MaskedBatchNorm1d(c_out), nn.ReLU()]
        if squeeze_excite and i < len(channels) - 1:
            layers.append(SqueezeExcite(c_out))
        c_in = c_out
    return ConvBranch(*layers)
