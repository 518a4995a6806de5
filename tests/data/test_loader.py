"""The training loader's batched window fetch and light shuffle give the same batches as the
per-sample path with torch's RandomSampler (so trained models do not change); beyond a size, the
shuffle works block-wise."""

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.data.datasets import Shuffled, WindowDataset, make_loader
from pipeline.data.windows import WindowStarts


class PerSample(Dataset):
    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_batched_windows_and_shuffle_match_random_sampler_over_epochs():
    series = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    ds = WindowDataset(series, WindowStarts([[3, 397]]), window=24, horizon=6, target_index=[1, 2])
    reference = DataLoader(
        PerSample(ds), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(7)
    )
    ours = make_loader(ds, 32, shuffle=True, seed=7)
    for _ in range(3):  # the generator advances identically from epoch to epoch
        batches = list(zip(reference, ours, strict=True))
        for (x_ref, y_ref), (x, y) in batches:
            assert x.shape == (len(x_ref), 24, 3) and y.shape == (len(x_ref), 6, 2)
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    x, y = next(iter(make_loader(ds, 4, shuffle=False)))
    np.testing.assert_array_equal(x[1].numpy(), series[4:28])
    np.testing.assert_array_equal(y[1].numpy(), series[28:34, 1:])


def test_block_shuffle_visits_every_sample_once_in_a_seeded_mixed_order():
    n = 10_000  # above `full`: the block path, with blocks of 64 and pools of 4 blocks
    epochs = [
        np.fromiter(Shuffled(n, torch.Generator().manual_seed(3), full=100, block=64, pool=4), int)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(epochs[0], epochs[1])  # the seed fixes the order
    assert sorted(epochs[0]) == list(range(n))
    first = epochs[0][:256]  # one pool: from 4 blocks, not in order
    assert len(np.unique(first // 64)) == 4 and (np.diff(first) < 0).any()
