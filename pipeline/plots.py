"""Plot files: CSV for `dvc plots` and a PNG beside each, so they can be looked at offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import atomic_file


def save_png(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")


def figure(**kw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(**kw)


def learning_curve(history: list[dict], out: Path) -> None:
    frame = pd.DataFrame(history)
    _csv(frame, out / "learning_curve.csv")
    fig, ax = figure(figsize=(6, 4))
    for col in ("train_loss", "val_loss"):
        ax.plot(frame["epoch"], frame[col], label=col)
    ax.set(xlabel="epoch", ylabel="loss", yscale="log", title="Learning curve")
    ax.legend()
    save_png(fig, out / "learning_curve.png")


LABELLED = 30


def confusion_counts(actual, predicted, labels: list) -> np.ndarray:
    """[k, k] counts, rows the true label and columns the predicted one, in `labels`' order."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(counts, ([index[a] for a in actual], [index[p] for p in predicted]), 1)
    return counts


def confusion(actual: list[str], predicted: list[str], labels: list[str], out: Path) -> None:
    _csv(pd.DataFrame({"actual": actual, "predicted": predicted}), out / "confusion.csv")
    counts = confusion_counts(actual, predicted, labels)
    fig, ax = figure(figsize=(4, 4))
    ax.imshow(counts, cmap="Blues")
    ax.set(xlabel="predicted", ylabel="actual", title="Confusion matrix")
    # each cell's count and each class's name up to LABELLED classes: 250 classes drew 62,500
    # texts for 100 s, and no one reads them; confusion.csv holds every pair
    if len(labels) <= LABELLED:
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center")
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)),
               xticklabels=labels, yticklabels=labels)  # fmt: skip
    save_png(fig, out / "confusion.png")


def forecast(
    truth: np.ndarray,
    pred: np.ndarray,
    baseline: np.ndarray,
    out: Path,
    target: str = "value",
    step: str = "step",
    band: tuple[np.ndarray, np.ndarray] | None = None,
    level: str | None = None,
) -> None:
    """Test windows [n, horizon] of one target: a CSV row per (window, step), a PNG of a few
    (y: the target in its own units; x: `step`s ahead, e.g. months), with the `level` % interval
    (`band`: lower, upper) shaded when the model has one."""
    n, h = truth.shape
    table = {
        "window": np.repeat(np.arange(n), h),
        "step": np.tile(np.arange(1, h + 1), n),
        "truth": truth.ravel(),
        "forecast": pred.ravel(),
        "baseline": baseline.ravel(),
    }
    if band is not None:
        table.update({f"lo{level}": band[0].ravel(), f"hi{level}": band[1].ravel()})
    _csv(pd.DataFrame(table), out / "forecast.csv")
    shown = sorted({0, n // 2, n - 1})
    fig, axes = figure(nrows=len(shown), figsize=(6, 2.2 * len(shown)), squeeze=False)
    ahead = np.arange(1, h + 1)
    for ax, i in zip(axes[:, 0], shown, strict=True):
        if band is not None:
            ax.fill_between(ahead, band[0][i], band[1][i], color="C0", alpha=0.2,
                            label=f"{level} % interval")  # fmt: skip
        ax.plot(ahead, truth[i], "k-", label="truth")
        ax.plot(ahead, pred[i], "C0-", label="forecast")
        ax.plot(ahead, baseline[i], "C1--", label="baseline")
        ax.set_title(f"test window {i}", fontsize=9)
        ax.set_xlabel(f"{step}s ahead", fontsize=8)
        ax.set_ylabel(target, fontsize=8)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "forecast.png")


def attention(x: np.ndarray, weights: np.ndarray, out: Path, shown: int = 4) -> None:
    """Attention weights over time for the first test examples, beside their first feature."""
    n, t = weights[:shown].shape
    _csv(
        pd.DataFrame(
            {
                "example": np.repeat(np.arange(n), t),
                "step": np.tile(np.arange(t), n),
                "input": x[:shown].ravel(),
                "attention": weights[:shown].ravel(),
            }
        ),
        out / "attention.csv",
    )
    fig, axes = figure(nrows=n, figsize=(6, 1.8 * n), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(x[i], "k-", lw=1)
        ax.set_xlabel("time step", fontsize=8)
        ax.set_ylabel("input (scaled)", fontsize=8)
        twin = ax.twinx()
        # one patch per panel: t bars are t patches, seconds of drawing for long series
        twin.stairs(weights[i], np.arange(t + 1) - 0.5, fill=True, color="C1", alpha=0.5)
        twin.set_ylabel("attention weight", fontsize=8)
        ax.set_title(f"test example {i}", fontsize=9)
    fig.tight_layout()
    save_png(fig, out / "attention.png")


def frames(inputs, pred, truth, mse, baseline_mse, out: Path) -> None:
    """The first test sequences (`inputs`, `pred`, `truth`: [n, frames, C, H, W]) as strips of
    input / predicted / true rows, each frame labelled with its time (t the last input frame),
    and per-step MSE as CSV."""
    _csv(
        pd.DataFrame(
            {"step": np.arange(1, len(mse) + 1), "mse": mse, "baseline_mse": baseline_mse}
        ),
        out / "frame_mse.csv",
    )
    n, cols = len(inputs), max(inputs.shape[1], pred.shape[1])
    fig, axes = figure(nrows=3 * n, ncols=cols, figsize=(1.1 * cols, 3.8 * n), squeeze=False)
    for i in range(n):
        rows = (
            ("input", inputs[i], 1 - inputs.shape[1]),
            ("predicted", pred[i], 1),
            ("true", truth[i], 1),
        )
        for row, (name, seq, first) in enumerate(rows, start=3 * i):
            for j, ax in enumerate(axes[row]):
                if j >= len(seq):
                    ax.axis("off")
                    continue
                ax.imshow(seq[j, 0], cmap="gray", vmin=0, vmax=1)
                ax.set(xticks=[], yticks=[])
                ax.set_xlabel(f"t{first + j:+d}" if first + j else "t", fontsize=7)
            axes[row, 0].set_ylabel(f"{i}: {name}" if name == "input" else name, fontsize=8)
    fig.tight_layout()
    save_png(fig, out / "frames.png")
