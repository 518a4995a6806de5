import numpy as np

from pipeline.data.windows import min_length, split_starts, window_view


def test_window_view_is_zero_copy():
    series = np.arange(30, dtype=np.float32).reshape(15, 2)
    views = window_view(series, window=4, horizon=2)
    assert views.shape == (10, 6, 2)
    assert np.shares_memory(views, series)
    np.testing.assert_array_equal(views[3], series[3:9])


def test_splits_are_time_ordered_and_targets_do_not_leak():
    length, window, horizon, val, test = 144, 36, 12, 24, 24
    starts = split_starts(length, window, horizon, val, test)
    target = {s: (st + window, st + window + horizon) for s, st in starts.items()}
    assert target["train"][1].max() <= length - val - test  # train targets before val
    assert target["val"][0].min() >= length - val - test
    assert target["val"][1].max() <= length - test
    assert target["test"][0].min() >= length - test
    assert target["test"][1].max() == length
    assert [len(starts[s]) for s in ("train", "val", "test")] == [49, 13, 13]
    assert min_length(window, horizon, val, test) == 96
