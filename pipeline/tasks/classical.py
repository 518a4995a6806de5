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
from pipeline.io import usable_cores

PARALLEL_FROM = 8  # series x targets


def _forms(season: int | None, train_length: int) -> list[dict]:
    trends = [{}, {"trend": "add"}, {"trend": "add", "damped_trend": True}]
    seasonal = [{}]
    if season and season > 1 and train_length >= 2 * season + 2:
        seasonal.append({"seasonal": "add", "seasonal_periods": season})
    return [{"error": "add", **t, **s} for t in trends for s in seasonal]


def _best_fit(train: np.ndarray, season: int | None) -> tuple[dict, np.ndarray] | None:
    """(form, params) of the lowest AICc. Each fit returns its params only: a full results
    object would also compute a Hessian (a fifth of the time) that the choice does not need;
    the AICc is statsmodels' own, from the same log-likelihood and parameter count."""
    from statsmodels.tools.eval_measures import aicc
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    fits = []
    for form in _forms(season, len(train)):
        try:
            model = ETSModel(train, **form)
            params = model.fit(disp=False, return_params=True)
        except (ValueError, np.linalg.LinAlgError):  # too short or degenerate for this form
            continue
        fits.append((aicc(model.loglike(params), len(train), model.k_params + 1), form, params))
    if not fits:
        return None
    _, form, params = min(fits, key=lambda f: f[0])
    return form, params


def _forecasts(values: np.ndarray, train_length: int, season: int | None, origins, horizon: int):
    """One series' target: the best form fitted on values[:train_length], then one forecast
    [origins, horizon] from each origin, with the state filtered over the values before it (None:
    no form could be fitted)."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter of the fits
        best = _best_fit(values[:train_length], season)
        if best is None:
            return None
        form, params = best
        filtered = ETSModel(values, **form).smooth(params)
        return np.stack(
            [filtered.predict(start=o, end=o + horizon - 1, dynamic=0) for o in origins]
        )


def _map(jobs: list[tuple]) -> list:
    """`_forecasts` of each job, in order; on every usable core once there are enough series to
    pay for starting the workers (joblib's loky: fresh processes, none inherits torch's threads;
    the fits are independent, so the numbers are the serial ones)."""
    from joblib import Parallel, delayed

    workers = min(usable_cores(), len(jobs))
    if len(jobs) < PARALLEL_FROM or workers < 2:
        return [_forecasts(*job) for job in jobs]
    return Parallel(n_jobs=workers)(delayed(_forecasts)(*job) for job in jobs)


def ets_forecasts(prepared: Prepared) -> np.ndarray | None:
    """ETS forecasts of the test windows [windows, horizon, targets] on the model's scale (None:
    no form could be fitted for some series)."""
    meta, series = prepared.meta, prepared.npy("series", mmap=True)
    span = meta.window + meta.horizon
    train = prepared.npy("windows_train")  # one range per series, from its first step
    jobs = []
    for first, count in prepared.npy("windows_test"):
        start, train_count = train[np.searchsorted(train[:, 0], first, side="right") - 1]
        origins = np.arange(count) + first + meta.window - start
        for j in meta.target_index:
            values = np.asarray(series[start : first + count - 1 + span, j], np.float64)
            jobs.append((values, train_count - 1 + span, meta.season, origins, meta.horizon))
    forecasts = _map(jobs)
    if any(f is None for f in forecasts):
        return None
    targets = len(meta.target_index)
    per_series = [
        np.stack(forecasts[i : i + targets], axis=-1)  # [count, horizon, targets]
        for i in range(0, len(forecasts), targets)
    ]
    return np.concatenate(per_series).astype(np.float32)
