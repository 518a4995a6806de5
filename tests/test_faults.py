"""The failure-mode catalogue: each fault gives one line naming the culprit and its documented
exit code, writes nothing partial and keeps the earlier good output."""

import errno
import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.config import compose
from pipeline.errors import ConfigError, SystemFault, TrackingError
from pipeline.io import append_text, atomic_dir, atomic_file, system_fault
from pipeline.tracking import ensure_reachable, training_run
from tests.conftest import (
    BIN,
    REPO,
    as_in_a_terminal,
    free_port,
    tracked_runs,
    without_file_rights,
    write_params,
)

EXP = "lstm_airline"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    return err


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "mlflow.db" and p.suffix != ".lock"  # a stage's, empty
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    """A tiny lstm_airline, prepared, trained, exported and validated (gates reported only)."""
    root = tmp_path_factory.mktemp("trained")
    raw = yaml.safe_load((Path(__file__).parent.parent / "params.yaml").read_text())
    raw["trainer"].update(progress_bar=False, gates="report")
    exp = raw["experiments"][EXP]
    exp["model"]["hidden_size"] = 8
    exp["fit"].update(max_epochs=2)
    write_params(raw, root / "params.yaml")
    shutil.copy(mlflow_template, root / "mlflow.db")
    cwd, uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    try:
        for stage in ("prepare", "train", "export", "validate"):
            assert main([stage, EXP]) == 0, stage
    finally:
        os.chdir(cwd)
        os.environ.pop("MLFLOW_TRACKING_URI")
        if uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    return root


@pytest.fixture
def repo(trained, tmp_path, monkeypatch):
    """A private copy of `trained` as the working directory, with its own MLflow store."""
    work = tmp_path / "repo"
    shutil.copytree(trained, work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work}/mlflow.db")
    return work


def params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


# --- config -------------------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_line_and_column(repo, capsys):
    (repo / "params.yaml").write_text("trainer:\n  max_epochs: [1, 2\nseed: 3\n")
    assert main(["prepare", EXP]) == 2
    assert one_line(capsys).startswith("lstm-pipeline prepare: error: params.yaml: line 3, column")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"seed: 1\nseed: 2\n", "params.yaml: line 2, column 1: duplicate key 'seed'"),  # DVC's too
        (b"seed: 0\ntracking:\n  experiment_name: caf\xe9\n", "params.yaml: line 3: byte 0xe9"),
        (None, "params.yaml: Is a directory"),
    ],
)
def test_params_yaml_a_stage_cannot_read(repo, capsys, content, expected):
    (repo / "params.yaml").unlink()
    if content is None:
        (repo / "params.yaml").mkdir()
    else:
        (repo / "params.yaml").write_bytes(content)
    assert main(["prepare", EXP]) == 2
    assert f"lstm-pipeline prepare: error: {expected}" in one_line(capsys)


@pytest.mark.parametrize("args", [["compose"], ["compose", "--check"]])
def test_compose_onto_a_params_yaml_that_is_a_folder(repo, capsys, args):
    (repo / "params.yaml").unlink()
    (repo / "params.yaml").mkdir()
    assert main(args) == 2
    assert one_line(capsys) == "lstm-pipeline compose: error: params.yaml: Is a directory"
    assert not list(repo.glob(".params.yaml.*"))


def test_a_conf_folder_given_is_the_one_named(tmp_path):
    with pytest.raises(ConfigError, match=f"^{tmp_path}/nope/: "):
        compose(conf=tmp_path / "nope")


@pytest.mark.parametrize("section, value", [("fit", None), ("model", "x")])  # None: `fit:` alone
def test_a_section_of_a_default_recipe_that_is_no_mapping_names_its_key(
    repo, capsys, section, value
):
    raw = params(repo)
    raw["experiments"]["attention_lstm_gunpoint"][section] = value
    write_params(raw, repo / "params.yaml")
    assert main(["train", "attention_lstm_gunpoint"]) == 2
    assert f"experiments.attention_lstm_gunpoint.{section}: Input should be" in one_line(capsys)


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"lstm-pipeline {version}\n"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("- a\n- b\n", "params.yaml: expected a mapping of keys, got list"),
        (
            "[]\n",
            "params.yaml: expected a mapping of keys, got list",
        ),  # `experiments: Field required`
        ("# nothing\n", "params.yaml: empty (run `lstm-pipeline compose` to write it from conf/)"),
    ],
)
def test_params_that_are_not_a_mapping(repo, capsys, text, expected):
    (repo / "params.yaml").write_text(text)
    assert main(["train", EXP]) == 2
    assert expected in one_line(capsys)


# --- tracking -----------------------------------------------------------------------------------


def test_unreachable_server_fails_train_fast_before_anything_is_written(repo, capsys, monkeypatch):
    before = tree_digest(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    assert main(["train", EXP]) == 6
    assert time.monotonic() - start < 15
    assert "is unreachable" in one_line(capsys)
    assert tree_digest(repo) == before


@pytest.mark.parametrize("uri", ["sqlite://mlflow.db", "sqlite://"])
def test_a_sqlite_uri_without_its_third_slash_is_refused(repo, capsys, monkeypatch, uri):
    """`sqlite://mlflow.db` was exit 1, 'unexpected ArgumentError'; `sqlite://` trained into an
    in-memory store, lost at the exit (exit 0)."""
    before = tree_digest(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["train", EXP]) == 6
    assert f"MLflow store {uri}: not a SQLite file's URI" in one_line(capsys)
    assert tree_digest(repo) == before


def test_validate_writes_nothing_when_the_server_is_unreachable(repo, capsys, monkeypatch):
    before = tree_digest(repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert main(["validate", EXP]) == 6
    one_line(capsys)
    assert tree_digest(repo) == before


@pytest.mark.parametrize(
    "fault",
    ["step model of another model", "metrics folder a file", "int8 folder held", "plots held"],
)
def test_a_validate_that_fails_leaves_every_earlier_output(repo, capsys, monkeypatch, fault):
    """Plots, int8 model and report are put in place together: the plots and int8/ used to be
    replaced before the streaming check and the report's write; the report was placed first,
    and a folder that could not be replaced (immutable, or another process's) left a new
    report beside the earlier int8 model; then the plots' left the new int8 model beside the
    earlier report (it was placed first)."""
    for folder in (f"plots/{EXP}/validate", f"models/{EXP}/int8"):
        (repo / folder / "earlier.txt").write_text("from the last validate")
    report = repo / f"metrics/{EXP}/validate.json"  # unlike the one this run would write
    report.write_text(json.dumps({**json.loads(report.read_text()), "earlier": True}))
    if fault.endswith("held"):  # as `chattr +i`: neither renamed nor removed
        held = repo / (
            f"models/{EXP}/int8" if fault.startswith("int8") else f"plots/{EXP}/validate"
        )
        rename, rmtree = Path.rename, shutil.rmtree

        def refused(call):
            def held_or(path, *args, **kwargs):
                if Path(path).absolute() == held:
                    raise PermissionError(1, "Operation not permitted", str(path))
                return call(path, *args, **kwargs)

            return held_or

        monkeypatch.setattr(Path, "rename", refused(rename))
        monkeypatch.setattr(shutil, "rmtree", refused(rmtree))
    elif fault == "metrics folder a file":
        shutil.rmtree(repo / f"metrics/{EXP}")
        (repo / f"metrics/{EXP}").write_text("")
    else:
        from pipeline.export.onnx_export import export_step
        from pipeline.training.module import SequenceModule

        meta = {"task": "classification", "input_shape": [20, 3], "labels": ["a", "b"]}
        other = SequenceModule({"name": "lstm", "cell": "gru", "hidden_size": 4}, meta).eval()
        export_step(other, repo / f"models/{EXP}/streaming/model_step.onnx", "lstm")
    before = tree_digest(repo)
    assert main(["validate", EXP]) == (3 if fault == "step model of another model" else 8)
    expected = {"metrics folder a file": "cannot write there", "int8 folder held": "int8",
                "plots held": f"plots/{EXP}/validate",
                "step model of another model": "made for another model"}  # fmt: skip
    assert expected[fault] in one_line(capsys)
    assert tree_digest(repo) == before
    # nor an empty placeholder that the held folder could not be moved onto
    assert not [*(repo / f"models/{EXP}").glob(".int8.*"), *(repo / f"plots/{EXP}").glob(".*")]


@pytest.mark.parametrize("stage", ["export", "validate"])
def test_an_export_or_validate_beside_another_of_the_experiment_is_refused(repo, capsys, stage):
    """Two validates at once replaced each other's files while one logged them to MLflow: exit
    8, 'models/<exp>/int8/model.onnx: No such file or directory', in 4 of 5 tries."""
    import fcntl

    before = tree_digest(repo)
    (repo / f".resume/{EXP}").mkdir(parents=True, exist_ok=True)
    with open(repo / f".resume/{EXP}/export.lock", "w") as held:  # as the other process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main([stage, EXP]) == 1
    assert f"{EXP}: another export or validate of this experiment is running" in one_line(capsys)
    assert tree_digest(repo) == before


def test_a_training_that_ends_keeps_the_lock_another_export_holds(repo, capsys):
    """A finished training deleted .resume/<exp>/ with the export.lock an export held: a
    second export then ran beside it (both exit 0)."""
    import fcntl

    (repo / f".resume/{EXP}").mkdir(parents=True, exist_ok=True)
    with open(repo / f".resume/{EXP}/export.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert main(["train", EXP]) == 0
        assert main(["export", EXP]) == 1
    assert f"{EXP}: another export or validate of this experiment is running" in one_line(capsys)
    assert [p.name for p in (repo / f".resume/{EXP}").iterdir()] == ["export.lock"]


@pytest.mark.parametrize(
    "stage, sig",
    [("export", signal.SIGTERM), ("validate", signal.SIGTERM), ("export", signal.SIGHUP)],
)
def test_sigterm_during_export_or_validate_is_one_line_and_keeps_the_outputs(repo, stage, sig):
    """They ended with exit 143 (SIGHUP, its terminal closed: 129) and nothing on stderr."""
    before = tree_digest(repo)
    env = {**os.environ, "LSTM_PIPELINE_WARM": "0"}
    proc = subprocess.Popen([BIN / "lstm-pipeline", stage, EXP], cwd=repo, env=env,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_in_a_terminal)  # fmt: skip
    time.sleep(2.5)  # in its imports or its work: the handler is set before either
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert err == f"lstm-pipeline {stage}: stopped by {sig.name}; its earlier outputs are kept\n"
    assert tree_digest(repo) == before


def catches(pid: int, sig: signal.Signals) -> bool:
    """Its handler for `sig` is set (/proc's SigCgt mask), by the command, not the forked test."""
    if b"lstm-pipeline" not in Path(f"/proc/{pid}/cmdline").read_bytes():  # not exec'd yet
        return False
    caught = re.search(r"SigCgt:\s*(\w+)", Path(f"/proc/{pid}/status").read_text())[1]
    return bool(int(caught, 16) >> (sig - 1) & 1)


@pytest.mark.parametrize(
    "sig, said",
    [(signal.SIGTERM, "stopped by SIGTERM; its earlier outputs are kept"),
     (signal.SIGINT, "interrupted")],
)  # fmt: skip
def test_a_signal_while_the_command_imports_its_modules_is_one_line(repo, sig, said):
    """Sent once the entry's first line has run (pipeline/__main__.py), in the 0.1-0.2 s before
    its modules are in: SIGTERM was exit -15 with no line, Ctrl+C a traceback."""
    before = tree_digest(repo)
    env = {**os.environ, "LSTM_PIPELINE_WARM": "0"}
    for _ in range(5):  # until one lands before pydantic is in: a loaded machine polls late
        proc = subprocess.Popen([BIN / "lstm-pipeline", "export", EXP], cwd=repo, env=env,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=as_in_a_terminal)  # fmt: skip
        deadline = time.monotonic() + 30
        while not catches(proc.pid, signal.SIGTERM):
            assert time.monotonic() < deadline and proc.poll() is None, "never set its handler"
            time.sleep(0.001)
        importing = b"pydantic_core" not in Path(f"/proc/{proc.pid}/maps").read_bytes()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, err
        assert err == f"lstm-pipeline export: {said}\n"
        if importing:
            break
    else:
        pytest.fail("every signal came after the command's imports")
    assert tree_digest(repo) == before


def ignores(pid: int, sig: signal.Signals) -> bool:
    ignored = re.search(r"SigIgn:\s*(\w+)", Path(f"/proc/{pid}/status").read_text())[1]
    return bool(int(ignored, 16) >> (sig - 1) & 1)


def test_a_signal_ignored_when_the_command_started_stays_ignored(repo):
    """`nohup` (SIGHUP) or a background job of a shell without job control (SIGINT): the
    command's handlers replaced the ignore, and a `nohup` training stopped (exit 129) when its
    terminal closed."""

    def as_nohup():
        for sig in (signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)

    env = {**os.environ, "LSTM_PIPELINE_WARM": "0"}
    proc = subprocess.Popen([BIN / "lstm-pipeline", "export", EXP], cwd=repo, env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_nohup)  # fmt: skip
    deadline = time.monotonic() + 30
    while b"libtorch" not in Path(f"/proc/{proc.pid}/maps").read_bytes():  # at its work
        assert time.monotonic() < deadline and proc.poll() is None, "never imported torch"
        time.sleep(0.01)
    assert catches(proc.pid, signal.SIGTERM)
    assert ignores(proc.pid, signal.SIGHUP) and ignores(proc.pid, signal.SIGINT)
    proc.send_signal(signal.SIGHUP)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "stopped" not in err and "interrupted" not in err


@pytest.mark.parametrize("stdout", ["a pipe with no reader", "/dev/full"])
def test_a_stdout_that_cannot_be_written_does_not_stop_the_training(repo, stdout):
    """`train | head`: Rich's progress bar ended the fit with a silent exit 1, its finished
    model unsaved; `train > /dev/full`: the same fit lost, exit 8 naming nothing."""
    raw = params(repo)
    raw["trainer"]["progress_bar"] = True
    write_params(raw, repo / "params.yaml")
    ckpt = repo / "models" / EXP / "model.ckpt"
    before = ckpt.stat().st_mtime_ns
    cmd, env = [BIN / "lstm-pipeline", "train", EXP], {**os.environ, "LSTM_PIPELINE_WARM": "0"}
    full = stdout == "/dev/full"
    with open("/dev/full", "w") as sink:
        proc = subprocess.Popen(cmd, cwd=repo, env=env, stderr=subprocess.PIPE, text=True,
                                stdout=sink if full else subprocess.PIPE)  # fmt: skip
    if proc.stdout:
        proc.stdout.close()  # the reader gone before the first line
    err = proc.communicate(timeout=300)[1]
    assert "Traceback" not in err  # Lightning's own lines ("Seed set to 0") come before
    if full:
        assert proc.returncode == 8, err
        assert err.endswith(
            "\nlstm-pipeline train: error: stdout: No space left on device; the work is done, its "
            "output from then on was discarded\n"
        )
    else:
        assert proc.returncode == 141 and "lstm-pipeline" not in err  # as `cat` or `git log`
    assert ckpt.stat().st_mtime_ns > before  # the fit's model saved


@pytest.mark.parametrize(
    "stage, cpu_s, code, said",
    [("export", 2, 152, "lstm-pipeline export: stopped by SIGXCPU; its earlier outputs are kept"),
     ("train", 12, 143, f"lstm-pipeline train: error: {EXP}: stopped by SIGXCPU; run the train "
                        "stage again to resume from ")],
)  # fmt: skip
def test_a_cpu_time_limit_stops_a_stage_as_sigterm_does(repo, stage, cpu_s, code, said):
    """`ulimit -S -t` (a batch system's CPU-time limit) sends SIGXCPU: exit 152 with no line,
    and a temp file beside model.onnx."""
    raw = params(repo)
    raw["experiments"][EXP]["fit"].update(max_epochs=100_000, patience=100_000)  # until stopped
    write_params(raw, repo / "params.yaml")
    before = tree_digest(repo)
    proc = subprocess.run(
        [BIN / "lstm-pipeline", stage, EXP], cwd=repo, capture_output=True, text=True,
        env={**os.environ, "LSTM_PIPELINE_WARM": "0"}, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, resource.RLIM_INFINITY)),
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(said) and "Traceback" not in proc.stderr
    if stage == "export":
        assert tree_digest(repo) == before
    else:
        assert list((repo / ".resume" / EXP).glob("*/**/resume.ckpt"))


SIGNAL_IN_A_WEAKREF_CALLBACK = """
import argparse, os, signal, sys, time, weakref
from pipeline import cli
from pipeline.errors import Interrupted

class Held: pass

def interrupted(*_):
    raise Interrupted("stopped by SIGTERM")

def work(_):
    if sys.argv[2] == "training's":
        signal.signal(signal.SIGTERM, interrupted)
    held = Held()
    # the signal lands inside the callback, where an exception is only printed
    ref = weakref.ref(held, lambda _: os.kill(os.getpid(), signal.Signals[sys.argv[3]]))
    del held
    time.sleep(float(sys.argv[1]))  # the work that went on

args = argparse.Namespace(command="predict", debug=False, func=work)
cli.parser = lambda: argparse.Namespace(parse_args=lambda _: args)
sys.exit(cli.main([]))
"""


@pytest.mark.parametrize(
    "work_s, handler, sig, said",
    [(0.0, "ours", "SIGTERM", "stopped by SIGTERM; its earlier outputs are kept"),
     (30.0, "ours", "SIGTERM", "stopped by SIGTERM; its earlier outputs are kept"),
     (30.0, "training's", "SIGTERM", "error: stopped by SIGTERM"),
     (30.0, "Python's", "SIGINT", "interrupted"),
     (0.0, "Python's", "SIGINT", "interrupted")],
)  # fmt: skip
def test_a_signal_swallowed_inside_a_callback_still_stops_the_command(work_s, handler, sig,
                                                                      said):  # fmt: skip
    """Landing in importlib's module-lock callback, SIGTERM was printed as 'Exception ignored'
    and the sweep ran on to exit 0 (CI of stop 68); Ctrl+C the same way."""
    started = time.monotonic()
    script = [sys.executable, "-c", SIGNAL_IN_A_WEAKREF_CALLBACK, str(work_s), handler, sig]
    proc = subprocess.run(
        script, capture_output=True, text=True, timeout=60, preexec_fn=as_in_a_terminal
    )
    assert proc.returncode == (130 if sig == "SIGINT" else 143), proc.stderr
    assert proc.stderr == f"lstm-pipeline predict: {said}\n"
    assert time.monotonic() - started < 20  # not after the work


def test_a_store_whose_driver_is_missing_is_named_without_its_password(tmp_path):
    """It was exit 1, 'unexpected ModuleNotFoundError: No module named 'psycopg''."""
    (tmp_path / "in.csv").write_text("series_id,time,value\na,0,1.0\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": "postgresql://u:s3cr3t@127.0.0.1:1/db"}
    cmd = [BIN / "lstm-pipeline", "predict", "models:/x@champion", "in.csv", "-o", "out.csv"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 6, done.stderr
    assert done.stderr.endswith(
        "MLflow store postgresql://u:***@127.0.0.1:1/db: its driver, Python package 'psycopg', "
        "is not installed\n"
    )


def test_a_password_inside_a_librarys_message_is_masked():
    """MLflow's failed API request named its URL, password and all."""
    from pipeline.cli import _no_passwords

    said = "API request to http://bob:hunter2@127.0.0.1:5123/api/2.0/x failed"
    assert _no_passwords(said) == "API request to http://bob:***@127.0.0.1:5123/api/2.0/x failed"


def test_a_password_in_the_uri_is_never_printed(repo, capsys, monkeypatch):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{port}")
    assert main(["train", EXP]) == 6
    err = one_line(capsys)
    assert "s3cret" not in err and f"http://alice:***@127.0.0.1:{port}" in err


def test_credentials_in_the_uri_reach_a_live_server(server):
    ensure_reachable(server.replace("http://", "http://alice:s3cret@"))


def test_a_read_only_store_fails_before_anything_is_written(repo):
    before = tree_digest(repo)
    (repo / "mlflow.db").chmod(0o444)
    cmd = [sys.executable, "-m", "pipeline", "validate", EXP]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=repo, preexec_fn=without_file_rights
    )
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.endswith("mlflow.db: read-only (attempt to write a readonly database)\n")
    assert proc.stderr.count("\n") == 1 and tree_digest(repo) == before


def test_locked_sqlite_store_fails_within_15_s(repo, capsys):
    holder = sqlite3.connect(repo / "mlflow.db")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        assert main(["train", EXP]) == 6
        assert time.monotonic() - start < 15
    finally:
        holder.rollback()
        holder.close()
    assert "database is locked" in one_line(capsys)


def test_corrupt_sqlite_store(repo, capsys):
    (repo / "mlflow.db").write_bytes(b"not a database" * 100)
    assert main(["validate", EXP]) == 6
    assert "mlflow.db: file is not a database" in one_line(capsys)


def test_two_processes_creating_a_new_store_at_once_both_succeed(tmp_path):
    # MLflow alone: both usually failed in alembic's migration ("expected to match one row")
    code = (
        "from mlflow import MlflowClient; from pipeline.tracking import ensure_reachable; "
        "ensure_reachable('sqlite:///mlflow.db'); "
        "MlflowClient('sqlite:///mlflow.db').create_experiment(__import__('sys').argv[1])"
    )
    procs = [
        subprocess.Popen([BIN / "python", "-c", code, name], cwd=tmp_path, stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    errors = [proc.communicate(timeout=120)[1].decode()[-2000:] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]  # no temp store left


def test_an_experiment_another_process_creates_first_is_used_not_an_error(
    tmp_path, mlflow_template, monkeypatch
):
    """Two `make repro` lanes on a fresh store: both trainings looked the experiment up, found
    none, and the second's create failed (UNIQUE constraint; train exit 6). Staged here: the
    lookup answers none, as it did just before the other lane created the experiment."""
    from pipeline.training.logger import PatientMLFlowLogger

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    made = MlflowClient(uri).create_experiment("lstm-pipeline")  # by the other lane
    logger = PatientMLFlowLogger(experiment_name="lstm-pipeline", tracking_uri=uri, run_name="r")
    lookup, answers = logger._mlflow_client.get_experiment_by_name, [None]
    monkeypatch.setattr(logger._mlflow_client, "get_experiment_by_name",
                        lambda name: answers.pop() if answers else lookup(name))  # fmt: skip
    assert logger.experiment.get_run(logger.run_id).info.experiment_id == made
    assert not answers  # the staged answer was read


def test_a_password_that_breaks_the_url_is_not_shown(repo, capsys, monkeypatch):
    """A `#` ends the netloc: it was exit 6, `... does not answer in HTTP: "nonnumeric port:
    'pa'"`, after the URI with its password."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:pa#ss@127.0.0.1:5999")
    assert main(["train", EXP]) == 2
    err = one_line(capsys)
    assert "'pa'" not in err and ":pa" not in err
    assert err.startswith(
        "lstm-pipeline train: error: MLFLOW_TRACKING_URI: http://alice:***@127.0.0.1:5999 has "
        "no valid host:port; a '#', '?' or '/' in a password must be percent-encoded"
    )


def test_a_store_that_cannot_be_created_gives_one_line(repo, capsys, monkeypatch):
    """In a folder it cannot write (read-only, immutable) it came after MLflow's 10 retries,
    105 s, as exit 6."""
    uri = f"sqlite:///{repo}/params.yaml/mlflow.db"  # under a file
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    assert main(["train", EXP]) == 8
    assert time.monotonic() - start < 10
    assert one_line(capsys).startswith(
        f"lstm-pipeline train: error: MLflow store {uri}: cannot create it (File exists: "
    )


@pytest.mark.parametrize("store", ["file://{repo}/mlruns", "mlruns"])
def test_a_folder_store_gets_one_line_before_anything_is_written(repo, capsys, monkeypatch, store):
    before = tree_digest(repo)
    uri = store.format(repo=repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["train", EXP]) == 6
    err = one_line(capsys)
    assert err.startswith(f"lstm-pipeline train: error: MLflow store {uri}: ")
    assert "MLFLOW_ALLOW_FILE_STORE=true" in err
    assert tree_digest(repo) == before


def test_mlflow_server_that_cannot_start_says_why(tmp_path):
    """Each used to exit 0 after uvicorn's error (port taken), or with a traceback."""

    def serve(root: Path, port: int | str, *more: str) -> tuple[int, str]:
        cmd = [BIN / "lstm-pipeline", "mlflow-server", "--port", str(port), "--root", root, *more]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return done.returncode, done.stderr.strip().splitlines()[-1]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve(tmp_path / "a", port) == (
            8, f"lstm-pipeline mlflow-server: error: 127.0.0.1:{port}: cannot serve there "
            "(Address already in use)",
        )  # fmt: skip
    assert serve(tmp_path / "a", 70000) == (
        2, "lstm-pipeline mlflow-server: error: argument --port: '70000' is not a TCP port "
        "(1-65535)",
    )  # fmt: skip
    (tmp_path / "file").write_text("")
    assert serve(tmp_path / "file", free_port()) == (
        8, f"lstm-pipeline mlflow-server: error: {tmp_path}/file/mlflow.db: cannot write there "
        f"(File exists: {tmp_path}/file)",
    )  # fmt: skip
    # a destination it cannot write (every upload answered 500), or no artifact store
    assert serve(tmp_path / "a", free_port(), "--artifacts-destination", tmp_path / "file") == (
        8, f"lstm-pipeline mlflow-server: error: {tmp_path}/file/.write-test: cannot write there "
        f"(File exists: {tmp_path}/file)",
    )  # fmt: skip
    assert serve(tmp_path / "a", free_port(), "--artifacts-destination", "nope://x")[1] == (
        "lstm-pipeline mlflow-server: error: --artifacts-destination: nope://x: no artifact "
        "store nope:// (known: s3, gs, wasbs, abfss, hdfs, viewfs, ftp, sftp, oci, file, or a "
        "local path)"
    )
    # a server starting on the port: both passed the bind test, the second exited 0
    port = free_port()
    with open(
        Path(tempfile.gettempdir()) / f"lstm-pipeline-mlflow-127.0.0.1-{port}.lock", "w"
    ) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert serve(tmp_path / "a", port) == (
            8, f"lstm-pipeline mlflow-server: error: 127.0.0.1:{port}: cannot serve there "
            "(another lstm-pipeline mlflow-server holds it)",
        )  # fmt: skip
    (tmp_path / "b").mkdir()
    (tmp_path / "b/mlflow.db").write_text("not a database")
    assert serve(tmp_path / "b", free_port()) == (
        6, f"lstm-pipeline mlflow-server: error: MLflow store sqlite:///{tmp_path}/b/mlflow.db: "
        "file is not a database",
    )  # fmt: skip


# --- stage inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated"], ids=["empty", "truncated"])
def test_broken_checkpoint(repo, capsys, content):
    before = (repo / f"models/{EXP}/model.onnx").read_bytes()
    (repo / f"models/{EXP}/model.ckpt").write_bytes(content)
    assert main(["export", EXP]) == 3
    assert f"models/{EXP}/model.ckpt: not a model checkpoint of this pipeline" in one_line(capsys)
    assert (repo / f"models/{EXP}/model.onnx").read_bytes() == before


@pytest.mark.parametrize("stage", ["export", "validate"])
def test_a_checkpoint_with_nan_weights_is_refused(repo, capsys, stage):
    """It was exported (exit 0), passed validate with NaN metrics (quantize off) and was
    released."""
    import torch

    outputs = {k: v for k, v in tree_digest(repo).items() if k.startswith(("models", "metrics"))}
    ckpt_path = repo / f"models/{EXP}/model.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    name = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(ckpt, ckpt_path)
    assert main([stage, EXP]) == 3
    expected = f"models/{EXP}/model.ckpt: weight {name.removeprefix('model.')} holds NaN or inf"
    assert expected in one_line(capsys)
    after = {k: v for k, v in tree_digest(repo).items() if k.startswith(("models", "metrics"))}
    assert {k: v for k, v in after.items() if k != f"models/{EXP}/model.ckpt"} == {
        k: v for k, v in outputs.items() if k != f"models/{EXP}/model.ckpt"
    }


def test_a_model_made_for_other_data_or_another_family_is_refused(repo, capsys):
    """As when another experiment's files are copied in: export exported them and validate
    reported them as this experiment's."""
    outputs = {k: v for k, v in tree_digest(repo).items() if k.startswith(("models", "metrics"))}
    meta_path = repo / f"data/prepared/{EXP}/meta.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    meta["scaler"]["mean"] = [m + 1 for m in meta["scaler"]["mean"]]
    meta_path.write_text(json.dumps(meta))
    assert main(["validate", EXP]) == 3
    assert f"models/{EXP}/model.onnx: made for other data (scaler: " in one_line(capsys)
    assert main(["export", EXP]) == 3
    assert f"models/{EXP}/model.ckpt: made for other data (scaler: " in one_line(capsys)
    meta_path.write_text(original)
    raw = params(repo)
    raw["experiments"][EXP]["model"] = raw["experiments"]["attention_lstm_airline"]["model"]
    write_params(raw, repo / "params.yaml")
    assert main(["export", EXP]) == 3
    assert "model.ckpt: a lstm model, but the experiment's model.name is 'attention_lstm'" in (
        one_line(capsys)
    )
    assert main(["validate", EXP]) == 3  # its model.onnx: validate said "unexpected ValueError"
    assert (
        f'models/{EXP}/model.onnx: a "lstm" model, but the experiment\'s model.name is '
        "'attention_lstm'; run the export stage"
    ) in one_line(capsys)
    assert {k: v for k, v in tree_digest(repo).items() if k in outputs} == outputs


def test_missing_prepared_data(repo, capsys):
    (repo / f"data/prepared/{EXP}/series.npy").unlink()  # it named x_val.npy, a classifier's
    assert main(["train", EXP]) == 3
    assert f"data/prepared/{EXP}/series.npy: not found; run the prepare stage" in one_line(capsys)
    shutil.rmtree(repo / "data/prepared")
    assert main(["train", EXP]) == 3
    assert "meta.json: not found; run the prepare stage first" in one_line(capsys)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda m: m.pop("scaler"), "scaler: missing; a forecast model needs it"),
        (lambda m: m.update(target_index=[5]), "target_index: [5] beyond the 1 scaled features"),
        (lambda m: m.update(task="classification"), "labels: missing; a classification model"),
        (lambda m: m.pop("features"), "features: 0 (and 0 future covariates) for inputs of 1"),
    ],
    ids=["no-scaler", "target-index", "task", "no-features"],  # no-features: trained, exit 0
)
@pytest.mark.parametrize("stage", ["train", "export"])
def test_a_meta_json_edited_out_of_shape_is_named(repo, capsys, edit, reason, stage):
    """Valid JSON, but not what the task reads: train and export said `unexpected
    AttributeError`, `IndexError` or `TypeError`, exit 1."""
    path = repo / f"data/prepared/{EXP}/meta.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    before = tree_digest(repo / "models")
    assert main([stage, EXP]) == 3
    line = one_line(capsys)
    assert line.startswith(f"lstm-pipeline {stage}: error: data/prepared/{EXP}/meta.json: not a "
                           "valid meta.json (") and reason in line  # fmt: skip
    assert tree_digest(repo / "models") == before


def test_truncated_prepared_array(repo, capsys):
    series = repo / f"data/prepared/{EXP}/series.npy"
    series.write_bytes(series.read_bytes()[:100])
    before = tree_digest(repo / "models")
    assert main(["train", EXP]) == 3
    assert f"{EXP}/series.npy: unreadable" in one_line(capsys)
    assert tree_digest(repo / "models") == before


# --- training -----------------------------------------------------------------------------------


def test_a_diverging_loss_stops_with_the_epoch_and_keeps_the_old_model(repo, capsys):
    raw = params(repo)
    raw["experiments"][EXP]["fit"].update(lr=1e30, gradient_clip_val=0.0, max_epochs=3)
    write_params(raw)
    before = tree_digest(repo / "models")
    assert main(["train", EXP]) == 7
    assert "loss is inf at epoch 0: training diverged" in one_line(capsys)
    assert tree_digest(repo / "models") == before
    # no resume point holds the diverged epoch (it was saved before the check): a rerun starts
    # over, not from inf weights at epoch 1
    assert main(["train", EXP]) == 7
    assert "loss is inf at epoch 0: training diverged" in one_line(capsys)


def test_a_model_too_large_for_memory(repo, capsys):
    raw = params(repo)
    raw["experiments"][EXP]["model"]["hidden_size"] = 2_000_000
    write_params(raw)
    assert main(["train", EXP]) == 8
    assert "out of memory; lower the model's size (model.hidden_size" in one_line(capsys)


def test_an_export_that_fails_keeps_the_earlier_model_with_its_step_model(repo, capsys):
    """model.onnx used to be replaced before streaming/ was written: a failure there left the
    new model beside the old step model."""
    folder = repo / f"models/{EXP}"
    (folder / "model.onnx").write_bytes(b"the earlier model")
    shutil.rmtree(folder / "streaming")
    (folder / "streaming").write_text("a file where the folder must be")
    before = tree_digest(repo)
    assert main(["export", EXP]) == 8
    assert one_line(capsys).startswith(
        f"lstm-pipeline export: error: models/{EXP}/streaming: cannot write there"
    )
    assert tree_digest(repo) == before


def test_a_train_that_fails_writing_keeps_every_earlier_output(repo, capsys):
    """model.ckpt and train.json used to be replaced before the learning curve was written."""
    (repo / f"models/{EXP}/model.ckpt").write_bytes(b"the earlier model")
    shutil.rmtree(repo / f"plots/{EXP}/train")
    (repo / f"plots/{EXP}/train").write_text("a file where the folder must be")
    outputs = ("models", "metrics", "plots")
    before = {k: v for k, v in tree_digest(repo).items() if k.startswith(outputs)}
    assert main(["train", EXP]) == 8
    assert one_line(capsys).startswith(
        f"lstm-pipeline train: error: plots/{EXP}/train: cannot write there"
    )
    assert {k: v for k, v in tree_digest(repo).items() if k.startswith(outputs)} == before


def test_the_temp_outputs_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [tmp_path / f".out.csv.{dead.pid}-x1", tmp_path / f".out.csv.{os.getpid()}-x2"]
    stale[0].mkdir()
    stale[1].write_text("a live writer's")
    with atomic_file(tmp_path / "out.csv") as tmp:
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [stale[1].name, "out.csv"]


SIGTERM_AS_EARLIER_OUTPUTS_GO = """
import argparse, os, signal, sys
from pathlib import Path
from pipeline import cli, io

removing = io._remove
def remove(path):  # the stop lands as the earlier outputs are deleted
    os.kill(os.getpid(), signal.SIGTERM)
    removing(path)

def work(_):
    io._remove = remove
    with io.Outputs() as place, place.file("report.json") as report:
        with place.folder("plots") as plots:
            (plots / "a.csv").write_text("new")
        report.write_text("new")

args = argparse.Namespace(command="validate", debug=False, func=work)
cli.parser = lambda: argparse.Namespace(parse_args=lambda _: args)
sys.exit(cli.main([]))
"""


def test_a_stop_while_earlier_outputs_are_deleted_leaves_the_new_ones_alone(tmp_path):
    """It left the earlier ones beside the new ones (hidden) and said they were kept."""
    (tmp_path / "report.json").write_text("old")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.csv").write_text("old")
    script = [sys.executable, "-c", SIGTERM_AS_EARLIER_OUTPUTS_GO]
    done = subprocess.run(script, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert done.stderr == (
        "lstm-pipeline validate: stopped by SIGTERM; its new outputs are in place; run it "
        "again to finish\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "report.json"]
    assert (tmp_path / "report.json").read_text() == (tmp_path / "plots/a.csv").read_text()
    assert (tmp_path / "report.json").read_text() == "new"


def test_disk_full_names_the_output_and_keeps_the_old_one(repo):
    """RLIMIT_FSIZE makes writes fail as a full disk does (EFBIG instead of ENOSPC)."""
    onnx = repo / f"models/{EXP}/model.onnx"
    before = onnx.read_bytes()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run(
        [BIN / "lstm-pipeline", "export", EXP],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=300,
    )
    assert proc.returncode == 8, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lstm-pipeline export: error: models/{EXP}/"), proc.stderr[-2000:]
    assert "File too large" in last
    assert onnx.read_bytes() == before
    assert not list(onnx.parent.glob(".*")), "a temp file was left behind"


@pytest.mark.parametrize(
    "its_journal_too, said",
    [(True, "MLflow store sqlite:///"),  # refused before the training: its check writes
     (False, "the outputs are written, but MLflow at ")],
)  # fmt: skip
def test_a_store_whose_disk_fails_is_named_at_once(repo, its_journal_too, said):
    """SQLite's 'disk I/O error' (a full disk: 'database or disk is full') under a run was
    retried for 120 s as an outage, then exit 6, 'the server did not take its results'; in the
    store's check before the training, exit 6."""
    db = repo / "mlflow.db"
    with closing(sqlite3.connect(db)) as store:  # free pages: the run starts, then fills them
        store.execute("CREATE TABLE pool (x)")
        store.execute("INSERT INTO pool VALUES (zeroblob(20000))")
        store.commit()
        store.execute("DROP TABLE pool")
        store.commit()
    limit = 100 if its_journal_too else db.stat().st_size + 100

    def small_store():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([BIN / "lstm-pipeline", "train", EXP], capture_output=True, text=True,
                          preexec_fn=small_store, timeout=100)  # fmt: skip
    assert proc.returncode == 8, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"lstm-pipeline train: error: {said}"), last
    assert "disk I/O error" in last, last


def test_test_metrics_that_overflow_fail_the_training_and_keep_the_model(repo, capsys):
    """fit.lr 1e8 without clipping: val/loss stayed finite (2e16), test/mae was inf, and the
    training ended exit 0 with that model.ckpt in place."""
    raw = params(repo)
    raw["experiments"][EXP]["fit"].update(lr=1e8, gradient_clip_val=0, max_epochs=10)
    write_params(raw)
    before = tree_digest(repo)
    assert main(["train", EXP]) == 7
    line = one_line(capsys)
    assert "is inf for the kept epoch" in line and "training diverged; lower fit.lr" in line, line
    outputs = {k: v for k, v in tree_digest(repo).items() if not k.startswith(".resume/")}
    assert outputs == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_gpu_trainer_without_a_gpu_names_the_trainer_and_opens_no_run(repo, capsys):
    raw = params(repo)
    raw["trainer"].update(accelerator="gpu", precision="bf16-mixed")
    write_params(raw)
    before = run_count()
    assert main(["train", EXP]) == 2
    assert "trainer (accelerator: gpu, devices: 1" in one_line(capsys)
    assert run_count() == before  # it used to open one and leave it RUNNING


@pytest.mark.parametrize("ensemble", [1, 2], ids=["one-model", "ensemble"])
def test_a_strategy_lightning_refuses_names_it_and_leaves_no_run_running(repo, capsys, ensemble):
    raw = params(repo)
    raw["trainer"]["strategy"] = "fsdp"  # Lightning's FSDP needs a GPU
    raw["experiments"][EXP]["fit"]["ensemble"] = ensemble  # members' runs are nested
    write_params(raw)
    assert main(["train", EXP]) == 2
    line = one_line(capsys)
    assert "strategy: fsdp" in line and "requires a GPU accelerator" in line, line
    assert "RUNNING" not in {run.info.status for run in all_runs()}  # it used to stay RUNNING


def store() -> MlflowClient:
    """The test's own store: MlflowClient() alone reads mlflow's global URI, which a training
    earlier in the session set to its store."""
    return MlflowClient(os.environ["MLFLOW_TRACKING_URI"])


def all_runs() -> list:
    client = store()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def run_count() -> int:
    return len(all_runs())


# --- release and predict ------------------------------------------------------------------------


def _lock_validate(repo: Path) -> None:
    """A dvc.lock whose validate@EXP records the current model.onnx and validate.json."""
    entry = lambda p: {"path": p, "md5": hashlib.md5((repo / p).read_bytes()).hexdigest()}  # noqa: E731
    stage = {"deps": [entry(f"models/{EXP}/model.onnx")],
             "outs": [entry(f"metrics/{EXP}/validate.json")]}  # fmt: skip
    (repo / "dvc.lock").write_text(yaml.safe_dump({"stages": {f"validate@{EXP}": stage}}))


@pytest.mark.parametrize(
    "report, expected",
    [("{not json", "not valid JSON"), ('{"mape": 0.1}', "has no boolean 'passed'")],
)
def test_corrupt_report_refused_by_release(repo, capsys, report, expected):
    (repo / f"metrics/{EXP}/validate.json").write_text(report)
    assert main(["release", "--exp", EXP]) == 4
    assert f"metrics/{EXP}/validate.json: {expected}" in one_line(capsys)


@pytest.mark.parametrize("history", ["trained-once", "retrained", "not-validated-here"])
def test_a_forged_metric_with_a_matching_dvc_lock_is_refused(repo, capsys, history):
    """Also after a training run again to the same bytes, which opens a run validate never saw
    (release checked that one alone, found no sha256 tags to check, and released the forgery),
    and where validate logged to no run of the checkpoint (another tracking URI)."""
    validated = next(run for run in all_runs() if "validate_json_sha256" in run.data.tags)
    run = validated.info.run_id
    expected = f"validate.json differs from what validate logged to training run {run}"
    if history == "retrained":
        tags = {"ckpt_sha256": validated.data.tags["ckpt_sha256"]}
        again = store().create_run(validated.info.experiment_id, tags=tags)
        assert training_run("lstm-pipeline", f"models/{EXP}/model.ckpt") == again.info.run_id
    if history == "not-validated-here":
        store().delete_tag(run, "validate_json_sha256")
        expected = f"training run {run} of this checkpoint holds no report from validate"
    report_path = repo / f"metrics/{EXP}/validate.json"
    report = json.loads(report_path.read_text())
    report.update(passed=True, failed_gates=[], mape=0.0001)
    report_path.write_text(json.dumps(report))
    _lock_validate(repo)  # the checksum edited to match
    assert main(["release", "--exp", EXP]) == 4
    assert expected in one_line(capsys)


def test_a_dvc_lock_left_with_merge_markers_is_refused_by_release(repo, capsys):
    report_path = repo / f"metrics/{EXP}/validate.json"
    report_path.write_text(json.dumps({**json.loads(report_path.read_text()), "passed": True}))
    _lock_validate(repo)
    lock = (repo / "dvc.lock").read_text()
    (repo / "dvc.lock").write_text(f"<<<<<<< HEAD\n{lock}=======\n{lock}>>>>>>> theirs\n")
    assert main(["release", "--exp", EXP]) == 4
    assert "release: error: dvc.lock: line 2, column 7: mapping values" in one_line(capsys)


def test_predict_output_that_is_a_folder(repo, capsys):
    np.random.default_rng(0)
    csv = repo / "in.csv"
    rows = ["series_id,time,passengers"] + [f"a,{t},{100 + t}" for t in range(40)]
    csv.write_text("\n".join(rows) + "\n")
    (repo / "out").mkdir()
    assert main(["predict", f"models/{EXP}/model.onnx", str(csv), "-o", "out"]) == 3
    assert "out: is a folder" in one_line(capsys)


@pytest.mark.parametrize(
    ("args", "expected"),
    [  # Path() dropped the slash and wrote the file; Path('') is the working folder
        (["in.csv", "-o", "out.csv/"],
         "out.csv/: a folder's path; -o takes the predictions' file path"),
        (["", "-o", "out.csv"], "the input: an empty path; name a file"),
        (["in.csv", "-o", ""], "-o: an empty path; name a file"),
    ],
)  # fmt: skip
def test_predict_paths_that_name_no_file_are_refused_by_name(repo, capsys, args, expected):
    (repo / "in.csv").write_text("series_id,time,passengers\n")
    (repo / "out.csv").write_text("kept\n")
    assert main(["predict", f"models/{EXP}/model.onnx", *args]) == 3
    assert one_line(capsys) == f"lstm-pipeline predict: error: {expected}"
    assert (repo / "out.csv").read_text() == "kept\n"


def test_outputs_under_a_dangling_symlink_are_refused_before_the_fit(repo, capsys):
    shutil.rmtree(repo / "models")
    (repo / "models").symlink_to(repo / "gone")  # e.g. to a disk not mounted
    runs = tracked_runs(repo)
    assert main(["train", EXP]) == 8
    assert one_line(capsys) == (
        f"lstm-pipeline train: error: models/{EXP}/model.ckpt: cannot write there "
        f"(models links to {repo}/gone, which does not exist)"
    )
    assert tracked_runs(repo) == runs  # no run: it said so after the whole fit (`File exists`)


def test_a_symlinked_output_folder_is_named_as_one(repo, capsys):
    prepared = repo / "data/prepared" / EXP
    prepared.rename(repo / "elsewhere")
    prepared.symlink_to(repo / "elsewhere")
    assert main(["prepare", EXP]) == 8
    assert one_line(capsys).endswith(  # it said "a file where its folder goes"
        f"a symlink where its folder goes; link the folder above it instead: data/prepared/{EXP})"
    )
    assert prepared.is_symlink()


def test_a_deleted_working_folder_is_named(tmp_path, monkeypatch, capsys):
    (tmp_path / "gone").mkdir()
    monkeypatch.chdir(tmp_path / "gone")
    (tmp_path / "gone").rmdir()
    assert main(["prepare", EXP]) == 8
    expected = f"{tmp_path}/gone: the working folder was deleted; cd to one that exists"
    assert one_line(capsys) == f"lstm-pipeline prepare: error: {expected}"


def test_an_output_of_a_long_legal_name_is_written(tmp_path):
    names = ["p" * 236 + ".csv", "é" * 124 + ".csv"]  # 240 and 252 bytes: a temp beside
    for name in names:  # one was `.<name>.<pid>-<random>`, 256 bytes and more
        with atomic_file(tmp_path / name) as tmp:
            tmp.write_text("a\n")
        assert (tmp_path / name).read_text() == "a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_a_store_path_too_long_for_sqlite_is_named(repo, capsys, monkeypatch):
    deep = repo / "/".join(["d" * 50] * 10)  # SQLite said "unable to open database file"
    deep.mkdir(parents=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{deep}/mlflow.db")
    assert main(["train", EXP]) == 6
    assert "SQLite opens 504 at most; set MLFLOW_TRACKING_URI to a store in a shorter folder" in (
        one_line(capsys)
    )
    assert not (deep / "mlflow.db").exists()


# --- any other error ----------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_and_debug_adds_the_traceback(repo, capsys, monkeypatch):
    def boom(cfg, exp):
        raise ValueError("something internal\nsecond line")

    monkeypatch.setattr("pipeline.data.prepare.prepare", boom)
    assert main(["prepare", EXP]) == 1
    assert one_line(capsys) == (
        "lstm-pipeline prepare: error: unexpected ValueError: something internal "
        "(rerun with --debug for the traceback)"
    )
    # --debug: the traceback first, then the same line and exit code (a CI step keys on them)
    assert main(["prepare", EXP, "--debug"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert "ValueError: something internal" in err
    assert err[-1].startswith("lstm-pipeline prepare: error: unexpected ValueError:")


def test_a_file_where_a_folder_must_be_is_the_machine_s_fault_naming_it(repo, capsys, monkeypatch):
    """E.g. MLflow's artifact store (./mlruns) a file: release said 'unexpected
    NotADirectoryError'."""

    def artifacts_in_a_file(cfg, exp):
        raise NotADirectoryError(20, "Not a directory", f"{repo}/mlruns/1")

    monkeypatch.setattr("pipeline.data.prepare.prepare", artifacts_in_a_file)
    assert main(["prepare", EXP]) == 8
    assert one_line(capsys) == f"lstm-pipeline prepare: error: {repo}/mlruns/1: Not a directory"


def test_outputs_honour_the_umask(repo):
    mask = os.umask(0)
    os.umask(mask)
    meta = repo / f"data/prepared/{EXP}/meta.json"
    assert meta.stat().st_mode & 0o777 == 0o666 & ~mask
    assert meta.parent.stat().st_mode & 0o777 == 0o777 & ~mask


def test_torch_s_short_writes_and_nameless_ones_are_the_machine_s_fault():
    """torch.save's zip writer fails a short write with 'unexpected pos' (it was exit 1,
    'unexpected RuntimeError'); an OSError without a file name said 'None: File too large'."""
    short = RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 3230848 vs 3230736"
    )
    assert str(system_fault(short, "models/x/model.ckpt")) == (
        "models/x/model.ckpt: write failed (disk full?)"
    )
    assert str(system_fault(OSError(errno.EFBIG, "File too large"))) == "File too large"


def test_an_append_to_a_full_disk_names_the_file():
    """The logger appends unsent metrics with append_text: /dev/full fails every write (ENOSPC)."""
    with pytest.raises(SystemFault, match="^/dev/full: No space left on device$"):
        append_text("/dev/full", "[]\n")


@pytest.mark.parametrize("atomic", [atomic_file, atomic_dir])
def test_an_output_whose_folder_is_a_file_names_it(atomic, tmp_path):
    """The OS refusing the output's place (here its folder is a file) names the output."""
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(SystemFault, match="taken/out: cannot write there \\(File exists: "):
        with atomic(tmp_path / "taken" / "out"):
            pass
    assert (tmp_path / "taken").read_text() == "a file"
    with pytest.raises(SystemFault, match="/proc/out: cannot write there"):  # not a descriptor
        with atomic("/proc/out"):
            pass
    (tmp_path / "other").mkdir() if atomic is atomic_file else (tmp_path / "other").touch()
    with pytest.raises(SystemFault, match="other: cannot write there \\(a (file|folder) where "):
        with atomic(tmp_path / "other"):  # the other kind is not replaced (it said Is a directory)
            pass


def test_a_stage_output_that_stdout_is_redirected_to_is_replaced_whole(tmp_path):
    """Only predict's output and a model card are written through stdout (`-o -`): a stage's
    output keeps its rename, so what the command prints later is not appended to it."""
    code = (
        "from pipeline.io import atomic_file\n"
        "with atomic_file('params.yaml') as tmp:\n    tmp.write_text('seed: 1\\n')\n"
        "print('params.yaml composed with: seed=1')"
    )
    with open(tmp_path / "params.yaml", "w") as out:  # `... > params.yaml`
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, stdout=out, check=True)
    assert (tmp_path / "params.yaml").read_text() == "seed: 1\n"


def test_a_new_tracking_store_adds_no_line_to_an_error(tmp_path):
    """MLflow's note that it creates a store's tables stays off the terminal: validate makes
    the store, then fails on the missing prepared data with its one line."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/new.db"}
    cmd = [BIN / "lstm-pipeline", "validate", EXP]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and (tmp_path / "new.db").exists()
    assert proc.stderr.count("\n") == 1 and "meta.json: not found" in proc.stderr, proc.stderr


def test_mlflows_own_error_is_a_tracking_error_naming_the_uri(monkeypatch):
    """An MlflowException no stage caught (a Databricks workspace without credentials) is exit
    6 with the tracking URI, its password hidden, not an unexpected error."""
    from mlflow.exceptions import MlflowException

    from pipeline.cli import _as_pipeline_error

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@host:5000")
    err = _as_pipeline_error(MlflowException("Reading credentials failed.\nMore detail"))
    assert isinstance(err, TrackingError) and err.exit_code == 6
    assert str(err) == "MLflow at http://alice:***@host:5000: Reading credentials failed."


def test_a_databricks_workspace_is_not_taken_for_a_folder_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    ensure_reachable("databricks")  # MLflow's client reads the workspace's credentials itself
    with pytest.raises(TrackingError, match="MLflow no longer writes folder stores"):
        ensure_reachable("./mlruns")


def console_in(folder: Path, setup: str) -> subprocess.CompletedProcess:
    """`lstm-pipeline prepare nope` through cli.console in a fresh Python, after `setup`."""
    code = f"{setup}sys.argv = ['lstm-pipeline', 'prepare', 'nope']\ncli.console()\n"
    return subprocess.run(
        [BIN / "python", "-c", code], cwd=folder, capture_output=True, text=True, timeout=60
    )


def test_too_many_open_files_names_the_limit():
    """`ulimit -n 10`: `.../matplotlib/mpl-data/fonts/ttf/DejaVuSansDisplay.ttf: Too many open
    files`, as if the font were at fault."""
    err = OSError(errno.EMFILE, "Too many open files", "DejaVuSansDisplay.ttf")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert str(system_fault(err)) == (
        f"DejaVuSansDisplay.ttf: Too many open files (at most {limit} at once, `ulimit -n`; "
        "raise it)"
    )


def test_a_library_that_cannot_be_mapped_for_memory_is_out_of_memory():
    """`ulimit -v 1200000`: `unexpected ImportError: ...so: failed to map segment from shared
    object`, exit 1."""
    from pipeline.cli import _as_pipeline_error

    err = ImportError("libonnxruntime.so: failed to map segment from shared object")
    fault = _as_pipeline_error(err)
    assert fault.exit_code == 8 and str(fault).startswith("out of memory; ")


def test_the_command_skips_teardown_but_keeps_exit_code_handlers_and_threads(tmp_path):
    """`lstm-pipeline` (cli.console) exits without the interpreter's teardown; the exit code,
    the exit handlers, a non-daemon thread's work and buffered output survive, and an idle
    thread pool (MLflow's downloads leave one) does not hold the exit."""
    code = (
        "import atexit, sys, threading, time\n"
        "from pipeline import cli\n"
        "atexit.register(lambda: print('handler ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('thread done'))).start()\n"
        "from concurrent.futures import ThreadPoolExecutor\n"  # a kept, idle pool: no hang
        "pool = ThreadPoolExecutor(1)\n"
        "pool.submit(print, 'pool ran', end=' ').result()\n"
        "print('buffered', end='')\n"
    )
    proc = console_in(tmp_path, code)
    assert proc.returncode == 2  # no params.yaml: a config error
    assert proc.stdout == "pool ran bufferedthread done\nhandler ran\n"
    assert proc.stderr.startswith("lstm-pipeline prepare: error: ")


@pytest.mark.parametrize(
    "handler",
    ["os.kill(os.getpid(), signal.SIGINT); time.sleep(5)",  # Ctrl+C after the work
     "raise MemoryError"],  # out of memory (`ulimit -v`), torch's failed too
)  # fmt: skip
def test_an_exit_handler_stopped_or_failing_adds_nothing_to_the_line(tmp_path, handler):
    """Either printed a traceback after the command's one line (in torch's exit handler)."""
    code = (
        "import atexit, os, signal, sys, time\n"
        "from pipeline import cli\n"
        f"def torchs():\n    {handler}\n"
        "atexit.register(torchs)\n"
    )
    proc = console_in(tmp_path, code)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr


def test_a_disk_fault_inside_an_output_folder_names_the_output_not_its_temp():
    """`prlimit --fsize=500 lstm-pipeline prepare`: `data/prepared/.<exp>.693-l46n9pd8/meta.json:
    File too large`."""
    err = OSError(
        errno.EFBIG, "File too large", "data/prepared/.lstm_airline.693-l46n9pd8/meta.json"
    )
    assert str(system_fault(err)) == "data/prepared/lstm_airline/meta.json: File too large"


def test_make_refuses_a_python_older_than_3_11_before_it_makes_the_venv(tmp_path):
    """A Python 3.10 failed at pip's `requires a different Python`, after torch's 4.6 GB had
    been installed; every rerun cleared the venv and did it again."""
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\nexit 1\n")  # its version check fails, as 3.10's does
    old.chmod(0o755)
    venv = tmp_path / "venv"
    made = subprocess.run(["make", "-s", "install", f"PYTHON={old}", f"VENV={venv}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 2, made.stderr
    assert f"make: {old} is not Python 3.11 or newer, which lstm-pipeline needs" in made.stderr
    assert not venv.exists()


@pytest.mark.parametrize("fault", ["port in use", "address not this machine's"])
def test_a_ddp_rendezvous_that_cannot_work_is_refused_before_the_fit(repo, capsys, monkeypatch,
                                                                     fault):  # fmt: skip
    """MASTER_PORT in use: exit 1 (`EADDRINUSE`), rank 1 left running, orphaned. MASTER_ADDR
    not this machine's: both ranks retried for 30 minutes, SIGTERM or not."""
    raw = params(repo)
    raw["trainer"].update(devices=2, strategy="ddp")
    write_params(raw)
    before = run_count()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if fault == "port in use":
            monkeypatch.setenv("MASTER_PORT", str(taken.getsockname()[1]))
            said = f"MASTER_PORT {taken.getsockname()[1]}: in use on 127.0.0.1; unset it"
        else:
            monkeypatch.setenv("MASTER_ADDR", "192.0.2.1")  # TEST-NET-1: nobody's
            said = "MASTER_ADDR 192.0.2.1: not an address of this machine, where the DDP ranks"
        assert main(["train", EXP]) == 2
    assert said in one_line(capsys)
    assert run_count() == before
