"""Release across machines. Clone A reproduces and `dvc push`es to the team's DVC remote (a real
S3-compatible server, moto, on 127.0.0.1). Clone B, elsewhere on disk, `dvc pull`s: `dvc repro`
has nothing to do, a forced re-export of the same checkpoint writes the same bytes, and
`.ci/release` (what release.yml runs) registers the model on a real MLflow server whose artifacts
live on the same S3 server. A venv with only the serving install predicts the champion."""

import json
import os
import subprocess
import venv
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from tests.conftest import BIN, copy_repo, free_port, start_process, start_server, stop_server
from tests.release.conftest import accuracy

pytestmark = pytest.mark.slow

EXP = "lstm_italypowerdemand"
NAME = f"lstm-pipeline-{EXP}"
OTHERS = ["lstm_airline", "attention_lstm_gunpoint", "attention_lstm_airline",
          "conv_lstm_moving_digits"]  # fmt: skip
COMPOSE = [*(f"~experiment@experiments.{e}" for e in OTHERS), "trainer.progress_bar=false",
           "trainer.max_epochs=8", f"experiments.{EXP}.validate.min.accuracy=0"]  # fmt: skip
BUCKET = "team"


def sh(repo: Path, *cmd, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """`cmd` in `repo`, with the pipeline's code imported from that checkout (not this one)."""
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(repo), **env}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def bucket(env: dict):
    return boto3.client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a loopback port with one bucket; yields the env that reaches it
    (credentials from the environment, as on a CI runner: nothing is written to .dvc/config)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    proc = start_process([BIN / "moto_server", "-H", "127.0.0.1", "-p", str(port)], log, url)
    env = {"AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": "team-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": url}  # fmt: skip
    try:
        bucket(env).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def registry(s3, tmp_path_factory):
    """A real MLflow server whose artifact store is the S3 bucket; yields the env for clients."""
    port = free_port()
    root = tmp_path_factory.mktemp("mlflow-server")
    proc = start_server(root, port, "--artifacts-destination", f"s3://{BUCKET}/mlflow", env=s3)
    try:
        yield {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def pushed(s3, registry, tmp_path_factory) -> Path:
    """Clone A: one experiment reproduced, committed with its remote, pushed."""
    env = {**s3, **registry}
    repo = copy_repo(tmp_path_factory.mktemp("a") / "repo")
    sh(repo, "git", "init", "-q", env=env)
    sh(repo, "lstm-pipeline", "compose", *COMPOSE, env=env)
    sh(repo, "dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/dvc", env=env)
    sh(repo, "dvc", "repro", env=env)
    sh(repo, "git", "add", "-A", env=env)
    sh(repo, "git", "-c", "user.name=a", "-c", "user.email=a@a", "commit", "-qm", "A", env=env)
    sh(repo, "dvc", "push", env=env)
    return repo


def outputs(repo: Path) -> dict[str, bytes]:
    files = sorted(p for p in (repo / "models" / EXP).rglob("*") if p.is_file())
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Path:
    """A venv with only the serving install (`pip install 'lstm-pipeline[registry]'`), without
    compiling every module it installs (half the install; Python compiles what it imports)."""
    root = tmp_path_factory.mktemp("serve") / "venv"
    source = copy_repo(root.parent / "source")  # a build writes build/ beside the sources
    venv.create(root, with_pip=True)
    pip = [root / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile",
           f"{source}[registry]"]  # fmt: skip
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def size_mb(folder: Path) -> float:
    """Installed files, bytecode aside (the serving venv is installed without it)."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.suffix != ".pyc")
    return sum(p.stat().st_size for p in files) / 2**20


def test_pull_release_and_predict_from_another_clone(pushed, s3, registry, serving, ucr_csv):
    env = {**s3, **registry}
    clone = pushed.parent.parent / "b" / "repo"  # another folder: another checkout path
    clone.parent.mkdir()
    sh(clone.parent, "git", "clone", "-q", str(pushed), str(clone), env=env)
    (clone / ".venv").symlink_to(BIN.parent)  # .ci/release runs the project's venv

    release = sh(clone, ".ci/release", env={**env, "NOTES_DIR": "notes"})
    assert outputs(clone) == outputs(pushed)
    up_to_date = sh(clone, "dvc", "repro", env=env)
    assert "Data and pipelines are up to date" in up_to_date.stdout

    # the same checkpoint, exported again at another path in another process: the same bytes
    sh(clone, "dvc", "repro", "-f", "-s", f"export@{EXP}", f"validate@{EXP}", env=env)
    assert outputs(clone) == outputs(pushed)
    assert sh(clone, "dvc", "status", "--json", "dvc.yaml", env=env).stdout.strip() == "{}"

    client = MlflowClient(registry["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias(NAME, "champion")
    assert version.version == "1" and "registered" in release.stdout
    card = (clone / "notes" / f"{EXP}.md").read_text()
    assert card == version.description and f"`{version.tags['onnx_sha256']}`" in card
    assert "### Release gates" in card and "| accuracy |" in card
    stored = bucket(s3).list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")["Contents"]
    assert any(o["Key"].endswith("model.onnx") for o in stored)  # MLflow's artifacts on S3

    history = sh(clone, "lstm-pipeline", "release", "--history", EXP, env=env).stdout
    moves = [line for line in history.splitlines() if line.startswith("| 20")]
    assert len(moves) == 1 and "| @champion | - | v1 |" in moves[0]

    predict = serving / "bin" / "lstm-pipeline"
    args = ["predict", f"models:/{NAME}@champion", *ucr_csv, "-o", "pred.csv"]
    sh(clone, predict, *args, env=env)
    report = json.loads((clone / f"metrics/{EXP}/validate.json").read_text())
    assert accuracy(clone / "pred.csv", ucr_csv) == report["accuracy"]
    no_torch = sh(clone, serving / "bin" / "python", "-c", "import torch", env=env, check=False)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr
    train = sh(clone, predict, "train", EXP, env=env, check=False)
    assert train.returncode == 2 and train.stderr.count("\n") == 1
    assert "is not installed: pip install 'lstm-pipeline[train]'" in train.stderr
    print(f"serving venv {size_mb(serving):.0f} MB, full venv {size_mb(BIN.parent):.0f} MB")
    assert size_mb(serving) < 0.25 * size_mb(BIN.parent)


def test_a_remote_without_the_outputs_fails_the_release_and_trains_nothing(pushed, s3, registry):
    env = {**s3, **registry}
    clone = pushed.parent.parent / "c" / "repo"
    clone.parent.mkdir()
    sh(clone.parent, "git", "clone", "-q", str(pushed), str(clone), env=env)
    (clone / ".venv").symlink_to(BIN.parent)
    sh(clone, "dvc", "remote", "modify", "--local", "team", "url", f"s3://{BUCKET}/empty", env=env)
    client = MlflowClient(registry["MLFLOW_TRACKING_URI"])
    before = client.search_model_versions()
    proc = sh(clone, ".ci/release", env=env, check=False)
    assert proc.returncode == 1
    assert "::error::the DVC remote 'team' lacks outputs that dvc.lock names" in proc.stdout
    assert not (clone / "models" / EXP / "model.ckpt").exists()
    assert client.search_model_versions() == before
    # a remote it cannot reach: it said the remote lacked the outputs, and pointed at a rebuild
    unreachable = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    proc = sh(clone, ".ci/release", "--rebuild", env=unreachable, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "::error::cannot reach the DVC remote 'team' (s3://" in proc.stdout
    assert "nothing was pulled or rebuilt" in proc.stdout
    assert not (clone / "models" / EXP / "model.ckpt").exists()
