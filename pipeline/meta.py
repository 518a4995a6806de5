"""The data contract: what prepare learnt about the data, carried prepare -> meta.json ->
checkpoint -> ONNX metadata_props -> inference, validated wherever it is read.

Scalers are defined beside their inverses. They take numpy arrays or torch tensors alike and
compute in the caller's dtype, so prepare, the LightningModule and ONNX inference share one
formula (neither this module nor `pipeline.config` imports torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from pipeline.errors import DataError
from pipeline.io import read_json


def fit_standard(parts: list[np.ndarray], chunk: int = 1 << 18):
    """Per-feature (mean, std) over every step of the train split's parts (arrays [..., features]);
    a constant feature gets std 1. Two passes of float64 sums, a chunk of rows at a time: no
    temporary as large as the data (a series can be 10M steps)."""
    rows = [p.reshape(-1, p.shape[-1]) for p in parts]
    n = sum(len(r) for r in rows)
    blocks = [r[i : i + chunk] for r in rows for i in range(0, len(r), chunk)]
    mean = sum(b.sum(axis=0, dtype=np.float64) for b in blocks) / n
    var = sum(np.square(b - mean).sum(axis=0) for b in blocks) / n
    std = np.sqrt(var)
    return mean, np.where(std > 0, std, 1.0)


# `series_norm: auto` turns on above this std_spread: a series whose std is a thousandth of the
# others' reaches the network as a near-constant once one scaler serves them all.
SPREAD_LIMIT = 1e3


def std_spread(series: list[np.ndarray]) -> float:
    """How far apart the series' amplitudes are: per feature, the 90th over the 10th percentile
    of the series' own stds (constant series left out); the largest over the features."""
    stds = np.stack([s.std(axis=0, dtype=np.float64) for s in series])
    spreads = [np.percentile(f[f > 0], 90) / np.percentile(f[f > 0], 10) for f in stds.T if f.any()]
    return float(max(spreads, default=1.0))


def padded(series: list[np.ndarray], length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Series of different lengths [steps, ...] -> (float32 [n, length or the longest, ...]
    zero-padded at the end, each one's length): how variable-length series meet a model."""
    lengths = np.array([len(s) for s in series], dtype=np.int64)
    out = np.zeros((len(series), length or int(lengths.max()), *series[0].shape[1:]), np.float32)
    for row, s in zip(out, series, strict=True):
        row[: len(s)] = s
    return out, lengths


def standard(x, mean, std):
    return (x - mean) / std


def inv_standard(z, mean, std):
    return z * std + mean


def log(x):
    return x.log() if hasattr(x, "log") else np.log(x)


def inv_log(y):
    return y.exp() if hasattr(y, "exp") else np.exp(y)


class Scaler(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: list[float]
    std: list[float]


class DataMeta(BaseModel):
    """What the model, its metrics and torch-free inference need to know of the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str  # a name in pipeline.tasks.TASKS: classification, forecast, frames
    input_shape: list[int]  # without batch: [seq, features] or [seq, channels, height, width]
    features: list[str] = []
    labels: list[str] | None = None  # classification
    window: int | None = None
    horizon: int | None = None  # forecast steps, or frames predicted
    season: int | None = None  # forecast: the seasonal-naive baseline's period
    targets: list[str] | None = None  # forecast: the predicted features...
    target_index: list[int] | None = None  # ...and their positions in `features`
    transform: Literal["none", "log"] = "none"  # forecast: applied before standard scaling
    # forecast: the time column's pandas frequency ('MS', 'D', 'h'...) when it held regular
    # datetimes; predict dates its forecasts with it
    freq: str | None = None
    scaler: Scaler | None = None
    # classification: series of different lengths, padded at the end; the model (and the ONNX
    # file's second input, `lengths`) takes each one's length
    variable_length: bool = False
    # classification: std_spread of the train split (`series_norm: auto` reads it)
    std_spread: float | None = None
    # forecast: split-conformal intervals (export calibrates them on the validation split): per
    # level ("0.8"), the half-width per [step][target] on the model's scale (log, standardised),
    # in units of each input window's own spread (window_spread) where `interval_floor` is set
    # (normalised conformal); without it (a model exported before), one width for every window
    intervals: dict[str, list[list[float]]] | None = None
    interval_floor: list[float] | None = None  # per target: the least spread a window counts as
    # forecast covariates: the ONNX inputs `future` [batch, horizon, len(future)] and `static`
    # [batch, len(static)]; the future covariates' past values are x's last columns (after the
    # features). `future` names the user's columns, then `calendar`'s sin/cos pairs.
    future: list[str] = []
    calendar: list[str] = []
    static: list[str] = []
    covariate_scaler: dict[str, Scaler] = {}  # "future", "static": from the train part

    @model_validator(mode="after")
    def _whole(self) -> DataMeta:
        """What each task reads of it is there and consistent: a meta.json edited by hand
        failed train or export with an IndexError or a NoneType's missing attribute."""
        needs = {"classification": ("labels",), "frames": ("horizon",),
                 "forecast": ("horizon", "targets", "target_index", "scaler")}  # fmt: skip
        for key in needs.get(self.task, ()):
            if not getattr(self, key):
                raise ValueError(f"{key}: missing; a {self.task} model needs it")
        if self.scaler and len(self.scaler.mean) != len(self.scaler.std):
            raise ValueError("scaler: mean and std differ in length")
        if self.task == "forecast":
            if len(self.targets) != len(self.target_index):
                raise ValueError("targets and target_index differ in length")
            if not all(0 <= i < len(self.scaler.mean) for i in self.target_index):
                raise ValueError(
                    f"target_index: {self.target_index} beyond the {len(self.scaler.mean)} "
                    "scaled features"
                )
        return self

    def auto_series_norm(self) -> bool:
        """`series_norm: auto`: on where the train split's amplitudes span SPREAD_LIMIT."""
        return (self.std_spread or 1.0) > SPREAD_LIMIT

    @property
    def extra_inputs(self) -> list[str]:
        """The ONNX model's inputs after `x`, in order."""
        if self.variable_length:
            return ["lengths"]
        return [name for name in ("future", "static") if getattr(self, name)]

    def to_model_scale(self, x: np.ndarray) -> np.ndarray:
        """Raw input values (features, then the future covariates' past values) -> the scaled
        float32 inputs the model was trained on."""
        split = x.shape[-1] - len(self.future)
        features = log(x[..., :split]) if self.transform == "log" else x[..., :split]
        mean, std = np.asarray(self.scaler.mean), np.asarray(self.scaler.std)
        scaled = standard(features, mean, std).astype(np.float32)
        if not self.future:
            return scaled
        return np.concatenate([scaled, self.scale_covariate("future", x[..., split:])], axis=-1)

    def scale_covariate(self, name: str, x: np.ndarray) -> np.ndarray:
        scaler = self.covariate_scaler[name]
        return standard(x, np.asarray(scaler.mean), np.asarray(scaler.std)).astype(np.float32)

    def target_scaler(self) -> tuple[list[float], list[float]]:
        """(mean, std) of the forecast targets."""
        idx = self.target_index
        return [self.scaler.mean[i] for i in idx], [self.scaler.std[i] for i in idx]

    def to_original(self, z):
        """Scaled forecasts [..., targets] -> original units, in float64 (the module's torch
        metrics apply the same inv_standard and inv_log to tensors)."""
        mean, std = (np.asarray(s) for s in self.target_scaler())
        y = inv_standard(z.astype(np.float64), mean, std)
        return inv_log(y) if self.transform == "log" else y

    def window_spread(self, x: np.ndarray) -> np.ndarray:
        """Each input window's std of each target over its steps, on the model's scale,
        [n, 1, targets]."""
        return x[..., self.target_index].std(axis=1, dtype=np.float64)[:, None, :]

    def interval(self, z: np.ndarray, x: np.ndarray, level: str) -> tuple[np.ndarray, np.ndarray]:
        """Scaled forecasts [n, horizon, targets] of the scaled inputs x -> (lower, upper)
        bounds in original units."""
        half = np.asarray(self.intervals[level])
        if self.interval_floor is not None:
            half = half * np.maximum(self.window_spread(x), self.interval_floor)
        return self.to_original(z - half), self.to_original(z + half)

    def to_props(self, **extra) -> dict[str, str]:
        """ONNX metadata_props: every field (and `extra`) as JSON."""
        return {k: json.dumps(v) for k, v in {**self.model_dump(mode="json"), **extra}.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> DataMeta:
        return cls.model_validate({k: json.loads(props[k]) for k in cls.model_fields if k in props})


class PreparedMeta(DataMeta):
    """meta.json: the contract plus where the data came from and how it was split."""

    source: str
    dataset: str
    content_sha256: str
    sizes: dict[str, int]
    series_ids: list[str] | None = None  # forecast
    season_share: float | None = None  # several series: data.prepare.season_share
    # a CSV/Parquet source's id_column and time_column: export writes them into the ONNX
    # metadata, and predict reads a file of the training's columns without being told them
    columns: dict[str, str] | None = None

    @model_validator(mode="after")
    def _features_fill_the_inputs(self) -> PreparedMeta:
        """A meta.json without its features trained a model on them anyway (exit 0)."""
        width = len(self.features) + len(self.future)
        if self.task != "frames" and self.input_shape[-1:] != [width]:
            raise ValueError(
                f"features: {len(self.features)} (and {len(self.future)} future covariates) for "
                f"inputs of {self.input_shape[-1]} values a step"
            )
        return self

    def auto_season_norm(self) -> int:
        """`season_norm: auto`: the data's season (`season`) where the window holds two, for a
        single series or several whose seasons differ. Off for several that share one: one model
        over them learns it (Bandara, Bergmeir and Hewamalage 2021: a decomposition helped on
        series from disparate sources, none was better for "homogeneous series from a single
        application")."""
        if not self.season or self.window < 2 * self.season or self.shares_season:
            return 0
        return self.season

    @property
    def shares_season(self) -> bool:
        """Several series whose common seasonal profile explains most of theirs (or unknown)."""
        return self.several_series and (self.season_share is None or self.season_share > 0.5)

    def auto_scale_norm(self) -> bool:
        """`scale_norm: auto` (forecasting): on for one model over several series, which a
        global scaler leaves at their own scales (DeepAR scales each series for this reason,
        Salinas et al. 2020); off for a single series, where the dev series fit better without."""
        return self.several_series

    @property
    def several_series(self) -> bool:
        return len(self.series_ids or []) > 1

    def contract(self) -> DataMeta:
        return DataMeta.model_validate(self.model_dump(include=set(DataMeta.model_fields)))

    @classmethod
    def load(cls, path: str | Path) -> PreparedMeta:
        if not Path(path).exists():
            raise DataError(f"{path}: not found; run the prepare stage first")
        try:
            return cls.model_validate(read_json(path))
        except (ValidationError, ValueError) as err:
            raise DataError(f"{path}: not a valid meta.json ({first_error(err)})") from None


# what a model is made for: one made for other data (another experiment's file copied in)
# was exported and validated as this experiment's
IDENTITY = ("task", "input_shape", "features", "labels", "window", "horizon", "targets",
            "transform", "variable_length", "scaler")  # fmt: skip


def same_data(meta: DataMeta, prepared: DataMeta, path: str | Path, stage: str) -> None:
    """Refuse a model (`path`) whose data contract is not the prepared data's, naming the key."""
    for key in IDENTITY:
        made, data = getattr(meta, key), getattr(prepared, key)
        if made != data:
            raise DataError(
                f"{path}: made for other data ({key}: {str(made)[:60]}; the prepared data's: "
                f"{str(data)[:60]}); run the {stage} stage"
            )


def first_error(err: Exception) -> str:
    """A validation error's first complaint on one line: where, and what (pydantic spreads it
    over several, with the whole input)."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where, what = ".".join(map(str, first["loc"])), first["msg"].removeprefix("Value error, ")
        return f"{where}: {what}" if where else what
    return " ".join(line.strip() for line in str(err).splitlines()[:3])
