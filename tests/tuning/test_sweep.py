"""Real local sweeps: `lstm-pipeline tune` in a subprocess starting its own Ray."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.tuning.results import flatten
from tests.conftest import write_params
from tests.tuning.conftest import EXP, sweep_params

pytestmark = pytest.mark.slow


def tune_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "tune", EXP, *args]


def runs(tag_filter: str = "") -> list:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("lstm-pipeline")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], tag_filter)


# A Ray session as a command holds one, quiet as `lstm-pipeline` makes it, for longer than the
# ~30 s after which Ray's C++ side said it found no metrics agent (ray[tune] has none). Started
# with the module and read by its last test, so the wait costs no time of its own.
QUIET_SESSION = """
import time
from pipeline.quiet import quiet
quiet()
from pipeline.ray_cluster import ray_session
with ray_session():
    time.sleep(40)
"""


@pytest.fixture(scope="module", autouse=True)
def quiet_ray_session(tmp_path_factory):
    err = tmp_path_factory.mktemp("quiet-ray") / "stderr"
    with err.open("w") as stream:
        proc = subprocess.Popen([sys.executable, "-c", QUIET_SESSION], stderr=stream)
    yield proc, err
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_local_sweep_asha_stops_early_and_the_best_trial_reproduces(
    tune_workdir, params, monkeypatch
):
    # A grid run one trial at a time makes ASHA deterministic: some lr=1e-5 trial reaches the
    # first rung after an lr=1e-2 one, is worse than the rung's median, and is stopped.
    # Ray waiting no time for a trial's end before it reuses the actor (its 2 s, under load):
    # the next trial failed, and the sweep waited for it without end.
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "0")
    space = {
        "fit": {"lr": {"choice": [1e-2, 1e-5]}, "batch_size": None, "weight_decay": None},
        "model": {
            "hidden_size": {"choice": [8, 32]},
            "num_layers": None,
            "cell": None,
            "dropout": None,
        },
    }
    write_params(
        sweep_params(
            params, search="grid", num_samples=1, max_concurrent_trials=1, max_epochs=3, space=space
        )
    )
    proc = subprocess.Popen(tune_cmd(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The results' folder becomes a file while trials run (as a disk gone read-only would
    # fail): the trials are kept, and --resume writes the results without training them again.
    results = tune_workdir / ".ray_results" / f"tune-{EXP}" / "results.jsonl"
    deadline = time.monotonic() + 120
    while not results.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.poll()
        time.sleep(0.2)
    shutil.rmtree("tune")
    Path("tune").write_text("a file where the results' folder goes")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 8 and err.strip().splitlines()[-1].endswith(
        f"`lstm-pipeline tune {EXP} --resume` writes the sweep's results without training its "
        "trials again"
    ), err[-3000:]
    Path("tune").unlink()
    proc = subprocess.run(tune_cmd("--resume"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tune_workdir / "tune" / EXP
    table = pd.read_csv(out / "results.csv")
    epochs = table.groupby("trial")["epoch"].max()
    assert len(epochs) == 4
    assert epochs.max() == 3 and epochs.min() < 3  # ASHA stopped at least one trial early
    assert (out / "val_loss.png").stat().st_size > 0
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["val_loss"] == pytest.approx(table["val_loss"].min(), abs=1e-8)

    # MLflow: one parent run for the sweep, one nested child run per trial
    (parent,) = runs("tags.stage = 'tune'")
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val_loss"] == pytest.approx(best["val_loss"])
    children = runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4
    assert {c.data.params["fit/lr"] for c in children} <= {"1e-05", "0.01"}
    statuses = [c.info.status for c in children]
    assert set(statuses) <= {"FINISHED", "KILLED"}, statuses

    # The documented command: params.yaml composed with the best params, then the train stage
    printed = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune-apply", EXP, "--print"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.startswith("dvc exp run -S ") and f"{EXP}.fit.max_epochs=" in printed
    # A trial worse than the current model (its train.json) is refused unless --force.
    current = tune_workdir / f"metrics/{EXP}/train.json"
    current.parent.mkdir(parents=True, exist_ok=True)
    current.write_text(json.dumps({"best_val_loss": best["val_loss"] / 2}))
    composed = (tune_workdir / "params.yaml").read_text()
    assert main(["tune-apply", EXP]) == 4
    assert (tune_workdir / "params.yaml").read_text() == composed
    assert main(["tune-apply", EXP, "trainer.progress_bar=false", "--force"]) == 0
    assert main(["train", EXP]) == 0
    reproduced = json.loads((tune_workdir / f"metrics/{EXP}/train.json").read_text())
    assert abs(reproduced["best_val_loss"] - best["val_loss"]) <= 1e-6


@pytest.mark.parametrize("after_s", [1.5, 4.0])
def test_sigterm_while_a_sweep_starts_is_one_line(tune_workdir, params, after_s):
    """ray.init's own handlers ended it with exit 15, a segfault, Ray's stack dump or exit 0."""
    write_params(sweep_params(params, num_samples=4, max_epochs=300))
    proc = subprocess.Popen(
        tune_cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(after_s)  # in its imports, or in Ray's start
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("lstm-pipeline tune: ") and "stopped by SIGTERM" in last, err[-2000:]


def test_interrupted_sweep_resumes_without_redoing_finished_trials(tune_workdir, params):
    # Enough trials (about a second each here) that the sweep cannot end before Ctrl+C lands.
    trials_total = 10
    write_params(
        sweep_params(
            params,
            num_samples=trials_total,
            max_concurrent_trials=1,
            scheduler="fifo",
            search="optuna",
        )
    )
    proc = subprocess.Popen(
        tune_cmd(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        # One trial at a time: a trial that ended before another one's run started is one Tune
        # has seen end. Read from the runs' times, not from catching a run while it is RUNNING
        # (a busy machine's polls can miss that window in every trial).
        while time.monotonic() < deadline and proc.poll() is None:
            trial_runs = runs("tags.stage = 'tune-trial'")
            latest_start = max((r.info.start_time for r in trial_runs), default=0)
            finished = [r for r in trial_runs if r.info.status == "FINISHED"
                        and r.info.end_time <= latest_start]  # fmt: skip
            if finished:
                break
            time.sleep(0.2)
        assert finished and proc.poll() is None, "no trial seen finished while the sweep ran"
        # as Ctrl+C does, Tune saves its state and stops (it used to die in Ray's handler: exit
        # 134 with a stack dump and no line of ours)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1].startswith("lstm-pipeline tune: error: sweep stopped by ")
    assert f"lstm-pipeline tune {EXP} --resume" in err
    assert [r.info.status for r in runs("tags.stage = 'tune'")] == ["KILLED"]
    assert "RUNNING" not in {r.info.status for r in runs("tags.stage = 'tune-trial'")}
    done_before = {r.data.tags["trial_id"] for r in finished}
    assert len(done_before) < trials_total
    # the rest of the trials under other settings: it mixed them into one result, exit 0
    changed = sweep_params(params, num_samples=trials_total, scheduler="asha", search="optuna")
    write_params(changed)
    refused = subprocess.run(tune_cmd("--resume"), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.endswith(
        "error: tune.scheduler: 'fifo' when the sweep started, 'asha' now; --resume continues a "
        "sweep as it was started (put it back, or start over without --resume)\n"
    ), refused.stderr
    write_params(changed | {"tune": {**changed["tune"], "scheduler": "fifo"}})

    resumed = subprocess.run(tune_cmd("--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    table = pd.read_csv(tune_workdir / "tune" / EXP / "results.csv")
    assert table["trial"].nunique() == trials_total
    assert (table.groupby("trial")["epoch"].max() == 2).all()
    assert len(runs("tags.stage = 'tune'")) == 1  # the same parent run, continued
    trials = [r.data.tags["trial_id"] for r in runs("tags.stage = 'tune-trial'")]
    for trial_id in done_before:
        assert trials.count(trial_id) == 1  # not trained again


def test_pbt_sweep_exploits_but_never_at_the_last_epoch(tune_workdir, params):
    # Perturbing every epoch of 3: without PBTKeepingLastEpoch, lower-quantile trials were also
    # cloned at their last epoch, and the clones failed with no epoch left to train. Epochs 1
    # and 2 give PBT (random donors, some without a checkpoint yet) two chances to exploit.
    space = {
        "fit": {"lr": {"grid": [1e-2, 1e-5]}, "batch_size": None, "weight_decay": None},
        "model": {
            "hidden_size": {"grid": [8, 16, 32]},
            "num_layers": None,
            "dropout": None,
            "cell": None,
        },
    }
    write_params(
        sweep_params(
            params,
            scheduler="pbt",
            search="grid",
            num_samples=1,
            max_epochs=3,
            perturbation_interval=1,
            space=space,
        )
    )
    tmp = tune_workdir / "tmp"  # the sweep's TMPDIR: what its trials leave in temp shows there
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.run(tune_cmd(), capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp.glob("checkpoint_tmp_*")), "restored trials left checkpoint copies behind"
    # no trial error, and not Ray's C++ "Failed to establish connection to the metrics
    # exporter agent" ~20 s into the session either (ray[tune] has no metrics agent)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "Error" in line or "exporter agent" in line]
    assert not errors, out[-3000:]

    table = pd.read_csv(tune_workdir / "tune" / EXP / "results.csv")
    assert table["trial"].nunique() == 6 and table["epoch"].max() == 3
    # Each epoch carries the params it ran under. Ray's policy log holds every exploit as
    # [trial, donor, trial's step, donor's step, donor's config, new config]: the clone's epochs
    # after the donor's step ran under the new config.
    global_log = tune_workdir / ".ray_results" / f"tune-{EXP}" / "pbt_global.txt"
    assert global_log.exists(), "PBT exploited no trial"
    exploits = [json.loads(line) for line in global_log.read_text().splitlines()]
    for tag, _, _, donor_step, _, new_config in exploits:
        trial = table[table["trial"] == int(tag.split("_", 1)[0])]
        later = [e[3] for e in exploits if e[0] == tag and e[3] > donor_step]
        rows = trial[(trial["epoch"] > donor_step) & (trial["epoch"] <= min(later, default=3))]
        assert len(rows) > 0
        for _, row in rows.iterrows():
            assert {k: row[k] for k in flatten(new_config)} == pytest.approx(flatten(new_config))
    # Every trial's last segment ran to the end: tested and its MLflow run FINISHED.
    finished = {
        r.data.tags["trial_id"]
        for r in runs("tags.stage = 'tune-trial'")
        if r.info.status == "FINISHED"
    }
    assert len(finished) == 6
    best = yaml.safe_load((tune_workdir / "tune" / EXP / "best_params.yaml").read_text())
    assert best["reproducible"] is False
    applied = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune-apply", EXP, "--print"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "warning:" in applied.stderr and "PBT" in applied.stderr


def test_a_sweep_whose_every_trial_diverges_fails_and_keeps_the_earlier_result(
    tune_workdir, params
):
    """It exited 0 with val_loss NaN in best_params.yaml, which tune-apply then applied."""
    earlier = tune_workdir / "tune" / EXP / "best_params.yaml"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("val_loss: 0.5\noverrides: {}\n")
    space = {"fit": {"lr": {"choice": [1e30]}, "batch_size": None, "weight_decay": None}}
    write_params(sweep_params(params, num_samples=1, max_epochs=1, space=space))
    proc = subprocess.run(tune_cmd(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 7, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lstm-pipeline tune: error: every trial diverged (val/loss NaN or inf")
    assert earlier.read_text() == "val_loss: 0.5\noverrides: {}\n"
    assert [r.info.status for r in runs("tags.stage = 'tune'")] == ["FAILED"]


def test_a_ray_session_says_nothing_the_user_need_not_read(quiet_ray_session):
    """Ray's C++ side printed "E ... Failed to establish connection to the metrics exporter
    agent. Metrics will not be exported" into every sweep that ran longer than ~30 s."""
    proc, err = quiet_ray_session
    assert proc.wait(timeout=120) == 0
    assert err.read_text() == ""
