"""The LightningDataModule over prepare's output."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler

from pipeline.data.datasets import dataset, make_loader
from pipeline.data.prepared import Prepared


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
        self.prepared, self.batch_size = prepared, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.train_splits = train_splits  # ("train", "val") for a refit
        self.shuffle: torch.Generator | None = None  # the train loader's
        self.restored_shuffle: torch.Tensor | None = None  # from a checkpoint (resume)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return make_loader(
            dataset(self.prepared, split), self.batch_size, shuffle, self.num_workers, self.seed
        )

    def train_dataloader(self) -> DataLoader:
        splits = [dataset(self.prepared, s) for s in self.train_splits]
        data = splits[0] if len(splits) == 1 else ConcatDataset(splits)
        loader = make_loader(data, self.batch_size, True, self.num_workers, self.seed)
        self.shuffle = loader.generator
        if self.restored_shuffle is not None:  # before any epoch's iterator draws from it
            self.shuffle.set_state(self.restored_shuffle)
        return loader

    # In Lightning checkpoints: a resumed fit shuffles its next epochs as an unstopped one.
    def state_dict(self) -> dict:
        return {} if self.shuffle is None else {"shuffle": self.shuffle.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.restored_shuffle = state.get("shuffle")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        # Every DDP rank tests on the whole split: Lightning leaves a DistributedSampler alone,
        # and this one (one replica) neither shards nor pads with duplicates. The synced
        # metrics then count each series world_size times: the same ratios as one process.
        data = dataset(self.prepared, "test")
        whole = DistributedSampler(data, num_replicas=1, rank=0, shuffle=False)
        return make_loader(data, self.batch_size, False, self.num_workers, sampler=whole)
