"""Each task's default recipe: the model and fit of an experiment that sets only its `data`.

Classification: an MLSTM-FCN-style attention LSTM (Karim et al. 2019: an LSTM branch beside a
fully convolutional branch of 128-256-128 filters with squeeze-and-excite), AdamW with a
cosine-annealed learning rate and the last epoch kept; series longer than 256 steps are read as
means of consecutive steps (the FCN's kernels span a fixed number of steps), and each series is
z-normalised where the train split's amplitudes are orders of magnitude apart. Chosen on the dev
suite (GunPoint, ItalyPowerDemand, BasicMotions, variable-length and 1,050-step versions of them)
from the literature's candidates, never per data set: see README "Default recipes" and
benchmarks/quality.py.
"""

from __future__ import annotations

RECIPES: dict[str, dict[str, dict]] = {
    "classification": {
        "model": {
            "name": "attention_lstm",
            "cell": "lstm",
            "hidden_size": 64,
            "num_layers": 1,
            "attention_size": 32,
            "dropout": 0.5,
            "fcn_channels": [128, 256, 128],
            "squeeze_excite": True,
            "max_steps": 256,
            "pool_extrema": True,
            "series_norm": "auto",
        },
        "fit": {
            "max_epochs": 150,
            # ≈ 15 min of one CPU core at 256 steps per series, however many series there are:
            # every dev set (300-600 updates) and PLAID (4,050) train their 150 epochs in full
            "max_updates": 5000,
            "batch_size": 16,
            "lr": 1e-3,
            "weight_decay": 1e-2,
            "schedule": "cosine",
            "select": "last",
            "patience": 150,
            "gradient_clip_val": 1.0,
            # bf16-mixed where the CPU computes it natively: a third off the training, the same
            # accuracy on the dev suite
            "precision": "auto",
        },
    },
    # The airline recipe (conf/experiment/lstm_airline.yaml). A season (`data.season`, or the
    # one prepare finds at the dates' frequency) that the window holds twice: season_norm takes
    # it out, but for several series that share it. More than one series: each window in units
    # of its own std (train decides both from meta.json).
    "forecast": {
        "model": {
            "name": "lstm",
            "hidden_size": 64,
            "num_layers": 1,
            "level_norm": True,
            "scale_norm": "auto",
            "season_norm": "auto",
        },
        "fit": {
            "max_epochs": 300,
            # GluonTS's default budget (100 epochs of 50 batches). The dev series train 300
            # (one batch an epoch); without it, 60 hourly series of 2,000 steps took 13 s an
            # epoch, an hour for the 300
            "max_updates": 5000,
            "batch_size": 64,
            "lr": 5e-3,
            "patience": 300,
            # noise of 3 % of a std on the training windows' inputs (Hewamalage, Bergmeir and
            # Bandara 2021's code adds it): over forecast origins equal or better on the four
            # dev series (README "Forecasting quality")
            "jitter": 0.03,
        },
    },
    # The moving-digits recipe (conf/experiment/conv_lstm_moving_digits.yaml)
    "frames": {
        "model": {
            "name": "conv_lstm",
            "hidden_channels": 32,
            "num_layers": 2,
            "motion_filter": 5,
            "frame_differences": True,
            "filter_temperature": 0.5,
        },
        "fit": {
            "max_epochs": 10,
            "batch_size": 32,
            "lr": 5e-3,
            "patience": 5,
            "teacher_forcing": 1.0,
            "precision": "auto",
        },
    },
}
