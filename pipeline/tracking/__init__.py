"""MLflow: where runs go and what tags tie them to the code and data."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipeline.errors import TrackingError
from pipeline.io import file_digest

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def absolute_tracking_uri() -> str:
    """For processes in other working dirs (Tune trials, Ray Train workers): a relative SQLite
    path made absolute."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def ensure_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast with the URI in the message: MLflow's own client retries for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable: {reason}") from None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags(exp: str, stage: str, **extra: str) -> dict[str, str]:
    """The tags every run carries: experiment, stage, the git commit (when there is one), and
    `extra` (e.g. data_sha256)."""
    tags = {"exp": exp, "stage": stage, **extra}
    if commit := git_commit():
        tags["git_commit"] = commit
    return tags


def log_to_training_run(experiment_name: str, ckpt, metrics: dict, artifacts: list) -> str | None:
    """Attach later stages' results to the MLflow run that produced this exact checkpoint.

    The run is found by the checkpoint's hash (tag `ckpt_sha256`, set by train), so a report can
    never land on another training's run. Returns the run id, or None if no such run exists
    (e.g. MLFLOW_TRACKING_URI now points elsewhere).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.ckpt_sha256 = '{file_digest(ckpt)}'", max_results=1
    )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for item in artifacts:  # a path, or (path, artifact folder)
        path, folder = item if isinstance(item, tuple) else (item, None)
        client.log_artifact(run_id, str(path), folder)
    return run_id
