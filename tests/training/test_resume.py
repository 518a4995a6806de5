"""A training killed (kill -9) or stopped (SIGTERM) mid-fit resumes from its last epoch and ends
with the same bytes as a training that was never stopped, in one MLflow run holding the same
metrics (the epochs it redoes logged once)."""

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from tests.conftest import BIN, REPO, as_in_a_terminal, tracked_runs, write_params

pytestmark = pytest.mark.slow

OUTPUTS = ("model.ckpt", "train.json", "learning_curve.csv")


PREPARED: dict[str, Path] = {}  # exp -> the first repo's data/prepared/<exp>


def setup_repo(root: Path, exp: str, template: Path, **fit) -> Path:
    """A working dir with shrunk params for `exp`, its prepared data and an empty MLflow store."""
    root.mkdir(parents=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["trainer"]["progress_bar"] = False
    raw["experiments"][exp].setdefault("model", {})["hidden_size"] = 16
    raw["experiments"][exp].setdefault("fit", {}).update(fit)
    write_params(raw, root / "params.yaml")
    shutil.copy(template, root / "mlflow.db")
    prepared = Path(f"data/prepared/{exp}")
    if exp not in PREPARED:  # by the real stage once; its outputs do not depend on fit or model
        assert train(root, exp, "prepare").wait() == 0
        PREPARED[exp] = root / prepared
    else:
        shutil.copytree(PREPARED[exp], root / prepared)
    return root


def train(root: Path, exp: str, stage: str = "train") -> subprocess.Popen:
    # in its own process: SIGSTOP, which stop_mid_fit sends, cannot reach a warm child
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
           "LSTM_PIPELINE_WARM": "0"}  # fmt: skip
    log = open(root / f"{stage}.log", "a")
    return subprocess.Popen(
        [BIN / "lstm-pipeline", stage, exp],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip: SIGINT as a terminal's Ctrl+C sends it


def outputs(root: Path, exp: str) -> dict[str, bytes]:
    paths = [f"models/{exp}/model.ckpt", f"metrics/{exp}/train.json",
             f"plots/{exp}/train/learning_curve.csv"]  # fmt: skip
    return {Path(p).name: (root / p).read_bytes() for p in paths}


def stop_mid_fit(root: Path, exp: str, sig: int, after: float = 0) -> tuple[subprocess.Popen, int]:
    """Start a training; `after` s past its first resume point, freeze it (SIGSTOP) and send
    `sig`. Returns the process and the epoch its resume point holds."""
    proc = train(root, exp)
    deadline = time.monotonic() + 120
    while not list((root / ".resume" / exp).glob("*/**/resume.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline, (root / "train.log").read_text()
        time.sleep(0.02)
    time.sleep(after)
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(0.5)
    points = sorted((root / ".resume" / exp).glob("*/**/resume.ckpt"))
    epoch = max(torch.load(p, weights_only=False)["epoch"] for p in points)
    os.kill(proc.pid, sig)
    if sig != signal.SIGKILL:
        os.kill(proc.pid, signal.SIGCONT)
    proc.wait(60)
    return proc, epoch


def metrics(root: Path) -> Counter:
    """Every metric as (run name, key, step, value) but "epoch", which Lightning logs with each
    call of an epoch (train and val)."""
    with sqlite3.connect(root / "mlflow.db") as db:
        rows = db.execute(
            "SELECT runs.name, key, step, value FROM metrics JOIN runs USING (run_uuid)"
        ).fetchall()
    return Counter(r for r in rows if r[1] != "epoch")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mlflow_template):
    """Uninterrupted trainings: lstm_airline (one model, 150 epochs) and an ItalyPowerDemand
    ensemble of 2 that stops early."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for exp, fit in CASES.items():
        repo = setup_repo(root / exp, exp, mlflow_template, **fit)
        assert train(repo, exp).wait() == 0, (repo / "train.log").read_text()[-3000:]
        out[exp] = {"outputs": outputs(repo, exp), "metrics": metrics(repo)}
    return out


CASES = {
    "lstm_airline": {"max_epochs": 150},
    "lstm_italypowerdemand": {"max_epochs": 60, "patience": 4, "ensemble": 2},
}


@pytest.mark.parametrize("exp", CASES)
def test_kill_9_then_rerun_gives_the_same_bytes(reference, tmp_path, mlflow_template, exp):
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, **CASES[exp])
    proc, epoch = stop_mid_fit(repo, exp, signal.SIGKILL, after=0.5)  # epochs to redo
    assert proc.returncode == -signal.SIGKILL and epoch < CASES[exp]["max_epochs"] - 1
    rerun = train(repo, exp)
    assert rerun.wait() == 0, (repo / "train.log").read_text()[-3000:]
    assert "resuming from" in (repo / "train.log").read_text()
    assert outputs(repo, exp) == reference[exp]["outputs"]
    assert metrics(repo) == reference[exp]["metrics"]  # the redone epochs' sent once
    runs = tracked_runs(repo)
    assert all(status == "FINISHED" for _, status in runs), runs
    # each run (members too) continued, not started again
    assert len({name for name, _ in runs}) == len(runs)
    assert not (repo / ".resume").exists() or not any((repo / ".resume").iterdir())


def test_train_metrics_a_kill_cut_off_are_sent_by_the_resumed_fit(
    reference, tmp_path, mlflow_template
):
    """Lightning logs an epoch's train metrics after the hook that saves the resume point; a kill
    between the two is made here by deleting, from the store and from what the killed training
    kept, the train metrics of the epoch the resume point holds and of every later one (a kill
    that came epochs after the save, as under load, had sent those later ones)."""
    exp = "lstm_airline"
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, **CASES[exp])
    _, epoch = stop_mid_fit(repo, exp, signal.SIGKILL)
    steps = sorted(step for _, key, step, _ in reference[exp]["metrics"] if key == "train/loss")
    cut_from = steps[epoch]  # the step of that epoch's train metrics
    with sqlite3.connect(repo / "mlflow.db") as db:
        db.execute("DELETE FROM metrics WHERE key LIKE 'train/%' AND step >= ?", (cut_from,))
    for kept in (repo / ".resume" / exp).glob("*/pending_metrics.jsonl"):
        entries = [json.loads(line) for line in kept.read_text().splitlines()]
        cut = [
            e
            for e in entries
            if not (
                e[1] != "params" and e[1] >= cut_from and any(k.startswith("train/") for k in e[0])
            )
        ]
        kept.write_text("".join(json.dumps(e) + "\n" for e in cut))
    assert train(repo, exp).wait() == 0, (repo / "train.log").read_text()[-3000:]
    assert metrics(repo) == reference[exp]["metrics"]


@pytest.mark.parametrize(
    "sig, code, line",
    [
        (signal.SIGTERM, 143, "lstm-pipeline train: error: lstm_airline: stopped by SIGTERM; run"),
        # its terminal closed: it was exit 129, `stopped by SIGHUP; run it again`, no resume path
        (signal.SIGHUP, 143, "lstm-pipeline train: error: lstm_airline: stopped by SIGHUP; run"),
        (signal.SIGINT, 130, "lstm-pipeline train: interrupted"),  # Lightning's exit(1) inside
    ],
)
def test_a_signal_stops_with_one_line_and_resumes(
    reference, tmp_path, mlflow_template, sig, code, line
):
    exp = "lstm_airline"
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, **CASES[exp])
    proc, _ = stop_mid_fit(repo, exp, sig)
    assert proc.returncode == code
    assert (repo / "train.log").read_text().strip().splitlines()[-1].startswith(line)
    assert not (repo / f"models/{exp}/model.ckpt").exists()
    assert train(repo, exp).wait() == 0
    assert outputs(repo, exp) == reference[exp]["outputs"]
    assert metrics(repo) == reference[exp]["metrics"]
    assert tracked_runs(repo) == [(exp, "FINISHED")]


def test_a_changed_config_starts_over(tmp_path, mlflow_template):
    exp = "lstm_airline"
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, max_epochs=150)
    stop_mid_fit(repo, exp, signal.SIGKILL)
    stale = [p for p in (repo / ".resume" / exp).iterdir() if p.is_dir()]
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["experiments"][exp]["fit"]["max_epochs"] = 3
    write_params(raw, repo / "params.yaml")
    (repo / "train.log").unlink()
    assert train(repo, exp).wait() == 0
    assert "resuming" not in (repo / "train.log").read_text()
    assert not any(p.exists() for p in stale)
    assert yaml.safe_load((repo / f"metrics/{exp}/train.json").read_text())["epochs_run"] == 3
    # the killed training's run, which nothing will continue, ends (it stayed RUNNING)
    assert sorted(tracked_runs(repo)) == [(exp, "FINISHED"), (exp, "KILLED")]


def test_a_second_training_of_the_same_experiment_refuses_to_start(tmp_path, mlflow_template):
    exp = "lstm_airline"
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, max_epochs=3)
    lock_path = repo / ".resume" / exp / ".lock"
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running training holds it
        assert train(repo, exp).wait() == 1
    last = (repo / "train.log").read_text().strip().splitlines()[-1]
    assert "another training of this experiment is running" in last
    assert not (repo / "models").exists()


def test_sigterm_after_the_fit_keeps_the_resume_point(tmp_path, monkeypatch):
    """A SIGTERM that lands after Lightning's last check (while the outputs are written, say)
    stops the training too: it never ends as a success that removed its resume point."""
    from pipeline.config import load_config
    from pipeline.errors import Interrupted
    from pipeline.training.resume import resume_point

    monkeypatch.chdir(tmp_path)
    cfg, before = load_config(REPO / "params.yaml"), signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="stopped by SIGTERM"):
        with resume_point(cfg, "lstm_airline", "sha") as folder:
            os.kill(os.getpid(), signal.SIGTERM)
    assert (tmp_path / folder).is_dir() and signal.getsignal(signal.SIGTERM) is before


class _Saves(Callback):
    """The epochs at which a checkpoint was written (Lightning asks each callback for its state)."""

    def __init__(self):
        self.epochs = []

    def on_save_checkpoint(self, trainer, module, checkpoint):
        self.epochs.append(trainer.current_epoch)


class _Line(pl.LightningModule):
    def __init__(self, stop_at: int | None = None):
        super().__init__()
        self.layer, self.stop_at = torch.nn.Linear(1, 1), stop_at

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def on_train_batch_end(self, *_):  # before the epoch-end hooks, as early stopping does
        self.trainer.should_stop = self.current_epoch == self.stop_at

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("every_s", "stop_at", "saved"),
    [(0.0, None, [0, 1, 2, 3, 4, 5]), (3600.0, None, [0, 5]), (3600.0, 2, [0, 2])],
)
def test_resume_points_are_the_first_epoch_then_one_per_interval_and_the_last(
    tmp_path, monkeypatch, every_s, stop_at, saved
):
    """Saving every epoch end cost short epochs more than their training: a kill redoes at most
    SAVE_EVERY_S of training, and the fit's last epoch (or the one early stopping ends) is kept."""
    from pipeline.training import resume

    monkeypatch.setattr(resume, "SAVE_EVERY_S", every_s)
    saves = _Saves()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)))
    trainer = pl.Trainer(
        max_epochs=6,
        callbacks=[saves, resume.ResumeState(tmp_path / "resume.ckpt")],
        logger=False,
        enable_checkpointing=True,  # ResumeState is the Checkpoint: no default one is added
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Line(stop_at), data)
    assert saves.epochs == saved and (tmp_path / "resume.ckpt").exists()


@pytest.mark.parametrize("damage", [None, b"", b"garbage"])
def test_a_fit_stopped_right_after_its_best_epoch_resumes_to_the_same_model(
    tmp_path, mlflow_template, monkeypatch, capsys, damage
):
    """The resume point held early stopping's and the best checkpoint's state of the epoch
    before (Lightning calls their epoch-end hooks after every other callback's): resumed from
    its best epoch 0, this fit counted its patience from scratch and kept epoch 2's weights.
    A damaged resume point is named and the fit starts over (it failed every rerun, exit 1)."""
    from pipeline.cli import main

    exp, fit = "lstm_airline", {"max_epochs": 6, "lr": 0.1, "patience": 1}  # val/loss 0.043, 0.15
    done = {}
    for name in ("clean", "stopped"):
        repo = setup_repo(tmp_path / name, exp, mlflow_template, **fit)
        monkeypatch.chdir(repo)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
        if name == "stopped":
            stop_at_epoch_1(exp, monkeypatch)
            if damage is not None:
                (point,) = repo.glob(f".resume/{exp}/*/resume.ckpt")
                point.write_bytes(damage)
            capsys.readouterr()
        assert main(["train", exp]) == 0
        done[name] = outputs(repo, exp)
    assert json.loads(done["clean"]["train.json"])["best_epoch"] == 0
    assert done["stopped"] == done["clean"]
    said = capsys.readouterr().out
    assert ("damaged" in said and "starting over" in said) == (damage is not None), said


def test_checkpoints_are_renamed_into_place_not_moved_from_tmpdir(
    tmp_path, mlflow_template, monkeypatch
):
    """Lightning wrote each checkpoint in $TMPDIR, then moved it: where that is another file
    system (a tmpfs /tmp), a copy, and a kill mid-copy left a truncated resume point (the fit
    started over) or best.ckpt."""
    from pipeline.cli import main
    from pipeline.training.trainer import AtomicCheckpointIO

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path / "no such folder"))
        with pytest.raises(FileNotFoundError):
            TorchCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "lightning.ckpt")
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, tmp_path / "ours.ckpt")
    assert torch.load(tmp_path / "ours.ckpt") == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.ckpt"]

    def through_tmpdir(*_):
        raise AssertionError("a checkpoint saved by Lightning's TorchCheckpointIO")

    exp = "lstm_airline"
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, max_epochs=2)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{repo}/mlflow.db")
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", through_tmpdir)
    stop_at_epoch_1(exp, monkeypatch)  # a resume point saved
    assert main(["train", exp]) == 0


def stop_at_epoch_1(exp: str, monkeypatch) -> None:
    """Train `exp` in this process, stopped as by a kill at epoch 1's start: epoch 0's resume
    point is kept."""
    from pipeline.cli import main
    from pipeline.training.trainer import FiniteLoss

    def ctrl_c_at_epoch_1(self, trainer, _):
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(FiniteLoss, "on_train_epoch_start", ctrl_c_at_epoch_1, raising=False)
        assert main(["train", exp]) == 130


@pytest.mark.parametrize("lost", ["not found", "deleted"])
def test_a_resume_point_whose_run_is_gone_goes_on_in_a_new_run(
    lost, tmp_path, mlflow_template, monkeypatch, capsys
):
    """The store replaced (or MLFLOW_TRACKING_URI pointed elsewhere) after a kill: every rerun
    failed with exit 6, 'Run with id=... not found', until .resume was deleted by hand. The run
    deleted in the UI: every rerun failed with exit 6 after 120 s, the server "unreachable"."""
    from mlflow import MlflowClient

    from pipeline.cli import main
    from pipeline.training.resume import saved_run_id

    exp = "lstm_airline"
    repo = setup_repo(tmp_path / "repo", exp, mlflow_template, max_epochs=3)
    monkeypatch.chdir(repo)
    uri = f"sqlite:///{repo}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    stop_at_epoch_1(exp, monkeypatch)
    if lost == "deleted":
        (point,) = repo.glob(f".resume/{exp}/*/resume.ckpt")
        MlflowClient(uri).delete_run(saved_run_id(point.parent))
    else:
        shutil.copy(mlflow_template, repo / "mlflow.db")  # a new store
    capsys.readouterr()
    assert main(["train", exp]) == 0
    assert f"of the resume point is {lost} in sqlite:///" in capsys.readouterr().out
    ended = [(exp, "FAILED")] if lost == "deleted" else []  # the Ctrl+C'd one, in the bin
    assert tracked_runs(repo) == [*ended, (exp, "FINISHED")]
