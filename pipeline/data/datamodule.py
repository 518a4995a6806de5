"""Reading prepare's output: datasets over the saved arrays and a LightningDataModule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from pipeline.data.windows import window_view
from pipeline.io import read_json


@dataclass(frozen=True)
class Prepared:
    """The arrays of one prepared experiment; forecast windows stay views until indexed."""

    meta: dict
    root: Path

    @classmethod
    def load(cls, root: str | Path) -> Prepared:
        root = Path(root)
        return cls(read_json(root / "meta.json"), root)

    @property
    def task(self) -> str:
        return self.meta["task"]

    def dataset(self, split: str) -> Dataset:
        if self.task == "classification":
            return ArrayDataset(self._npy(f"x_{split}"), self._npy(f"y_{split}"))
        if self.task == "frames":
            return FramesDataset(self._npy(f"frames_{split}"), self.meta["window"])
        return WindowDataset(
            self._npy("series", mmap=True),
            self._npy(f"starts_{split}"),
            self.meta["window"],
            self.meta["horizon"],
            self.meta["target_index"],
        )

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as (inputs, targets) arrays, for evaluation."""
        ds = self.dataset(split)
        return ds.x, ds.y

    def _npy(self, name: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.root / f"{name}.npy", mmap_mode="r" if mmap else None)


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

    @property
    def x(self) -> np.ndarray:
        return self.frames[:, : self.window].astype(np.float32) / 255.0

    @property
    def y(self) -> np.ndarray:
        return self.frames[:, self.window :].astype(np.float32) / 255.0


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

    @property
    def x(self) -> np.ndarray:
        return np.asarray(self.views[self.starts, : self.window])

    @property
    def y(self) -> np.ndarray:
        return np.asarray(self.views[self.starts, self.window :][..., self.target_index])


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


class PreparedDataModule(pl.LightningDataModule):
    def __init__(
        self,
        prepared: Prepared,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        train_splits: tuple[str, ...] = ("train",),
    ):
        super().__init__()
        self.prepared, self.batch_size, self.num_workers, self.seed = (
            prepared,
            batch_size,
            num_workers,
            seed,
        )
        self.train_splits = train_splits  # ("train", "val") for a refit

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return make_loader(
            self.prepared.dataset(split), self.batch_size, shuffle, self.num_workers, self.seed
        )

    def train_dataloader(self) -> DataLoader:
        splits = [self.prepared.dataset(s) for s in self.train_splits]
        dataset = splits[0] if len(splits) == 1 else ConcatDataset(splits)
        return make_loader(dataset, self.batch_size, True, self.num_workers, self.seed)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
