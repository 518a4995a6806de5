"""torch Datasets and loaders over prepare's arrays (see prepared.py for the layouts)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.data.prepared import Prepared
from pipeline.data.windows import WindowStarts, window_view


def dataset(prepared: Prepared, split: str) -> Dataset:
    meta = prepared.meta
    if prepared.layout == "arrays":
        return ArrayDataset(*prepared.arrays(split), prepared.lengths(split))
    if prepared.layout == "frames":
        return FramesDataset(prepared.npy(f"frames_{split}"), meta.window)
    return WindowDataset(
        prepared.npy("series", mmap=True),
        prepared.window_starts(split),
        meta.window,
        meta.horizon,
        meta.target_index,
        prepared.npy("future", mmap=True) if meta.future else None,
        prepared.npy("static", mmap=True) if meta.static else None,
    )


class ArrayDataset(Dataset):
    """Sample i = (x[i], y[i]), or (x[i], y[i], length) for padded series."""

    def __init__(self, x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None = None):
        self.x, self.y, self.lengths = x, y, lengths

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        sample = torch.from_numpy(self.x[i]), torch.as_tensor(self.y[i])
        return sample if self.lengths is None else (*sample, torch.as_tensor(self.lengths[i]))


class FramesDataset(Dataset):
    """uint8 sequences; sample i = (first `window` frames, the rest), scaled to [0, 1]."""

    def __init__(self, frames: np.ndarray, window: int):
        self.frames, self.window = frames, window

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int):
        seq = torch.from_numpy(self.frames[i]).float().div_(255.0)
        return seq[: self.window], seq[self.window :]


class WindowDataset(Dataset):
    """Sample i = (series[s : s+window], series[s+window : s+window+horizon, targets]); with
    covariates (rows aligned with the series), x also holds the future covariates' window and
    the sample ends with their horizon (`future`) and the series' `static` values.

    The DataLoader fetches a whole batch at once (`__getitems__`: one fancy index into the
    strided view, one copy) and `pass_batch` skips collation, instead of one Python call and
    one small tensor per window: ~10x the samples/s on 10M windows (benchmarks/data.py).
    """

    def __init__(
        self, series, starts: WindowStarts, window: int, horizon: int, target_index: list[int],
        future: np.ndarray | None = None, static: np.ndarray | None = None,
    ):  # fmt: skip
        self.views = window_view(series, window, horizon)
        self.starts, self.window, self.target_index = starts, window, np.asarray(target_index)
        self.future = None if future is None else window_view(future, window, horizon)
        self.static = static

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        return tuple(t[0] for t in self.__getitems__([i]))

    def __getitems__(self, indices) -> tuple[torch.Tensor, ...]:
        starts = self.starts[np.asarray(indices)]
        w = self.views[starts]  # [batch, window + horizon, features]: one copy per batch
        x = np.ascontiguousarray(w[:, : self.window])
        y = np.ascontiguousarray(w[:, self.window :, self.target_index])
        extra = []
        if self.future is not None:
            f = self.future[starts]
            x = np.concatenate([x, f[:, : self.window]], axis=-1)
            extra.append(np.ascontiguousarray(f[:, self.window :]))
        if self.static is not None:
            extra.append(np.ascontiguousarray(self.static[starts]))
        return tuple(torch.from_numpy(a) for a in (x, y, *extra))


def pass_batch(batch):
    """collate_fn for datasets whose __getitems__ already returns the batch."""
    return batch


class Shuffled(Sampler[int]):
    """A shuffle that never holds one index per sample when there are many.

    Up to `full` samples: RandomSampler's order, from an int32 permutation rather than its
    `randperm(n).tolist()` (~36 bytes per sample). RandomSampler draws a second permutation
    (sliced to nothing) at the end of every epoch; the same draw here keeps the generator, and
    so every later epoch's order, identical to it.
    Beyond: a block shuffle. The samples are cut into blocks of `block` consecutive indices; the
    blocks are visited in random order, `pool` at a time, and each pool's samples are shuffled
    together: a batch mixes up to `pool` distant parts of the data, and the largest index array
    held is pool x block (128k indices, 1 MB), whatever n is (the permutation of 10M windows
    was 40 MB, as much as the series itself)."""

    def __init__(
        self, n: int, generator: torch.Generator, full: int = 1 << 20, block=1 << 11, pool=64
    ):
        self.n, self.generator = n, generator
        self.full, self.block, self.pool = full, block, pool

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.n <= self.full:
            order = torch.randperm(self.n, generator=self.generator, dtype=torch.int32).numpy()
            yield from order
            del order
            torch.randperm(self.n, generator=self.generator, dtype=torch.int32)
            return
        blocks = torch.randperm(-(-self.n // self.block), generator=self.generator).numpy()
        for i in range(0, len(blocks), self.pool):
            starts = blocks[i : i + self.pool] * self.block
            indices = np.concatenate([np.arange(s, min(s + self.block, self.n)) for s in starts])
            mix = torch.randperm(len(indices), generator=self.generator, dtype=torch.int32).numpy()
            yield from indices[mix]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    sampler: Sampler | None = None,
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=Shuffled(len(dataset), generator) if shuffle else sampler,
        collate_fn=pass_batch if hasattr(dataset, "__getitems__") else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
