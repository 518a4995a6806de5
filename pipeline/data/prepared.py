"""Reading prepare's output (numpy only): meta.json and each split as (inputs, targets).

The storage layout follows from the task: a classifier's `x_{split}`/`y_{split}` arrays,
`frames_{split}` sequences split at the window, or a forecaster's `series` plus `windows_{split}`
ranges of window offsets (forecast windows stay strided views until indexed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data.windows import WindowStarts, window_view
from pipeline.errors import DataError
from pipeline.meta import PreparedMeta

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Prepared:
    meta: PreparedMeta
    root: Path

    @classmethod
    def load(cls, root: str | Path) -> Prepared:
        root = Path(root)
        return cls(PreparedMeta.load(root / "meta.json"), root)

    @property
    def layout(self) -> str:
        """Which files prepare wrote, by task: `arrays`, `frames` or `windows` (a forecaster's
        missing series.npy was named as x_val.npy, a classifier's file)."""
        return {"forecast": "windows", "frames": "frames"}.get(self.meta.task, "arrays")

    def npy(self, name: str, mmap: bool = False) -> np.ndarray:
        path = self.root / f"{name}.npy"
        try:
            return np.load(path, mmap_mode="r" if mmap else None)
        except FileNotFoundError:  # e.g. a folder from an older prepare: starts_*, not windows_*
            raise DataError(f"{path}: not found; run the prepare stage") from None
        except (ValueError, OSError, EOFError) as err:  # truncated or not .npy
            raise DataError(f"{path}: unreadable ({err}); run the prepare stage again") from None

    def lengths(self, split: str) -> np.ndarray | None:
        """Each series' length in a split of padded series (None: all are whole)."""
        return self.npy(f"lengths_{split}") if self.meta.variable_length else None

    def window_starts(self, split: str) -> WindowStarts:
        return WindowStarts(self.npy(f"windows_{split}"))

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The whole split as (inputs, targets) arrays, for evaluation."""
        if self.layout == "arrays":
            return self.npy(f"x_{split}"), self.npy(f"y_{split}")
        if self.layout == "frames":
            return frames_xy(self.npy(f"frames_{split}"), self.meta.window)
        views = window_view(self.npy("series", mmap=True), self.meta.window, self.meta.horizon)
        starts, w = self.window_starts(split).all(), self.meta.window
        x, y = (
            np.asarray(views[starts, :w]),
            np.asarray(views[starts, w:][..., self.meta.target_index]),
        )
        if self.meta.future:  # the future covariates' past values: x's last columns
            x = np.concatenate([x, np.asarray(self._future_views()[starts, :w])], axis=-1)
        return x, y

    def extra_inputs(self, split: str) -> dict[str, np.ndarray]:
        """The model's inputs after x for a split (DataMeta.extra_inputs): a padded split's
        `lengths`, or a forecaster's covariates over the horizon (`future`) and `static`."""
        if self.meta.variable_length:
            return {"lengths": self.lengths(split)}
        if not self.meta.extra_inputs:
            return {}
        starts, extra = self.window_starts(split).all(), {}
        if self.meta.future:
            extra["future"] = np.asarray(self._future_views()[starts, self.meta.window :])
        if self.meta.static:
            extra["static"] = np.asarray(self.npy("static", mmap=True)[starts])
        return extra

    def _future_views(self) -> np.ndarray:
        return window_view(self.npy("future", mmap=True), self.meta.window, self.meta.horizon)


def frames_xy(frames: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 sequences -> (first `window` frames, the rest), float32 in [0, 1]."""
    return (
        frames[:, :window].astype(np.float32) / 255.0,
        frames[:, window:].astype(np.float32) / 255.0,
    )
