"""Where every stage reads and writes, by experiment name (relative to the repo root).

These are the files `dvc.yaml` declares; a stage finds its inputs here, never through another
stage's code.
"""

from __future__ import annotations

from pathlib import Path


def prepared_dir(exp: str) -> Path:
    """prepare's arrays and meta.json."""
    return Path("data/prepared") / exp


def model_dir(exp: str) -> Path:
    """model.ckpt (train), model.onnx and streaming/ (export), int8/ (validate)."""
    return Path("models") / exp


def metrics_file(exp: str, stage: str) -> Path:
    """metrics/<exp>/<stage>.json: train.json, validate.json."""
    return Path("metrics") / exp / f"{stage}.json"


def plots_dir(exp: str, stage: str) -> Path:
    return Path("plots") / exp / stage


def tune_dir(exp: str) -> Path:
    """The sweep's results.csv, val_loss.png and best_params.yaml."""
    return Path("tune") / exp


def resume_dir(exp: str) -> Path:
    """train's resume point: Lightning checkpoints of an unfinished training (outside every DVC
    output, so a failed or killed run keeps it); removed when the training succeeds."""
    return Path(".resume") / exp
