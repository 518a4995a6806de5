"""What a task is: everything that differs between classification, forecasting and frames.

A task object gives the model its output shape, the LightningModule its loss and torchmetrics,
validate its numpy metrics, baseline and plots, the gates its metric directions, and predict
its input reader and output table. Importing a task loads neither torch nor sklearn: the torch
parts import it when called (predict runs where torch is not installed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from pipeline.data.sources import last_windows
from pipeline.errors import DataError
from pipeline.io import atomic_file
from pipeline.meta import DataMeta


def table(columns: list[tuple[str, Any]]) -> pd.DataFrame:
    """Predict's output table from (name, values) pairs, each name once: an input column named
    as one predict adds (its id or time column, a target) would have been overwritten."""
    names = [name for name, _ in columns]
    if twice := next((name for name in names if names.count(name) > 1), None):
        raise DataError(
            f"column {twice!r}: the predictions would hold two columns of that name (an input "
            "column named as one predict writes: step, label, prob_<class>, <target>_lo80, ...); "
            "rename the input's column (or pass --id-column / --time-column)"
        )
    return pd.DataFrame(dict(columns))


class Task:
    name: ClassVar[str]
    # Every metric evaluate() reports -> whether higher is better (gates, release, int8 bound).
    directions: ClassVar[dict[str, bool]]
    headline: ClassVar[str]  # the one metric a quality bound (int8) applies to
    # what predict writes, by the output's suffix (a name without one: the first)
    output_formats: ClassVar[tuple[str, ...]] = (".csv", ".parquet")

    def output_shape(self, meta: DataMeta) -> tuple[int, ...]:
        raise NotImplementedError

    def model_kwargs(self, meta: DataMeta) -> dict[str, Any]:
        """What the model needs beyond input size and output shape."""
        return {}

    # -- training (torch) --
    def loss(self, out, y):
        import torch.nn.functional as F

        return F.mse_loss(out, y)

    def torchmetrics(self, meta: DataMeta) -> dict:
        raise NotImplementedError

    # torchmetrics left out on training batches (validation and test keep them)
    not_in_training: ClassVar[tuple[str, ...]] = ()

    def buffers(self, meta: DataMeta) -> dict:
        """Tensors the module keeps (not saved) for metric_inputs."""
        return {}

    def metric_inputs(self, module, out, y) -> tuple:
        """(preds, target) as the torchmetrics take them."""
        return out, y

    # -- evaluation (numpy) --
    def evaluate(self, out: np.ndarray, x: np.ndarray, y: np.ndarray, meta: DataMeta):
        """(report: flat metrics, plot data: what `plot` draws)."""
        raise NotImplementedError

    def plot(self, data: dict, out: Path) -> None:
        raise NotImplementedError

    def calibrate(self, outputs, meta: DataMeta) -> dict:
        """DataMeta updates learnt from the model on the validation split (export); `outputs()`
        gives (the model's outputs, the truth, the inputs)."""
        return {}

    def classical_report(self, prepared, y: np.ndarray, meta: DataMeta) -> dict[str, float]:
        """Metrics of the classical model fitted on the train part (validate.classical)."""
        return {}

    def baseline_gates(self, report: dict) -> list[tuple[str, str]]:
        """(metric, the baseline's metric it must beat) pairs for validate.beat_baseline."""
        return []

    # -- predict (numpy) --
    def read_inputs(self, path: Path, output: Path, meta: DataMeta, id_column, time_column):
        """(raw inputs [n, window, ...], one key per input, the model's other inputs by name)
        from the user's file."""
        x, ids, _ = last_windows(path, meta, id_column, time_column)
        return x, ids, {}

    def scale_inputs(self, x: np.ndarray, meta: DataMeta) -> np.ndarray:
        return meta.to_model_scale(x)

    def predictions(self, out: np.ndarray, x: np.ndarray, meta: DataMeta, keys, id_column: str):
        raise NotImplementedError

    def write(self, result, output: Path) -> None:
        with atomic_file(output, stream=True) as tmp:
            if output.suffix.lower() == ".parquet":
                result.to_parquet(tmp, index=False)
            else:
                result.to_csv(tmp, index=False)
