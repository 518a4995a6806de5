"""Classification data: a predefined split column, whole series of different lengths from the
CSV, variable-length UCR sets, and each bad input as one line naming the culprit."""

import numpy as np
import pandas as pd
import pytest

from pipeline.checkpoint import model_for
from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.data.prepare import prepare
from pipeline.data.prepared import Prepared
from tests.conftest import write_params

DATA = {"source": "csv", "path": "in.csv", "task": "classification", "features": ["v"],
        "label": "label"}  # fmt: skip


def _frame(lengths=(30, 12, 25, 8, 30, 17, 22, 9, 14, 28), split=None):
    rows = []
    for i, n in enumerate(lengths):
        for t in range(n):
            row = {"series_id": f"s{i}", "time": t, "v": np.sin(t / 3 + i), "label": "ab"[i % 2]}
            if split is not None:
                row["split"] = split[i]
            rows.append(row)
    return pd.DataFrame(rows)


def _prepare(workdir, data=DATA, **fit):
    cfg = parse_config({"experiments": {"mine": {"data": data, **({"fit": fit} if fit else {})}}})
    return Prepared.load(prepare(cfg, "mine"))


def test_whole_series_of_different_lengths_are_padded_with_their_lengths(workdir):
    _frame().to_csv("in.csv", index=False)
    p = _prepare(workdir, dict(DATA, val_fraction=0.25, test_fraction=0.25))
    assert p.meta.variable_length and p.meta.input_shape == [30, 1]
    for split in ("train", "val", "test"):
        x, _ = p.arrays(split)
        lengths = p.lengths(split)
        assert x.shape[1:] == (30, 1) and len(lengths) == len(x)
        for row, n in zip(x, lengths, strict=True):
            assert (row[n:] == 0).all() and n >= 8
    assert sorted(np.concatenate([p.lengths(s) for s in ("train", "val", "test")])) == sorted(
        (30, 12, 25, 8, 30, 17, 22, 9, 14, 28)
    )


def test_split_column_keeps_the_users_split(workdir):
    split = ["train", "train", "val", "val", "test", "test", "train", "train", "train", "train"]
    _frame(split=split).to_csv("in.csv", index=False)
    p = _prepare(workdir)
    assert p.meta.sizes == {"train": 6, "val": 2, "test": 2}
    test_lengths = sorted(p.lengths("test"))
    assert test_lengths == [17, 30]  # s4 and s5


def test_split_column_without_val_draws_val_from_train(workdir):
    split = ["test", "test"] + ["train"] * 8
    _frame(split=split).to_csv("in.csv", index=False)
    assert _prepare(workdir, dict(DATA, val_fraction=0.25)).meta.sizes == {
        "train": 6, "val": 2, "test": 2}  # fmt: skip


@pytest.mark.parametrize("gains, on", [((1, 3), False), ((1e-4, 1), True)])
def test_series_norm_auto_turns_on_where_amplitudes_are_orders_of_magnitude_apart(
    workdir, gains, on
):
    """prepare records how far apart the train split's series stds are (90th over 10th
    percentile); `series_norm: auto`, the recipe's, z-normalises each series only beyond 1,000:
    there one scaler leaves the small series near-constant."""
    frame = _frame(split=["test", "test"] + ["train"] * 8)
    frame["v"] *= np.where(frame["series_id"].str[1:].astype(int) % 4 < 2, *gains)
    frame.to_csv("in.csv", index=False)
    p = _prepare(workdir, dict(DATA, val_fraction=0.25))
    assert p.meta.std_spread == pytest.approx(gains[1] / gains[0], rel=0.3)
    cfg = {"name": "lstm", "hidden_size": 4, "series_norm": "auto"}
    assert model_for(cfg, p.meta.contract()).series_norm is on


def test_variable_length_ucr_set(workdir):
    p = _prepare(workdir, {"source": "ucr", "name": "JapaneseVowels"})
    assert p.meta.variable_length and p.meta.sizes["test"] == 370
    lengths = p.lengths("train")
    assert lengths.min() >= 7 and lengths.max() <= 29 and len(set(lengths)) > 10


BAD = {
    "split_value": (
        lambda f: f.assign(split=np.where(f.series_id == "s2", "holdout", "train")),
        DATA,
        "in.csv: column 'split' line 44: 'holdout' is not one of train, val, test",
    ),
    "split_empty": (  # NaN != NaN: it said 'more than one split value (nan, nan)'
        lambda f: f.assign(split=np.where(f.series_id == "s2", None, "train")),
        DATA,
        "in.csv: column 'split' line 44: empty cell",
    ),
    "class_only_in_test": (
        lambda f: f.assign(
            split=np.where(f.series_id.isin(["s8", "s9"]), "test", "train"),
            label=np.where(f.series_id == "s9", "c", f.label),
        ),
        DATA,
        "in.csv: column 'label': ['c'] occur only in the test split",
    ),
    "class_only_in_val": (  # the model got an output for a class it never trained on
        lambda f: f.assign(
            split=np.where(f.series_id.isin(["s8", "s9"]), "val", "train"),
            label=np.where(f.series_id == "s9", "c", f.label),
        ),
        DATA,
        "in.csv: column 'label': ['c'] occur only in the val split",
    ),
    "one_step_series": (
        lambda f: f[~((f.series_id == "s3") & (f.time > 0))],
        DATA,
        "in.csv: series 's3' has 1 time step(s); classification needs at least 2",
    ),
    "longer_than_max_length": (
        lambda f: f,
        dict(DATA, max_length=25),
        "in.csv: series 's0' has 30 time steps, more than data.max_length (25)",
    ),
}


@pytest.mark.parametrize("kind", BAD)
def test_bad_classification_input(workdir, capsys, kind):
    change, data, expected = BAD[kind]
    change(_frame()).to_csv("in.csv", index=False)
    write_params({"experiments": {"mine": {"data": data}}})
    assert main(["prepare", "mine"]) == 3
    err = capsys.readouterr().err
    assert expected in err and err.strip().count("\n") == 0, err
    assert not (workdir / "data/prepared").exists() or not any(
        (workdir / "data/prepared").iterdir()
    )


def test_ensemble_of_zero_is_a_config_error(workdir, capsys):
    write_params({"experiments": {"mine": {"data": DATA, "fit": {"ensemble": 0}}}})
    assert main(["prepare", "mine"]) == 2
    err = capsys.readouterr().err
    assert "experiments.mine.fit.ensemble: Input should be greater than 0" in err
