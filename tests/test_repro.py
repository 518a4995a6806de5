"""`lstm-pipeline repro`'s lanes on a real DVC repo whose stages are small shell commands (the
real pipeline on lanes: tests/e2e/test_dvc_repro.py)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.errors import ConfigError, PipelineError
from pipeline.repro import repro
from tests.conftest import as_in_a_terminal

DVC = Path(sys.executable).parent / "dvc"

# validate@<exp> sleeps 2 s ($SLEEP) and records when it ran; `fail` exits 3
STAGE = """\
stages:
  validate:
    foreach: [{items}]
    do:
      cmd: sh stage.sh ${{item}}
      outs:
        - out/${{item}}.txt
"""
SCRIPT = """\
mkdir -p out
[ "$1" = fail ] && exit 3
start=$(date +%s.%N); sleep ${SLEEP:-2}; echo "$start $(date +%s.%N)" > out/$1.txt
"""


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    def make(*experiments: str) -> Path:
        (tmp_path / "dvc.yaml").write_text(STAGE.format(items=", ".join(experiments)))
        (tmp_path / "stage.sh").write_text(SCRIPT)
        for cmd in (["git", "init", "-q"], [str(DVC), "init", "-q"]):
            subprocess.run(cmd, cwd=tmp_path, check=True)
        monkeypatch.chdir(tmp_path)
        return tmp_path

    return make


def _ran(repo: Path, exp: str) -> tuple[float, float]:
    start, end = (repo / "out" / f"{exp}.txt").read_text().split()
    return float(start), float(end)


def test_experiments_run_side_by_side_into_one_dvc_lock(dvc_repo, capfd):
    repo = dvc_repo("slow", "last")
    repro(["slow", "last"], jobs=2, force=False)
    (a_start, a_end), (b_start, b_end) = _ran(repo, "slow"), _ran(repo, "last")
    assert a_start < b_end and b_start < a_end  # they overlapped
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert {"validate@slow", "validate@last"} <= set(stages)
    assert "Data and pipelines are up to date" in capfd.readouterr().out  # the last, plain repro
    repro(["slow", "last"], jobs=2, force=False)  # nothing changed: no lane starts
    out = capfd.readouterr().out
    assert "[slow]" not in out and "Data and pipelines are up to date" in out


def test_a_failed_experiment_names_its_stage_and_no_further_one_starts(dvc_repo, capsys):
    repo = dvc_repo("fail", "slow", "last")
    with pytest.raises(PipelineError, match=r"validate@fail: dvc repro failed") as err:
        repro(["fail", "slow", "last"], jobs=1, force=False)
    assert err.value.exit_code != 0
    assert not (repo / "out" / "slow.txt").exists()
    assert "[fail] " in capsys.readouterr().out  # dvc's lines, marked with their experiment


@pytest.mark.parametrize(
    "sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 143), (signal.SIGINT, -signal.SIGINT)]
)
def test_a_signal_ends_the_lanes_and_their_stages_at_once(dvc_repo, sig, code):
    """SIGTERM from a supervisor, SIGHUP from a closed terminal, SIGINT from Ctrl+C: the stages
    stop with repro (dvc passes no signal on: they wrote outputs after it had exited)."""
    _signal_once_stages_run(dvc_repo("slow", "last"), ["slow", "last"], 2, sig, code)


def test_a_signal_in_the_last_pass_ends_it_too(dvc_repo):
    """The whole pipeline's pass after the lanes (here it runs the one experiment not named)
    ran with the handlers put back: a SIGTERM ended repro with -15 and no line, and left its
    dvc and stage running."""
    _signal_once_stages_run(dvc_repo("slow"), [], 1, signal.SIGTERM, 143)


def _signal_once_stages_run(repo: Path, experiments: list, stages_n: int, sig, code) -> None:
    code_ = (
        "from pipeline.errors import PipelineError\nfrom pipeline.repro import repro\n"
        f"try: repro({experiments!r}, jobs=2, force=False)\n"
        "except PipelineError as err: raise SystemExit(err.exit_code)"  # as the CLI exits
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code_], cwd=repo, env={**os.environ, "SLEEP": "60"},
        preexec_fn=as_in_a_terminal,
    )  # fmt: skip
    deadline, stages = time.monotonic() + 60, []
    while len(stages) < stages_n and time.monotonic() < deadline:  # the stages started
        time.sleep(0.2)
        tree = psutil.Process(proc.pid).children(recursive=True)
        stages = [p for p in tree if p.name() == "sleep"]
    try:
        assert len(stages) == stages_n
        proc.send_signal(sig)
        # not held until the stages' 60-s commands end (bounds with room for a loaded machine)
        assert proc.wait(timeout=30) == code
        # they ended before repro did (it waited for dvc only: a training wrote its resume
        # point after repro had exited); the time is for their parents to reap them
        assert not psutil.wait_procs(tree, timeout=2)[1]
    finally:
        proc.kill()
        for stage in tree:
            with suppress(psutil.NoSuchProcess):
                stage.kill()


def test_a_reader_that_stops_reading_stops_the_lanes_quietly(dvc_repo):
    """`lstm-pipeline repro | head`: a BrokenPipeError traceback per lane, then the last plain
    dvc repro failed on the pipe too: exit 255, 'dvc repro failed'."""
    repo = dvc_repo("slow", "last")
    code_ = (  # as the CLI exits: os._exit, past the flush of a stdout no one reads
        "import os\nfrom pipeline.errors import PipelineError\nfrom pipeline.repro import repro\n"
        "try: repro(['slow', 'last'], jobs=2, force=False)\n"
        "except PipelineError as err: os._exit(err.exit_code)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code_], cwd=repo, env={**os.environ, "SLEEP": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        proc.stdout.readline()  # `| head -1`
        proc.stdout.close()
        assert proc.wait(timeout=60) == 141
        assert proc.stderr.read() == b""
    finally:
        proc.kill()


def test_lanes_are_at_most_one_per_experiment(dvc_repo, capfd):
    """`--jobs 99999999999` made a thread per lane before any started: 1 GB in 15 s, no end."""
    dvc_repo("slow")
    started = time.monotonic()
    repro(["slow"], jobs=99_999_999_999, force=False)
    assert time.monotonic() - started < 60
    assert "[slow] " in capfd.readouterr().out


def test_a_config_error_is_one_line_naming_the_key(tmp_path, monkeypatch, capsys):
    from pipeline.cli import main

    (tmp_path / "params.yaml").write_text("experiments:\n  x:\n    data: {source: nope}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["repro"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lstm-pipeline repro: error: ") and "experiments.x.data" in err
    assert "\n" not in err
    (tmp_path / "params.yaml").write_text("experiments: {}\n")
    assert main(["repro", "nope"]) == 2  # a named experiment params.yaml does not define
    assert (
        capsys.readouterr().err.strip().endswith("experiments.nope: no such experiment; defined:")
    )


def test_named_experiments_run_alone(dvc_repo, capfd):
    repo = dvc_repo("a", "b")
    repro(["b"], jobs=2, force=False, named=True)
    assert (repo / "out/b.txt").exists() and not (repo / "out/a.txt").exists()
    assert "[a]" not in capfd.readouterr().out


def test_lanes_default_to_every_core_where_the_os_has_no_cpu_affinity(monkeypatch):
    """macOS has no os.sched_getaffinity: the CLI still builds, with one lane per core."""
    from pipeline.cli import parser
    from pipeline.io import usable_cores

    assert parser().parse_args(["repro"]).jobs == usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")
    assert parser().parse_args(["repro"]).jobs == usable_cores() == os.cpu_count()


def test_outside_a_dvc_repository_or_without_dvc_yaml_is_one_config_error(tmp_path, monkeypatch):
    """It ran a lane per experiment, each failing with dvc's lines and an exit 253 or 255."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not in a DVC repository"):
        repro(["a"], jobs=1, force=True)
    (tmp_path / ".dvc").mkdir()
    with pytest.raises(ConfigError, match="dvc.yaml: not found"):
        repro(["a"], jobs=1, force=True)


def test_outside_a_git_repository_is_one_config_error_unless_dvc_is_told(dvc_repo):
    """dvc said `[a] ERROR: ... is not a git repository` and the command `validate@a: dvc
    repro failed (exit 255)`, though no stage had run."""
    repo = dvc_repo("a")
    shutil.rmtree(repo / ".git")
    with pytest.raises(ConfigError, match=r"not in a git repository, which dvc needs here"):
        repro(["a"], jobs=1, force=True)
    subprocess.run([str(DVC), "config", "core.no_scm", "true"], cwd=repo, check=True)
    repro(["a"], jobs=1, force=True)
    assert (repo / "out/a.txt").exists()


def test_the_stages_run_this_installs_command_whatever_path_says(dvc_repo, monkeypatch):
    """With the venv off PATH (`.venv/bin/lstm-pipeline repro`), dvc found no `lstm-pipeline`
    (exit 127, the stage's outputs deleted); with another install first, it ran that one."""
    repo = dvc_repo("a")
    (repo / "stage.sh").write_text("mkdir -p out; command -v lstm-pipeline > out/$1.txt\n")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    repro(["a"], jobs=1, force=True)
    assert (repo / "out/a.txt").read_text().strip() == str(DVC.parent / "lstm-pipeline")
