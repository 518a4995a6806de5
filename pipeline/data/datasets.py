"""torch Datasets and loaders over prepare's arrays (see prepared.py for the layouts)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.data.prepared import Prepared
from pipeline.data.windows import window_view


def dataset(prepared: Prepared, split: str) -> Dataset:
    meta = prepared.meta
    if prepared.layout == "arrays":
        return ArrayDataset(*prepared.arrays(split))
    if prepared.layout == "frames":
        return FramesDataset(prepared.npy(f"frames_{split}"), meta.window)
    return WindowDataset(
        prepared.npy("series", mmap=True),
        prepared.npy(f"starts_{split}"),
        meta.window,
        meta.horizon,
        meta.target_index,
    )


class ArrayDataset(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.x[i]), torch.as_tensor(self.y[i])


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
    """Sample i = (series[s : s+window], series[s+window : s+window+horizon, targets]).

    The DataLoader fetches a whole batch at once (`__getitems__`: one fancy index into the
    strided view, one copy) and `pass_batch` skips collation, instead of one Python call and
    one small tensor per window: ~10x the samples/s on 10M windows (benchmarks/data.py).
    """

    def __init__(self, series, starts, window: int, horizon: int, target_index: list[int]):
        self.views = window_view(series, window, horizon)
        self.starts, self.window, self.target_index = starts, window, np.asarray(target_index)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        w = self.views[self.starts[i]]
        x = np.array(w[: self.window])  # copies one window only
        y = np.array(w[self.window :, self.target_index])
        return torch.from_numpy(x), torch.from_numpy(y)

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.views[self.starts[np.asarray(indices)]]  # [batch, window + horizon, features]
        x = np.ascontiguousarray(w[:, : self.window])
        y = np.ascontiguousarray(w[:, self.window :, self.target_index])
        return torch.from_numpy(x), torch.from_numpy(y)


def pass_batch(batch):
    """collate_fn for datasets whose __getitems__ already returns the batch."""
    return batch


class Shuffled(Sampler[int]):
    """RandomSampler's order without its `randperm(n).tolist()`, a list of n Python ints
    (~36 bytes per sample: 360 MB for 10M windows); this walks an int32 permutation instead.
    RandomSampler draws a second permutation (sliced to nothing) at the end of every epoch; the
    same draw here keeps the generator, and so every later epoch's order, identical to it."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        # int32 halves the permutation's memory; randperm gives the same order for both dtypes
        dtype = torch.int32 if self.n < 2**31 else torch.int64
        order = torch.randperm(self.n, generator=self.generator, dtype=dtype).numpy()
        yield from order
        del order
        torch.randperm(self.n, generator=self.generator, dtype=dtype)


def make_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=Shuffled(len(dataset), generator) if shuffle else None,
        collate_fn=pass_batch if hasattr(dataset, "__getitems__") else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        generator=generator,
    )
