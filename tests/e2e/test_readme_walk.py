"""The README's walks on your own data, in a temp git repo: its CSV header and both experiment
YAMLs copied from README.md; then compose and `dvc repro` with runs going to a real tracking
server, release twice and predict, a sweep -> tune-apply -> `dvc repro`, and the smoke run."""

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import BIN, REPO, copy_repo

pytestmark = pytest.mark.slow
README = (REPO / "README.md").read_text()


def block(lang: str, containing: str, index: int = 0) -> str:
    blocks = [b for b in re.findall(rf"```{lang}\n(.*?)```", README, re.S) if containing in b]
    return blocks[index]


def run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def meters_csv(header: str, path: Path) -> None:
    """40 meters x 300 hourly steps under the README's header: offices follow a daily cycle,
    homes a half-day one."""
    rng, columns, frames = np.random.default_rng(0), header.split(","), []
    t = np.arange(300)
    for i in range(40):
        label = ("office", "home")[i % 2]
        period = 24 if label == "office" else 12
        load = 1 + np.sin(2 * np.pi * t / period + rng.uniform(0, 1)) + rng.normal(0, 0.1, 300)
        values = [f"meter_{i}", t, load, 10 + 5 * np.cos(2 * np.pi * t / 24), label]
        frames.append(pd.DataFrame(dict(zip(columns, values, strict=True))))
    pd.concat(frames).to_csv(path, index=False)


def digests(repo: Path) -> dict[str, str]:
    files = [
        p for d in ("metrics", "models", "plots") for p in (repo / d).rglob("*") if p.is_file()
    ]
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, server):
    repo = copy_repo(tmp_path_factory.mktemp("walk"))
    os.environ["MLFLOW_TRACKING_URI"] = server  # README: export MLFLOW_TRACKING_URI=...
    header = block("csv", "series_id").splitlines()[0]
    meters_csv(header, repo / "data/raw/meters.csv")
    forecaster = block("yaml", "path: data/raw/meters.csv", 0)
    classifier = block("yaml", "path: data/raw/meters.csv", 1)
    assert "task: forecast" in forecaster and "task: classification" in classifier
    (repo / "conf/experiment/lstm_meters.yaml").write_text(forecaster)
    (repo / "conf/experiment/meters.yaml").write_text(classifier)
    config = repo / "conf/config.yaml"
    listed = (
        "  - experiment@experiments.lstm_meters: lstm_meters\n"
        "  - experiment@experiments.meters: meters\n"
        "  - _self_\n"
    )
    config.write_text(config.read_text().replace("  - _self_\n", listed))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"]):
        run(cmd, repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "walk"], repo)
    yield repo
    os.environ.pop("MLFLOW_TRACKING_URI")


def lstm_pipeline(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "lstm-pipeline"), *args], cwd, ok)


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd)


def test_own_csv_experiments_run_as_printed(repo):
    # A short run of the README's experiments (gates reported, not enforced): the classifier 20
    # epochs (the sweep below must not match it in 2), the forecaster 4.
    short = ("trainer=smoke", "trainer.max_epochs=20", "++experiments.lstm_meters.fit.max_epochs=4")
    lstm_pipeline("compose", *short, cwd=repo)
    dvc("repro", "validate@lstm_meters", "validate@meters", cwd=repo)
    for exp in ("lstm_meters", "meters"):
        assert (repo / f"models/{exp}/model.onnx").exists()
        assert (repo / f"metrics/{exp}/validate.json").exists()

    # Each prepare depends on its own file: a new file in data/raw/ leaves every stage current.
    (repo / "data/raw/other.csv").write_text("series_id,time,value\n")
    status = dvc("status", "prepare@meters", "prepare@lstm_meters", cwd=repo)
    assert "up to date" in status.stdout, status.stdout


def test_release_twice_then_predict(repo):
    first = lstm_pipeline("release", "--exp", "meters", "--promote", cwd=repo).stdout
    assert "registered lstm-pipeline-meters version 1" in first and "training run" in first
    again = lstm_pipeline("release", "--exp", "meters", "--promote", cwd=repo).stdout
    assert "already holds" in again and "nothing registered" in again
    model = "models:/lstm-pipeline-meters@champion"
    lstm_pipeline("predict", model, "data/raw/meters.csv", "-o", "labels.csv", cwd=repo)
    labels = pd.read_csv(repo / "labels.csv")
    assert len(labels) == 40 and set(labels["label"]) <= {"office", "home"}


def test_a_sweep_never_ends_with_a_worse_model(repo):
    trained = json.loads((repo / "metrics/meters/train.json").read_text())["best_val_loss"]
    lstm_pipeline("compose", "trainer=smoke", "tune.num_samples=2", "tune.max_epochs=2", cwd=repo)
    lstm_pipeline("tune", "meters", cwd=repo)
    best = yaml.safe_load((repo / "tune/meters/best_params.yaml").read_text())
    assert best["val_loss"] > trained  # 2 epochs cannot match 20
    params = (repo / "params.yaml").read_text()
    refused = lstm_pipeline("tune-apply", "meters", cwd=repo, ok=False)
    assert refused.returncode == 4 and "worse than the current model" in refused.stderr
    assert (repo / "params.yaml").read_text() == params
    lstm_pipeline("tune-apply", "meters", "trainer=smoke", "--force", cwd=repo)  # on purpose
    dvc("repro", "train@meters", cwd=repo)
    retrained = json.loads((repo / "metrics/meters/train.json").read_text())["best_val_loss"]
    assert retrained == pytest.approx(best["val_loss"], abs=1e-6)  # the trial, reproduced


def test_smoke_run_leaves_the_workspace_alone(repo):
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "outputs"], repo)
    before = digests(repo)
    cmd = ["exp", "run", "--temp", "-S", "trainer=smoke", "-S", "trainer.max_epochs=1"]
    dvc(*cmd, "validate@meters", cwd=repo)
    assert digests(repo) == before
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    shown = dvc("exp", "show", "--csv", cwd=repo).stdout
    assert len(shown.strip().splitlines()) >= 3  # the header, the workspace, main, the smoke run
