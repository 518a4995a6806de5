"""Warm stage starts (pipeline/warm.py): under dvc, a stage forked from a warm server writes the
bytes a stage in its own process writes, exits with its status, gets its client's signals, and
ends with its client or with the dvc that started it."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import (
    BIN,
    REPO,
    as_in_a_terminal,
    stop_warm_servers,
    tracked_runs,
    write_params,
)

pytestmark = pytest.mark.slow

EXP, LONG = "lstm_airline", "long_airline"
STALE, RECENT = "0" * 32, "1" * 32
OUTPUTS = (f"models/{EXP}/model.ckpt", f"metrics/{EXP}/train.json", f"models/{EXP}/model.onnx",
           f"metrics/{EXP}/validate.json", f"plots/{EXP}/validate/forecast.csv")  # fmt: skip


def env(root: Path, **extra) -> dict:
    """As dvc runs a stage, with this module's own folder for warm servers."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
            "XDG_RUNTIME_DIR": str(warm_dir(root)), "DVC_STAGE": "test", **extra}  # fmt: skip


def warm_dir(root: Path) -> Path:
    """This module's XDG_RUNTIME_DIR."""
    return Path((root / "warm_dir").read_text())


def servers(root: Path) -> list[Path]:
    return list(warm_dir(root).glob("*/*.sock"))


def stage(root: Path, *args, **extra) -> subprocess.Popen:
    log = open(root / "stages.log", "a")
    return subprocess.Popen([BIN / "lstm-pipeline", *args], cwd=root, env=env(root, **extra),
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def run(root: Path, *args, **extra) -> None:
    assert stage(root, *args, **extra).wait(300) == 0, (root / "stages.log").read_text()[-3000:]


def server(root: Path) -> psutil.Process:
    """The warm server for this module's stages, started by a first stage if none runs."""
    if not servers(root):
        stage(root, "validate", "no_such_experiment").wait(60)  # a config error starts it
    deadline = time.monotonic() + 120
    while not servers(root):
        assert time.monotonic() < deadline, "no warm server started"
        time.sleep(0.2)
    (sock,) = servers(root)
    return psutil.Process(int(sock.with_suffix(".lock").read_text()))


@pytest.fixture(scope="module")
def root(tmp_path_factory, mlflow_template):
    root = tmp_path_factory.mktemp("warm")
    (root / "warm_dir").write_text(tempfile.mkdtemp(prefix="lp-"))  # short: a socket's path
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["trainer"]["progress_bar"] = False
    exp = raw["experiments"][EXP]
    exp["model"]["hidden_size"] = 16
    exp["fit"]["max_epochs"] = 20
    long = {**exp["fit"], "max_epochs": 100_000, "patience": 100_000}  # until it is stopped
    raw["experiments"] = {EXP: exp, LONG: {**exp, "fit": long}}
    write_params(raw, root / "params.yaml")
    (root / "mlflow.db").write_bytes(mlflow_template.read_bytes())
    for name in (EXP, LONG):  # no server yet: the first test starts one
        run(root, "prepare", name, LSTM_PIPELINE_WARM="0")
    keys = warm_dir(root) / f"lstm-pipeline-warm-{os.getuid()}"
    keys.mkdir(mode=0o700)
    for key, age in ((STALE, 8 * 86400), (RECENT, 86400)):  # another code version's server files
        for suffix in (".lock", ".modules"):
            (keys / f"{key}{suffix}").touch()
            os.utime(keys / f"{key}{suffix}", (time.time() - age,) * 2)
    yield root
    stop_warm_servers(warm_dir(root))
    shutil.rmtree(warm_dir(root))


def outputs(root: Path) -> dict[str, bytes]:
    prepared = sorted(p for p in (root / "data/prepared" / EXP).rglob("*") if p.is_file())
    return {str(p): p.read_bytes() for p in [*prepared, *(root / o for o in OUTPUTS)]}


def test_a_warm_stage_writes_the_bytes_of_a_stage_in_its_own_process(root):
    stages = ("prepare", "train", "export", "validate")
    codes = [stage(root, command, EXP, LSTM_PIPELINE_WARM="0").wait(300) for command in stages]
    assert codes[:3] == [0, 0, 0]  # validate's gates may fail a model this small: the code counts
    cold = outputs(root)
    learned = set(warm_dir(root).glob("*/*.modules"))
    server(root)
    assert [stage(root, command, EXP).wait(300) for command in stages] == codes
    assert outputs(root) == cold
    assert set(warm_dir(root).glob("*/*.modules")) - learned  # ran warm


def test_a_stage_of_another_folder_and_store_runs_in_the_same_server(
    root, tmp_path, mlflow_template
):
    """The working folder, the tracking URI and dvc's variables come with each stage: another
    clone's (or experiment's) stages run warm in the same server, in their own folder and
    tracked in their own store."""
    server(root)
    (sock,) = servers(root)
    keys, learned = set(warm_dir(root).glob("*/*.lock")), sock.with_suffix(".modules")
    before = learned.stat().st_mtime_ns if learned.exists() else 0
    other = tmp_path / "other"
    shutil.copytree(root / "data/prepared" / EXP, other / "data/prepared" / EXP)
    shutil.copy(root / "params.yaml", other / "params.yaml")
    shutil.copy(mlflow_template, other / "mlflow.db")
    tracked = tracked_runs(root)
    extra = {"MLFLOW_TRACKING_URI": f"sqlite:///{other}/mlflow.db", "DVC_EXP_NAME": "other"}
    proc = subprocess.run([BIN / "lstm-pipeline", "train", EXP], cwd=other, env=env(root, **extra),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert learned.exists() and learned.stat().st_mtime_ns > before  # run by a child of it
    assert set(warm_dir(root).glob("*/*.lock")) == keys  # and no other server started
    assert (other / f"models/{EXP}/model.ckpt").exists()
    assert [name for name, _ in tracked_runs(other)] == [EXP] and tracked_runs(root) == tracked


def test_a_server_deletes_the_files_of_keys_unused_for_a_week(root):
    server(root)
    left = {p.name for p in warm_dir(root).glob("*/*")}
    assert not {n for n in left if n.startswith(STALE)}
    assert {f"{RECENT}.lock", f"{RECENT}.modules"} <= left


def resume_points(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / ".resume" / LONG).glob("*/**/resume.ckpt")}


def training(root: Path, warm: psutil.Process, proc: subprocess.Popen) -> psutil.Process:
    """The warm child of `proc`'s training, once it has saved a resume point of its own."""
    before, deadline = resume_points(root), time.monotonic() + 120
    while not (warm.children() and resume_points(root).items() - before.items()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    (child,) = warm.children()
    return child


def started(root: Path, warm: psutil.Process) -> tuple[subprocess.Popen, psutil.Process]:
    client = stage(root, "train", LONG)
    return client, training(root, warm, client)


def test_the_clients_signal_reaches_its_warm_stage(root):
    client, child = started(root, server(root))
    client.send_signal(signal.SIGTERM)
    assert client.wait(60) == 143  # the stage stopped as it does on SIGTERM, and said so
    psutil.wait_procs([child], timeout=30)
    assert not child.is_running()
    assert "stopped by SIGTERM" in (root / "stages.log").read_text()


@pytest.mark.parametrize("stop", [signal.SIGTSTP, signal.SIGSTOP], ids=["ctrl_z", "kill_stop"])
def test_a_stopped_client_stops_its_warm_stage_and_sigcont_continues_both(root, stop):
    """The child is not in the terminal's job: Ctrl+Z (SIGTSTP) reaches the client only, which
    forwards it; SIGSTOP, which no process can catch, the server sees in the client's state."""
    client, child = started(root, server(root))
    client.send_signal(stop)
    for proc in (psutil.Process(client.pid), child):
        wait_for_status(proc, psutil.STATUS_STOPPED)
    assert cpu_seconds_in(child, 1.0) == 0
    client.send_signal(signal.SIGCONT)
    assert cpu_seconds_in(child, 1.0) > 0.2  # training again
    client.send_signal(signal.SIGTERM)
    assert client.wait(60) == 143


def wait_for_status(proc: psutil.Process, status: str) -> None:
    deadline = time.monotonic() + 30
    while proc.status() != status:
        assert time.monotonic() < deadline, proc.status()
        time.sleep(0.05)


def cpu_seconds_in(proc: psutil.Process, seconds: float) -> float:
    before = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return sum(proc.cpu_times()[:2]) - before


def test_a_killed_client_takes_its_warm_stage_with_it(root):
    client, child = started(root, server(root))
    client.kill()
    client.wait()
    _, alive = psutil.wait_procs([child], timeout=30)
    assert not alive


def test_a_killed_dvc_stops_a_warm_training_as_it_stops_a_cold_one(root):
    """The training watches the dvc above its client (not its own parent, the server)."""
    warm = server(root)
    fake_dvc = subprocess.Popen(  # a parent without DVC_STAGE, as dvc is
        [sys.executable, "-c", "import subprocess, sys; subprocess.run(sys.argv[1:])", "env",
         "DVC_STAGE=test", BIN / "lstm-pipeline", "train", LONG],
        cwd=root, env={k: v for k, v in env(root).items() if k != "DVC_STAGE"},
        stdout=open(root / "stages.log", "a"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    child = training(root, warm, fake_dvc)
    fake_dvc.kill()
    fake_dvc.wait()
    _, alive = psutil.wait_procs([child], timeout=60)
    assert not alive, "the training went on after its dvc was killed"
    assert list((root / ".resume" / LONG).glob("*/**/resume.ckpt"))  # kept for the next run


def test_without_room_for_a_socket_the_stage_runs_in_its_own_process(root, tmp_path):
    """A socket's path is at most 107 bytes: a longer folder gets no server, not a doomed one
    per stage."""
    deep = tmp_path / ("x" * 100)
    deep.mkdir(mode=0o700)
    assert stage(root, "validate", "no_such_experiment", XDG_RUNTIME_DIR=str(deep)).wait(60) == 2
    time.sleep(1)
    assert not list(deep.glob("*/*.lock"))


@pytest.mark.parametrize("off", ["0", "false", "OFF", "no"])
def test_warm_starts_turned_off_start_no_server(root, off):
    """Only `0` turned them off: `false` left a server behind."""
    runtime = Path(tempfile.mkdtemp(prefix="lw"))  # short: a socket's path is at most 107 bytes
    try:
        env = {"XDG_RUNTIME_DIR": str(runtime), "LSTM_PIPELINE_WARM": off}
        assert stage(root, "validate", "no_such_experiment", **env).wait(60) == 2
        time.sleep(1)
        assert not list(runtime.glob("*/*.lock"))
    finally:
        stop_warm_servers(runtime)
        shutil.rmtree(runtime)


def test_a_training_that_finds_a_server_starting_waits_and_runs_in_it(root):
    """Rather than import torch beside a server that is importing it: the first stage's server
    is still starting when the next stage comes. Ctrl-C or SIGTERM while waiting: one line, exit
    130 or 143 (SIGTERM was exit -15 with no line)."""
    folder = Path(tempfile.mkdtemp(prefix="lp-"))
    starting = {"XDG_RUNTIME_DIR": str(folder)}
    try:
        assert stage(root, "validate", "no_such_experiment", **starting).wait(60) == 2
        deadline = time.monotonic() + 60
        while not [p for p in folder.glob("*/*.lock") if p.read_text()]:  # the server's pid
            assert time.monotonic() < deadline, "no warm server started"
            time.sleep(0.05)
        assert not list(folder.glob("*/*.sock"))  # not listening yet
        training = stage(root, "train", EXP, **starting)
        stops = {signal.SIGINT: "interrupted", signal.SIGTERM: "stopped by SIGTERM; its earlier "
                 "outputs are kept"}  # fmt: skip
        stopped = {sig: subprocess.Popen(  # Ctrl-C's handler: a background job's ignore SIGINT
            [BIN / "lstm-pipeline", "validate", EXP], cwd=root, env=env(root, **starting),
            stderr=subprocess.PIPE, text=True,
            preexec_fn=as_in_a_terminal,
        ) for sig in stops}  # fmt: skip
        for sig, said in stops.items():
            deadline = time.monotonic() + 60
            while Path(f"/proc/{stopped[sig].pid}/wchan").read_text() != "hrtimer_nanosleep":
                assert time.monotonic() < deadline, "never reached its wait"  # (its sleep)
                time.sleep(0.05)
            stopped[sig].send_signal(sig)
            assert stopped[sig].communicate(timeout=60)[1] == f"lstm-pipeline validate: {said}\n"
            assert stopped[sig].returncode == 128 + sig
        assert training.wait(300) == 0
        assert list(folder.glob("*/*.modules"))  # written by a warm child
    finally:
        stop_warm_servers(folder)
        shutil.rmtree(folder)
