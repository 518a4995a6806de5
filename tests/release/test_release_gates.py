"""Release gates as a pure function, and the refusals that happen before the registry is touched."""

import json
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import Release
from pipeline.evaluation import Gate, baseline_gates, gate_table, release_gates
from pipeline.tasks import TASKS
from tests.conftest import REPO, free_port, write_params

RULES = Release(
    min={"accuracy": 0.9}, max={"mape": 0.2}, champion_margin={"accuracy": 0.01, "mape": 0.01}
)


def verdicts(report, champion=None, task="classification") -> dict[str, bool]:
    return {g.name: g.passed for g in release_gates(report, RULES, TASKS[task], champion)}


def test_thresholds_apply_to_the_metrics_a_report_has():
    assert verdicts({"passed": True, "accuracy": 0.95}) == {
        "validate.json passed": True,
        "accuracy": True,
        "accuracy vs baseline": True,  # skipped: the report has no majority_accuracy
        "accuracy vs champion": True,  # no champion yet
    }
    forecast = {"passed": True, "mape": 0.25, "mae": 3.0, "seasonal_naive_mae": 3.5}
    assert verdicts(forecast, task="forecast") == {
        "validate.json passed": True,
        "mape": False,
        "mae vs baseline": True,
        "mape vs champion": True,
    }


@pytest.mark.parametrize(
    ("task", "metrics", "gate"),
    [
        (  # within release.max.mape, but worse than last year's same month
            "forecast",
            {"mape": 0.110, "mae": 12.0, "seasonal_naive_mape": 0.095, "seasonal_naive_mae": 11.5},
            Gate("mae vs baseline", "12", "< 11.5 (seasonal_naive_mae)", False),
        ),
        (
            "forecast",
            {"mape": 0.09, "mae": 9.0, "naive_mape": 0.095, "naive_mae": 9.5},
            Gate("mae vs baseline", "9", "< 9.5 (naive_mae)", True),
        ),
        (
            "frames",
            {"mse": 0.06, "baseline_mse": 0.05, "ssim": 0.3, "baseline_ssim": 0.25},
            Gate("mse vs baseline", "0.06", "< 0.05 (baseline_mse)", False),
        ),
        (  # a blurred mean image: MSE below copy-last-frame's, SSIM not above it
            "frames",
            {"mse": 0.04, "baseline_mse": 0.05, "ssim": 0.2, "baseline_ssim": 0.25},
            Gate("ssim vs baseline", "0.2", "> 0.25 (baseline_ssim)", False),
        ),
        (
            "classification",
            {"accuracy": 0.95, "majority_accuracy": 0.5},
            Gate("accuracy vs baseline", "0.95", "> 0.5 (majority_accuracy)", True),
        ),
        (  # collapsed onto the most frequent class: its accuracy, on data of any balance
            "classification",
            {"accuracy": 0.9, "majority_accuracy": 0.9},
            Gate("accuracy vs baseline", "0.9", "> 0.9 (majority_accuracy)", False),
        ),
        (  # validated before classification had a baseline
            "classification",
            {"accuracy": 0.95},
            Gate("accuracy vs baseline", "0.95", "skipped: the report has none", True),
        ),
    ],
)
def test_default_gates_include_beating_the_task_baseline(task, metrics, gate):
    defaults = Release(**yaml.safe_load((REPO / "conf/release/default.yaml").read_text()))
    gates = release_gates({"passed": True, **metrics}, defaults, TASKS[task], None)
    assert gate in gates
    assert all(g.passed for g in gates) is gate.passed  # the baseline alone decides here
    waived = release_gates(
        {"passed": True, **metrics}, Release(beat_baseline=False), TASKS[task], None
    )
    assert all(g.passed for g in waived) and "vs baseline" not in str(waived)


@pytest.mark.parametrize(
    ("metric", "candidate", "champion", "passed"),
    [
        ("accuracy", 0.951, 0.96, True),  # worse, within the margin
        ("accuracy", 0.949, 0.96, False),
        ("mape", 0.109, 0.10, True),  # lower is better for errors
        ("mape", 0.111, 0.10, False),
    ],
)
def test_champion_comparison_knows_the_direction(metric, candidate, champion, passed):
    report = {"passed": True, metric: candidate}
    assert verdicts(report, {metric: champion})[f"{metric} vs champion"] is passed


def test_failed_validation_is_a_failed_gate_with_its_reasons():
    report = {"passed": False, "failed_gates": ["accuracy 0.5 not >= 0.95"], "accuracy": 0.5}
    gates = release_gates(report, RULES, TASKS["classification"], None)
    table = gate_table(gates)
    assert "False (accuracy 0.5 not >= 0.95)" in table and "FAIL" in table
    assert not gates[0].passed


def test_never_validated_is_refused_before_anything_is_registered(
    workdir, params, capsys, mlflow_template
):
    write_params(params)
    assert main(["release", "--exp", "lstm_airline"]) == 4
    assert (
        "never validated (metrics/lstm_airline/validate.json not found)" in capsys.readouterr().err
    )
    assert (workdir / "mlflow.db").read_bytes() == mlflow_template.read_bytes()  # not written


def test_a_clone_without_the_model_is_told_to_pull_it(workdir, params, capsys, mlflow_template):
    """validate.json is in git, model.onnx in DVC's cache: a clone that has not pulled it."""
    write_params(params)
    report = Path("metrics/lstm_airline/validate.json")
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"passed": True}))
    stage = {"deps": [{"path": "models/lstm_airline/model.onnx", "md5": "0" * 32}]}
    Path("dvc.lock").write_text(yaml.safe_dump({"stages": {"validate@lstm_airline": stage}}))
    assert main(["release", "--exp", "lstm_airline"]) == 4
    assert (
        "models/lstm_airline/model.onnx: not found; `dvc pull` fetches it"
        in capsys.readouterr().err
    )
    assert (workdir / "mlflow.db").read_bytes() == mlflow_template.read_bytes()


def test_a_failed_report_released_anyway_must_still_be_the_models(
    workdir, params, capsys, mlflow_template
):
    """release.require_passed: false lets a failed validate through, never a report that
    dvc.lock does not tie to the model.onnx beside it (it registered another model with the
    report's figures on its card)."""
    params["release"]["require_passed"] = False
    write_params(params)
    model, report = (
        Path("models/lstm_airline/model.onnx"),
        Path("metrics/lstm_airline/validate.json"),
    )
    for path, text in ((model, "another model"), (report, json.dumps({"passed": False}))):
        path.parent.mkdir(parents=True)
        path.write_text(text)
    stage = {"deps": [{"path": model.as_posix(), "md5": "0" * 32}]}
    Path("dvc.lock").write_text(yaml.safe_dump({"stages": {"validate@lstm_airline": stage}}))
    assert main(["release", "--exp", "lstm_airline"]) == 4
    assert f"{model} differs from what dvc.lock recorded" in capsys.readouterr().err
    assert (workdir / "mlflow.db").read_bytes() == mlflow_template.read_bytes()


def test_unreachable_tracking_server_fails_fast(workdir, params, monkeypatch, capsys):
    write_params(params)
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    assert main(["release", "--exp", "lstm_airline"]) == 6
    assert f"MLflow tracking server {uri} is unreachable" in capsys.readouterr().err
    assert time.monotonic() - start < 15


def test_a_forecaster_meets_its_baseline_on_mae_where_zeros_make_mape_meaningless():
    """Solar generation at night: the truth is 0, so MAPE divides by its floor and a forecast
    0.001 off scores 1e4 there, while seasonal naive repeats yesterday's exact zeros. Which
    forecast is closer is MAE's to say (below the naive MAE: MASE below 1)."""
    report = {"mape": 6.5e4, "mae": 0.03, "seasonal_naive_mape": 0.09, "seasonal_naive_mae": 0.04}
    assert baseline_gates(report, TASKS["forecast"]) == [
        Gate("mae vs baseline", "0.03", "< 0.04 (seasonal_naive_mae)", True)
    ]


@pytest.mark.parametrize("key", ["min", "max", "champion_margin"])
def test_a_release_gate_on_a_metric_no_task_reports_is_refused(key):
    """A typo's gate was skipped without a word, as a metric the task lacks (accuracy for a
    forecaster still is)."""
    from pipeline.errors import ConfigError

    report = {"passed": True, "mae": 1.0}
    rules = Release(**{key: {"acuracy": 0.9}})
    with pytest.raises(ConfigError, match=f"release.{key}: unknown metric 'acuracy'; known: "):
        release_gates(report, rules, TASKS["forecast"], None)
    assert release_gates(report, Release(**{key: {"accuracy": 0.9}}), TASKS["forecast"], None)
