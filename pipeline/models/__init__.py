"""Model families: nn.Module code only. `build_model` maps a model config to a module.

Every family takes (input_size, output_shape, **its config keys) and owns its streaming form:
`initial_state(batch)`, `step(x_t, state) -> (outputs, new state)` and
`streaming_unsupported()` (None, or why no ONNX step model is exported). A family may declare
`extra_outputs` (outputs after the prediction, e.g. attention weights: name -> its dims'
names), which export turns into extra ONNX outputs. Its tasks, defaults and search space live in
the config schema (pipeline/config/models.py).
"""

from __future__ import annotations

import math

from torch import nn

from pipeline.config import parse_model
from pipeline.models.attention_lstm import AttentionLSTM
from pipeline.models.conv_lstm import ConvLSTM
from pipeline.models.lstm import StackedLSTM

REGISTRY: dict[str, type[nn.Module]] = {
    "lstm": StackedLSTM,
    "attention_lstm": AttentionLSTM,
    "conv_lstm": ConvLSTM,
}


def build_model(
    model_cfg: dict, input_size: int, output_shape: tuple[int, ...], steps: int, **data
) -> nn.Module:
    """The module named by `model_cfg["name"]`, the schema's defaults filled in, for inputs of
    `steps` steps (the longest); `data`: what the task adds (a forecaster's `target_index`)."""
    cfg = parse_model(model_cfg).model_dump()
    if "max_steps" in cfg:
        cfg["time_pool"] = math.ceil(steps / (cfg.pop("max_steps") or steps))
    return REGISTRY[cfg.pop("name")](input_size, output_shape, **cfg, **data)
