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

    def guard(**changes) -> subprocess.CompletedProcess:
        write({exp: {**BASE[exp], **change} for exp, change in changes.items()})
        cmd = [sys.executable, str(GUARD), "base"]
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
