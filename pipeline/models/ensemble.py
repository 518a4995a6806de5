"""Seed ensembles: members of one family, their outputs averaged in one module (one ONNX file)."""

from __future__ import annotations

import math

import torch
from torch import nn


class Ensemble(nn.Module):
    """Members' predictions averaged. For classification (`probabilities`) the members' class
    probabilities are averaged and the output is their log: softmax of it gives the mean back,
    so whatever reads logits (argmax, softmax, cross-entropy) reads the ensemble unchanged.
    Extra outputs (attention weights) are averaged too."""

    def __init__(self, members: list[nn.Module], probabilities: bool):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.probabilities = probabilities
        self.extra_outputs = getattr(members[0], "extra_outputs", {})
        self.min_length = getattr(members[0], "min_length", 1)

    def forward(self, x: torch.Tensor, lengths=None, future=None, static=None):
        inputs = {"lengths": lengths, "future": future, "static": static}
        given = {k: v for k, v in inputs.items() if v is not None}
        outs = [m(x, **given) for m in self.members]
        outs = [o if isinstance(o, tuple) else (o,) for o in outs]
        first = torch.stack([o[0] for o in outs])
        if self.probabilities:
            y = torch.logsumexp(torch.log_softmax(first, dim=-1), dim=0) - math.log(len(outs))
        else:
            y = first.mean(dim=0)
        extras = [torch.stack(parts).mean(dim=0) for parts in list(zip(*outs, strict=True))[1:]]
        return (y, *extras) if extras else y

    def streaming_unsupported(self) -> str | None:
        return "ensemble: each member streams on its own, the averaged model is not exported"
