"""Data path at scale: prepare + one epoch of loading a 10-million-step series, window 256.

Two child processes, so each phase has its own peak RSS:
- prepare: the raw series (float32 [10M, 1], 40 MB, built in the child) goes through the
  prepare stage's forecasting core and is written as the stage writes it.
- load: the training DataLoader of the datamodule (shuffled, batch 256) reads every train
  window once from the prepared files (series and offsets memory-mapped).
Peak RSS is the child's peak (VmHWM) minus its RSS after imports, divided by the raw array's bytes
(so the prepare figure includes the raw array itself; mapped file pages count, as RSS does).
The model's consumption rate is a training step (forward, backward, AdamW) of the default
airline LSTM (hidden 64) on the same batches: 1 intra-op thread on CPU, or the GPU if there is one.

Usage: python benchmarks/data.py [--steps N]   (prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

WINDOW, HORIZON, BATCH = 256, 12, 256


def baseline() -> int:
    return psutil.Process().memory_info().rss


def peak_increase(base: int) -> int:
    """The peak RSS of this process's own memory (VmHWM) above `base`. Not ru_maxrss: Linux
    carries that over fork and exec, so a child started by a parent that had imported torch
    reported the parent's peak (113 MB above base whatever the child did)."""
    try:
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):  # not Linux
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return hwm * 1024 - base


def synthetic(steps: int) -> np.ndarray:
    """A daily-seasonal series with noise, built in float32 chunks (no float64 copy)."""
    out = np.empty((steps, 1), np.float32)
    rng = np.random.default_rng(0)
    for i in range(0, steps, 1 << 18):
        t = np.arange(i, min(i + (1 << 18), steps))
        out[i : i + len(t), 0] = 10 + np.sin(2 * np.pi * t / 24) + 0.1 * rng.standard_normal(len(t))
    return out


def phase_prepare(steps: int, out: Path) -> dict:
    from pipeline.config import parse_config
    from pipeline.data.prepare import _forecast, save_prepared
    from pipeline.data.sources import Series

    exp = parse_config(
        {
            "experiments": {
                "big": {
                    "data": {
                        "source": "airline",
                        "window": WINDOW,
                        "horizon": HORIZON,
                        "val_size": 100_000,
                        "test_size": 100_000,
                    },
                    "model": {"name": "lstm"},
                }
            }
        }
    ).experiment("big")
    base = baseline()
    start = time.perf_counter()
    raw = synthetic(steps)
    arrays, meta = _forecast(exp, Series([raw], ["synthetic"], ["value"]))
    meta.update(
        task="forecast", window=WINDOW, horizon=HORIZON, source="synthetic", dataset="synthetic"
    )
    save_prepared(out, arrays, meta)
    return {
        "raw_bytes": raw.nbytes,
        "prepare_s": round(time.perf_counter() - start, 2),
        "prepare_peak_rss_increase_bytes": peak_increase(base),
        "train_windows": meta["sizes"]["train"],
    }


def phase_load(folder: Path, model_steps: int) -> dict:
    import torch

    from pipeline.data.datasets import dataset, make_loader
    from pipeline.data.prepared import Prepared
    from pipeline.training.module import SequenceModule

    torch.set_num_threads(1)
    base = baseline()
    loader = make_loader(dataset(Prepared.load(folder), "train"), BATCH, shuffle=True)
    start, n = time.perf_counter(), 0
    for x, _ in loader:
        n += len(x)
    load_s = time.perf_counter() - start
    peak = peak_increase(base)

    from common import device, sync

    meta = {**Prepared.load(folder).meta.contract().model_dump(), "input_shape": [WINDOW, 1]}
    module = SequenceModule({"name": "lstm", "hidden_size": 64, "num_layers": 1}, meta)
    model = module.model.to(device()).train()
    opt = torch.optim.AdamW(model.parameters())
    times = []
    for i, (x, y) in enumerate(loader):
        if i == model_steps + 1:
            break
        t = time.perf_counter()
        x, y = x.to(device()), y.to(device())
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t)
    return {
        "loaded_samples": n,
        "load_epoch_s": round(load_s, 2),
        "loader_samples_per_s": round(n / load_s),
        "load_peak_rss_increase_bytes": peak,
        "model_samples_per_s": round(BATCH / statistics.median(times[1:]), 1),
    }


def child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10_000_000)
    p.add_argument("--model-steps", type=int, default=5)
    p.add_argument("--phase", choices=["prepare", "load"])
    p.add_argument("--folder")
    args = p.parse_args()
    if args.phase == "prepare":
        print(json.dumps(phase_prepare(args.steps, Path(args.folder))))
        return
    if args.phase == "load":
        print(json.dumps(phase_load(Path(args.folder), args.model_steps)))
        return

    from common import machine

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        folder = str(Path(tmp) / "prepared")
        prep = child("--phase", "prepare", "--steps", str(args.steps), "--folder", folder)
        load = child("--phase", "load", "--folder", folder, "--model-steps", str(args.model_steps))
    raw = prep["raw_bytes"]
    result = {
        "benchmark": "data",
        "machine": machine(),
        "series_steps": args.steps,
        "window": WINDOW,
        "batch_size": BATCH,
        **prep,
        **load,
        "prepare_peak_rss_to_raw": round(prep["prepare_peak_rss_increase_bytes"] / raw, 2),
        "load_peak_rss_to_raw": round(load["load_peak_rss_increase_bytes"] / raw, 2),
        "loader_to_model_rate": round(
            load["loader_samples_per_s"] / load["model_samples_per_s"], 1
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
