import numpy as np

from pipeline.data.windows import (
    WindowStarts,
    auto_window,
    min_length,
    split_ranges,
    window_view,
)


def test_window_view_is_zero_copy():
    series = np.arange(30, dtype=np.float32).reshape(15, 2)
    views = window_view(series, window=4, horizon=2)
    assert views.shape == (10, 6, 2)
    assert np.shares_memory(views, series)
    np.testing.assert_array_equal(views[3], series[3:9])


def test_splits_are_time_ordered_and_targets_do_not_leak():
    length, window, horizon, val, test = 144, 36, 12, 24, 24
    ranges = split_ranges(length, window, horizon, val, test)
    starts = {s: np.arange(first, first + count) for s, (first, count) in ranges.items()}
    target = {s: (st + window, st + window + horizon) for s, st in starts.items()}
    assert target["train"][1].max() <= length - val - test  # train targets before val
    assert target["val"][0].min() >= length - val - test
    assert target["val"][1].max() <= length - test
    assert target["test"][0].min() >= length - test
    assert target["test"][1].max() == length
    assert [len(starts[s]) for s in ("train", "val", "test")] == [49, 13, 13]
    assert min_length(window, horizon, val, test) == 96


def test_an_unset_window_is_two_horizons_or_three_seasons_within_the_shortest_series():
    assert auto_window(horizon=12, season=12, room=84) == 36  # airline, monthly: three years
    assert auto_window(horizon=24, season=24, room=2000) == 72  # hourly: three days
    assert auto_window(horizon=24, season=48, room=192) == 96  # half-hourly, 6 days: half
    assert auto_window(horizon=10, season=None, room=74) == 20  # lynx: two horizons
    assert auto_window(horizon=6, season=None, room=12) == 6  # a short series: half its room
    assert auto_window(horizon=6, season=None, room=1) == 1
    assert auto_window(horizon=6, season=None, room=12, least=24) == 24  # season_norm: 12


def test_window_starts_map_indices_through_per_series_ranges():
    ranges = np.array([[0, 3], [10, 2], [20, 4]])  # three series' windows
    starts = WindowStarts(ranges)
    expected = [0, 1, 2, 10, 11, 20, 21, 22, 23]
    assert len(starts) == 9
    np.testing.assert_array_equal(starts.all(), expected)
    np.testing.assert_array_equal(starts[np.array([8, 0, 4, 5])], [23, 0, 11, 20])
    assert starts[3] == 10 and len(WindowStarts(np.zeros((0, 2)))) == 0
