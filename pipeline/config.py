"""Typed config schema, validated once at the edge.

`conf/` (Hydra groups) composes into `params.yaml`; every stage loads params.yaml through
`load_config`, which turns any schema violation into one `ConfigError` naming the key.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
PARAMS_FILE = "params.yaml"

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


@cache
def shipped_ucr_sets() -> tuple[str, ...]:
    """UCR/UEA sets sktime ships (folders holding NAME_TRAIN.ts), found without importing it."""
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        return ()
    root = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return tuple(sorted(d.name for d in root.iterdir() if (d / f"{d.name}_TRAIN.ts").exists()))


class ForecastWindows(Strict):
    """Windowing and time-ordered splits of a forecasting series (counts are time steps)."""

    window: PositiveInt = 24
    horizon: PositiveInt = 12
    val_size: PositiveInt = 24
    test_size: PositiveInt = 24
    transform: Literal["none", "log"] = "none"
    season: PositiveInt | None = (
        None  # period of the seasonal-naive baseline; None: naive (last value)
    )

    @model_validator(mode="after")
    def _check(self) -> ForecastWindows:
        for key in ("val_size", "test_size"):
            if getattr(self, key) < self.horizon:
                raise ValueError(
                    f"{key} ({getattr(self, key)}) must be >= horizon ({self.horizon})"
                )
        if self.season is not None and self.season > self.window:
            raise ValueError(f"season ({self.season}) must be <= window ({self.window})")
        return self


class UcrData(Strict):
    source: Literal["ucr"]
    name: str
    val_fraction: Fraction = 0.2
    split_seed: int = 0  # the stratified validation split (the training seed is `seed`)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        allowed = shipped_ucr_sets()
        if name not in allowed:
            raise ValueError(f"unknown UCR data set {name!r}; allowed: {', '.join(allowed)}")
        return name

    @property
    def task(self) -> str:
        return "classification"


class AirlineData(ForecastWindows):
    source: Literal["airline"]

    @property
    def task(self) -> str:
        return "forecast"


class TableData(ForecastWindows):
    """The user's own long-format file: one row per (series, time step)."""

    source: Literal["csv", "parquet"]
    path: str
    task: Literal["classification", "forecast"]
    id_column: str = "series_id"
    time_column: str = "time"
    features: Annotated[list[str], Field(min_length=1)]
    label: str | None = None  # classification: one label per series
    targets: list[str] = []  # forecast: columns to predict (default: all features)
    val_fraction: Fraction = 0.2  # classification splits, by series
    test_fraction: Fraction = 0.2
    split_seed: int = 0

    @model_validator(mode="after")
    def _task_columns(self) -> TableData:
        if self.task == "classification" and not self.label:
            raise ValueError("classification needs 'label' (the column holding each series' class)")
        missing = [t for t in self.targets if t not in self.features]
        if missing:
            raise ValueError(f"targets {missing} must also be listed in features")
        return self


class MovingDigitsData(Strict):
    """Moving-MNIST-like sequences built from scikit-learn's 8x8 digits (see data/moving_digits)."""

    source: Literal["moving_digits"]
    frame_size: PositiveInt = 16
    digit_size: PositiveInt = 8  # a multiple of 8: the 8x8 digits are upscaled by repetition
    max_digits: Literal[1, 2] = 2
    input_frames: PositiveInt = 8
    output_frames: PositiveInt = 8
    train_size: PositiveInt = 512
    val_size: PositiveInt = 128
    test_size: PositiveInt = 256
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> MovingDigitsData:
        if self.digit_size % 8:
            raise ValueError(f"digit_size ({self.digit_size}) must be a multiple of 8")
        if self.digit_size >= self.frame_size:
            raise ValueError(
                f"digit_size ({self.digit_size}) must be below frame_size ({self.frame_size})"
            )
        return self

    @property
    def task(self) -> str:
        return "frames"


DataConfig = Annotated[
    UcrData | AirlineData | TableData | MovingDigitsData, Field(discriminator="source")
]


class RecurrentModel(Strict):
    cell: Literal["lstm", "gru", "peephole"] = "lstm"
    hidden_size: PositiveInt = 64
    num_layers: PositiveInt = 2
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    bidirectional: bool = False
    level_norm: bool = False  # forecasting: model the change from the last observed step


class LstmModel(RecurrentModel):
    name: Literal["lstm"]


class AttentionLstmModel(RecurrentModel):
    name: Literal["attention_lstm"]
    attention_size: PositiveInt = 32
    fcn_channels: list[PositiveInt] = []  # e.g. [128, 256, 128]: the ALSTM-FCN conv branch


class ConvLstmModel(Strict):
    name: Literal["conv_lstm"]
    hidden_channels: PositiveInt = 16
    num_layers: PositiveInt = 2
    kernel_size: PositiveInt = 3
    peephole: bool = False

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError(f"must be odd so that 'same' padding keeps the frame size (got {k})")
        return k


ModelConfig = Annotated[LstmModel | AttentionLstmModel | ConvLstmModel, Field(discriminator="name")]


class Fit(Strict):
    max_epochs: PositiveInt = 100
    batch_size: PositiveInt = 32
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    patience: PositiveInt = 20
    gradient_clip_val: Annotated[float, Field(ge=0)] = 1.0
    # After early stopping has picked the epoch count on val: train again from the same seed on
    # train + val for that many epochs; that model is tested, saved and exported.
    refit: bool = False


class Validate(Strict):
    parity_tol: Annotated[float, Field(gt=0)] = 1e-5
    parity_batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 4, 16]
    min: dict[str, float] = {}  # metric -> lowest passing value, e.g. accuracy: 0.95
    max: dict[str, float] = {}  # metric -> highest passing value, e.g. mape: 10
    beat_baseline: bool = False  # forecast: mape < (seasonal-)naive mape; frames: mse < copy-last
    quantize: bool = True  # try a dynamic int8 model (models/<exp>/int8/model.onnx)
    # keep it only if accuracy falls (mape, mse rises) by at most this much, absolute
    int8_max_drop: Annotated[float, Field(ge=0)] = 0.01


class Experiment(Strict):
    data: DataConfig
    model: ModelConfig
    fit: Fit = Fit()
    validate_: Validate = Field(Validate(), alias="validate")

    @property
    def task(self) -> str:
        return self.data.task

    @model_validator(mode="after")
    def _model_fits_task(self) -> Experiment:
        from pipeline.models import REGISTRY

        tasks = REGISTRY[self.model.name].tasks
        if self.task not in tasks:
            raise ValueError(
                f"model.name {self.model.name!r} does not support the {self.task!r} task of "
                f"data.source {self.data.source!r}; it supports: {', '.join(tasks)}"
            )
        if getattr(self.model, "level_norm", False) and self.task != "forecast":
            raise ValueError("model.level_norm applies to forecasting only")
        return self


class Trainer(Strict):
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: PositiveInt | Literal["auto"] = 1
    strategy: str = "auto"
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    deterministic: bool = True
    progress_bar: bool = True
    num_workers: Annotated[int, Field(ge=0)] = 0
    threads: PositiveInt | None = 1  # torch intra-op threads; None: torch's default (all cores)
    max_epochs: PositiveInt | None = None  # when set, caps every experiment's fit.max_epochs
    # When set, train runs on a Ray cluster through Ray Train's TorchTrainer with this many
    # workers (RayDDPStrategy); RAY_ADDRESS picks the cluster, else a local Ray starts.
    ray_workers: PositiveInt | None = None


SAMPLERS = ("choice", "grid", "uniform", "loguniform", "randint")


class Resources(Strict):
    cpu: Annotated[float, Field(gt=0)] = 1
    gpu: Annotated[float, Field(ge=0)] = 0


class Tune(Strict):
    """A Ray Tune sweep over one experiment (`lstm-pipeline tune <exp>`); see pipeline/tuning."""

    num_samples: PositiveInt = 8
    max_epochs: PositiveInt = 5  # per trial (ASHA's max_t); applied with the best params
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    grace_period: PositiveInt = 1  # ASHA: epochs before a trial can be stopped
    reduction_factor: Annotated[float, Field(gt=1)] = 2
    perturbation_interval: PositiveInt = 2  # PBT: epochs between exploit/explore
    resources_per_trial: Resources = Resources()
    max_concurrent_trials: PositiveInt = 2
    max_failures: Annotated[int, Field(ge=0)] = 1
    address: str | None = None  # an existing cluster (host:port); else RAY_ADDRESS, else local
    storage_path: str | None = None  # Ray's experiment storage (shared for multi-node)
    seed: int = 0  # the search algorithm's seed
    # Overrides the family's default space, key by key (null removes one):
    #   model: {hidden_size: {choice: [16, 32, 64]}}, fit: {lr: {loguniform: [1e-4, 1e-2]}}
    space: dict[Literal["model", "fit"], dict[str, dict[str, list] | None]] = {}

    @field_validator("space")
    @classmethod
    def _samplers(cls, space: dict) -> dict:
        for group, keys in space.items():
            for key, spec in keys.items():
                if spec is None:
                    continue
                if len(spec) != 1 or next(iter(spec)) not in SAMPLERS:
                    raise ValueError(
                        f"{group}.{key}: give one sampler of {', '.join(SAMPLERS)} (got {spec})"
                    )
                kind, values = next(iter(spec.items()))
                if kind not in ("choice", "grid") and len(values) != 2:
                    raise ValueError(f"{group}.{key}: {kind} takes [low, high] (got {values})")
                if not values:
                    raise ValueError(f"{group}.{key}: {kind} needs at least one value")
        return space


class Tracking(Strict):
    experiment_name: str = "lstm-pipeline"


class Release(Strict):
    """Gates of `lstm-pipeline release`, checked on validate.json before anything is registered.

    Thresholds on a metric the report lacks are skipped (a forecaster has no accuracy).
    """

    model_name: Annotated[str, Field(pattern=r"\{exp\}")] = "lstm-pipeline-{exp}"
    require_passed: bool = True
    min: dict[str, float] = {}
    max: dict[str, float] = {}
    # metric -> how much worse than the current @champion a candidate may be (absolute)
    champion_margin: dict[str, Annotated[float, Field(ge=0)]] = {}


class PipelineConfig(Strict):
    seed: int = 0
    trainer: Trainer = Trainer()
    tracking: Tracking = Tracking()
    release: Release = Release()
    tune: Tune = Tune()
    experiments: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")], Experiment]

    def experiment(self, name: str) -> Experiment:
        if name not in self.experiments:
            raise ConfigError(
                f"experiments.{name}: no such experiment; defined: {', '.join(self.experiments)}"
            )
        return self.experiments[name]


def _tags(union, field: str) -> set[str]:
    """The Literal values that pick each member of a discriminated union (pydantic puts them in
    error paths, where users never wrote them)."""
    members = get_args(get_args(union)[0])
    return {tag for m in members for tag in get_args(m.model_fields[field].annotation)}


UNION_TAGS = _tags(DataConfig, "source") | _tags(ModelConfig, "name")


def _format(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # Drop the union tags pydantic puts in the path ("ucr", "lstm"...): users never write them.
        loc = [str(p) for p in e["loc"] if p not in UNION_TAGS]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{'.'.join(loc) or '<root>'}: {msg} (got {e.get('input')!r})")
    return "invalid config: " + "; ".join(lines)


def parse_config(raw: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format(err)) from None


def load_config(path: str | Path = PARAMS_FILE) -> PipelineConfig:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found (run `lstm-pipeline compose` to write it from conf/)")
    return parse_config(yaml.safe_load(path.read_text()) or {})


def compose(overrides: list[str] = (), conf_dir: Path = CONF_DIR) -> str:
    """Compose conf/ exactly as DVC's Hydra integration does (dvc.utils.hydra.compose_and_dump)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(Path(conf_dir).resolve()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"conf/: {err}") from None
    text = OmegaConf.to_yaml(cfg)
    parse_config(yaml.safe_load(text))
    return text
