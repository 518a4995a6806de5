import numpy as np

from pipeline.config import MovingDigitsData
from pipeline.data.prepared import Prepared
from pipeline.data.sources import load_moving_digits

SMALL = dict(
    source="moving_digits", train_size=8, val_size=4, test_size=6, input_frames=5, output_frames=3
)


def test_sequences_are_seeded_uint8_and_sized_from_config():
    a = load_moving_digits(MovingDigitsData(**SMALL))
    b = load_moving_digits(MovingDigitsData(**SMALL))
    c = load_moving_digits(MovingDigitsData(**SMALL, seed=1))
    assert {k: v.shape for k, v in a.items()} == {
        "train": (8, 8, 1, 16, 16),
        "val": (4, 8, 1, 16, 16),
        "test": (6, 8, 1, 16, 16),
    }
    assert all(v.dtype == np.uint8 for v in a.values())
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    more = load_moving_digits(MovingDigitsData(**{**SMALL, "train_size": 16}))
    assert np.array_equal(more["val"], a["val"]) and np.array_equal(more["test"], a["test"])
    assert np.array_equal(more["train"][:8], a["train"])  # more sequences, the same first ones
    lit = (a["test"] > 0).reshape(6 * 8, -1).sum(axis=1)
    assert (lit > 0).all()  # every frame shows a digit


def test_digits_move_between_frames():
    seq = load_moving_digits(MovingDigitsData(**SMALL))["train"][0, :, 0].astype(float)
    centre = [np.argwhere(f > 0).mean(axis=0) for f in seq]
    assert np.linalg.norm(centre[-1] - centre[0]) > 1.0


def test_prepared_frames_split_into_input_and_target(workdir, params):
    from pipeline.config import parse_config
    from pipeline.data.prepare import prepare

    params["experiments"]["lstm_airline"]["data"] = SMALL
    params["experiments"]["lstm_airline"]["model"] = {"name": "conv_lstm", "hidden_channels": 4}
    out = prepare(parse_config(params), "lstm_airline")
    p = Prepared.load(out)
    assert p.meta.task == "frames" and p.meta.input_shape == [5, 1, 16, 16]
    assert p.meta.horizon == 3
    x, y = p.arrays("test")
    assert x.shape == (6, 5, 1, 16, 16) and y.shape == (6, 3, 1, 16, 16)
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
