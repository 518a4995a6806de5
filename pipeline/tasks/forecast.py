"""Multi-step multivariate forecasting: [batch, horizon, targets], scored in original units
beside the (seasonal) naive baseline."""

from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from pipeline import plots
from pipeline.data.sources import covariate_windows, last_windows, series_freq
from pipeline.meta import DataMeta, inv_log, inv_standard
from pipeline.tasks.base import Task, table

# torchmetrics' MeanAbsolutePercentageError clamps |truth| at this: train's test/mape and
# validate's mape are one formula.
MAPE_EPS = 1.17e-06
# What one step of a pandas frequency is called on an axis ('W-SUN' -> week); others: "step".
STEP_NAMES = {"MS": "month", "ME": "month", "W": "week", "D": "day", "B": "business day",
              "h": "hour", "min": "minute", "s": "second", "QS": "quarter", "QE": "quarter",
              "YS": "year", "YE": "year"}  # fmt: skip


# Split-conformal interval levels export calibrates (as far as the validation windows allow);
# the plot draws PLOTTED_LEVEL's band.
INTERVAL_LEVELS = ("0.5", "0.8", "0.9", "0.95")
PLOTTED_LEVEL = "0.8"


# A window's spread counts as it is down to this fraction of the validation windows' 10th
# percentile (and at least scale_norm's std floor, 1e-5); a flatter window counts at that floor,
# which keeps a flat window's residual from being divided by zero.
FLOOR_FRACTION = 0.01
STD_FLOOR = 1e-5


def conformal_halfwidths(scores: np.ndarray, levels=INTERVAL_LEVELS) -> dict:
    """Split conformal, per step and target: the ceil((n+1) * level)-th smallest of the n
    validation windows' residual scores covers a new window's score with probability >= level
    (for exchangeable windows). A level that n windows cannot certify is left out."""
    scores = np.sort(scores, axis=0)  # [n, horizon, targets]
    n = len(scores)
    ranks = {level: math.ceil((n + 1) * float(level)) for level in levels}
    return {level: scores[r - 1].tolist() for level, r in ranks.items() if r <= n}


def normalised_intervals(pred, y, x, meta: DataMeta) -> dict:
    """Normalised split conformal (Papadopoulos et al. 2008; Lei et al. 2018): each validation
    residual divided by its input window's spread (DataMeta.window_spread), so a window's band
    is a multiple of its own spread: series of any scale under one scaler get bands of their own
    scale, and a calm stretch a narrower band than a volatile one."""
    spread = meta.window_spread(x)
    floor = np.maximum(FLOOR_FRACTION * np.percentile(spread, 10, axis=0)[0], STD_FLOOR)
    scores = np.abs(pred - y) / np.maximum(spread, floor)
    halfwidths = conformal_halfwidths(scores)
    return {"intervals": halfwidths, "interval_floor": floor.tolist()} if halfwidths else {}


def percent(level: str) -> str:
    return f"{float(level) * 100:g}"


def step_name(freq: str | None) -> str:
    return STEP_NAMES.get((freq or "").split("-")[0], "step")


def mape_floor(meta: DataMeta) -> np.ndarray:
    """MAPE's floor on |truth| per target: torchmetrics' epsilon, times the data's magnitude
    where that is below 1. With the epsilon alone, values of 1e-30 divided by 1.17e-6 gave
    a MAPE near 0 for any forecast: the same data in other units passed different gates."""
    mean, std = (np.asarray(s, np.float64) for s in meta.target_scaler())
    level = np.exp(mean) if meta.transform == "log" else np.abs(mean) + std
    return MAPE_EPS * np.minimum(1.0, level)


def errors(
    pred: np.ndarray, truth: np.ndarray, prefix: str = "", floor: np.ndarray | float = MAPE_EPS
) -> dict[str, float]:
    err = pred - truth
    return {
        f"{prefix}mae": float(np.abs(err).mean()),
        f"{prefix}rmse": float(np.sqrt((err**2).mean())),
        f"{prefix}mape": float((np.abs(err) / np.maximum(np.abs(truth), floor)).mean()),
    }


def naive_forecast(x: np.ndarray, meta: DataMeta) -> tuple[str, np.ndarray]:
    """Seasonal naive (repeat the last season) or naive (repeat the last value), scaled units."""
    season = meta.season or 1
    last = x[:, -season:, meta.target_index]
    reps = -(-meta.horizon // season)
    name = "seasonal_naive" if meta.season else "naive"
    return name, np.concatenate([last] * reps, axis=1)[:, : meta.horizon]


class Forecast(Task):
    name = "forecast"
    directions = {
        **{
            f"{baseline}{metric}": False
            for baseline in ("", "naive_", "seasonal_naive_", "ets_")
            for metric in ("mae", "rmse", "mape")
        },
        **{f"interval_{percent(level)}_coverage": True for level in INTERVAL_LEVELS},
        **{f"interval_{percent(level)}_width": False for level in INTERVAL_LEVELS},
    }
    headline = "mape"

    def output_shape(self, meta: DataMeta) -> tuple[int, ...]:
        return (meta.horizon, len(meta.targets))

    def model_kwargs(self, meta: DataMeta) -> dict:
        return {
            "target_index": tuple(meta.target_index),
            "future_size": len(meta.future),
            "static_size": len(meta.static),
        }

    def torchmetrics(self, meta: DataMeta) -> dict:
        import torch
        from torchmetrics import MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredError

        class FlooredMAPE(MeanAbsolutePercentageError):
            """MAPE with mape_floor(meta): |p - t| / max(|t|, eps * s) is MAPE(p / s, t / s)."""

            def __init__(self):
                super().__init__()
                scale = torch.tensor(mape_floor(meta) / MAPE_EPS)
                self.register_buffer("scale", scale, persistent=False)  # not in checkpoints

            def update(self, preds, target):
                super().update(preds / self.scale, target / self.scale)

        metrics = {
            "mae": MeanAbsoluteError(),
            "rmse": MeanSquaredError(squared=False),
            "mape": FlooredMAPE(),
        }
        for metric in metrics.values():  # sums of squares of 1e20 overflow float32
            metric.set_dtype(torch.float64)
        return metrics

    def buffers(self, meta: DataMeta) -> dict:
        import torch

        mean, std = meta.target_scaler()
        return {"target_mean": torch.tensor(mean), "target_std": torch.tensor(std)}

    def metric_inputs(self, module, out, y) -> tuple:
        """Both on the original scale (the module's float32 twin of DataMeta.to_original)."""

        def original(z):
            z = inv_standard(z, module.target_mean, module.target_std)
            return inv_log(z) if module.meta.transform == "log" else z

        return original(out.double()), original(y.double())

    def evaluate(self, out, x, y, meta: DataMeta):
        truth, pred = meta.to_original(y), meta.to_original(out)
        name, base_scaled = naive_forecast(x, meta)
        base = meta.to_original(base_scaled)
        floor = mape_floor(meta)
        report = {**errors(pred, truth, "", floor), **errors(base, truth, f"{name}_", floor)}
        # the baseline's and int8's metrics share these units
        unit = f"{', '.join(meta.targets)} (original scale)"
        report.update(mae_unit=unit, rmse_unit=unit, mape_unit="fraction (0.05 = 5 %)")
        data = {"truth": truth[..., 0], "pred": pred[..., 0], "baseline": base[..., 0]}
        for level in meta.intervals or {}:
            low, high = meta.interval(out, x, level)
            inside = (truth >= low) & (truth <= high)
            report[f"interval_{percent(level)}_coverage"] = float(inside.mean())
            report[f"interval_{percent(level)}_width"] = float((high - low).mean())
            if level == PLOTTED_LEVEL:
                data.update(band=(low[..., 0], high[..., 0]), level=percent(level))
        if meta.intervals:
            report["interval_width_unit"] = unit
        return report, {**data, "target": meta.targets[0], "step": step_name(meta.freq)}

    def classical_report(self, prepared, y, meta: DataMeta) -> dict[str, float]:
        from pipeline.tasks.classical import ets_forecasts

        pred = ets_forecasts(prepared)
        if pred is None:
            return {}
        return errors(meta.to_original(pred), meta.to_original(y), "ets_", mape_floor(meta))

    def calibrate(self, outputs, meta: DataMeta) -> dict:
        return normalised_intervals(*outputs(), meta)

    def plot(self, data: dict, out) -> None:
        plots.forecast(
            data["truth"], data["pred"], data["baseline"], out, data["target"], data["step"],
            data.get("band"), data.get("level"),
        )  # fmt: skip

    def baseline_gates(self, report: dict) -> list[tuple[str, str]]:
        # MAE, not MAPE: on the same windows, MAE below the naive forecast's is MASE below 1
        # (Hyndman and Koehler 2006); MAPE divides by the truth, so a series with zeros (solar
        # nights, intermittent demand) is judged by its floor there, whatever the forecast
        base = next((k for k in report if k.endswith("naive_mae")), None)
        return [] if base is None else [("mae", base)]

    def read_inputs(self, path, output, meta: DataMeta, id_column, time_column):
        """The windows, the output's keys (per series and step its id, the time (dates: the
        step's timestamp after the series' last observed one, at the model's frequency or else
        the input's own) and the step number 1..horizon) and the covariate inputs, scaled."""
        if meta.future or meta.static:
            x, extra, ids, times = covariate_windows(path, meta, id_column, time_column)
            extra = {name: meta.scale_covariate(name, v) for name, v in extra.items()}
        else:
            (x, ids, times), extra = last_windows(path, meta, id_column, time_column), {}
        steps = np.arange(1, meta.horizon + 1)
        keys = [(id_column, np.repeat(ids, meta.horizon))]
        dated = pd.api.types.is_datetime64_any_dtype(times[0])
        fed = [t.iloc[-meta.window :] for t in times]  # a gap before them changes nothing
        freq = series_freq(fed, ids, path, time_column, dated and meta.freq, "the model's freq")
        if freq:
            offset = to_offset(freq)
            keys.append((time_column, [t.iloc[-1] + k * offset for t in times for k in steps]))
        elif dated:
            print(
                f"{path}: column {time_column!r} holds dates without one regular frequency "
                "(and the model records none): forecasts are numbered by step only",
                file=sys.stderr,  # the predictions may go to stdout
            )
        keys.append(("step", np.tile(steps, len(ids))))
        return x, table(keys), extra

    def predictions(self, out, x, meta: DataMeta, keys, id_column: str) -> pd.DataFrame:
        """Per target its forecast, and for each calibrated level the interval's bounds
        (`<target>_lo80`, `<target>_hi80`)."""
        columns = {"": meta.to_original(out)}  # [n, horizon, targets]
        for level in meta.intervals or {}:
            low, high = meta.interval(out, x, level)
            columns.update({f"_lo{percent(level)}": low, f"_hi{percent(level)}": high})
        return table(
            list(keys.items())
            + [
                (target + suffix, values[:, :, j].reshape(-1))
                for j, target in enumerate(meta.targets)
                for suffix, values in columns.items()
            ]
        )
