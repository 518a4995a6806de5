"""The classical baseline validate reports beside a forecaster: exponential smoothing (ETS,
statsmodels), what a forecaster tries first.

Per series and target, the form with the lowest AICc among additive-error models (no trend,
additive trend or damped trend; additive seasonality where `season` is set and the train part
holds two seasons) is fitted on the series' train part only, on the model's scale (so `transform:
log` makes it a log-ETS). Each test window is then forecast with those parameters from the state
filtered over the series' history up to the window's origin (one filtering pass per series, a
dynamic prediction per window): no test value reaches the fit or a forecast.
"""

from __future__ import annotations

import warnings

import numpy as np

from pipeline.data.prepared import Prepared


def _forms(season: int | None, train_length: int) -> list[dict]:
    trends = [{}, {"trend": "add"}, {"trend": "add", "damped_trend": True}]
    seasonal = [{}]
    if season and season > 1 and train_length >= 2 * season + 2:
        seasonal.append({"seasonal": "add", "seasonal_periods": season})
    return [{"error": "add", **t, **s} for t in trends for s in seasonal]


def _best_fit(train: np.ndarray, season: int | None):
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    fits = []
    for form in _forms(season, len(train)):
        try:
            fits.append((form, ETSModel(train, **form).fit(disp=False)))
        except (ValueError, np.linalg.LinAlgError):  # too short or degenerate for this form
            continue
    return min(fits, key=lambda f: f[1].aicc, default=None)


def ets_forecasts(prepared: Prepared) -> np.ndarray | None:
    """ETS forecasts of the test windows [windows, horizon, targets] on the model's scale (None:
    no form could be fitted)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    meta, series = prepared.meta, prepared.npy("series", mmap=True)
    span = meta.window + meta.horizon
    train = prepared.npy("windows_train")  # one range per series, from its first step
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the fits
        for first, count in prepared.npy("windows_test"):
            start, train_count = train[np.searchsorted(train[:, 0], first, side="right") - 1]
            windows = []
            for j in meta.target_index:
                values = np.asarray(series[start : first + count - 1 + span, j], np.float64)
                best = _best_fit(values[: train_count - 1 + span], meta.season)
                if best is None:
                    return None
                form, fit = best
                filtered = ETSModel(values, **form).smooth(fit.params)
                origins = np.arange(count) + first + meta.window - start
                windows.append(
                    [
                        filtered.predict(start=o, end=o + meta.horizon - 1, dynamic=0)
                        for o in origins
                    ]
                )
            out.append(np.stack(windows, axis=-1))  # [count, horizon, targets]
    return np.concatenate(out).astype(np.float32)
