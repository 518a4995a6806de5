"""Forecasting windows as zero-copy strided views over one concatenated series array."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def window_view(series: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """[time, features] -> read-only view [n_windows, window + horizon, features], no copy."""
    return sliding_window_view(series, window + horizon, axis=0).transpose(0, 2, 1)


def split_starts(
    length: int, window: int, horizon: int, val_size: int, test_size: int, dtype=np.int64
) -> dict[str, np.ndarray]:
    """Window start offsets per split for one series, time-ordered with no leakage.

    A window's target (its last `horizon` steps) lies entirely inside its split: test targets in
    the last `test_size` steps, val targets in the `val_size` steps before them, train targets
    before that. Inputs may reach back into earlier splits (they are past observations).
    """
    span = window + horizon
    val_end = length - test_size
    train_end = val_end - val_size
    return {
        "train": np.arange(0, train_end - span + 1, dtype=dtype),
        "val": np.arange(max(train_end - window, 0), val_end - span + 1, dtype=dtype),
        "test": np.arange(max(val_end - window, 0), length - span + 1, dtype=dtype),
    }


def min_length(window: int, horizon: int, val_size: int, test_size: int) -> int:
    """Shortest series that still gives one train window."""
    return window + horizon + val_size + test_size
