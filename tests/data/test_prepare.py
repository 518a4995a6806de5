import json

import numpy as np
import pandas as pd
import pytest
from sktime.datasets import load_airline

from pipeline.config import parse_config
from pipeline.data.prepare import freq_season, prepare, season_share, seasonal
from pipeline.data.prepared import Prepared
from pipeline.errors import DataError
from tests.conftest import write_params


def _cfg(params, name, data=None):
    if data is not None:
        params["experiments"][name]["data"] = data
        forecast = data.get("task") == "forecast"  # short test series: no season to take out
        params["experiments"][name]["model"].update(level_norm=forecast, season_norm=0)
    return parse_config(params)


def test_ucr_official_test_split_stratified_val_and_train_only_scaling(workdir, params):
    out = prepare(_cfg(params, "lstm_italypowerdemand"), "lstm_italypowerdemand")
    p = Prepared.load(out)
    meta = p.meta
    assert meta.task == "classification" and meta.labels == ["1", "2"]
    assert meta.sizes == {"train": 53, "val": 14, "test": 1029}
    x_train, y_train = p.arrays("train")
    _, y_val = p.arrays("val")
    assert x_train.shape == (53, 24, 1) and x_train.dtype == np.float32
    np.testing.assert_allclose(x_train.mean(), 0, atol=1e-5)  # scaler fit on train only
    np.testing.assert_allclose(x_train.std(), 1, atol=1e-4)
    assert abs(np.bincount(y_val)[0] - np.bincount(y_val)[1]) <= 1  # stratified
    assert len(meta.content_sha256) == 64


def test_airline_forecast_windows(workdir, params):
    out = prepare(_cfg(params, "lstm_airline"), "lstm_airline")
    p = Prepared.load(out)
    assert p.meta.sizes == {"train": 49, "val": 13, "test": 13}
    assert p.meta.freq == "MS"  # monthly: predict dates its forecasts by it
    # no table, no id and time columns: meta.json, and all that follows it, as before the key
    assert "columns" not in json.loads((out / "meta.json").read_text())
    x, y = p.arrays("test")
    assert x.shape == (13, 36, 1) and y.shape == (13, 12, 1)
    series = np.load(out / "series.npy")
    # last test target is the last month; log + scaling inverts to 432 passengers (Dec 1960)
    mean, std = p.meta.scaler.mean[0], p.meta.scaler.std[0]
    np.testing.assert_allclose(np.exp(y[-1, -1, 0] * std + mean), 432, rtol=1e-5)
    train_part = np.log(np.exp(series[:96, 0] * std + mean))
    np.testing.assert_allclose([train_part.mean(), train_part.std()], [mean, std], rtol=1e-4)


def _long_frame(n_series=6, length=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_series):
        for t in range(length):
            rows.append(
                {
                    "series_id": f"s{s}",
                    "time": t,
                    "a": np.sin(t / 3 + s) + rng.normal(0, 0.1),
                    "b": rng.normal(),
                    "label": "up" if s % 2 else "down",
                }
            )
    return pd.DataFrame(rows)


def test_csv_forecast_multiple_series_windows_stay_within_a_series(workdir, params):
    frame = _long_frame()
    frame.sample(frac=1, random_state=0).to_csv("data.csv", index=False)  # order must not matter
    data = {
        "source": "csv",
        "path": "data.csv",
        "task": "forecast",
        "features": ["a", "b"],
        "targets": ["a"],
        "window": 8,
        "horizon": 4,
        "val_size": 6,
        "test_size": 6,
    }
    out = prepare(_cfg(params, "lstm_airline", data), "lstm_airline")
    p = Prepared.load(out)
    assert p.meta.target_index == [0] and p.meta.series_ids == [f"s{i}" for i in range(6)]
    assert p.meta.sizes == {"train": 6 * 17, "val": 6 * 3, "test": 6 * 3}
    starts = p.window_starts("test").all()
    assert ((starts % 40) + 12 <= 40).all()  # no window crosses into the next series
    series = np.load(out / "series.npy")  # written chunk by chunk: np.save's bytes, one array
    assert series.shape == (240, 2) and series.dtype == np.float32


@pytest.mark.parametrize(
    "dates, freq",
    [
        (lambda t: pd.Timestamp("2019-11-01") + pd.DateOffset(months=t), "MS"),  # parquet dates
        (lambda t: (pd.Timestamp("2019-12-28") + pd.Timedelta(days=t)).strftime("%m/%d/%Y"), "D"),
        # day first: 01.11.2019 read month first made the monthly steps 12 days a year (no
        # frequency, no season); 13/01/2020 read month first was refused
        (
            lambda t: (pd.Timestamp("2019-11-01") + pd.DateOffset(months=t)).strftime("%d.%m.%Y"),
            "MS",
        ),
        (lambda t: (pd.Timestamp("2020-01-01") + pd.Timedelta(days=t)).strftime("%d/%m/%Y"), "D"),
        (lambda t: (pd.Timestamp("2020-01-01") + pd.Timedelta(hours=t**2)).isoformat(), None),
        # read as numbers they stepped by 1, then by 70 at a month's end: no frequency
        (
            lambda t: int((pd.Timestamp("2019-12-28") + pd.Timedelta(days=t)).strftime("%Y%m%d")),
            "D",
        ),
        (lambda t: t, None),
        (lambda t: (pd.Timestamp("2020-01-01") + pd.Timedelta(days=t)).date(), "D"),
        (  # local midnights whose UTC offset changes at daylight saving time (+01:00, +02:00)
            lambda t: (
                (pd.Timestamp("2024-03-20") + pd.Timedelta(days=t))
                .tz_localize("Europe/Berlin")
                .isoformat()
            ),
            "D",
        ),
    ],
    ids=[
        "monthly",
        "daily mm/dd/YYYY text",
        "monthly dd.mm.YYYY text",
        "daily dd/mm/YYYY text",
        "irregular",
        "daily YYYYMMDD integers",
        "numeric",
        "parquet DATE",
        "daily DST",
    ],
)
def test_time_column_sorts_by_date_and_records_its_frequency(workdir, params, dates, freq):
    frame = _long_frame(n_series=2)
    frame["time"] = [dates(t) for t in frame.time]
    frame.sample(frac=1, random_state=0).to_parquet("data.parquet")  # text dates sort as dates
    data = {"source": "parquet", "path": "data.parquet", "task": "forecast", "features": ["a"],
            "window": 8, "horizon": 4, "val_size": 6, "test_size": 6}  # fmt: skip
    p = Prepared.load(prepare(_cfg(params, "lstm_airline", data), "lstm_airline"))
    assert p.meta.freq == freq
    scaled = frame.a.to_numpy() - p.meta.scaler.mean[0]  # rows in time order, as generated
    np.testing.assert_allclose(np.load(p.root / "series.npy")[:, 0] * p.meta.scaler.std[0],
                               scaled, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("freq", [None, "D", "MS"])
def test_dates_read_in_both_orders_take_the_stated_freq_or_are_named(workdir, params, capsys, freq):
    """01/01/2024 ... 12/01/2024 are 12 days day first and 12 months month first: with
    data.freq 'D' they were refused as gaps of a month; without it, read month first silently."""
    text = [f"{day:02d}/01/2024" for day in range(1, 13)]
    frame = pd.DataFrame({"series_id": np.repeat(["a", "b"], 12), "time": text * 2,
                          "y": np.arange(24.0)})  # fmt: skip
    frame.to_csv("d.csv", index=False)
    data = {"source": "csv", "path": "d.csv", "task": "forecast", "features": ["y"],
            "window": 4, "horizon": 2, "val_size": 2, "test_size": 2, "freq": freq}  # fmt: skip
    p = Prepared.load(prepare(_cfg(params, "lstm_airline", data), "lstm_airline"))
    assert p.meta.freq == (freq or "MS")
    warned = "read as %m/%d/%Y (steps of MS), though %d/%m/%Y reads them too (steps of D)"
    assert (warned in capsys.readouterr().err) == (freq is None)


@pytest.mark.parametrize(
    "freq, window, season",
    [("h", 48, 24), ("30min", 48, 48), ("15min", 48, None), ("2h", 24, 12), ("7h", 24, None),
     ("QS-JAN", 8, 4), ("ME", 12, 12), ("B", 8, 5), ("W-SUN", 60, None), ("YS-JAN", 8, None),
     (None, 8, None)],
)  # fmt: skip
def test_a_season_follows_from_the_frequency_when_the_window_holds_it(freq, window, season):
    assert freq_season(freq, window) == season


def test_the_seasonality_test_finds_airlines_season_and_none_in_random_walks():
    y = load_airline().to_numpy()
    assert seasonal(y[:-24], 12) and seasonal(np.log(y[:-24]), 12)
    assert not seasonal(y[:35], 12)  # under three seasons: not tested
    rng = np.random.default_rng(0)
    walks = [np.cumsum(rng.normal(0.5, 1, 120)) for _ in range(100)]  # a trend, no season
    assert sum(seasonal(w, 12) for w in walks) <= 10  # on the levels, 98 of them passed


def test_a_forecast_without_season_gets_the_one_its_dates_and_values_show(workdir, params):
    """Monthly airline passengers as a CSV with dates and no `season`: 12, and the default
    recipe's season_norm with it; the same months shuffled in time: none."""
    y = load_airline()
    months = y.index.to_timestamp().strftime("%Y-%m-%d")
    shuffled = np.random.default_rng(0).permutation(y.to_numpy())
    for values, season in ((y.to_numpy(), 12), (shuffled, None)):
        pd.DataFrame({"series_id": "a", "time": months, "y": values}).to_csv("a.csv", index=False)
        data = {"source": "csv", "path": "a.csv", "task": "forecast", "features": ["y"],
                "window": 36, "horizon": 12, "val_size": 24, "test_size": 12}  # fmt: skip
        cfg = parse_config({**params, "experiments": {"new": {"data": data}}})
        assert cfg.experiment("new").model.season_norm == "auto"  # train reads prepare's
        meta = Prepared.load(prepare(cfg, "new")).meta
        assert (meta.freq, meta.season) == ("MS", season)
        assert meta.auto_season_norm() == (season or 0)


def test_a_forecast_without_window_gets_two_horizons_or_three_seasons(workdir, params, capsys):
    """Hourly series with a daily season: a window of three days, and the season with it; a
    series too short for that: half of what its train part leaves; too short for any: one line
    naming what it needs."""
    hours = pd.date_range("2024-01-01", periods=24 * 30, freq="h")
    rng = np.random.default_rng(0)
    daily = np.sin(2 * np.pi * np.arange(len(hours)) / 24)
    y = 5 + daily + rng.normal(0, 0.1, len(hours))
    frame = pd.DataFrame({"series_id": "m", "time": hours.strftime("%Y-%m-%d %H:%M"), "y": y})
    frame.to_csv("h.csv", index=False)
    hourly = {"source": "csv", "path": "h.csv", "task": "forecast", "features": ["y"],
              "horizon": 24, "val_size": 48, "test_size": 48}  # fmt: skip
    cfg = parse_config({**params, "experiments": {"new": {"data": hourly}}})
    meta = Prepared.load(prepare(cfg, "new")).meta
    assert (meta.freq, meta.season, meta.window, meta.input_shape) == ("h", 24, 72, [72, 1])
    assert meta.auto_season_norm() == 24  # the window holds two days or more
    assert "data.window: auto -> 72" in capsys.readouterr().out

    shampoo = {"source": "csv", "path": "s.csv", "task": "forecast", "features": ["y"],
               "horizon": 6, "val_size": 12, "test_size": 6}  # fmt: skip
    seasons = {"model": {"name": "lstm", "season_norm": 4}}  # a stated one: two periods at least
    for length, window, windows, model in ((36, 6, 7, {}), (36, 8, 5, seasons), (25, 1, 1, {})):
        pd.DataFrame({"series_id": "s", "time": range(length), "y": rng.normal(size=length)}
                     ).to_csv("s.csv", index=False)  # fmt: skip
        cfg = parse_config({**params, "experiments": {"new": {"data": shampoo, **model}}})
        meta = Prepared.load(prepare(cfg, "new")).meta
        assert (meta.window, meta.sizes["train"]) == (window, windows)
    short = {**shampoo, "season": 6}  # the seasonal-naive baseline needs a window of one season
    cfg = parse_config({**params, "experiments": {"new": {"data": short}}})
    need = (r"series 's' has 25 time steps; a window of at least 6 \+ horizon \(6\) \+ "
            r"val_size \(12\) \+ test_size \(6\) need at least 30")  # fmt: skip
    with pytest.raises(DataError, match=need):
        prepare(cfg, "new")


def test_a_season_norm_the_prepared_window_cannot_hold_is_refused_at_train(workdir, params, capsys):
    """dvc.yaml's prepare reads only `data`: a season_norm raised after it left the window it
    chose for the old one, and the model learned no profile for the phases beyond it."""
    from pipeline.cli import main

    y = np.random.default_rng(0).normal(size=36)
    pd.DataFrame({"series_id": "s", "time": range(36), "y": y}).to_csv("s.csv", index=False)
    data = {"source": "csv", "path": "s.csv", "task": "forecast", "features": ["y"],
            "horizon": 6, "val_size": 12, "test_size": 6}  # fmt: skip
    params["experiments"] = {"new": {"data": data, "model": {"name": "lstm", "season_norm": 0}}}
    write_params(params)
    assert main(["prepare", "new"]) == 0  # a window of 6
    params["experiments"]["new"]["model"]["season_norm"] = 4
    write_params(params)
    assert main(["train", "new"]) == 2
    assert (
        "experiments.new.model.season_norm: 4 needs windows of 2 periods or more; the prepared "
        "window is 6"
    ) in capsys.readouterr().err


def _airline_profile_moved(months: int) -> np.ndarray:
    """Airline with its seasonal profile moved by `months`, its trend and noise kept."""
    from statsmodels.tsa.seasonal import seasonal_decompose

    y = np.log(load_airline().to_numpy())
    profile, t = seasonal_decompose(y, period=12).seasonal[:12], np.arange(len(y))
    return np.exp(y - profile[t % 12] + profile[(t + months) % 12])


def test_the_share_of_a_season_tells_series_that_share_it_from_series_that_do_not():
    y = load_airline().to_numpy()
    rng = np.random.default_rng(0)
    copies = [(y * f * np.exp(rng.normal(0, 0.03, len(y))))[:, None] for f in (1, 3, 10)]
    assert season_share(copies, [0], 12, None) > 0.95  # one season, three scales
    moved = [y[:, None], _airline_profile_moved(6)[:, None]]
    assert season_share(moved, [0], 12, None) < 0.5  # profiles half a year apart
    # the same profile, one series starting 6 months later: aligned by the dates
    late = [y[:, None], y[6:, None]]
    assert season_share(late, [0], 12, [0, 6]) > 0.99 > 0.5 > season_share(late, [0], 12, None)
    assert season_share(copies[:1], [0], 12, None) is None  # one series
    assert season_share(copies, [0], None, None) is None  # no season


def test_series_that_share_a_season_keep_it_and_series_that_do_not_get_it_taken_out(
    workdir, params
):
    """Through prepare: the series' first dates align their profiles (one starts 6 months
    later), and the recipe's season_norm follows the share."""
    y, months = load_airline(), load_airline().index.to_timestamp()
    for other, shared in ((y.to_numpy() * 3, True), (_airline_profile_moved(6), False)):
        pd.concat(
            [pd.DataFrame({"id": "a", "t": months, "v": y.to_numpy()}),
             pd.DataFrame({"id": "b", "t": months[6:], "v": other[6:]})]
        ).to_csv("two.csv", index=False)  # fmt: skip
        data = {"source": "csv", "path": "two.csv", "task": "forecast", "id_column": "id",
                "time_column": "t", "features": ["v"], "window": 36, "horizon": 12,
                "val_size": 24, "test_size": 12, "transform": "log"}  # fmt: skip
        cfg = parse_config({**params, "experiments": {"two": {"data": data}}})
        meta = Prepared.load(prepare(cfg, "two")).meta
        assert meta.season == 12 and (meta.season_share > 0.5) is shared
        assert meta.auto_season_norm() == (0 if shared else 12)


def test_parquet_classification_by_series(workdir, params):
    _long_frame(n_series=20).to_parquet("data.parquet")
    data = {
        "source": "parquet",
        "path": "data.parquet",
        "task": "classification",
        "features": ["a", "b"],
        "label": "label",
        "window": 30,
        "val_fraction": 0.25,
        "test_fraction": 0.2,
    }
    out = prepare(_cfg(params, "lstm_italypowerdemand", data), "lstm_italypowerdemand")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["labels"] == ["down", "up"] and meta["input_shape"] == [30, 2]
    assert sum(meta["sizes"].values()) == 20
    assert meta["columns"] == {"id_column": "series_id", "time_column": "time"}  # for predict


def test_prepare_cli_writes_atomically(workdir, params):
    from pipeline.cli import main

    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 0
    assert sorted(p.name for p in (workdir / "data/prepared").iterdir()) == ["lstm_airline"]


def test_a_missing_prepared_file_is_one_data_error_naming_it(tmp_path):
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="windows_train.npy: not found; run the prepare stage"):
        Prepared(meta=None, root=tmp_path).window_starts("train")
