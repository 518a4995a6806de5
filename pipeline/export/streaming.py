"""The ONNX form of a family's `step` (see pipeline/models): flat tensors in, flat tensors out.

A step model takes one time step x_t [batch, ...] plus the recurrent state and returns the
prediction as if the sequence ended at t (and any per-step extras, e.g. an attention score),
plus the new state: O(1) work per step instead of re-running the whole window. State outputs
carry the state inputs' names with an `_out` suffix.
"""

from __future__ import annotations

import torch
from torch import nn


class StepModel(nn.Module):
    """(x_t, *state) -> (*outputs, *new state) of `model.step`, for a streamable model."""

    def __init__(self, model: nn.Module, example_x_t: torch.Tensor):
        super().__init__()
        reason = model.streaming_unsupported()
        if reason:
            raise ValueError(f"no streaming form: {reason}")
        self.model = model
        state = model.initial_state(len(example_x_t))
        with torch.no_grad():
            outputs, _ = model.step(example_x_t, state)
        self.state_names, self.outputs = list(state), list(outputs)

    @property
    def output_names(self) -> list[str]:
        return [*self.outputs, *(f"{n}_out" for n in self.state_names)]

    def forward(self, x: torch.Tensor, *state: torch.Tensor):
        outputs, new = self.model.step(x, dict(zip(self.state_names, state, strict=True)))
        return (*outputs.values(), *new.values())


def batch_axes(model: nn.Module) -> list[int]:
    """The batch axis of each state tensor (h, c are [layers, batch, hidden]; others lead)."""
    a, b = model.initial_state(2).values(), model.initial_state(3).values()
    return [next(i for i, (m, n) in enumerate(zip(x.shape, y.shape, strict=True)) if m != n)
            for x, y in zip(a, b, strict=True)]  # fmt: skip
