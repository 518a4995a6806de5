"""Training throughput: our LightningModule under pl.Trainer vs a hand-written PyTorch loop.

Same model (same seed), data, batch size, optimizer (AdamW), gradient clipping and number of
steps. A step's time is the gap between the starts of consecutive steps (so it includes data
loading and every hook); samples/s = batch / the median step time over `--repeats` alternating
runs after a warm-up. Both wall time and the process's CPU time are recorded: on a shared
machine a step can wait for the CPU, which CPU time does not count, so the ratio is taken from
CPU time (one intra-op thread on CPU: the two agree on an idle machine).
The Trainer is configured as the train stage configures it (conf/trainer/cpu.yaml or gpu.yaml),
minus what only runs at epoch ends (validation, checkpoints, logger): it keeps the module's
per-step metric updates (the torchmetrics and the loss's MeanMetric, logged once per epoch),
which are part of what it costs.

On a GPU it also reports the model's arithmetic rate against the GPU's: FLOPs per training step
are counted once on the CPU (torch's FlopCounterMode, plus 2·gates·H·(I+H) per step, direction and
layer of each nn.LSTM/GRU, which it does not see inside cuDNN's single op; backward = 2x forward),
and the peak is a dense bf16 8192^3 matrix product measured on the same GPU. A GPU-sized case,
`lstm_wide`, runs there only (a 2-core CPU would take minutes).

Usage: python benchmarks/train_overhead.py [--steps N] [--repeats R] [--bf16]
(prints one JSON object)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from common import device, machine, median_seconds, sync
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from pipeline.training.module import SequenceModule

CASES = {
    # the LSTM: classification, 4 features, 64 steps, hidden 64 x 2 layers, batch 64
    "lstm": dict(
        cfg={"name": "lstm", "cell": "lstm", "hidden_size": 64, "num_layers": 2},
        meta={"task": "classification", "input_shape": [64, 4], "labels": list("abcd")},
        batch=64,
    ),
    # the ConvLSTM of conv_lstm_moving_digits: 16x16 frames, 8 in -> 8 out, its model and batch
    "conv_lstm": dict(
        cfg={
            "name": "conv_lstm",
            "hidden_channels": 32,
            "num_layers": 2,
            "kernel_size": 3,
            "patch_size": 4,
            "motion_filter": 5,
            "frame_differences": True,
        },
        meta={"task": "frames", "input_shape": [8, 1, 16, 16], "horizon": 8},
        batch=32,
    ),
}
# what a GPU is for: hidden 512 x 2 layers over 128 steps of 32 features, batch 256
GPU_CASES = {
    "lstm_wide": dict(
        cfg={"name": "lstm", "cell": "lstm", "hidden_size": 512, "num_layers": 2},
        meta={"task": "classification", "input_shape": [128, 32], "labels": list("abcd")},
        batch=256,
    ),
}


def train_step_flops(case: dict) -> int:
    """FLOPs of one forward + backward pass at the case's batch size (see the module doc)."""
    model = new_module(case).model
    x, y = make_data(case, case["batch"])[:]
    recurrent = []

    def count(rnn, args, out):
        steps, gates = args[0].shape[1], 4 if isinstance(rnn, torch.nn.LSTM) else 3
        dirs = 2 if rnn.bidirectional else 1
        for layer in range(rnn.num_layers):
            inputs = rnn.input_size if layer == 0 else rnn.hidden_size * dirs
            fwd = (
                2 * x.shape[0] * steps * dirs * gates * rnn.hidden_size * (inputs + rnn.hidden_size)
            )
            recurrent.append(3 * fwd)

    for m in model.modules():
        if isinstance(m, torch.nn.LSTM | torch.nn.GRU):
            m.register_forward_hook(count)
    with FlopCounterMode(display=False) as counter:
        loss_fn(case)(model(x), y).backward()
    return counter.get_total_flops() + sum(recurrent)


def loss_fn(case: dict):
    return F.cross_entropy if case["meta"]["task"] == "classification" else F.mse_loss


def bf16_peak_flops() -> float:
    """FLOP/s of a dense bf16 8192^3 matrix product on this GPU (median of >= 10 runs)."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 2 * 8192**3 / median_seconds(lambda: a @ b, min_runs=10, budget_s=0)


def make_data(case: dict, n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    meta = case["meta"]
    x = torch.rand(n, *meta["input_shape"], generator=g)
    if meta["task"] == "classification":
        return TensorDataset(x, torch.randint(len(meta["labels"]), (n,), generator=g))
    return TensorDataset(x, torch.rand(n, meta["horizon"], *meta["input_shape"][1:], generator=g))


def loader(data: TensorDataset, batch: int) -> DataLoader:
    return DataLoader(data, batch, shuffle=True, generator=torch.Generator().manual_seed(0))


def new_module(case: dict) -> SequenceModule:
    torch.manual_seed(0)
    return SequenceModule(case["cfg"], case["meta"], lr=1e-3)


class StepClock(pl.Callback):
    """Start time of every training step (and the end of the last one)."""

    def __init__(self):
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.stamps.append(stamp())

    def on_train_end(self, trainer, module):
        self.stamps.append(stamp())


def stamp() -> tuple[float, float]:
    sync()
    return time.perf_counter(), time.process_time()


def step_times(stamps: list[tuple[float, float]], warmup: int) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of every step after the warm-up."""
    pairs = zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)
    return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


def rate(batch: int, runs: list[list[tuple[float, float]]], which: int) -> float:
    return batch / statistics.median(t[which] for run in runs for t in run)


def run_lightning(case: dict, data, steps: int, warmup: int, gpu: bool, bf16: bool):
    clock = StepClock()
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu",
        devices=1,
        precision="bf16-mixed" if bf16 else "32-true",
        deterministic=not gpu,
        max_steps=warmup + steps,
        gradient_clip_val=1.0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(new_module(case), loader(data, case["batch"]))
    return step_times(clock.stamps, warmup)


def run_plain(case: dict, data, steps: int, warmup: int, bf16: bool) -> list[float]:
    dev = device()
    model = new_module(case).model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    done, stamps = 0, []
    while done < warmup + steps:
        for x, y in loader(data, case["batch"]):
            stamps.append(stamp())
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
                loss = loss_fn(case)(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            if done == warmup + steps:
                break
    stamps.append(stamp())
    return step_times(stamps, warmup)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    gpu = torch.cuda.is_available()
    every = CASES | GPU_CASES
    p.add_argument("--cases", nargs="*", default=list(every if gpu else CASES), choices=every)
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16-mixed on the CPU too: the frames recipe's fit.precision: auto trains so "
        "where the CPU computes bfloat16",
    )
    args = p.parse_args()
    bf16 = gpu or args.bf16
    warnings.filterwarnings("ignore")
    if not gpu:
        torch.set_num_threads(1)  # the train stage's default (trainer.threads: 1)
    result = {"benchmark": "train_overhead", "machine": machine(), "device": device().type}
    if gpu:
        peak = bf16_peak_flops()
        result["gpu_bf16_matmul_tflops"] = round(peak / 1e12, 1)
    for name in args.cases:
        case = every[name]
        steps = args.steps if name == "lstm" else max(args.steps // 3, 10)
        data = make_data(case, (args.warmup + steps) * case["batch"])
        ours, plain = [], []
        for _ in range(args.repeats):  # alternate, so drifting load hits both alike
            ours.append(run_lightning(case, data, steps, args.warmup, gpu, bf16))
            plain.append(run_plain(case, data, steps, args.warmup, bf16))
        b = case["batch"]
        clock = 0 if gpu else 1  # GPU steps are asynchronous: wall time (after a sync) there
        lightning, loop = rate(b, ours, clock), rate(b, plain, clock)
        result[name] = {
            "batch_size": b,
            "steps": steps,
            "repeats": args.repeats,
            "precision": "bf16-mixed" if bf16 else "32-true",
            "clock": "wall" if gpu else "cpu",
            "lightning_samples_per_s": round(lightning, 1),
            "plain_loop_samples_per_s": round(loop, 1),
            "ratio": round(lightning / loop, 3),
            "wall_lightning_samples_per_s": round(rate(b, ours, 0), 1),
            "wall_plain_loop_samples_per_s": round(rate(b, plain, 0), 1),
            "wall_ratio": round(rate(b, ours, 0) / rate(b, plain, 0), 3),
            "runs_lightning": [round(rate(b, [r], clock), 1) for r in ours],
            "runs_plain": [round(rate(b, [r], clock), 1) for r in plain],
        }
        if gpu:
            flops = train_step_flops(case) * lightning / b
            result[name]["lightning_tflops"] = round(flops / 1e12, 3)
            result[name]["fraction_of_gpu_peak"] = round(flops / peak, 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
