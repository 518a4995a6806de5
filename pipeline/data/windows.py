"""Forecasting windows as zero-copy strided views over one concatenated series array, and
their start offsets stored as one (first, count) range per series and split."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window_view(series: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """[time, features] -> read-only view [n_windows, window + horizon, features], no copy."""
    return sliding_window_view(series, window + horizon, axis=0).transpose(0, 2, 1)


def split_ranges(
    length: int, window: int, horizon: int, val_size: int, test_size: int
) -> dict[str, tuple[int, int]]:
    """(first window start, number of windows) per split for one series, time-ordered with no
    leakage.

    A window's target (its last `horizon` steps) lies entirely inside its split: test targets in
    the last `test_size` steps, val targets in the `val_size` steps before them, train targets
    before that. Inputs may reach back into earlier splits (they are past observations).
    """
    span = window + horizon
    val_end = length - test_size
    train_end = val_end - val_size
    bounds = {
        "train": (0, train_end - span + 1),
        "val": (max(train_end - window, 0), val_end - span + 1),
        "test": (max(val_end - window, 0), length - span + 1),
    }
    return {split: (lo, max(hi - lo, 0)) for split, (lo, hi) in bounds.items()}


class WindowStarts:
    """Window start offsets from ranges [n, 2] of (first, count): 16 bytes per series where one
    offset per window took as many bytes as the series itself (benchmarks/data.py)."""

    def __init__(self, ranges: np.ndarray):
        ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
        self.first, counts = ranges[:, 0], ranges[:, 1]
        self.ends = np.cumsum(counts)  # window index where each range ends
        self.begins = self.ends - counts

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    def __getitem__(self, index):
        """The start offset of window `index` (an int or an array of them)."""
        r = np.searchsorted(self.ends, index, side="right")
        return self.first[r] + (index - self.begins[r])

    def all(self) -> np.ndarray:
        return self[np.arange(len(self))]


def min_length(window: int, horizon: int, val_size: int, test_size: int) -> int:
    """Shortest series that still gives one train window."""
    return window + horizon + val_size + test_size


def auto_window(horizon: int, season: int | None, room: int, least: int = 1) -> int:
    """A forecaster's window where `data.window` is not set: two horizons (the shortest
    lookback N-BEATS ensembles over, Oreshkin et al. 2020) or three seasons (season_norm's
    profile from three periods: the airline recipe's 36 months, better than 24 on airline and
    seatbelts), whichever is longer; at most half of `room`, the longest window that leaves
    the shortest series one train window (so half its train targets' starts remain); never
    under `least`."""
    return max(min(max(2 * horizon, 3 * (season or 0)), room // 2), least)
