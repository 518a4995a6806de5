"""CI's metrics guard (.ci/guard_metrics.py): a fresh default run against the metrics at a ref."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO

GUARD = REPO / ".ci" / "guard_metrics.py"
BASE = {
    "lstm_italypowerdemand": {"accuracy": 0.964, "passed": True, "failed_gates": []},
    "lstm_airline": {"mape": 0.0457, "passed": True, "failed_gates": []},
}


@pytest.fixture
def repo(tmp_path):
    def write(reports):
        for exp, report in reports.items():
            path = tmp_path / "metrics" / exp / "validate.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report))

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    write(BASE)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "main"], ["tag", "base"]):
        subprocess.run([*git, *cmd], cwd=tmp_path, check=True)

    def guard(*base_dir, **changes) -> subprocess.CompletedProcess:
        write({exp: {**BASE[exp], **change} for exp, change in changes.items()})
        cmd = [sys.executable, str(GUARD), "base", *map(str, base_dir)]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)

    return guard


def test_within_tolerance_passes(repo):
    proc = repo(lstm_italypowerdemand={"accuracy": 0.955}, lstm_airline={"mape": 0.05})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| lstm_airline | mape | 0.0457 | 0.05 | <= 0.05027 | pass |" in proc.stdout


@pytest.mark.parametrize(
    "changes",
    [
        {"lstm_italypowerdemand": {"accuracy": 0.95}},  # 0.014 down
        {"lstm_airline": {"mape": 0.051}},  # 12 % up
        {"lstm_airline": {"passed": False, "failed_gates": ["mape vs seasonal naive"]}},
    ],
)
def test_a_regression_fails(repo, changes):
    proc = repo(**changes)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout


def test_a_missing_report_fails(repo, tmp_path):
    (tmp_path / "metrics/lstm_airline/validate.json").unlink()
    proc = repo()
    assert proc.returncode == 1 and "missing: metrics/lstm_airline/validate.json" in proc.stdout


def test_an_unreadable_report_fails(repo, tmp_path):
    (tmp_path / "metrics/lstm_airline/validate.json").write_text("{truncated")
    proc = repo()
    assert proc.returncode == 1 and "not JSON: metrics/lstm_airline/validate.json" in proc.stdout


def test_a_bad_ref_is_one_line(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    proc = subprocess.run(
        [sys.executable, str(GUARD), "nosuchref"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("guard_metrics: 'nosuchref' is not a git ref here")


def rerun(folder, **changes):
    """BASE's reports as its pipeline rerun in `folder` wrote them, with `changes`."""
    for exp, report in BASE.items():
        path = folder / "metrics" / exp / "validate.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**report, **changes.get(exp, {})}))
    return folder


def test_a_rerun_of_the_base_on_this_cpu_is_what_the_fresh_run_is_held_to(repo, tmp_path_factory):
    """An airline fit ends at an early epoch on one CPU and 200 epochs later on another (README
    "Default experiments"): main's code and the change give the same 0.06 here, 31 % above the
    committed 0.0457. Against the committed report that is a regression; against main's
    pipeline rerun here, none."""
    airline = {"lstm_airline": {"mape": 0.06}}
    assert repo(**airline).returncode == 1
    base = rerun(tmp_path_factory.mktemp("base"), **airline)
    proc = repo(base, **airline)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"metrics vs base (rerun in {base})" in proc.stdout
    assert "| lstm_airline | mape | 0.06 | 0.06 | <= 0.066 | pass |" in proc.stdout
    assert repo(base, lstm_airline={"mape": 0.067}).returncode == 1  # 12 % above the rerun


def test_a_rerun_without_a_report_fails_and_without_metrics_is_one_line(repo, tmp_path_factory):
    base = rerun(tmp_path_factory.mktemp("base"))
    (base / "metrics/lstm_airline/validate.json").unlink()
    proc = repo(base)
    assert proc.returncode == 1
    row = f"| lstm_airline | | | | missing: {base}/metrics/lstm_airline/validate.json | FAIL |"
    assert row in proc.stdout
    empty = tmp_path_factory.mktemp("empty")
    proc = repo(empty)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"guard_metrics: {empty}: no metrics/ folder (run base's pipeline there first)"
    )
