"""prepare stage: source -> scaled arrays + meta.json under data/prepared/<exp>/.

Classification: x_{split}.npy [n, seq, features] float32 and y_{split}.npy int64.
Forecast: series.npy [time, features] float32 (all series end to end, scaled, written a chunk at
a time) and windows_{split}.npy, int64 [n, 2]: per series, the (first, count) range of window
start offsets into it; windows are strided views (see windows.py).
Frames: frames_{split}.npy uint8 [n, input + output frames, channels, height, width].
Scaling statistics are fit on the train split only and stored in meta.json.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pandas.tseries.frequencies import to_offset

from pipeline.config import Experiment, PipelineConfig, TableData, UcrData
from pipeline.data.prepared import SPLITS
from pipeline.data.sources import (
    Labelled,
    Series,
    load_airline,
    load_moving_digits,
    load_table,
    load_ucr,
)
from pipeline.data.windows import auto_window, min_length, split_ranges
from pipeline.errors import DataError
from pipeline.io import atomic_dir, write_json
from pipeline.meta import PreparedMeta, fit_standard, log, padded, standard, std_spread
from pipeline.paths import prepared_dir


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(memoryview(np.ascontiguousarray(a)).cast("B"))  # the bytes, without a copy
    return h.hexdigest()


def _source_name(exp: Experiment) -> str:
    d = exp.data
    return d.name if isinstance(d, UcrData) else getattr(d, "path", d.source)


def _checked_lengths(exp: Experiment, data: Labelled) -> None:
    """Every series has >= 2 steps and at most data.max_length."""
    limit = getattr(exp.data, "max_length", None)
    for sid, series in zip(data.ids, data.x, strict=True):
        if len(series) < 2:
            raise DataError(
                f"{_source_name(exp)}: series {sid!r} has {len(series)} time step(s); "
                "classification needs at least 2"
            )
        if limit and len(series) > limit:
            raise DataError(
                f"{_source_name(exp)}: series {sid!r} has {len(series)} time steps, more than "
                f"data.max_length ({limit})"
            )


def _split_indices(exp: Experiment, data: Labelled, y: np.ndarray, classes: list[str]) -> dict:
    """Series indices of train, val and test: the predefined split where there is one, the
    rest drawn stratified (seeded by data.split_seed)."""
    from sklearn.model_selection import train_test_split  # not imported by the tune driver

    cfg, everything = exp.data, np.arange(len(y))

    def stratified(index, key):
        what, fraction = f"{key.split('_')[0]} split", getattr(cfg, key)
        counts = np.bincount(y[index], minlength=len(classes))
        few = np.flatnonzero(counts == 1)
        if few.size:
            raise DataError(
                f"{_source_name(exp)}: class {classes[few[0]]!r} has 1 series where the {what} "
                "is drawn; a stratified split needs 2 of each class (add series, or give "
                "the file a split column)"
            )
        drawn, n_classes = math.ceil(fraction * len(index)), int((counts > 0).sum())
        if min(drawn, len(index) - drawn) < n_classes:
            raise DataError(
                f"{_source_name(exp)}: data.{key} {fraction} of {len(index)} series draws {drawn}"
                f" for the {what} and leaves {len(index) - drawn}; each side needs one series of "
                f"each of the {n_classes} classes (change data.{key}, or add series)"
            )
        kept, drawn = train_test_split(
            index, test_size=fraction, stratify=y[index], random_state=cfg.split_seed
        )
        # a rare class rounds to none (2 of 200 at 0.2): the test scores then say nothing of
        # it (accuracy 1.0, passed). Only the test split: a val split without it is a UCR
        # set's (its official train part) as well, which must stay usable.
        absent = np.flatnonzero(np.bincount(y[drawn], minlength=len(classes)) == 0)
        if key == "test_fraction" and absent.size:
            c = absent[0]
            raise DataError(
                f"{_source_name(exp)}: class {classes[c]!r} has {counts[c]} series, and the "
                f"stratified test split (data.test_fraction {fraction}) draws none of them "
                "(raise data.test_fraction, add series, or give the file a split column)"
            )
        return kept, drawn

    if data.split is None:
        rest, test = stratified(everything, "test_fraction")
    else:
        rest, test = everything[data.split != "test"], everything[data.split == "test"]
    if data.split is not None and (data.split == "val").any():
        train, val = everything[data.split == "train"], everything[data.split == "val"]
    else:
        train, val = stratified(rest, "val_fraction")
    return {"train": train, "val": val, "test": test}


def _classification(exp: Experiment, data: Labelled) -> tuple[dict, dict]:
    cfg = exp.data
    _checked_lengths(exp, data)
    column = f"column {cfg.label!r}" if isinstance(cfg, TableData) else "labels"
    # the classes the training sees: a val split drawn from the rest is stratified on them
    fitted, outside = data.y, ""
    if data.split is not None and (data.split == "val").any():
        fitted, outside = data.y[data.split == "train"], " in the train split"
    elif data.split is not None:
        fitted, outside = data.y[data.split != "test"], " outside the test split"
    classes = sorted(set(fitted.tolist()))
    if len(classes) < 2:
        raise DataError(
            f"{_source_name(exp)}: {column} has a single class {classes[0]!r}{outside}; "
            "classification needs at least 2"
        )
    unknown = sorted(set(data.y.tolist()) - set(classes))
    if unknown:
        where = sorted(set(data.split[np.isin(data.y, unknown)].tolist()))
        raise DataError(
            f"{_source_name(exp)}: {column}: {unknown} occur only in the {' and '.join(where)} "
            f"split{'s' if len(where) > 1 else ''}"
        )
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[c] for c in data.y], dtype=np.int64)
    splits = _split_indices(exp, data, y, classes)
    if not len(splits["test"]) or not len(splits["train"]):
        empty = "test" if not len(splits["test"]) else "train"
        raise DataError(f"{_source_name(exp)}: the {empty} split has no series")

    train = [data.x[i] for i in splits["train"]]
    mean, std = fit_standard(train)
    longest = max(len(s) for s in data.x)
    arrays = {}
    for split, rows in splits.items():
        scaled = [standard(data.x[i], mean, std).astype(np.float32) for i in rows]
        arrays[f"x_{split}"], lengths = padded(scaled, longest)
        arrays[f"y_{split}"] = y[rows]
        if data.variable_length:
            arrays[f"lengths_{split}"] = lengths
    meta = {
        "labels": classes,
        "input_shape": [longest, len(data.features)],
        "window": longest,
        "variable_length": data.variable_length,
        "std_spread": std_spread(train),
        "features": data.features,
        "scaler": {"mean": mean.tolist(), "std": std.tolist()},
        "sizes": {s: len(rows) for s, rows in splits.items()},
        "content_sha256": _digest(*data.x),
    }
    return arrays, meta


@dataclass(frozen=True)
class Chunked:
    """A float32 array that is never whole in memory: its shape, and its rows chunk by chunk
    (save_prepared writes them one after the other)."""

    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]


def _scaled(raw: list[np.ndarray], mean, std, chunk: int = 1 << 18) -> Chunked:
    """The series end to end, (x - mean) / std computed in float64 and stored as float32, a
    chunk at a time: the same numbers as scaling the whole array at once."""

    def chunks():
        for v in raw:
            for i in range(0, len(v), chunk):
                yield standard(v[i : i + chunk], mean, std).astype(np.float32)

    return Chunked((sum(len(v) for v in raw), raw[0].shape[1]), chunks)


def _forecast(exp: Experiment, data: Series) -> tuple[dict, dict]:
    cfg = exp.data
    targets = list(getattr(cfg, "targets", None) or data.features)
    period = getattr(exp.model, "season_norm", 0)  # needs two periods; the baseline, one season
    least = max(2 * period if isinstance(period, int) else 1, cfg.season or 1)
    need = min_length(cfg.window or least, cfg.horizon, cfg.val_size, cfg.test_size)
    inputs = f"window ({cfg.window})" if cfg.window else f"a window of at least {least}"
    for sid, values in zip(data.ids, data.values, strict=True):
        if len(values) < need:
            raise DataError(
                f"{_source_name(exp)}: series {sid!r} has {len(values)} time steps; {inputs} + "
                f"horizon ({cfg.horizon}) + val_size ({cfg.val_size}) + "
                f"test_size ({cfg.test_size}) need at least {need}"
            )
        if cfg.transform == "log" and (values <= 0).any():
            step, col = (int(k) for k in np.argwhere(values <= 0)[0])
            raise DataError(
                f"{_source_name(exp)}: series {sid!r}, column {data.features[col]!r}, step "
                f"{step + 1} of {len(values)}: {values[step, col]:g}; transform 'log' needs "
                "values > 0"
            )

    raw = [log(v) if cfg.transform == "log" else v for v in data.values]
    columns, held_out = [data.features.index(t) for t in targets], cfg.val_size + cfg.test_size
    train = [v[: len(v) - held_out] for v in raw]
    for target, column in zip(targets, columns, strict=True):
        first = data.values[0][0, column]
        if all((v[: len(v) - held_out, column] == first).all() for v in data.values):
            raise DataError(  # it trained, and validate reported a MAPE of 69048 against zeros
                f"{_source_name(exp)}: target {target!r} is {first:g} at every "
                "step before the validation and test parts: nothing to forecast (another column?)"
            )
    room = min(len(v) for v in train) - cfg.horizon  # inputs of the shortest's one train window
    season = cfg.season or _tested_season(train, columns, data.freq, cfg.window or room // 2)
    window = cfg.window or auto_window(cfg.horizon, season, room, least)
    if not cfg.window:
        print(
            f"data.window: auto -> {window} (2 horizons of {cfg.horizon} or 3 seasons of "
            f"{season or 'none'}, the longer, within half the {room} inputs the shortest series' "
            "train part leaves)"
        )
    mean, std = fit_standard(train)

    ranges = {s: [] for s in SPLITS}
    offset = 0
    for v in raw:
        for split, (first, count) in split_ranges(
            len(v), window, cfg.horizon, cfg.val_size, cfg.test_size
        ).items():
            if count:
                ranges[split].append((offset + first, count))
        offset += len(v)
    arrays = {"series": _scaled(raw, mean, std)}
    arrays.update({f"windows_{s}": np.array(ranges[s], np.int64).reshape(-1, 2) for s in SPLITS})
    covariates = _covariates(data, held_out)
    arrays.update(covariates.pop("arrays"))
    meta = {
        **covariates,
        "input_shape": [window, len(data.features) + len(data.future_names)],
        "window": window,
        "horizon": cfg.horizon,
        "features": data.features,
        "targets": targets,
        "target_index": columns,
        "transform": cfg.transform,
        "season": season,
        "season_share": season_share(train, columns, season, data.starts),
        "freq": data.freq,
        "scaler": {"mean": mean.tolist(), "std": std.tolist()},
        "series_ids": data.ids,
        "sizes": {s: int(arrays[f"windows_{s}"][:, 1].sum()) for s in SPLITS},
        "content_sha256": _digest(*data.values, *(data.future or []), *_listed(data.static)),
    }
    return arrays, meta


# Steps per season by the frequency's base (pandas' names, start and end variants alike): the
# table AutoGluon uses (adapted from GluonTS's `get_seasonality`). Weekly and yearly data: none.
SEASONS = {"h": 24, "bh": 9, "min": 1440, "D": 7, "B": 5, "SMS": 24, "SME": 24,
           **dict.fromkeys(("M", "MS", "ME", "BMS", "BME"), 12),
           **dict.fromkeys(("Q", "QS", "QE", "BQS", "BQE"), 4)}  # fmt: skip


def freq_season(freq: str | None, window: int) -> int | None:
    """The season a series of `freq` would have, in steps (24 for 'h', 48 for '30min'): None
    when it is 1 or not a whole number of steps, or when the window cannot hold it."""
    if not freq:
        return None
    offset = to_offset(freq)
    steps, remainder = divmod(SEASONS.get(offset.name.split("-")[0], 1), offset.n)
    return steps if not remainder and 1 < steps <= window else None


def _tested_season(train: list[np.ndarray], columns: list[int], freq, window: int) -> int | None:
    """The frequency's season where most series' train parts show it (`seasonal`, on each
    target of each series)."""
    period = freq_season(freq, window)
    if period is None:
        return None
    votes = [seasonal(x[:, c], period) for x in train for c in columns]
    return period if sum(votes) * 2 > len(votes) else None


def season_share(train: list[np.ndarray], columns: list[int], period, starts) -> float | None:
    """How much of several series' seasonal profiles one common profile explains (R², mean over
    the targets; 1: one season shared, about 1/n for n unrelated ones, 0.25 for two whose
    profiles correlate -0.5): each train part's profile from a classical decomposition
    (statsmodels'), at the phases of one time axis (`starts`; without dates, the series are
    taken to start together), scaled to unit norm. None for one series or no season."""
    from statsmodels.tsa.seasonal import seasonal_decompose

    if not period or len(train) < 2:
        return None
    shares = []
    for c in columns:
        profiles = []
        for i, x in enumerate(train):
            if len(x) < 2 * period:  # the decomposition needs two whole periods
                continue
            profile = seasonal_decompose(x[:, c], period=period).seasonal[:period]
            profile = np.roll(profile, starts[i] if starts else 0)  # index: the axis' phase
            if (norm := np.linalg.norm(profile)) > 0:
                profiles.append(profile / norm)
        if len(profiles) > 1:
            p = np.stack(profiles)
            shares.append(1 - ((p - p.mean(0)) ** 2).sum() / len(p))
    return round(float(np.mean(shares)), 4) if shares else None


def seasonal(x: np.ndarray, period: int) -> bool:
    """The M4 competition's benchmarks' seasonality test (Makridakis et al. 2020), a 90 %
    autocorrelation test at the seasonal lag: |acf(period)| > 1.645 sqrt((1 + 2 sum acf(k)^2,
    k < period) / n), on the first differences (on the levels, 98 of 100 trending random walks
    passed it). A series shorter than three periods is not called seasonal."""
    from statsmodels.tsa.stattools import acf

    steps = np.diff(x)
    if len(x) < 3 * period or np.ptp(steps) == 0:  # a straight line: no autocorrelation
        return False
    r = acf(steps, nlags=period, fft=True)[1:]
    limit = 1.645 * np.sqrt((1 + 2 * np.sum(r[:-1] ** 2)) / len(steps))
    return bool(abs(r[-1]) > limit)


def _listed(array: np.ndarray | None) -> list[np.ndarray]:
    return [] if array is None else [array]


def _covariates(data: Series, held_out: int) -> dict:
    """The covariates' arrays, aligned with `series` row by row (scaled: the future ones by
    their train parts, the static ones over the series), and their meta.json entries."""
    out, scalers = {"arrays": {}}, {}
    if data.future is not None:
        mean, std = fit_standard([f[: len(f) - held_out] for f in data.future])
        out["arrays"]["future"] = _scaled(data.future, mean, std)
        scalers["future"] = {"mean": mean.tolist(), "std": std.tolist()}
        out["future"] = data.future_names
        out["calendar"] = data.calendar
    if data.static is not None:
        mean, std = fit_standard([data.static])
        rows = [
            np.repeat(s[None], len(v), axis=0)
            for s, v in zip(data.static, data.values, strict=True)
        ]
        out["arrays"]["static"] = _scaled(rows, mean, std)
        scalers["static"] = {"mean": mean.tolist(), "std": std.tolist()}
        out["static"] = data.static_names
    if scalers:
        out["covariate_scaler"] = scalers
    return out


def _frames(exp: Experiment) -> tuple[dict, dict]:
    cfg = exp.data
    splits = load_moving_digits(cfg)
    arrays = {f"frames_{s}": splits[s] for s in SPLITS}
    meta = {
        "input_shape": [cfg.input_frames, *splits["train"].shape[2:]],
        "features": ["intensity"],
        "scaler": {"mean": [0.0], "std": [255.0]},  # uint8 frames -> [0, 1]
        "sizes": {s: len(splits[s]) for s in SPLITS},
        "content_sha256": _digest(*splits.values()),
        "window": cfg.input_frames,
        "horizon": cfg.output_frames,
    }
    return arrays, meta


def prepare(cfg: PipelineConfig, exp_name: str) -> Path:
    """Run the prepare stage for one experiment; returns the output folder."""
    exp = cfg.experiment(exp_name)
    d = exp.data
    if d.source == "ucr":
        arrays, meta = _classification(exp, load_ucr(d.name))
    elif d.source == "airline":
        arrays, meta = _forecast(exp, load_airline())
    elif d.source == "moving_digits":
        arrays, meta = _frames(exp)
    else:
        loaded = load_table(d)
        if isinstance(loaded, Labelled):
            arrays, meta = _classification(exp, loaded)
        else:
            arrays, meta = _forecast(exp, loaded)

    meta.update(task=exp.task, source=d.source, dataset=_source_name(exp))
    if isinstance(d, TableData):
        meta["columns"] = {"id_column": d.id_column, "time_column": d.time_column}
    return save_prepared(prepared_dir(exp_name), arrays, meta)


def save_prepared(out: Path, arrays: dict[str, np.ndarray | Chunked], meta: dict) -> Path:
    """The arrays and meta.json (checked against the contract first) into `out`, atomically."""
    checked = PreparedMeta.model_validate(meta).model_dump(mode="json")
    if checked["columns"] is None:  # packaged data: meta.json, and all after it, as before the key
        del checked["columns"]
    with atomic_dir(out) as tmp:
        for name, arr in arrays.items():
            if isinstance(arr, Chunked):  # the bytes np.save would write for the whole array
                with open(tmp / f"{name}.npy", "wb") as f:
                    header = {"descr": "<f4", "fortran_order": False, "shape": arr.shape}
                    np.lib.format.write_array_header_1_0(f, header)
                    for part in arr.chunks():
                        part.tofile(f)
            else:
                np.save(tmp / f"{name}.npy", arr)
        write_json(tmp / "meta.json", checked)
    return out
