"""Data sources: which data an experiment prepares (the `data` group of conf/)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from pipeline.config.base import Fraction, PositiveInt, Seed, Strict

# What prepare's DVC stage depends on (dvc.yaml: ${item.data.path}): the user's file, or for data
# that ships in a package, the loader that builds it.
PACKAGED = "pipeline/data/sources.py"


def _packaged(path: str) -> str:
    if path != PACKAGED:  # it was ignored: the packaged data was read
        raise ValueError("applies to csv and parquet sources; this one's data ships in a "
                         "package (leave path unset)")  # fmt: skip
    return path


PackagedPath = Annotated[str, AfterValidator(_packaged)]
# Calendar covariates, each encoded as a sin/cos pair of its cycle (pipeline/data/sources.py).
CALENDAR_FIELDS = ("hour", "day_of_week", "day_of_month", "month", "day_of_year")


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

    window: PositiveInt | None = None  # None: prepare's auto_window
    horizon: PositiveInt = 12
    val_size: PositiveInt = 24
    test_size: PositiveInt = 24
    transform: Literal["none", "log"] = "none"
    # the seasonal-naive baseline's period; None: the one prepare finds at the dates' frequency
    # (SEASONS and a seasonality test), else naive
    season: PositiveInt | None = None

    @model_validator(mode="after")
    def _check(self) -> ForecastWindows:
        for key in ("val_size", "test_size"):
            if getattr(self, key) < self.horizon:
                raise ValueError(
                    f"{key} ({getattr(self, key)}) must be >= horizon ({self.horizon})"
                )
        if self.season is not None and self.window and self.season > self.window:
            raise ValueError(f"season ({self.season}) must be <= window ({self.window})")
        return self


class UcrData(Strict):
    """A UCR/UEA set sktime ships, with its official train/test split."""

    source: Literal["ucr"]
    name: str
    path: PackagedPath = PACKAGED
    val_fraction: Fraction = 0.2
    split_seed: Seed = 0  # the stratified validation split (the training seed is `seed`)
    max_length: PositiveInt | None = None  # refuse longer series (None: any length)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        allowed = shipped_ucr_sets()
        if not allowed:
            raise ValueError("sktime, which ships the UCR sets, is not installed: pip install "
                             "'lstm-pipeline[train]'")  # fmt: skip
        if name not in allowed:
            raise ValueError(f"unknown UCR data set {name!r}; allowed: {', '.join(allowed)}")
        return name

    @property
    def task(self) -> str:
        return "classification"


class AirlineData(ForecastWindows):
    source: Literal["airline"]
    path: PackagedPath = PACKAGED

    @property
    def task(self) -> str:
        return "forecast"


class TableData(ForecastWindows):
    """The user's own long-format file: one row per (series, time step).

    Classification takes each series' last `window` steps, or each series whole when `window`
    is not set (series of different lengths: padded and masked). A `split_column` in the file
    (values train/val/test, one per series) keeps a predefined split; without it the split is
    a seeded stratified one.
    """

    source: Literal["csv", "parquet"]
    path: str
    task: Literal["classification", "forecast"]
    window: PositiveInt | None = None  # forecast: prepare's auto_window; classification: whole
    split_column: str = "split"
    max_length: PositiveInt | None = None  # classification: refuse longer series
    id_column: str = "series_id"
    time_column: str = "time"
    features: Annotated[list[str], Field(min_length=1)]
    label: str | None = None  # classification: one label per series
    targets: list[str] = []  # forecast: columns to predict (default: all features)
    freq: str | None = None  # forecast: the dates' pandas frequency ('D', 'MS'...); gaps refused
    # forecast covariates (README "Covariates"): `features` are observed up to the forecast's
    # origin; `future` columns are known over the horizon too; `static`: one value per series;
    # `calendar`: fields derived from the dates (known ahead at `freq`)
    future: list[str] = []
    static: list[str] = []
    calendar: list[Literal[CALENDAR_FIELDS]] = []
    val_fraction: Fraction = 0.2  # classification splits, by series
    test_fraction: Fraction = 0.2
    split_seed: Seed = 0

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, raw):
        if not isinstance(raw, dict):
            return raw
        if raw.get("task") == "classification" or raw.get("targets") is None:
            raw = {**raw, "targets": []}  # classification predicts the label, not columns
        return raw

    @model_validator(mode="after")
    def _task_columns(self) -> TableData:
        if self.task == "classification" and not self.label:
            raise ValueError("classification needs 'label' (the column holding each series' class)")
        missing = [t for t in self.targets if t not in self.features]
        if missing:
            raise ValueError(f"targets {missing} must also be listed in features")
        roles = {"features": self.features, "future": self.future, "static": self.static,
                 "label": [self.label] if self.label else []}  # fmt: skip
        seen = {self.id_column: "id_column", self.time_column: "time_column"}
        for role, columns in roles.items():
            for column in columns:
                if column in seen:
                    raise ValueError(f"column {column!r} has two roles: {seen[column]} and {role}")
                seen[column] = role
        if (self.future or self.static or self.calendar) and self.task != "forecast":
            raise ValueError("future, static and calendar apply to forecasting only")
        if self.transform != "none" and self.task != "forecast":  # it was ignored, silently
            raise ValueError("transform applies to forecasting only")
        # by value, not model_fields_set: a config dumped and read again (a Tune trial's) sets all
        given = [k for k in CLASSIFYING if getattr(self, k) != type(self).model_fields[k].default]
        if self.task == "forecast" and given:
            raise ValueError(f"{given[0]} applies to classification only")
        if self.task == "forecast":
            self._targets_predict_can_write()
        if self.freq is not None:
            if self.task != "forecast":
                raise ValueError("freq applies to forecasting only")
            if (meant := _pandas_alias(self.freq)) is not None:
                hint = f"; pandas now spells it {meant!r}" if meant else ""
                raise ValueError(
                    f"freq {self.freq!r} is not a pandas frequency{hint or WHICH_FREQ}"
                )
        return self

    def _targets_predict_can_write(self) -> None:
        """predict writes `step`, each target, and its interval bounds `<target>_lo80`...: a
        target of such a name passed every stage, then no input could be predicted."""
        targets = self.targets or self.features
        if twice := next((t for t in targets if targets.count(t) > 1), None):
            raise ValueError(f"targets: {twice!r} is listed twice")
        bound = re.compile(rf"({'|'.join(map(re.escape, targets))})_(lo|hi)\d+")
        if clash := next((t for t in targets if t == "step" or bound.fullmatch(t)), None):
            raise ValueError(
                f"target {clash!r} is named as a column predict writes (the horizon's `step`, "
                "an interval's `<target>_lo80`/`_hi80`); rename the column"
            )


WHICH_FREQ = " ('D', 'h', 'MS', 'W-SUN'...)"
# a forecast's splits are time-ordered (val_size, test_size), its targets columns
CLASSIFYING = ("label", "max_length", "split_column", "val_fraction", "test_fraction", "split_seed")


def _pandas_alias(freq: str) -> str | None:
    """None for a frequency pandas reads; else the alias it suggests for a retired one ('M' is
    'ME' since pandas 2.2, '2H' '2h', 'Q-DEC' 'QE-DEC', 'A' 'YE'), or '' where it has none."""
    from pandas.tseries.frequencies import to_offset

    count, name = re.fullmatch(r"(\d*)(.*)", freq.strip()).groups()
    for hop in range(3):  # 'A' -> 'Y' -> 'YE'
        try:
            to_offset(count + name)
            return count + name if hop else None
        except ValueError as err:
            meant = re.search(r"Please use '([\w-]+)' instead|Did you mean ([\w-]+)\?", str(err))
            if not meant:
                return ""
            name = meant.group(1) or meant.group(2)
    return ""


class MovingDigitsData(Strict):
    """Moving-MNIST-like sequences built from scikit-learn's 8x8 digits (see data/moving_digits)."""

    source: Literal["moving_digits"]
    path: PackagedPath = PACKAGED
    frame_size: PositiveInt = 16
    digit_size: PositiveInt = 8  # a multiple of 8: the 8x8 digits are upscaled by repetition
    max_digits: Literal[1, 2] = 2
    input_frames: PositiveInt = 8
    output_frames: PositiveInt = 8
    train_size: PositiveInt = 2048  # what the next-frame recipe was chosen with
    val_size: PositiveInt = 128
    test_size: PositiveInt = 256
    seed: Seed = 0

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
