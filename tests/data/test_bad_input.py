"""Each bad input: one clear error naming the culprit, a non-zero exit, nothing written."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from tests.conftest import write_params


def _frame(n_series=4, length=30):
    t = np.arange(length)
    return pd.DataFrame(
        {
            "series_id": np.repeat([f"s{i}" for i in range(n_series)], length),
            "time": np.tile(t, n_series),
            "value": np.tile(np.sin(t / 4), n_series) + 2,
            "label": np.repeat(["a", "b"] * (n_series // 2), length),
        }
    )


def _broken(kind: str) -> str | None:
    frame = _frame()
    if kind == "missing_column":
        frame = frame.drop(columns="value")
    elif kind in ("non_numeric", "blank_lead"):
        frame["value"] = frame["value"].astype(object)
        frame.loc[7, "value"] = "12,5"
    elif kind == "nan":
        frame.loc[11, "value"] = np.nan
    elif kind == "inf":
        frame.loc[12, "value"] = np.inf
    elif kind == "short_series":
        frame = frame[~((frame.series_id == "s2") & (frame.time >= 10))]
    elif kind == "bad_date":
        frame["time"] = (pd.Timestamp("2020-01-01") + pd.to_timedelta(frame.time, "D")).astype(str)
        frame.loc[20, "time"] = "21.01.2020"
    elif kind == "one_class":
        frame["label"] = "a"
    elif kind == "duplicate":
        frame = pd.concat([frame, frame.iloc[[5]]])
    elif kind == "text_in_numeric_time":
        frame["time"] = frame["time"].astype(object)
        frame.loc[12, "time"] = "x"
    elif kind == "text_time":
        frame["time"] = "t" + frame["time"].astype(str)
    elif kind == "empty_id":
        frame.loc[3, "series_id"] = None
    elif kind == "empty_time":
        frame["time"] = frame["time"].astype(float)
        frame.loc[3, "time"] = None
    elif kind == "na_time":  # pandas reads NA, null, N/A... as missing
        frame["time"] = frame["time"].astype(object)
        frame.loc[3, "time"] = "NA"
    elif kind == "semicolons":  # a spreadsheet's export in some locales
        frame.to_csv("in.csv", sep=";", index=False)
        return None
    elif kind == "decimal_commas":  # ...with decimal commas: rows of 1, 2 and 3 fields
        open("in.csv", "w").write("series_id;time;value\ns0;0;2\ns0;1;1,5\ns0;2;2,25,1\n")
        return None
    elif kind == "na_time_bom":  # a BOM before the header's first name
        frame["time"] = frame["time"].astype(object)
        frame.loc[3, "time"] = "NA"
        frame[["time", "series_id", "value"]].to_csv("in.csv", index=False, encoding="utf-8-sig")
        return None
    elif kind == "beyond_float32":
        frame.loc[12, "value"] = 1e39
    elif kind == "huge":
        frame.loc[12, "value"] = 1e200
    elif kind == "not_positive":
        frame.loc[12, "value"] = 0.0
    elif kind == "empty_label":
        frame.loc[5, "label"] = None
    elif kind in ("gap", "numbers"):
        if kind == "gap":
            frame["time"] = pd.Timestamp("2020-01-01") + pd.to_timedelta(frame.time, "D")
        frame = frame.drop(index=40)  # series s1's 11th day
    elif kind == "off_grid":  # month starts, but one series mid-month
        frame["time"] = pd.Timestamp("2020-01-01") + pd.DateOffset(months=1) * frame.time
        frame.loc[frame.series_id == "s3", "time"] += pd.Timedelta("14D")
    elif kind == "static_varies":
        frame["size"] = 1.0
        frame.loc[45, "size"] = 2.0  # series s1
    elif kind == "empty":
        open("in.csv", "w").close()
        return None
    elif kind == "rare_class":  # 20 series, 2 of class c: a test split of 4 draws none
        frame = _frame(n_series=20)
        frame.loc[frame.series_id.isin(["s18", "s19"]), "label"] = "c"
    elif kind == "odd_class":  # 6 series: a, b, a, b, a, c
        frame = _frame(n_series=6)
        frame.loc[frame.series_id == "s5", "label"] = "c"
    elif kind == "quoted_break":  # a quoted cell holding a line break: one row on two lines
        frame["note"] = ""
        frame.loc[2, "note"] = "two\nlines"
        frame["value"] = frame["value"].astype(object)
        frame.loc[10, "value"] = "x"
    elif kind == "label_space_twin":  # a third class, silently
        frame.loc[frame.series_id == "s2", "label"] = "a "
    elif kind == "id_space_twin":  # s1 read as two series stepping by 2, silently
        frame.loc[(frame.series_id == "s1") & (frame.time % 2 == 1), "series_id"] = "s1 "
    elif kind == "all_zero":  # the test part's changes alone do not help
        frame["value"] = np.where(frame.time >= 22, 1.0, 0.0)
    elif kind == "twice":
        frame["time"] = frame["value"]  # pandas would rename the second one 'value.1'
        frame.columns = ["series_id", "value", "value", "label"]
    frame.to_csv("in.csv", index=False)
    if kind == "latin1":  # e.g. saved by a spreadsheet in cp1252: its error named no line
        lines = open("in.csv").read().splitlines()
        lines[40] = lines[40].replace("s1", "s\xe9")
        open("in.csv", "wb").write("\n".join(lines).encode("latin-1"))
    if kind == "blank_lead":  # blank lines before the header: read, and counted
        text = open("in.csv").read()
        open("in.csv", "w").write("\n\n" + text)
    if kind == "longer_rows":  # a field more than the header on every row: pandas took the
        # first as the index and read every value a column over (exit 0, forecasts x1000)
        lines = open("in.csv").read().splitlines()
        open("in.csv", "w").write("\n".join(lines[:1] + [f"{x},99" for x in lines[1:]]))
    if kind == "excel_sep":  # Excel's first line naming the separator
        open("in.csv", "w").write("sep=,\n" + open("in.csv").read())
    if kind in ("blank_lines", "space_lines"):  # line numbers count them, as an editor does
        lines = open("in.csv").read().splitlines()
        lines[3:3] = ["", ""] if kind == "blank_lines" else ["   ", " ,\t, ,  "]
        lines[10] = lines[10].replace(lines[10].split(",")[2], "x")
        open("in.csv", "w").write("\n".join(lines) + "\n")
    return None


FORECAST = {
    "source": "csv",
    "path": "in.csv",
    "task": "forecast",
    "features": ["value"],
    "window": 8,
    "horizon": 2,
    "val_size": 4,
    "test_size": 4,
}
CLASSIFY = {
    "source": "csv",
    "path": "in.csv",
    "task": "classification",
    "features": ["value"],
    "label": "label",
    "window": 20,
}


def use_data(params: dict, data: dict) -> None:
    """lstm_airline on the test's own short series: no season to take out of them."""
    exp = params["experiments"]["lstm_airline"]
    exp["data"] = data
    exp["model"].update(level_norm=data["task"] == "forecast", season_norm=0)


@pytest.mark.parametrize(
    "kind, data, expected",
    [
        ("missing_column", FORECAST, "in.csv: missing column(s) 'value'; found: series_id, time"),
        ("non_numeric", FORECAST, "in.csv: column 'value' line 9: '12,5' is not a number"),
        (
            "nan",
            FORECAST,
            "in.csv: column 'value' line 13: empty cell, or one read as missing (NA, null, nan...)",
        ),
        ("inf", FORECAST, "in.csv: column 'value' line 14: inf (NaN/inf)"),
        (
            "short_series",
            FORECAST,
            "in.csv: series 's2' has 10 time steps; window (8) + horizon "
            "(2) + val_size (4) + test_size (4) need at least 18",
        ),
        ("short_series", CLASSIFY, "in.csv: series 's2' has 10 time steps, shorter than window"),
        ("one_class", CLASSIFY, "in.csv: column 'label' has a single class 'a'"),
        (  # it trained, and validate reported a MAPE of 69048 (exit 0)
            "all_zero",
            FORECAST,
            "in.csv: target 'value' is 0 at every step before the validation and test parts: "
            "nothing to forecast (another column?)",
        ),
        (
            "odd_class",
            CLASSIFY,
            "in.csv: class 'c' has 1 series where the test split is drawn; a stratified split "
            "needs 2 of each class",
        ),
        (  # the test split then held none of c: accuracy 1.0, passed, not a word
            "rare_class",
            CLASSIFY,
            "in.csv: class 'c' has 2 series, and the stratified test split (data.test_fraction "
            "0.2) draws none of them",
        ),
        (
            "stratified",
            CLASSIFY,
            "in.csv: data.test_fraction 0.2 of 4 series draws 1 for the test split and leaves 3; "
            "each side needs one series of each of the 2 classes",
        ),
        ("twice", FORECAST, "in.csv: column 'value' appears twice in the header"),
        (
            "label_space_twin",
            CLASSIFY,
            "in.csv: column 'label' line 62: 'a ' and 'a' differ only by spaces at their ends",
        ),
        (
            "id_space_twin",
            FORECAST,
            "in.csv: column 'series_id' line 33: 's1 ' and 's1' differ only by spaces at their "
            "ends",
        ),
        ("longer_rows", FORECAST, "in.csv: line 2: 5 fields where the header has 4"),
        (
            "excel_sep",
            FORECAST,
            "in.csv: the first line, 'sep=,', is Excel's separator line; remove it",
        ),
        ("latin1", FORECAST, "in.csv: line 41: byte 0xe9 is not UTF-8 (save the file as UTF-8)"),
        ("blank_lines", FORECAST, "in.csv: column 'value' line 11: 'x' is not a number"),
        # lines of spaces are blank too: they were 'column 'series_id' line 4: empty cell'
        ("space_lines", FORECAST, "in.csv: column 'value' line 11: 'x' is not a number"),
        ("blank_lead", FORECAST, "in.csv: column 'value' line 11: '12,5' is not a number"),
        ("quoted_break", FORECAST, "in.csv: column 'value' line 13: 'x' is not a number"),
        ("duplicate", FORECAST, "in.csv: line 122: duplicate (series_id, time) = (s0, 5)"),
        ("empty", FORECAST, "in.csv: file is empty"),
        (
            "text_in_numeric_time",
            FORECAST,
            "in.csv: column 'time' line 14: 'x' is not a number (the first time is one)",
        ),
        (
            "text_time",
            FORECAST,
            "in.csv: column 'time' line 2: 't0' is neither a number nor a date",
        ),
        ("empty_id", FORECAST, "in.csv: column 'series_id' line 5: empty cell"),
        ("empty_time", FORECAST, "in.csv: column 'time' line 5: empty cell"),
        (
            "na_time",
            FORECAST,
            "in.csv: column 'time' line 5: 'NA' is read as a missing value; fill it or drop the "
            "row",
        ),
        (
            "na_time_bom",
            FORECAST,
            "in.csv: column 'time' line 5: 'NA' is read as a missing value; fill it or drop the "
            "row",
        ),
        (
            "decimal_commas",
            FORECAST,
            "in.csv: cannot read as csv: Error tokenizing data. C error: Expected 1 fields in line "
            "3, saw 2 (columns separated by ';'? the file must be comma-separated)",
        ),
        (
            "semicolons",
            FORECAST,
            "in.csv: missing column(s) 'series_id', 'time', 'value'; found: series_id;time;value;"
            "label (columns separated by ';'? the file must be comma-separated)",
        ),
        ("empty_label", CLASSIFY, "in.csv: column 'label' line 7: empty cell"),
        (
            "beyond_float32",
            FORECAST,
            "in.csv: column 'value' line 14: 1e+39 is beyond float32's range (±3.4e+38)",
        ),
        ("huge", FORECAST, "in.csv: column 'value' line 14: 1e+200 is beyond float32's range"),
        (
            "not_positive",
            {**FORECAST, "transform": "log"},
            "in.csv: series 's0', column 'value', step 13 of 30: 0; transform 'log' needs "
            "values > 0",
        ),
        (
            "bad_date",
            FORECAST,
            "in.csv: column 'time' line 22: '21.01.2020' is not a date in the format of the "
            "first one (%Y-%m-%d)",
        ),
        (
            "gap",
            FORECAST,
            "in.csv: line 42: series 's1': 2020-01-12 00:00:00 follows 2020-01-10 00:00:00; a 'D' "
            "series steps to 2020-01-11 00:00:00 (the other series' frequency); fill the gap",
        ),
        (
            "gap",
            {**FORECAST, "freq": "D"},
            "in.csv: line 42: series 's1': 2020-01-12 00:00:00 follows 2020-01-10 00:00:00; a 'D' "
            "series steps to 2020-01-11 00:00:00 (data.freq)",
        ),
        (
            "off_grid",
            {**FORECAST, "freq": "MS"},
            "in.csv: line 92: series 's3': 2020-01-15 00:00:00 is not a 'MS' step (data.freq)",
        ),
        (
            "static_varies",
            {**FORECAST, "static": ["size"]},
            "in.csv: column 'size' line 47: static, but series 's1' has a second value (1, then 2)",
        ),
        (
            "unchanged",  # numeric times
            {**FORECAST, "calendar": ["month"]},
            "in.csv: data.calendar needs dates at one frequency in column 'time' (set data.freq)",
        ),
        (  # a window read across it forecast from the wrong steps (exit 0)
            "numbers",
            FORECAST,
            "in.csv: line 42: series 's1': 11 follows 9; the other series step by 1 (column "
            "'time'); fill the gap or fix the time",
        ),
        (
            "numbers",
            {**FORECAST, "freq": "D"},
            "in.csv: column 'time' holds numbers; data.freq 'D' needs dates",
        ),
    ],
)
def test_bad_csv(workdir, params, capsys, kind, data, expected):
    _broken(kind)
    use_data(params, data)
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 3
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.strip().count("\n") == 0
    prepared = workdir / "data" / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())  # not even a temp folder


def test_ids_and_labels_are_the_text_the_file_holds(workdir, params):
    """`01` and `1` are two classes, `NA` an id: read as text, not as numbers or missing."""
    frame = _frame(n_series=10).assign(label=np.repeat(["1", "01"] * 5, 30))
    frame["series_id"] = frame["series_id"].replace({"s0": "NA", "s1": "007"})
    frame.to_csv("in.csv", index=False)
    use_data(params, {**CLASSIFY, "window": None})
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 0
    meta = json.loads((workdir / "data/prepared/lstm_airline/meta.json").read_text())
    assert meta["labels"] == ["01", "1"] and sum(meta["sizes"].values()) == 10


def test_a_date_column_is_not_read_as_numbers(workdir, params, capsys):
    frame = _frame().assign(
        value=lambda f: pd.Timestamp("2020-01-01") + pd.to_timedelta(f.time, "D")
    )
    frame.to_parquet("in.parquet")
    use_data(params, {**FORECAST, "source": "parquet", "path": "in.parquet"})
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 3
    assert "in.parquet: column 'value' holds datetime64[" in capsys.readouterr().err


def test_missing_file(workdir, params, capsys):
    use_data(params, dict(FORECAST, path="nowhere.csv"))
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 3
    assert "nowhere.csv: file not found" in capsys.readouterr().err


def test_failed_prepare_keeps_the_previous_output_intact(workdir, params):
    _frame().to_csv("in.csv", index=False)
    use_data(params, FORECAST)
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 0
    before = sorted(p.name for p in (workdir / "data/prepared/lstm_airline").iterdir())
    _broken("nan")
    assert main(["prepare", "lstm_airline"]) == 3
    assert sorted(p.name for p in (workdir / "data/prepared/lstm_airline").iterdir()) == before
    assert [p.name for p in (workdir / "data/prepared").iterdir()] == ["lstm_airline"]


def test_month_first_dates_sort_across_a_year_boundary(workdir, params):
    """mm/dd/YYYY text sorts as dates: 12/31/2019 before 01/01/2020 (as text it would not)."""
    days = pd.date_range("2019-12-01", periods=30, freq="D")
    frame = _frame(n_series=2, length=30).assign(time=np.tile(days.strftime("%m/%d/%Y"), 2))
    frame.iloc[::-1].to_csv("in.csv", index=False)  # rows in any order
    use_data(params, FORECAST)
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 0
    meta = json.loads((workdir / "data/prepared/lstm_airline/meta.json").read_text())
    assert meta["freq"] == "D"  # regular daily steps: sorted by date


def test_a_freq_pandas_does_not_know_is_a_config_error(workdir, params, capsys):
    _broken("gap")
    use_data(params, {**FORECAST, "freq": "fortnight"})
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 2
    err = capsys.readouterr().err
    assert "freq 'fortnight' is not a pandas frequency ('D', 'h', 'MS', 'W-SUN'...)" in err, err
    use_data(params, {**FORECAST, "freq": "M"})  # month end before pandas 2.2
    write_params(params)
    assert main(["prepare", "lstm_airline"]) == 2
    assert (
        "freq 'M' is not a pandas frequency; pandas now spells it 'ME'" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "freq, times, expected",
    [
        ("D", pd.date_range("2024-01-01", periods=10, freq="D").strftime("%Y-%m-%d").tolist(), ""),
        (  # the horizon rows a day late: their promotions would be read for the wrong days
            "D",
            [
                *pd.date_range("2024-01-01", periods=8, freq="D").strftime("%Y-%m-%d"),
                "2024-01-10",
                "2024-01-11",
            ],
            "line 10: series 'a': 2024-01-10 00:00:00 follows 2024-01-08 00:00:00; a 'D' series "
            "steps to 2024-01-09 00:00:00 (the model's freq); fill the gap or fix the date",
        ),
        (None, list(range(0, 50, 5)), ""),  # numbers: the window's own step
        (
            None,
            [*range(0, 40, 5), 45, 50],
            "line 10: series 'a': 45 follows 35; the series' window steps by 5, and the rows "
            "after its last observed one must continue it",
        ),
    ],
)
def test_a_forecasts_horizon_rows_must_be_the_steps_after_its_window(
    tmp_path, freq, times, expected
):
    from types import SimpleNamespace

    from pipeline.data.sources import covariate_windows
    from pipeline.errors import DataError

    rows = {"series_id": "a", "time": times, "value": [*range(8), None, None], "promo": 1}
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    meta = SimpleNamespace(features=["value"], future=["promo"], static=[], calendar=[],
                           horizon=2, window=8, freq=freq, transform=None)  # fmt: skip
    if not expected:
        x, extra, *_ = covariate_windows(tmp_path / "in.csv", meta, "series_id", "time")
        assert x.shape == (1, 8, 2) and extra["future"].shape == (1, 2, 1)
        return
    with pytest.raises(DataError) as err:
        covariate_windows(tmp_path / "in.csv", meta, "series_id", "time")
    assert str(err.value) == f"{tmp_path / 'in.csv'}: {expected}"
