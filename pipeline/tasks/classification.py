"""Sequence classification: logits [batch, classes]; accuracy and macro F1, and the baseline
every classifier must beat: the best accuracy a constant answer scores on the same split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import plots
from pipeline.inference import softmax
from pipeline.meta import DataMeta
from pipeline.tasks.base import Task, table


class Classification(Task):
    name = "classification"
    directions = {"accuracy": True, "f1_macro": True, "majority_accuracy": True}
    headline = "accuracy"

    def output_shape(self, meta: DataMeta) -> tuple[int, ...]:
        return (len(meta.labels),)

    def loss(self, out, y, label_smoothing: float = 0.0):
        import torch.nn.functional as F

        return F.cross_entropy(out, y, label_smoothing=label_smoothing)

    def torchmetrics(self, meta: DataMeta) -> dict:
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        k = len(meta.labels)
        # validate_args=False: the checks (torch.unique of the labels) wait for a GPU every step;
        # prepare has already checked the labels, and the predictions are the model's.
        return {
            "acc": MulticlassAccuracy(k, average="micro", validate_args=False),
            "f1": MulticlassF1Score(k, average="macro", validate_args=False),
        }

    def evaluate(self, out, x, y, meta: DataMeta):
        pred = out.argmax(axis=1)
        report = {
            "accuracy": float((pred == y).mean()),
            "f1_macro": macro_f1(plots.confusion_counts(y, pred, range(len(meta.labels)))),
            # always the split's most frequent class: a model collapsed onto one class scores it
            "majority_accuracy": float(np.bincount(y).max() / len(y)),
            "accuracy_unit": "fraction (0.95 = 95 %)",
            "f1_macro_unit": "fraction, 0 to 1",
        }
        labels = meta.labels
        data = {"actual": [labels[i] for i in y], "predicted": [labels[i] for i in pred]}
        return report, {**data, "labels": labels}

    def baseline_gates(self, report: dict) -> list[tuple[str, str]]:
        return [("accuracy", "majority_accuracy")] if "majority_accuracy" in report else []

    def plot(self, data: dict, out) -> None:
        plots.confusion(data["actual"], data["predicted"], data["labels"], out)

    def scale_inputs(self, x, meta: DataMeta):
        # scaled in float64, as prepare scales a CSV's values: cast to float32 first, values of
        # 1e12 ± 1 became one value, and every series one answer (the UCR sets prepare reads as
        # float32 lose nothing to the order)
        if isinstance(x, list):  # series of different lengths
            return [meta.to_model_scale(s) for s in x]
        return meta.to_model_scale(x)

    def predictions(self, out, x, meta: DataMeta, keys, id_column: str) -> pd.DataFrame:
        probs = softmax(out.astype(np.float64))
        labels = np.asarray(meta.labels)
        return table(
            [(id_column, keys), ("label", labels[probs.argmax(axis=1)])]
            + [(f"prob_{label}", probs[:, j]) for j, label in enumerate(labels)]
        )


def macro_f1(counts: np.ndarray) -> float:
    """sklearn's f1_score(average="macro"): the mean of each class's 2·TP / (true + predicted)
    over the classes that occur in the truth or the predictions."""
    tp, true, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    seen = true + predicted > 0
    return float(np.mean(2 * tp[seen] / (true[seen] + predicted[seen])))
