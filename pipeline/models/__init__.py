"""Model families: nn.Module code only. `build_model` maps a model config to a module."""

from __future__ import annotations

from torch import nn

from pipeline.models.attention_lstm import AttentionLSTM
from pipeline.models.conv_lstm import ConvLSTM
from pipeline.models.lstm import StackedLSTM

# name -> class; each class declares `tasks` and optionally `extra_outputs` (outputs after the
# prediction, e.g. attention weights: name -> the names of its dims), which export turns into
# extra ONNX outputs.
REGISTRY: dict[str, type[nn.Module]] = {
    "lstm": StackedLSTM,
    "attention_lstm": AttentionLSTM,
    "conv_lstm": ConvLSTM,
}


def build_model(model_cfg: dict, meta: dict) -> nn.Module:
    """Instantiate the module named by `model_cfg["name"]` for the data described by `meta`."""
    cfg = dict(model_cfg)
    cls = REGISTRY[cfg.pop("name")]
    shape = meta["input_shape"]  # [seq, features] or, for frames, [seq, channels, height, width]
    if meta["task"] == "classification":
        output_shape = (len(meta["labels"]),)
    elif meta["task"] == "frames":
        output_shape = (meta["horizon"], *shape[1:])
    else:
        output_shape = (meta["horizon"], len(meta["targets"]))
        cfg["target_index"] = tuple(meta["target_index"])
    return cls(input_size=shape[1], output_shape=output_shape, **cfg)
