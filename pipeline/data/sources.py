"""Data sources: raw arrays from sktime's shipped sets or the user's long-format file.

Classification sources give `Labelled` sequences, forecasting sources give a list of series.
Every check on the user's file raises one DataError naming the file, column and row.
"""

from __future__ import annotations

import csv
import sys
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format
from pandas.tseries.frequencies import to_offset

from pipeline.config import TableData
from pipeline.errors import DataError, first_line
from pipeline.io import system_fault

SPLIT_NAMES = ("train", "val", "test")
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Labelled:
    """Labelled series: each [steps, features], with string labels and ids; `split`: each
    series' predefined split (train/val/test), or None (prepare draws a stratified one)."""

    x: list[np.ndarray]
    y: np.ndarray
    ids: list[str]
    features: list[str]
    split: np.ndarray | None = None
    variable_length: bool = False  # the model takes padded series and their lengths


@dataclass(frozen=True)
class Series:
    """One or more multivariate series, each [time, features], in the file's order of ids;
    `freq`: their time column's pandas frequency ('MS', 'D'...) when it holds regular datetimes."""

    values: list[np.ndarray]
    ids: list[str]
    features: list[str]
    freq: str | None = None
    # covariates: per series [time, len(future_names)] (the user's columns, then calendar's),
    # and [series, len(static_names)]
    future: list[np.ndarray] | None = None
    future_names: list[str] = field(default_factory=list)
    static: np.ndarray | None = None
    static_names: list[str] = field(default_factory=list)
    calendar: list[str] = field(default_factory=list)
    # each series' first step on one axis (steps of `freq` after the earliest); None: no dates
    starts: list[int] | None = None


def load_ucr(name: str) -> Labelled:
    """A shipped UCR/UEA set with its official train/test split; unequal-length sets (e.g.
    JapaneseVowels, PLAID) give series of different lengths."""
    from sktime.datasets import load_UCR_UEA_dataset

    x, y, split = [], [], []
    for which in ("train", "test"):
        frame, labels = load_UCR_UEA_dataset(name, split=which, return_type="nested_univ")
        for row in frame.itertuples(index=False):
            steps = min(len(cell) for cell in row)  # dims of one case share its length
            x.append(np.stack([np.asarray(c, np.float32)[:steps] for c in row], axis=1))
        y += labels.astype(str).tolist()
        split += [which] * len(frame)
    variable = len({len(s) for s in x}) > 1
    ids = [f"{s}:{i}" for i, s in enumerate(split)]
    features = [f"dim_{i}" for i in range(x[0].shape[1])]
    return Labelled(x, np.array(y), ids, features, np.array(split), variable)


def load_airline() -> Series:
    from sktime.datasets import load_airline as sktime_airline

    s = sktime_airline()  # monthly, a PeriodIndex: its months start on the 1st ('MS')
    freq = pd.infer_freq(s.index.to_timestamp())
    return Series([s.to_numpy(np.float64)[:, None]], ["airline"], ["passengers"], freq)


def _read_table(path: Path, source: str, text=()) -> pd.DataFrame:
    """The file as a table whose index is each row's place in it (`_file_row`). `text`: columns
    read as the text they hold (ids, labels: `007` stays `007`, `NA` is a name); their empty cells
    are missing."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        frame = _read_csv(path, text) if source == "csv" else _read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except UnicodeDecodeError as err:  # its position is within the parser's chunk, not the file
        raise DataError(f"{path}: {_first_non_utf8(path, err)}") from None
    except (ValueError, OSError) as err:
        fault = system_fault(err, path)  # permission denied
        why = f"{first_line(err)}{_separator_hint(path) if source == 'csv' else ''}"
        raise fault or DataError(f"{path}: cannot read as {source}: {why}") from None
    if source != "csv":  # (_read_csv checks the header pandas would rename)
        if any(name is not None for name in frame.index.names):  # df.set_index(...).to_parquet
            frame = frame.reset_index()
        frame = frame.reset_index(drop=True)  # a stored index is not the rows' place
        _once_each(frame.columns.tolist(), path)
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    """A file, or a folder of them; a hive-partitioned folder's keys (`series_id=001/`) are the
    text of their names, as a CSV's ids are (pyarrow would read `001` as the number 1)."""
    if not path.is_dir():
        return pd.read_parquet(path)
    import pyarrow as pa
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, partitioning="hive")
    if not dataset.files:  # it said "file has a header but no rows"
        raise DataError(f"{path}: a folder that holds no Parquet files")
    # the `key=value` folders' keys (partitioning.schema of a folder without them lists every
    # column: typed as text, a string column failed to merge, "large_string vs string")
    folders = {part for f in dataset.files for part in Path(f).relative_to(path).parts[:-1]}
    keys = sorted({part.partition("=")[0] for part in folders if "=" in part})
    hive = ds.partitioning(pa.schema([(key, pa.string()) for key in keys]), flavor="hive")
    return ds.dataset(path, partitioning=hive).to_table().to_pandas()


def _read_csv(path: Path, text) -> pd.DataFrame:
    header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
    if str(header[0]).lower().startswith("sep="):
        with open(path, encoding="utf-8-sig") as f:
            line = next(line.strip() for line in f if line.strip())
        raise DataError(f"{path}: the first line, {line!r}, is Excel's separator line; remove "
                        "it (the first line must be the header)")  # fmt: skip
    _once_each(header, path)  # pandas would rename the second one `<name>.1`
    text = {col: str for col in text if col in header}
    with warnings.catch_warnings():
        # rows longer than the header at the top: pandas drops their last fields with a
        # warning (only later rows are an error), and every value was read a column over
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(
                path, converters=text, skip_blank_lines=False, index_col=False,
                skiprows=_blank_lead(path),
            )  # fmt: skip
        except pd.errors.ParserWarning:
            why = f"{_longer_row(path, len(header))}{_separator_hint(path)}"
            raise DataError(f"{path}: {why}") from None
    for col in text:
        frame[col] = frame[col].mask(frame[col] == "")
    # blank lines dropped here, not by pandas, so that the index stays each row's line - 2
    frame = frame.dropna(how="all")
    return frame.drop(frame.index[_spaces_only(frame)])  # a line of spaces: blank too


def _spaces_only(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose every cell is empty or spaces (looked at where the first cell is)."""

    def blank(column: pd.Series) -> pd.Series:
        if not (column.dtype == object or pd.api.types.is_string_dtype(column)):
            return column.isna()
        return column.isna() | column.astype(str).str.strip().eq("")

    rows = np.flatnonzero(blank(frame.iloc[:, 0]).to_numpy())
    return rows[frame.iloc[rows].apply(blank).all(axis=1).to_numpy()]


def _separator_hint(path: Path) -> str:
    """' (columns separated by ';'? ...)' where the header holds no comma but a ;, tab or |."""
    with suppress(OSError, UnicodeDecodeError), open(path, encoding="utf-8-sig") as f:
        header = next((line for line in f if line.strip()), "")
        other = [sep for sep in ";\t|" if sep in header and "," not in header]
        if other:
            return f" (columns separated by {other[0]!r}? the file must be comma-separated)"
    return ""


def _longer_row(path: Path, width: int) -> str:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        for row in rows:
            if len(row) > width:
                return f"line {rows.line_num}: {len(row)} fields where the header has {width}"
    return f"a row has more fields than the header's {width}"


def _blank_lead(path: Path) -> int:
    """How many blank lines come before the header (the header read skips them)."""
    with open(path, "rb") as f:
        for count, line in enumerate(f):
            if line.strip():
                return count
    return 0


def _first_non_utf8(path: Path, err: UnicodeDecodeError) -> str:
    """'line 30001: byte 0xe9 is not UTF-8 (save the file as UTF-8)', found in the file."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                byte = line[bad.start]
                return f"line {number}: byte {byte:#04x} is not UTF-8 (save the file as UTF-8)"
    return f"not UTF-8 ({err.reason})"


def _once_each(columns: list, path: Path) -> None:
    twice = [name for i, name in enumerate(columns) if name in columns[:i]]
    if twice:
        raise DataError(f"{path}: column {twice[0]!r} appears twice in the header")


def _row_name(path: Path, index: int) -> str:
    # CSV users look up lines in an editor: the line where the row starts
    return f"line {_csv_record(path, index)[0]}" if _is_csv(path) else f"row {index}"


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _csv_record(path: Path, index: int) -> tuple[int, dict[str, str]]:
    """The file line where data row `index` starts (line index + 2, after the header, unless
    blank lines come before the header or a quoted cell before it holds a line break) and its
    cells by column. Read again only to name a bad row."""
    end, lead, header = 0, _blank_lead(path), []
    with (
        suppress(OSError, UnicodeDecodeError, csv.Error),
        open(path, newline="", encoding="utf-8-sig") as f,  # a BOM: not in the first name
    ):
        reader = csv.reader(f)
        for number, cells in enumerate(reader):
            if number == lead:
                header = cells
            elif number == lead + index + 1:
                return end + 1, dict(zip(header, cells, strict=False))  # a short row
            end = reader.line_num
    return lead + index + 2, {}


def _file_row(path: Path, table: pd.DataFrame | pd.Series, i: int) -> str:
    """Where the i-th row of `table` (read by `_read_table`, in any order) stands in the file."""
    return _row_name(path, int(table.index[i]))


def _empty_cell(path: Path, table: pd.DataFrame, i: int, column: str) -> DataError:
    """'column 'time' line 4: empty cell', or the text of a cell pandas reads as missing
    (`NA`, `null`, `N/A`...)."""
    index, text = int(table.index[i]), ""
    if _is_csv(path):
        line, cells = _csv_record(path, index)
        where, text = f"line {line}", cells.get(column, "").strip()
    else:
        where = f"row {index}"
    where = f"{path}: column {column!r} {where}"
    if text:
        return DataError(f"{where}: {text!r} is read as a missing value; fill it or drop the row")
    return DataError(f"{where}: empty cell")


def _numeric(frame: pd.DataFrame, columns: list[str], path: Path, empty_ok=()) -> np.ndarray:
    """The columns as float64; `empty_ok` columns keep their empty cells as NaN."""
    out = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        raw = frame[col]
        if raw.dtype.kind in "mM":  # to_numeric would give nanoseconds
            raise DataError(f"{path}: column {col!r} holds {raw.dtype} values, not numbers")
        values = pd.to_numeric(raw, errors="coerce")
        bad = values.isna() & raw.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: column {col!r} {_file_row(path, raw, i)}: {raw.iloc[i]!r} is not a number"
            )
        arr = values.to_numpy(np.float64)
        nonfinite = ~np.isfinite(arr) & ~(raw.isna().to_numpy() if col in empty_ok else False)
        if nonfinite.any():
            i = int(np.flatnonzero(nonfinite)[0])
            what = f"{arr[i]} (NaN/inf)"
            if raw.isna().iloc[i]:  # as the id and time columns say it
                what = "empty cell, or one read as missing (NA, null, nan...)"
            raise DataError(f"{path}: column {col!r} {_file_row(path, raw, i)}: {what}")
        # the prepared arrays are float32: a larger value would become inf there
        beyond = np.abs(arr) > FLOAT32_MAX
        if beyond.any():
            i = int(np.flatnonzero(beyond)[0])
            raise DataError(
                f"{path}: column {col!r} {_file_row(path, raw, i)}: {arr[i]:g} is beyond float32's "
                f"range (±{FLOAT32_MAX:.3g}); rescale the column"
            )
        out[:, j] = arr
    return out


def _times(raw: pd.Series, column: str, path: Path, freq: str | None = None) -> pd.Series:
    """The time column as it sorts: numbers and datetimes as they are, periods as their start;
    text as numbers when its first cell is one, else as datetimes in the date format of its first
    cell (`1949-01`, `2024-03-01 10:00`, `03/01/2024`...), day and month swapped where only that
    order reads every cell or steps regularly (at `freq`, where it is given). Never text: text
    sorts 0, 1, 10, 2."""
    if isinstance(raw.dtype, pd.PeriodDtype):
        return raw.dt.to_timestamp()
    if raw.dtype == object and pd.api.types.infer_dtype(raw) in ("date", "datetime"):
        zones = {getattr(t, "tzinfo", None) for t in raw}  # Parquet DATE: datetime.date values
        return pd.to_datetime(raw, utc=len(zones) > 1)
    if not pd.api.types.is_string_dtype(raw):
        return _yyyymmdd(raw, column, path)
    first = str(raw.iloc[0])
    if _is_number(first):
        numbers = pd.to_numeric(raw, errors="coerce")
        _refuse_unparsed(raw, numbers, column, path, "is not a number (the first time is one)")
        return _yyyymmdd(numbers, column, path)
    with warnings.catch_warnings():  # pandas' note on day-first formats
        warnings.simplefilter("ignore")
        fmt = guess_datetime_format(first)
    if fmt is None:
        raise DataError(
            f"{path}: column {column!r} {_file_row(path, raw, 0)}: {first!r} is neither a number "
            "nor a date; the time column must hold one or the other"
        )
    times = _dates(raw, fmt)
    # 01.02.2015 is 1 February or 2 January: the first cell cannot tell (pandas reads it month
    # first). The other order wins where it reads every cell and the dates only step regularly
    # in it: day-first monthly data read month first was 12 days a year, a silent misreading.
    if (swapped := _other_order(fmt)) and (other := _dates(raw, swapped)).notna().all():
        step, other_step = _step(times), _step(other)  # each an O(rows) pass: once
        if times.isna().any() or (_fits(other_step, freq) and not _fits(step, freq)):
            times, fmt = other, swapped
        elif _fits(other_step, freq) and _fits(step, freq):  # 12 days or 12 months?
            print(
                f"warning: {path}: column {column!r}: {first!r}... read as {fmt} (steps of "
                f"{step}), though {swapped} reads them too (steps of {other_step}); "
                "set data.freq where that is meant",
                file=sys.stderr,
            )
    what = f"is not a date in the format of the first one ({fmt})"
    _refuse_unparsed(raw, times, column, path, what)
    return times


def _yyyymmdd(numbers: pd.Series, column: str, path: Path) -> pd.Series:
    """Integers that are all dates written YYYYMMDD (20240131) as those dates: as numbers they
    step by 1 and then by 70 at each month's end, and had no frequency, season or calendar."""
    if not pd.api.types.is_integer_dtype(numbers) or not numbers.between(19000101, 21001231).all():
        return numbers
    dates = pd.to_datetime(numbers.astype(str), format="%Y%m%d", errors="coerce")
    if dates.isna().any():
        return numbers
    print(f"{path}: column {column!r}: 8-digit numbers read as dates, YYYYMMDD", file=sys.stderr)
    return dates


def _dates(raw: pd.Series, fmt: str) -> pd.Series:
    try:
        return pd.to_datetime(raw, format=fmt, errors="coerce")
    except ValueError:  # UTC offsets that differ (daylight saving time)
        return _across_offsets(raw, fmt)


def _other_order(fmt: str) -> str | None:
    """`fmt` with day and month swapped, for the formats where either order is in use (not
    year-first, which is always year-month-day)."""
    if fmt.startswith("%Y") or "%d" not in fmt or "%m" not in fmt:
        return None
    return fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")


def _fits(step: str | None, freq: str | None) -> bool:
    """Dates of this step (`_step`) are regular (and at `freq`, where it is given)."""
    return step is not None and (freq is None or to_offset(step) == to_offset(freq))


def _step(times: pd.Series) -> str | None:
    steps = pd.DatetimeIndex(times.dropna().drop_duplicates().sort_values())
    return pd.infer_freq(steps) if len(steps) >= 3 else None


def _across_offsets(raw: pd.Series, fmt: str) -> pd.Series:
    """Times whose UTC offsets differ (a zone's daylight saving time): daily or coarser ones,
    each at the same local time of day, as those local dates and times (in UTC a day would
    step by 23 or 25 hours, and a calendar field read in UTC could fall on the day before);
    times within a day in UTC, where each step keeps its length."""

    def local(text):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=None)
        except (TypeError, ValueError):
            return pd.NaT

    wall = pd.to_datetime(raw.map(local))
    if (wall - wall.dt.normalize()).nunique() <= 1:
        return wall
    return pd.to_datetime(raw, format=fmt, errors="coerce", utc=True)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_unparsed(raw: pd.Series, parsed: pd.Series, column: str, path: Path, what: str):
    bad = parsed.isna() & raw.notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"column {column!r} {_file_row(path, raw, i)}"
        raise DataError(f"{path}: {where}: {raw.iloc[i]!r} {what}")


def series_freq(
    times: list[pd.Series],
    ids: list[str],
    path: Path,
    column: str,
    freq: str | None = None,
    given_by: str = "data.freq",
) -> str | None:
    """The series' frequency: `freq` when given, else the one pandas infers. Every series must
    step exactly at it; a gap or a step off its grid is refused, naming the series and the file's
    line (`times` keep the file's row numbers as their index). Without `freq`, series that are
    all irregular (events) have none, but one that is irregular among series regular at one
    frequency is refused too: almost surely a gap."""
    if not pd.api.types.is_datetime64_any_dtype(times[0]):
        if freq:
            raise DataError(
                f"{path}: column {column!r} holds numbers; {given_by} {freq!r} needs dates"
            )
        _numeric_gaps(times, ids, path, column)
        return None
    regular = {pd.infer_freq(t) for t in times if len(t) >= 3} - {None}
    source = given_by if freq else "the other series' frequency"
    freq = freq or (regular.pop() if len(regular) == 1 else None)
    if freq is None:
        return None
    offset = to_offset(freq)
    for t, sid in zip(times, ids, strict=True):
        expected = pd.date_range(t.iloc[0], periods=len(t), freq=offset)
        off = np.flatnonzero(t.to_numpy() != expected.to_numpy())
        on_grid = offset.is_on_offset(t.iloc[0])
        if on_grid and not off.size:
            continue
        i = int(off[0]) if on_grid else 0
        why = (
            f"{t.iloc[i]} follows {t.iloc[i - 1]}; a {freq!r} series steps to {expected[i]}"
            if i
            else f"{t.iloc[i]} is not a {freq!r} step"
        )
        raise DataError(
            f"{path}: {_file_row(path, t, i)}: series {sid!r}: {why} ({source}); "
            "fill the gap or fix the date"
        )
    return freq


def _numeric_gaps(times: list[pd.Series], ids: list[str], path: Path, column: str) -> None:
    """Numbered steps, as dates without a freq: where the series that step regularly all step
    by one amount, a series that does not is refused (a window read across its gap forecast
    from the wrong steps, exit 0)."""
    steps = [np.diff(t.to_numpy(np.float64)) for t in times]
    regular = {d[0] for d in steps if len(d) >= 2 and np.allclose(d, d[0])}
    if len(regular) != 1:
        return
    (step,) = regular
    for t, d, sid in zip(times, steps, ids, strict=True):
        if off := np.flatnonzero(~np.isclose(d, step)).tolist():
            i = off[0] + 1
            raise DataError(
                f"{path}: {_file_row(path, t, i)}: series {sid!r}: {t.iloc[i]:g} follows "
                f"{t.iloc[i - 1]:g}; the other series step by {step:g} (column {column!r}); "
                "fill the gap or fix the time"
            )


def read_series_table(
    path: Path,
    source: str,
    id_column: str,
    time_column: str,
    features: list[str],
    extra=(),
    empty_ok=(),
    text=(),
    freq: str | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Read and check a long-format file; rows sorted by (id, time), features as float64, dates
    in the time column as datetimes; the id, `extra` and `text` columns as text.

    Columns are matched by name, so their order in the file does not matter.
    """
    frame = _read_table(path, source, (id_column, *extra, *text))
    needed = [id_column, time_column, *features, *extra]
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns))
        if len(frame.columns) == 1 and source == "csv":
            found += _separator_hint(path)
        raise DataError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; found: {found}"
        )
    for col in (id_column, time_column, *extra, *(c for c in text if c in frame.columns)):
        empty = frame[col].isna()
        if empty.any():
            i = int(np.flatnonzero(empty.to_numpy())[0])
            raise _empty_cell(path, frame, i, col)
    for col in (id_column, *extra):
        _no_space_twins(frame, col, path)
    values = _numeric(frame, features, path, empty_ok)
    frame[time_column] = _times(frame[time_column], time_column, path, freq)
    dup = frame.duplicated([id_column, time_column])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        sid, time = frame[id_column].iloc[i], frame[time_column].iloc[i]
        raise DataError(
            f"{path}: {_file_row(path, frame, i)}: duplicate ({id_column}, {time_column}) = "
            f"({sid}, {time})"
        )
    order = np.lexsort((frame[time_column].to_numpy(), frame[id_column].astype(str)))
    return frame.iloc[order], values[order]  # the index: each row's place in the file


def series_bounds(ids: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) row ranges of each series in an id-sorted column."""
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    return list(zip(starts, np.r_[starts[1:], len(ids)], strict=True))


# Calendar covariates: the field of a date, and its cycle.
CYCLES = {
    "hour": (lambda t: t.hour, 24),
    "day_of_week": (lambda t: t.dayofweek, 7),
    "day_of_month": (lambda t: t.day - 1, 31),
    "month": (lambda t: t.month - 1, 12),
    "day_of_year": (lambda t: t.dayofyear - 1, 366),
}


def calendar_names(fields: list[str]) -> list[str]:
    return [f"{f}_{part}" for f in fields for part in ("sin", "cos")]


def calendar_columns(times, fields: list[str]) -> np.ndarray:
    """[len(times), 2 * len(fields)]: each field's sin and cos around its cycle."""
    times, columns = pd.DatetimeIndex(times), []
    for name in fields:
        get, period = CYCLES[name]
        angle = 2 * np.pi * np.asarray(get(times), np.float64) / period
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1) if columns else np.empty((len(times), 0))


def _static_values(frame, values: np.ndarray, bounds, names: list[str], path: Path, ids):
    """[series, static]: each series' one value per static column (a second value is refused)."""
    for j, name in enumerate(names):
        for (a, b), sid in zip(bounds, ids, strict=True):
            column = values[a:b, j]
            if (column != column[0]).any():
                i = a + int(np.flatnonzero(column != column[0])[0])
                raise DataError(
                    f"{path}: column {name!r} {_file_row(path, frame, i)}: static, but series "
                    f"{sid!r} has a second value ({column[0]:g}, then {values[i, j]:g})"
                )
    return values[[a for a, _ in bounds]]


def _forecast_series(frame, values: np.ndarray, ids, bounds, cfg: TableData, path: Path) -> Series:
    times = [frame[cfg.time_column].iloc[a:b] for a, b in bounds]
    names = [ids[a] for a, _ in bounds]
    freq = series_freq(times, names, path, cfg.time_column, cfg.freq)
    if cfg.calendar and freq is None:
        raise DataError(
            f"{path}: data.calendar needs dates at one frequency in column {cfg.time_column!r} "
            "(set data.freq)"
        )
    nf, nu = len(cfg.features), len(cfg.future)
    future = None
    if cfg.future or cfg.calendar:
        future = [
            np.concatenate([values[a:b, nf : nf + nu], calendar_columns(t, cfg.calendar)], 1)
            for (a, b), t in zip(bounds, times, strict=True)
        ]
    static = None
    if cfg.static:
        static = _static_values(frame, values[:, nf + nu :], bounds, cfg.static, path, names)
    return Series(
        [values[a:b, :nf] for a, b in bounds], names, cfg.features, freq, future,
        [*cfg.future, *calendar_names(cfg.calendar)], static, list(cfg.static), list(cfg.calendar),
        _starts([t.iloc[0] for t in times], freq),
    )  # fmt: skip


def _no_space_twins(frame: pd.DataFrame, col: str, path: Path) -> None:
    """Ids and labels are the text held, but two that differ only by spaces at their ends are
    one typed twice: `up` and `up ` made a third class, `a` and `a ` split a series in two."""
    seen: dict[str, str] = {}
    for value in pd.unique(frame[col]):
        if not isinstance(value, str):
            continue
        twin = seen.setdefault(value.strip(), value)
        if twin != value:
            i = int(np.flatnonzero((frame[col] == value).to_numpy())[0])
            raise DataError(
                f"{path}: column {col!r} {_file_row(path, frame, i)}: {value!r} and {twin!r} "
                "differ only by spaces at their ends; make them one"
            )


def _starts(firsts: list, freq: str | None) -> list[int] | None:
    """Each series' first date as steps of `freq` after the earliest; None without dates."""
    if not freq:
        return None
    grid = pd.date_range(min(firsts), max(firsts), freq=to_offset(freq))
    return grid.get_indexer(firsts).tolist()


def load_table(cfg: TableData) -> Labelled | Series:
    path = Path(cfg.path)
    extra = [cfg.label] if cfg.task == "classification" else []
    numeric = [*cfg.features, *cfg.future, *cfg.static]
    frame, values = read_series_table(
        path, cfg.source, cfg.id_column, cfg.time_column, numeric, extra,
        text=[cfg.split_column], freq=cfg.freq,
    )  # fmt: skip
    ids = frame[cfg.id_column].astype(str).to_numpy()
    bounds = series_bounds(ids)
    if cfg.task == "forecast":
        return _forecast_series(frame, values, ids, bounds, cfg, path)

    per_series = {col: frame[col].astype(str).to_numpy() for col in (cfg.label, cfg.split_column)
                  if col in frame.columns}  # fmt: skip
    for col, column in per_series.items():
        for a, b in bounds:
            if (column[a:b] != column[a]).any():
                i = a + int(np.flatnonzero(column[a:b] != column[a])[0])
                raise DataError(
                    f"{path}: {_file_row(path, frame, i)}: series {ids[a]!r} has more than one "
                    f"{col!r} value ({column[a]!r}, {column[i]!r})"
                )
    split = per_series.get(cfg.split_column)
    if split is not None:
        bad = ~np.isin(split, SPLIT_NAMES)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: column {cfg.split_column!r} {_file_row(path, frame, i)}: "
                f"{split[i]!r} is not one of {', '.join(SPLIT_NAMES)}"
            )
    x = []
    for a, b in bounds:
        if cfg.window and b - a < cfg.window:
            raise DataError(
                f"{path}: series {ids[a]!r} has {b - a} time steps, shorter than window "
                f"({cfg.window})"
            )
        x.append(values[b - cfg.window : b] if cfg.window else values[a:b])
    firsts = [a for a, _ in bounds]
    labels = per_series[cfg.label]
    return Labelled(
        x,
        labels[firsts],
        [ids[a] for a in firsts],
        cfg.features,
        None if split is None else split[firsts],
        variable_length=not cfg.window,  # each series whole: the model takes any length
    )


def _moving_sequences(digits: np.ndarray, n: int, cfg, rng: np.random.Generator) -> np.ndarray:
    """n sequences [n, frames, 1, size, size] uint8: 1..max_digits digits bouncing off walls."""
    frames, size, d = cfg.input_frames + cfg.output_frames, cfg.frame_size, cfg.digit_size
    out = np.zeros((n, frames, 1, size, size), dtype=np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, cfg.max_digits + 1)):
            image = digits[rng.integers(len(digits))]
            pos = rng.uniform(0, size - d, 2)
            angle = rng.uniform(0, 2 * np.pi)
            vel = rng.uniform(1.0, 2.0) * np.array([np.cos(angle), np.sin(angle)])
            for t in range(frames):
                r, c = np.round(pos).astype(int)
                view = out[i, t, 0, r : r + d, c : c + d]
                np.maximum(view, image, out=view)  # overlapping digits: brighter pixel wins
                pos += vel
                for axis in (0, 1):  # bounce
                    if not 0 <= pos[axis] <= size - d:
                        vel[axis] = -vel[axis]
                        pos[axis] = np.clip(pos[axis], 0, size - d)
    return out


def load_moving_digits(cfg) -> dict[str, np.ndarray]:
    """Seeded Moving-MNIST-like splits, each drawing its digits from its own disjoint pool."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # [1797, 8, 8], values 0..16
    scale = cfg.digit_size // 8
    images = np.kron(images, np.ones((scale, scale))) * (255 / 16)
    images = images.round().astype(np.uint8)
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    a, b = int(0.7 * len(images)), int(0.8 * len(images))
    pools = {"train": images[order[:a]], "val": images[order[a:b]], "test": images[order[b:]]}
    sizes = {"train": cfg.train_size, "val": cfg.val_size, "test": cfg.test_size}
    # one generator per split: the validation and test sequences do not change with train_size
    return {
        split: _moving_sequences(
            pools[split], sizes[split], cfg, np.random.default_rng([cfg.seed, i])
        )
        for i, split in enumerate(("train", "val", "test"))
    }


def file_source(path: Path) -> str:
    """How predict reads a file: Parquet (by its magic bytes, whatever its name, or a folder of
    Parquet files), else CSV."""
    if path.is_dir():
        return "parquet"
    with suppress(OSError), open(path, "rb") as f:
        return "parquet" if f.read(4) == b"PAR1" else "csv"
    return "csv"


def last_windows(path: Path, meta, id_column: str, time_column: str):
    """Each series' last `meta.window` steps of a long-format file as [n, window, features]
    (a model of variable-length series: each series whole, in a list), with the series ids
    and each series' time column (what predict feeds a model and dates its forecasts by)."""
    source = file_source(path)
    frame, values = read_series_table(
        path, source, id_column, time_column, meta.features, freq=meta.freq
    )
    ids = frame[id_column].astype(str).to_numpy()
    window, bounds, x = meta.window, series_bounds(ids), []
    keys = [ids[a] for a, _ in bounds], [frame[time_column].iloc[a:b] for a, b in bounds]
    for a, b in bounds:
        if b - a < (2 if meta.variable_length else window):
            need = (
                "at least 2 (as in training)" if meta.variable_length else f"its window of {window}"
            )
            raise DataError(
                f"{path}: series {ids[a]!r} has {b - a} time step(s); the model needs {need}"
            )
        x.append(values[a:b] if meta.variable_length else values[b - window : b])
    if meta.variable_length:
        return x, *keys
    if meta.transform == "log":
        _positive_or_raise(path, frame, values, [(b - window, b) for _, b in bounds], meta.features)
    return np.stack(x), *keys


def _positive_or_raise(path: Path, frame: pd.DataFrame, values: np.ndarray, spans, names):
    """A log-transforming model: the first cell <= 0 among the rows [a, b) it reads, named."""
    for a, b in spans:
        bad = np.argwhere(values[a:b, : len(names)] <= 0)
        if len(bad):
            i, j = a + int(bad[0][0]), int(bad[0][1])
            raise DataError(
                f"{path}: column {names[j]!r} {_file_row(path, frame, i)}: {values[i, j]:g}; "
                "the model log-transforms its inputs, so each value it reads must be > 0"
            )


def _continues(times: pd.Series, w: int, sid: str, path: Path, column: str, freq: str | None):
    """The horizon rows after a window of `w` observed ones must be the next steps: at the
    model's freq, or without one, at the window's own step where that is constant (the
    forecasts are dated by it, and a future covariate read a step off would go unnoticed)."""
    if freq:
        series_freq([times], [sid], path, column, freq, "the model's freq")
        return
    steps = np.diff(times.to_numpy())
    if w < 2 or (steps[: w - 1] != steps[0]).any():
        return
    off = np.flatnonzero(steps != steps[0])
    if off.size:
        i = int(off[0]) + 1
        raise DataError(
            f"{path}: {_file_row(path, times, i)}: series {sid!r}: {times.iloc[i]} follows "
            f"{times.iloc[i - 1]}; the series' window steps by {times.iloc[1] - times.iloc[0]}, "
            "and the rows after its last observed one must continue it"
        )


def covariate_windows(path: Path, meta, id_column: str, time_column: str):
    """What predict feeds a forecaster with covariates, raw: x [n, window, features + future]
    (the future covariates' past values last), the future covariates over the horizon [n,
    horizon, future], the static ones [n, static], the series ids and each one's observed times.
    A model with future columns of the user's reads them from `horizon` rows after each series'
    last observed one (its features left empty); calendar fields come from the dates."""
    source = file_source(path)
    calendar = calendar_names(meta.calendar)
    user = meta.future[: len(meta.future) - len(calendar)]
    nf, nu, h, w = len(meta.features), len(user), meta.horizon, meta.window
    frame, values = read_series_table(
        path, source, id_column, time_column, [*meta.features, *user, *meta.static],
        empty_ok=meta.features if user else (), freq=meta.freq,
    )  # fmt: skip
    ids = frame[id_column].astype(str).to_numpy()
    bounds = series_bounds(ids)
    names = [ids[a] for a, _ in bounds]
    static = _static_values(frame, values[:, nf + nu :], bounds, meta.static, path, names)
    times = frame[time_column]
    if meta.calendar and not pd.api.types.is_datetime64_any_dtype(times):
        raise DataError(
            f"{path}: column {time_column!r}: the model's calendar covariates need dates"
        )
    x, future, observed, spans = [], [], [], []
    for (a, b), sid in zip(bounds, names, strict=True):
        empty = np.isnan(values[a:b, :nf])
        full = np.flatnonzero(~empty.all(axis=1))
        ahead = (b - a - 1 - int(full[-1]) if full.size else b - a) if user else 0
        if user and ahead != h:
            raise DataError(
                f"{path}: series {sid!r} ends with {ahead} rows without {', '.join(meta.features)}"
                f"; the model forecasts {h} steps and reads {', '.join(user)} on each: give "
                f"{h} rows after the last observed one"
            )
        end = b - ahead
        if empty[: end - a].any():
            i = a + int(np.flatnonzero(empty[: end - a].any(axis=1))[0])
            column = meta.features[int(np.flatnonzero(empty[i - a])[0])]
            raise _empty_cell(path, frame, i, column)
        if end - a < w:
            raise DataError(
                f"{path}: series {sid!r} has {end - a} observed steps; the model needs its "
                f"window of {w}"
            )
        observed.append(times.iloc[a:end])
        spans.append((end - w, end))
        if not meta.future:
            x.append(values[end - w : end, :nf])
            continue
        if user:  # the horizon rows' own dates, which must continue the series' steps
            dates = times.iloc[end - w : b]
            _continues(dates, w, sid, path, time_column, meta.freq)
        else:
            dates = pd.date_range(times.iloc[end - w], periods=w + h, freq=to_offset(meta.freq))
        span = np.concatenate(
            [values[end - w : b, nf : nf + nu] if user else np.empty((w + h, 0)),
             calendar_columns(dates, meta.calendar)], axis=1,
        )  # fmt: skip
        x.append(np.concatenate([values[end - w : end, :nf], span[:w]], axis=1))
        future.append(span[w:])
    if meta.transform == "log":
        _positive_or_raise(path, frame, values, spans, meta.features)
    extra = {}
    if meta.future:
        extra["future"] = np.stack(future)
    if meta.static:
        extra["static"] = static
    return np.stack(x), extra, names, observed
