"""Model families: their keys, defaults, tasks and default search spaces (the `model` group)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.config.base import PositiveInt, Strict


class RecurrentModel(Strict):
    """Defaults here and in conf/model/*.yaml only (the nn.Module constructors have none).

    Each family declares the tasks it supports and its default Ray Tune search space over its
    own keys (pipeline/tuning; conf/tune overrides key by key): facts read without torch.
    """

    tasks: ClassVar[tuple[str, ...]] = ("classification", "forecast")
    search_space: ClassVar[dict[str, dict[str, list]]] = {}
    cell: Literal["lstm", "gru", "peephole"] = "lstm"
    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    bidirectional: bool = False
    level_norm: bool = False  # forecasting: model the change from the last observed step
    # forecasting: divide each window by its own std (RevIN-style); auto: where the data holds
    # more than one series (pipeline.meta)
    scale_norm: Literal[False, True, "auto"] = False
    # classification: z-normalise each series per feature over its own steps (inside the graph);
    # auto: where the train split's series amplitudes are 1,000 times apart (pipeline.meta)
    series_norm: Literal[False, True, "auto"] = False
    # forecasting: the season's period; each window's seasonal profile is taken out, then added
    # back to the forecast (0: off); auto: the data's season where the window holds two
    season_norm: Annotated[int, Field(ge=0)] | Literal["auto"] = 0

    @field_validator("scale_norm", "series_norm", mode="before")
    @classmethod
    def _true_false_or_auto(cls, value):
        if value not in (True, False, "auto"):
            raise ValueError("must be true, false or auto")
        return value

    @field_validator("season_norm")
    @classmethod
    def _period(cls, period: int | str) -> int | str:
        if period == 1:
            raise ValueError("must be 0 (off) or a period of 2 steps or more (got 1)")
        return period


class LstmModel(RecurrentModel):
    search_space: ClassVar = {
        "cell": {"choice": ["lstm", "gru"]},
        "hidden_size": {"choice": [16, 32, 64]},
        "num_layers": {"choice": [1, 2]},
        "dropout": {"uniform": [0.0, 0.5]},
    }
    name: Literal["lstm"]


class AttentionLstmModel(RecurrentModel):
    search_space: ClassVar = {
        "cell": {"choice": ["lstm", "gru"]},
        "hidden_size": {"choice": [32, 64, 128]},
        "attention_size": {"choice": [16, 32, 64]},
        "dropout": {"uniform": [0.0, 0.3]},
    }
    name: Literal["attention_lstm"]
    num_layers: PositiveInt = 1
    attention_size: PositiveInt = 32
    fcn_channels: list[PositiveInt] = []  # e.g. [128, 256, 128]: the ALSTM-FCN conv branch
    squeeze_excite: bool = False  # MLSTM-FCN: squeeze-and-excite after each conv block but the last
    # classification: series longer than this are read as means of ceil(length / max_steps)
    # consecutive steps (the length: the training data's longest series); None: never
    max_steps: PositiveInt | None = None
    pool_extrema: bool = False  # with max_steps: each group's min and max beside its mean


class ConvLstmModel(Strict):
    tasks: ClassVar[tuple[str, ...]] = ("frames",)
    search_space: ClassVar = {
        "hidden_channels": {"choice": [8, 16, 32]},
        "num_layers": {"choice": [1, 2]},
        "kernel_size": {"choice": [3, 5]},
    }
    name: Literal["conv_lstm"]
    hidden_channels: PositiveInt = 16
    num_layers: PositiveInt = 2
    kernel_size: PositiveInt = 3
    peephole: bool = False
    # 0: predict pixels; odd k >= 3: move the previous frame's pixels (a k x k dynamic filter)
    motion_filter: Annotated[int, Field(ge=0)] = 0
    frame_differences: bool = False  # the first layers also read each frame minus the one before
    # below 1: the motion filter's softmax sharpened once the fit is over (less blur over steps)
    filter_temperature: Annotated[float, Field(gt=0)] = 1.0
    patch_size: PositiveInt = 1  # the cells run on p x p patches (p² less convolution work)

    @field_validator("motion_filter")
    @classmethod
    def _motion(cls, k: int) -> int:
        if k and (k < 3 or k % 2 == 0):
            raise ValueError(f"must be 0 (pixels) or odd and >= 3 (got {k})")
        return k

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"must be odd so that 'same' padding keeps the frame size (got {k})")
        return k

    @model_validator(mode="after")
    def _temperature_needs_the_filter(self) -> ConvLstmModel:
        if self.filter_temperature != 1 and not self.motion_filter:
            raise ValueError("filter_temperature applies with a motion_filter only")
        return self


ModelConfig = Annotated[LstmModel | AttentionLstmModel | ConvLstmModel, Field(discriminator="name")]
