"""Search spaces and the tune stage's bad input (no Ray cluster needed)."""

import fcntl
import json
import os
import socket
import threading
import time
from math import inf, nan
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import parse_config
from pipeline.errors import ConfigError, TrainingError
from pipeline.tuning.results import ResultLog, best_params, results_table
from pipeline.tuning.spaces import FIT_SPACE, search_space, to_ray
from tests.conftest import free_port, write_params
from tests.tuning.conftest import EXP, sweep_params


def cfg_with(params, **tune):
    params["tune"].update(tune)
    return parse_config(params)


def test_default_space_is_the_family_space_plus_fit(params):
    cfg = parse_config(params)
    for exp_name in ("lstm_italypowerdemand", "attention_lstm_gunpoint", "conv_lstm_moving_digits"):
        exp = cfg.experiment(exp_name)
        space = search_space(exp, cfg.tune)
        assert space["model"] == type(exp.model).search_space
        assert space["fit"] == FIT_SPACE


def test_conf_tune_space_overrides_key_by_key(params):
    cfg = cfg_with(
        params,
        space={"model": {"hidden_size": {"choice": [8]}, "cell": None}, "fit": {"lr": None}},
    )
    space = search_space(cfg.experiment(EXP), cfg.tune)
    assert space["model"]["hidden_size"] == {"choice": [8]} and "cell" not in space["model"]
    assert "lr" not in space["fit"] and space["fit"]["batch_size"] == FIT_SPACE["batch_size"]


def test_grid_search_turns_choices_into_grid_axes(params):
    from ray import tune

    cfg = cfg_with(params, search="grid", space={"fit": {"lr": {"choice": [0.1, 0.01]}}})
    space = search_space(cfg.experiment(EXP), cfg.tune)
    with pytest.raises(ConfigError, match=r"tune\.space\.model\.dropout: grid search needs choice"):
        to_ray(space, "grid")
    only_choices = {"fit": {"lr": space["fit"]["lr"]}}
    assert to_ray(only_choices, "grid") == {"fit": {"lr": tune.grid_search([0.1, 0.01])}}
    assert isinstance(to_ray(space, "random")["fit"]["lr"], tune.search.sample.Categorical)


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"max_concurrent_trials": 0}, r"tune\.max_concurrent_trials: Input should be greater"),
        ({"resources_per_trial": {"cpu": 0}}, r"tune\.resources_per_trial\.cpu"),
        ({"space": {"fit": {"lr": {"normal": [0, 1]}}}}, r"tune\.space: .*fit\.lr: give one"),
        ({"space": {"fit": {"lr": {"uniform": [1]}}}}, r"fit\.lr: uniform takes \[low, high\]"),
        ({"space": {"fit": {"lr": {"loguniform": [0, 1]}}}}, r"fit\.lr: .*, low > 0 \(got \[0, 1"),
        ({"space": {"model": {"hidden_size": {"randint": [10, 5]}}}}, r"low < high \(got \[10"),
        ({"space": {"fit": {"lr": {"uniform": [0.1, float("inf")]}}}}, r"finite numbers"),
        ({"scheduler": "hyperband"}, r"tune\.scheduler: Input should be"),
    ],
)
def test_bad_tune_config_names_the_key(params, tune, message):
    with pytest.raises(ConfigError, match=message):
        cfg_with(params, **tune)


def test_space_key_the_model_does_not_have(tune_workdir, params, capsys):
    space = {"model": {"kernel_size": {"choice": [3, 5]}}}
    write_params(sweep_params(params, space=space))
    assert main(["tune", EXP]) == 2
    err = capsys.readouterr().err
    assert "tune.space.model.kernel_size: model of model 'lstm' has no key 'kernel_size'" in err


@pytest.mark.parametrize("via", ["config", "env"])
def test_unreachable_cluster_fails_fast_naming_the_address(
    tune_workdir, params, capsys, monkeypatch, via
):
    address = f"127.0.0.1:{free_port()}"
    if via == "config":
        write_params(sweep_params(params, address=address))
    else:
        write_params(sweep_params(params))
        monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.monotonic()
    assert main(["tune", EXP]) == 2
    assert time.monotonic() - start < 30
    key = "tune.address" if via == "config" else "RAY_ADDRESS"
    assert f"{key}: cannot reach a Ray cluster at {address}" in capsys.readouterr().err


def test_a_ray_client_address_is_refused_naming_what_to_give(tune_workdir, params, capsys):
    """exit 1, `unexpected ValueError: Ray Client requires pip package ray[client]`."""
    write_params(sweep_params(params, address="ray://127.0.0.1:10001"))
    assert main(["tune", EXP]) == 2
    assert capsys.readouterr().err == (
        "lstm-pipeline tune: error: tune.address: 'ray://127.0.0.1:10001' is a Ray Client "
        "address, which needs ray[client] (not installed); give the head's GCS address, "
        "host:6379: this driver joins the cluster\n"
    )


def test_resume_without_state_and_apply_without_sweep(tune_workdir, params, capsys):
    write_params(sweep_params(params))
    assert main(["tune", EXP, "--resume"]) == 2
    assert "--resume: no sweep state to resume" in capsys.readouterr().err
    assert main(["tune-apply", EXP]) == 2
    assert f"tune/{EXP}/best_params.yaml: not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    "reply, tls",
    [(b"HTTP/1.1 400 Bad Request\r\n\r\n", None), (None, None), (None, "false")],
)
def test_a_port_where_something_else_listens_is_not_taken_for_ray(
    tune_workdir, params, capsys, monkeypatch, reply, tls
):
    """ray.init would wait without end on it: a web server, or one that never answers
    (RAY_USE_TLS=false, which Ray reads as off, skipped the check)."""
    if tls:
        monkeypatch.setenv("RAY_USE_TLS", tls)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        conn.recv(64)
        if reply:
            conn.sendall(reply)
        time.sleep(15)
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    write_params(sweep_params(params))
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setattr("pipeline.ray_cluster.ANSWER_TIMEOUT_S", 2)
    start = time.monotonic()
    assert main(["tune", EXP]) == 2
    assert time.monotonic() - start < 15
    err = capsys.readouterr().err
    expected = (
        "answers, but not as a Ray cluster"
        if reply
        else f"127.0.0.1:{port} accepts connections but sent nothing within 2 s"
    )
    assert err.startswith("lstm-pipeline tune: error: RAY_ADDRESS: ") and expected in err
    listener.close()


def test_tune_apply_print_keeps_the_overrides_and_the_gate(tune_workdir, params, capsys):
    """--print dropped the other overrides and printed a trial worse than the current model."""
    write_params(sweep_params(params))
    (tune_workdir / f"tune/{EXP}").mkdir(parents=True)
    (tune_workdir / f"tune/{EXP}/best_params.yaml").write_text(
        f"val_loss: 1\noverrides: {{experiments.{EXP}.fit.lr: 0.01}}\n"
    )
    assert main(["tune-apply", EXP, "trainer.max_epochs=3", "--print"]) == 0
    line = f"dvc exp run -S trainer.max_epochs=3 -S ++experiments.{EXP}.fit.lr=0.01\n"
    assert capsys.readouterr().out == line
    (tune_workdir / f"metrics/{EXP}").mkdir(parents=True)
    (tune_workdir / f"metrics/{EXP}/train.json").write_text('{"best_val_loss": 0.5}')
    assert main(["tune-apply", EXP, "--print"]) == 4
    assert main(["tune-apply", EXP, "--print", "--force"]) == 0


@pytest.mark.parametrize(
    "best, report, code, expected",
    [
        ("", None, 2, "best_params.yaml: not a sweep's best trial"),
        ("val_loss: [1\n", None, 2, "best_params.yaml: line 2, column 1: expected ',' or ']'"),
        ("val_loss: .nan\noverrides: {}\n", None, 2, "not a sweep's best trial (a finite"),
        ("val_loss: 1\noverrides: {}\n", "{bad", 3, "train.json: not the train stage's report"),
        ("val_loss: 1\noverrides: {}\n", "[1]", 3, "train.json: not the train stage's report"),
        (  # copied from another experiment's folder: it rewrote that one's params
            "val_loss: 1\nexperiment: other\noverrides: {}\n",
            None,
            2,
            "best_params.yaml: the best trial of experiment 'other'",
        ),
        (
            "val_loss: 1\noverrides: {experiments.other.fit.lr: 0.1}\n",
            None,
            2,
            "best_params.yaml: sets experiments.other.fit.lr, outside experiment",
        ),
        ("val_loss: true\noverrides: {}\n", None, 2, "not a sweep's best trial"),  # read as 1
        (  # it named the key, not the file
            f"val_loss: 1\noverrides: {{experiments.{EXP}.model.hidden_size: -5}}\n",
            None,
            2,
            f"conf/ with the overrides of tune/{EXP}/best_params.yaml: invalid config: "
            f"experiments.{EXP}.model.hidden_size: Input should be greater than 0",
        ),
    ],
)
def test_a_damaged_sweep_result_or_report_is_named(
    tune_workdir, params, capsys, best, report, code, expected
):
    write_params(sweep_params(params))
    (tune_workdir / f"tune/{EXP}").mkdir(parents=True)
    (tune_workdir / f"tune/{EXP}/best_params.yaml").write_text(best)
    if report is not None:
        (tune_workdir / f"metrics/{EXP}").mkdir(parents=True)
        (tune_workdir / f"metrics/{EXP}/train.json").write_text(report)
    before = (tune_workdir / "params.yaml").read_text()
    assert main(["tune-apply", EXP]) == code
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert (tune_workdir / "params.yaml").read_text() == before


@pytest.mark.parametrize(
    "space, expected",
    [
        (
            {"model": {"hidden_size": {"choice": [16, -5]}}},
            "tune.space.model.hidden_size: choice [16, -5] draws -5: invalid config: experiments."
            f"{EXP}.model.hidden_size: Input should be greater than 0",
        ),
        (  # its ends passed: every trial failed inside Ray, 4 tracebacks, exit 2 after 62 s
            {"model": {"hidden_size": {"uniform": [4, 16]}}},
            "tune.space.model.hidden_size: uniform [4, 16] draws 11.416: invalid config: "
            f"experiments.{EXP}.model.hidden_size: Input should be a valid integer",
        ),
        ({"fit": {"max_epochs": {"choice": [1]}}}, "tune.space.fit.max_epochs: a trial's epochs"),
    ],
)
def test_a_space_value_the_model_refuses_is_named_before_ray_starts(
    tune_workdir, params, capsys, space, expected
):
    """Every trial that drew it used to fail inside Ray, ending in a traceback ~25 lines long."""
    write_params(sweep_params(params, space=space))
    start = time.monotonic()
    assert main(["tune", EXP]) == 2
    assert time.monotonic() - start < 10
    assert capsys.readouterr().err.startswith(f"lstm-pipeline tune: error: {expected}")


@pytest.mark.parametrize(
    "tune, expected",
    [
        (  # exit 1, `unexpected AssertionError: grace_period must be <= max_t!`
            {"grace_period": 5, "max_epochs": 2},
            "tune.grace_period: 5 epochs before ASHA may stop a trial, more than a trial's 2",
        ),
        (  # after Ray's start
            {"scheduler": "pbt", "space": {"fit": {k: None for k in FIT_SPACE}}},
            "tune.scheduler: pbt needs fit.lr, weight_decay or batch_size in space",
        ),
    ],
)
def test_a_scheduler_setting_is_refused_before_an_earlier_sweeps_state_goes(
    tune_workdir, params, capsys, tune, expected
):
    """Both came after the earlier sweep's state was deleted."""
    write_params(sweep_params(params, **tune))
    state = tune_workdir / f".ray_results/tune-{EXP}"
    state.mkdir(parents=True)
    (state / "kept").write_text("an interrupted sweep's")
    assert main(["tune", EXP]) == 2
    assert capsys.readouterr().err.startswith(f"lstm-pipeline tune: error: {expected}")
    assert (state / "kept").exists()


def test_a_second_sweep_of_the_experiment_refuses_and_keeps_the_first_ones_state(
    tune_workdir, params, capsys
):
    """It deleted the running (or interrupted) sweep's state before its own checks."""
    write_params(sweep_params(params))
    state = tune_workdir / f".ray_results/tune-{EXP}"
    (state / "kept").mkdir(parents=True)
    with open(state.with_name(f"tune-{EXP}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        assert main(["tune", EXP]) == 1
    assert "another sweep of this experiment is running" in capsys.readouterr().err
    assert (state / "kept").exists()
    write_params(sweep_params(params, resources_per_trial={"cpu": 100}))
    assert main(["tune", EXP]) == 2  # before a local Ray starts, and the state goes
    assert capsys.readouterr().err == (
        "lstm-pipeline tune: error: tune.resources_per_trial.cpu: 100 exceeds this machine's "
        f"{os.cpu_count()} CPUs (no tune.address: a local Ray)\n"
    )
    assert (state / "kept").exists()


def test_the_best_trial_is_the_best_finite_one():
    table = pd.DataFrame(
        {"trial": [0, 0, 1, 1], "epoch": [1, 2, 1, 2], "val_loss": [nan, inf, 0.5, 0.4],
         "fit.lr": [1e30, 1e30, 1e-3, 1e-3]}
    )  # fmt: skip
    best = best_params(table, EXP, "fifo")
    assert (best["trial"], best["val_loss"], best["overrides"][f"experiments.{EXP}.fit.lr"]) == (
        1, 0.4, 1e-3,
    )  # fmt: skip
    with pytest.raises(TrainingError, match="every trial diverged"):
        best_params(table[table.trial == 0], EXP, "fifo")


def test_resume_with_another_number_of_trials_says_so_before_ray_starts(
    tune_workdir, params, capsys
):
    """It ran, then ended 'interrupted: 2 of 3 trials done; continue with --resume', at every
    --resume."""
    write_params(sweep_params(params, num_samples=3))
    state = tune_workdir / f".ray_results/tune-{EXP}"
    state.mkdir(parents=True)
    (state / "tuner.pkl").write_bytes(b"")  # what Tune looks for to restore
    (state / "lstm_pipeline_sweep.json").write_text('{"trials": 2}')
    assert main(["tune", EXP, "--resume"]) == 2
    assert "was started with 2 trials, not 3; --resume continues a sweep as it was started" in (
        capsys.readouterr().err
    )


def test_a_sweep_whose_results_cannot_be_written_is_refused_before_it_starts(
    tune_workdir, params, capsys
):
    write_params(sweep_params(params))
    Path("tune").write_text("a file where the results' folder goes")
    assert main(["tune", EXP]) == 8
    assert capsys.readouterr().err.strip().startswith(f"lstm-pipeline tune: error: tune/{EXP}")
    assert not Path(".ray_results").exists()  # no trial ran
    Path("tune").unlink()
    Path("tune").mkdir()
    Path(f"tune/{EXP}").write_text("a file where the results' folder goes")  # every trial ran
    assert main(["tune", EXP]) == 8
    assert capsys.readouterr().err == (
        f"lstm-pipeline tune: error: tune/{EXP}: cannot write there (a file where its folder "
        "goes)\n"
    )
    assert not Path(".ray_results").exists()


def test_a_damaged_saved_state_is_named_before_ray_starts(tune_workdir, params, capsys):
    """Ray left the file out and started the sweep over, ending 'interrupted' with exit 130."""
    write_params(sweep_params(params))
    state = tune_workdir / f".ray_results/tune-{EXP}"
    state.mkdir(parents=True)
    (state / "tuner.pkl").write_bytes(b"")  # what Tune looks for to restore
    (state / "experiment_state-2026-12-07_10-00-00.json").write_text("garbage")
    assert main(["tune", EXP, "--resume"]) == 3
    assert capsys.readouterr().err == (
        f"lstm-pipeline tune: error: {state}/experiment_state-2026-12-07_10-00-00.json: damaged; "
        "start over without --resume\n"
    )


def test_a_result_line_a_kill_cut_off_is_left_out_with_a_warning(tmp_path, capsys):
    """It ended every --resume with exit 1, `unexpected JSONDecodeError`."""
    row = {"trial_id": "a", "epoch": 1, "val_loss": 0.5, "params": {"fit.lr": 0.01}}
    log = tmp_path / "results.jsonl"
    log.write_text(json.dumps(row) + "\n" + json.dumps({**row, "epoch": 2})[:30])
    ResultLog(log).on_trial_result(0, [], SimpleNamespace(trial_id="a"), {
        "training_iteration": 3, "val/loss": 0.25, "config": {"fit": {"lr": 0.01}}})  # fmt: skip
    table = results_table(log, {"a": 0})
    assert table.epoch.tolist() == [1, 3] and table.val_loss.tolist() == [0.5, 0.25]
    assert capsys.readouterr().err == (
        f"warning: {log}: line 2 is not a whole result (a write a kill cut off?); left out\n"
    )
