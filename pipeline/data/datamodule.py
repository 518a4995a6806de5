"""Reading prepare's output: datasets over the saved arrays and a LightningDataModule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

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
    """Sample i = (series[s : s+window], series[s+window : s+window+horizon, targets])."""

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

    @property
    def x(self) -> np.ndarray:
        return np.asarray(self.views[self.starts, : self.window])

    @property
    def y(self) -> np.ndarray:
        return np.asarray(self.views[self.starts, self.window :][..., self.target_index])


class PreparedDataModule(pl.LightningDataModule):
    def __init__(self, prepared: Prepared, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.prepared, self.batch_size, self.num_workers, self.seed = (
            prepared,
            batch_size,
            num_workers,
            seed,
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.prepared.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
