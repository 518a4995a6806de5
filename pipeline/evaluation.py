"""Gates on a report of metrics, shared by validate and release (numpy only).

A metric's direction (higher or lower is better) is declared by the task that reports it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from pipeline.config import Release, Validate
from pipeline.errors import ConfigError
from pipeline.tasks import TASKS, Task, higher_is_better, known_metric


@dataclass(frozen=True)
class Gate:
    name: str
    value: str
    threshold: str
    passed: bool


def threshold_gates(report: dict, low: dict[str, float], high: dict[str, float]) -> list[Gate]:
    """One gate per bound on a metric the report has (a forecaster has no accuracy)."""
    gates = []
    for bound, sign in ((low, ">="), (high, "<=")):
        for metric, threshold in bound.items():
            if metric in report:
                value = report[metric]
                passed = value >= threshold if sign == ">=" else value <= threshold
                gates.append(Gate(metric, f"{value:.6g}", f"{sign} {threshold:g}", passed))
    return gates


def validate_failures(report: dict, rules: Validate, task: Task) -> list[str]:
    """validate's failed gates, each as a readable line; empty when everything passed."""
    failed = [
        f"{key} {report[key]:.3g} > {rules.parity_tol:g}"
        for key in ("parity_max_scaled_diff", "stream_max_abs_diff")
        if not report.get(key, 0.0) <= rules.parity_tol  # NaN too
    ]
    if not math.isfinite(report.get(task.headline, 0.0)):  # a model answering NaN passed
        failed.append(f"{task.headline} is {report[task.headline]}")
    for metric in (*rules.min, *rules.max):
        if metric not in report:
            known = sorted(k for k, val in report.items() if isinstance(val, float))
            raise ConfigError(f"validate thresholds: unknown metric {metric!r}; known: {known}")
    gates = threshold_gates(report, rules.min, rules.max)
    failed += [f"{g.name} {g.value} not {g.threshold}" for g in gates if not g.passed]
    if rules.beat_baseline:
        failed += lost_to_baseline(report, task)
    if rules.beat_classical:
        if "ets_mae" not in report:
            failed.append("beat_classical: no ETS form could be fitted on the train part")
        elif not report["mae"] < report["ets_mae"]:  # MAE, as beat_baseline (Task.baseline_gates)
            failed.append(f"mae {report['mae']:.6g} not below ets_mae {report['ets_mae']:.6g}")
    return failed


def champion_gate(metric: str, value: float, margin: float, champion: dict | None) -> Gate:
    """At most `margin` worse than the current @champion's value of `metric`."""
    name = f"{metric} vs champion"
    if champion is None:
        return Gate(name, f"{value:.6g}", "no champion yet", True)
    if metric not in champion:
        return Gate(name, f"{value:.6g}", "champion has no such metric", False)
    if higher_is_better(metric):
        bound = champion[metric] - margin
        return Gate(name, f"{value:.6g}", f">= {bound:.6g}", value >= bound)
    bound = champion[metric] + margin
    return Gate(name, f"{value:.6g}", f"<= {bound:.6g}", value <= bound)


def baseline_gates(report: dict, task: Task) -> list[Gate]:
    """Better than the naive prediction a task reports beside its own, in each metric the task
    gates on (a report written before its task had a baseline has none: skipped)."""
    pairs = task.baseline_gates(report)
    if not pairs:
        value = f"{report[task.headline]:.6g}" if task.headline in report else "-"
        return [Gate(f"{task.headline} vs baseline", value, "skipped: the report has none", True)]
    gates = []
    for metric, base in pairs:
        value, bound = report[metric], report[base]
        higher = higher_is_better(metric)
        passed = value > bound if higher else value < bound
        threshold = f"{'>' if higher else '<'} {bound:.6g} ({base})"
        gates.append(Gate(f"{metric} vs baseline", f"{value:.6g}", threshold, passed))
    return gates


def lost_to_baseline(report: dict, task: Task) -> list[str]:
    """The metrics in which the model does no better than the task's naive prediction, a line
    each: validate.beat_baseline's failures, and validate's notes where that gate is off."""
    return [f"{g.name}: {g.value} not {g.threshold}" for g in baseline_gates(report, task)
            if not g.passed]  # fmt: skip


def release_gates(report: dict, rules: Release, task: Task, champion: dict | None) -> list[Gate]:
    """Each release gate with value, threshold and verdict; `champion`: metric -> value, or None."""
    failed = "; ".join(report.get("failed_gates", []))
    passed = Gate(
        "validate.json passed",
        f"{report['passed']}" + (f" ({failed})" if failed else ""),
        "true" if rules.require_passed else "not required",
        bool(report["passed"]) or not rules.require_passed,
    )
    for key in ("min", "max", "champion_margin"):
        unknown = [m for m in getattr(rules, key) if m not in report and not known_metric(m)]
        if unknown:  # a typo's gate was skipped as a metric this task lacks
            known = sorted({m for t in TASKS.values() for m in t.directions})
            raise ConfigError(f"release.{key}: unknown metric {unknown[0]!r}; known: {known}")
    margins = [
        champion_gate(metric, report[metric], margin, champion)
        for metric, margin in rules.champion_margin.items()
        if metric in report
    ]
    thresholds = threshold_gates(report, rules.min, rules.max)
    baseline = baseline_gates(report, task) if rules.beat_baseline else []
    return [passed, *thresholds, *baseline, *margins]


def gate_table(gates: list[Gate]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("gate", "value", "threshold", "verdict"):
        table.add_column(column, no_wrap=True)
    for g in gates:
        table.add_row(g.name, g.value, g.threshold, "pass" if g.passed else "FAIL")
    out = io.StringIO()
    Console(file=out, width=10_000, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines())
