"""Library chatter kept off the user's terminal: Lightning's product tips, deprecation and future
warnings meant for the pipeline's developers, ONNX Runtime's pre-processing advice. Progress bars,
errors and the libraries' warnings about the user's run stay; `--debug` shows everything."""

from __future__ import annotations

import logging
import os
import sys
import warnings

NOISE = (
    "💡 Tip:",  # Lightning advertising litlogger / litmodels
    "`weights_only` was not set",  # Lightning restoring our own checkpoint
    "Please consider to run pre-processing before quantization",  # ONNX Runtime
    # Tune on Ctrl+C: "Resume experiment with: Tuner.restore(...)"; the sweep's own line says
    # `lstm-pipeline tune <exp> --resume`
    "Stop signal received",
    "Experiment has been interrupted",
)
WARNINGS = "ignore::DeprecationWarning,ignore::FutureWarning"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def quiet() -> None:
    """Lightning imported after this logs through the root handler added here (it adds its own
    only when the root logger has none); one imported before gets the filter on its handler.
    Child processes (DDP ranks, a local Ray's workers) inherit PYTHONWARNINGS."""
    os.environ.setdefault("PYTHONWARNINGS", WARNINGS)
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Ray's C++ side logs "Failed to establish connection to the metrics exporter agent" ~30 s
    # into every session (ray[tune] has no metrics agent), as an error that is none; what
    # fails a sweep or a join reaches the user as Python exceptions, said in one line
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    # ConvLSTM's even kernels: torch pads a copy of the input, which is what we want
    warnings.filterwarnings("ignore", message="Using padding='same' with even kernel lengths")
    # a DDP fit's epoch metrics come from torchmetrics, which sync across ranks in compute()
    warnings.filterwarnings("ignore", message="It is recommended to use `self.log")
    # the resume point holds resume.ckpt beside the fit's checkpoints, by design
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    # MLflow's note that it creates or migrates a store's tables: on a new store, before a
    # stage's first line or its one-line error
    # (and its traceback per failed write when the store goes away mid-training: the stage
    # keeps what it cannot send and ends with one line)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # its fallback from one Databricks login method to the next: the error, if any, says why
    logging.getLogger("mlflow.utils.databricks_utils").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for name in ("", "pytorch_lightning", "lightning_fabric"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())
    tune = logging.getLogger("ray.tune.tune")  # Ray's own handler: filtered where it is logged
    if not any(isinstance(f, _DropNoise) for f in tune.filters):
        tune.addFilter(_DropNoise())
