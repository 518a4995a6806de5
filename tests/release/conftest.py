"""The ItalyPowerDemand test split as a user's CSV, shared by the release stories."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def ucr_csv(tmp_path_factory) -> tuple[str]:
    """The ItalyPowerDemand test split in the long format, and its labels beside it."""
    from sktime.datasets import load_UCR_UEA_dataset

    x, y = load_UCR_UEA_dataset("ItalyPowerDemand", split="test", return_type="numpy3D")
    n, _, t = x.shape
    ids = [f"s{i:04d}" for i in range(n)]
    path = tmp_path_factory.mktemp("ucr") / "test.csv"
    pd.DataFrame(
        {"series_id": np.repeat(ids, t), "time": np.tile(np.arange(t), n), "dim_0": x[:, 0].ravel()}
    ).to_csv(path, index=False)
    pd.Series(y, index=ids, name="label").to_csv(path.with_suffix(".labels.csv"))
    return (str(path),)


def accuracy(predictions: Path, ucr_csv: tuple[str]) -> float:
    truth = pd.read_csv(Path(ucr_csv[0]).with_suffix(".labels.csv"), index_col=0, dtype=str)
    pred = pd.read_csv(predictions, dtype={"label": str}).set_index("series_id")
    return float((pred.label == truth.label.reindex(pred.index)).mean())
