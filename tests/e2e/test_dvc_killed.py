"""kill -9 of `dvc repro` itself: its training stops too (no unsupervised run left behind), and
the next `dvc repro` resumes it and ends with the bytes of a training that was never stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import copy_repo

pytestmark = pytest.mark.slow

EXP = "lstm_airline"
BIN = Path(sys.executable).parent
SHRINK = [f"experiments.{EXP}.fit.max_epochs=120", f"experiments.{EXP}.model.hidden_size=16",
          "trainer.progress_bar=false"]  # fmt: skip


def sh(repo: Path, *cmd, **kwargs):
    # dvc runs a stage through $SHELL; /bin/sh (dash) stays between dvc and the training
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "SHELL": "/bin/sh",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db"}  # fmt: skip
    return subprocess.Popen(cmd, cwd=repo, env=env, **kwargs)


def test_killed_dvc_stops_its_training_and_the_next_repro_resumes(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    for cmd in (
        ["git", "init", "-q"],
        ["lstm-pipeline", "compose", *SHRINK],
        ["git", "add", "-A"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
    ):
        assert sh(repo, *cmd).wait() == 0
    log = open(tmp_path / "dvc.log", "w")
    dvc = sh(repo, "dvc", "repro", f"train@{EXP}", stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list((repo / ".resume" / EXP).glob("*/resume.ckpt")):
        assert dvc.poll() is None and time.monotonic() < deadline, log.name
        time.sleep(0.05)
    training = [p for p in psutil.Process(dvc.pid).children(recursive=True)
                if "train" in " ".join(p.cmdline())]  # fmt: skip
    for p in training:  # frozen, so that the kill lands before the training can end
        p.suspend()
    assert training and list((repo / ".resume" / EXP).glob("*/resume.ckpt"))
    dvc.send_signal(signal.SIGKILL)
    dvc.wait()
    for p in training:
        p.resume()
    _, alive = psutil.wait_procs(training, timeout=30)
    assert not alive, "the training went on after dvc was killed"
    assert list((repo / ".resume" / EXP).glob("*/resume.ckpt"))  # kept for the next run

    rerun = sh(repo, "dvc", "repro", f"train@{EXP}", stdout=log, stderr=subprocess.STDOUT)
    assert rerun.wait(300) == 0, (tmp_path / "dvc.log").read_text()[-3000:]
    assert "resuming from" in (tmp_path / "dvc.log").read_text()
    resumed = (repo / f"models/{EXP}/model.ckpt").read_bytes()

    (repo / f"models/{EXP}/model.ckpt").unlink()
    again = sh(repo, "dvc", "repro", "-f", f"train@{EXP}", stdout=log, stderr=subprocess.STDOUT)
    assert again.wait(300) == 0
    assert (repo / f"models/{EXP}/model.ckpt").read_bytes() == resumed  # as if never stopped
