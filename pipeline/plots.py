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


def confusion(actual: list[str], predicted: list[str], labels: list[str], out: Path) -> None:
    _csv(pd.DataFrame({"actual": actual, "predicted": predicted}), out / "confusion.csv")
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(actual, predicted, labels=labels)
    fig, ax = figure(figsize=(4, 4))
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center")
    ax.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="actual",
        title="Confusion matrix",
    )
    save_png(fig, out / "confusion.png")


def forecast(truth: np.ndarray, pred: np.ndarray, baseline: np.ndarray, out: Path) -> None:
    """Test windows [n, horizon] of one target: a CSV row per (window, step), a PNG of a few."""
    n, h = truth.shape
    _csv(
        pd.DataFrame(
            {
                "window": np.repeat(np.arange(n), h),
                "step": np.tile(np.arange(1, h + 1), n),
                "truth": truth.ravel(),
                "forecast": pred.ravel(),
                "baseline": baseline.ravel(),
            }
        ),
        out / "forecast.csv",
    )
    shown = sorted({0, n // 2, n - 1})
    fig, axes = figure(nrows=len(shown), figsize=(6, 2.2 * len(shown)), squeeze=False)
    for ax, i in zip(axes[:, 0], shown, strict=True):
        ax.plot(truth[i], "k-", label="truth")
        ax.plot(pred[i], "C0-", label="forecast")
        ax.plot(baseline[i], "C1--", label="baseline")
        ax.set_title(f"test window {i}", fontsize=9)
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
        ax.set_ylabel("input", fontsize=8)
        twin = ax.twinx()
        twin.bar(np.arange(t), weights[i], color="C1", alpha=0.5)
        twin.set_ylabel("attention", fontsize=8)
        ax.set_title(f"test example {i}", fontsize=9)
    fig.tight_layout()
    save_png(fig, out / "attention.png")


def frames(inputs, pred, truth, mse, baseline_mse, out: Path) -> None:
    """One test sequence as a strip (input / predicted / true rows) and per-step MSE as CSV."""
    _csv(
        pd.DataFrame(
            {"step": np.arange(1, len(mse) + 1), "mse": mse, "baseline_mse": baseline_mse}
        ),
        out / "frame_mse.csv",
    )
    cols = max(len(inputs), len(pred))
    fig, axes = figure(nrows=3, ncols=cols, figsize=(1.1 * cols, 3.6), squeeze=False)
    for row, (name, seq) in enumerate((("input", inputs), ("predicted", pred), ("true", truth))):
        for j in range(cols):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(seq):
                ax.imshow(seq[j, 0], cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    save_png(fig, out / "frames.png")
