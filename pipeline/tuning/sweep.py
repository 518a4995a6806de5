"""tune stage: a Ray Tune sweep over one experiment -> tune/<exp>/ (best_params.yaml, results).

MLflow: one parent run per sweep; each trial's train call is a nested child run.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import (
    ConfigError,
    CtrlC,
    DataError,
    Interrupted,
    PipelineError,
    SystemFault,
    first_line,
)
from pipeline.io import atomic_dir, check_writable, held_lock
from pipeline.paths import prepared_dir, tune_dir
from pipeline.ray_cluster import (
    check_local_cpus,
    check_reachable,
    check_resources,
    ray_session,
    resolve_address,
    when_head_lost,
)
from pipeline.tracking import (
    absolute_tracking_uri,
    end_with_children,
    ensure_reachable,
    experiment_id,
    run_tags,
)
from pipeline.tuning.results import best_params, results_table, write_results
from pipeline.tuning.spaces import check_values, search_space, to_ray
from pipeline.tuning.trial import run_trial
from pipeline.tuning.tuner import RESULT_LOG, check_scheduler, expected_trials, tuner

PARENT_RUN_FILE = "mlflow_parent_run_id"
FULL_BELOW = 1 << 20  # bytes free under tune.storage_path that a failed sweep is blamed on
STARTED_FILE = "lstm_pipeline_sweep.json"  # what the sweep was started with
# may differ on --resume: where it runs and how much at once, not what a trial trains
RUN_ONLY = {"address", "storage_path", "resources_per_trial", "max_concurrent_trials",
            "max_failures"}  # fmt: skip


def _parent_run(
    cfg: PipelineConfig, exp_name: str, state: Path, resume: bool, space, expected: int
) -> str:
    """The sweep's MLflow run (created here, before any trial, so that the experiment's artifact
    location is this repo's; reused on --resume)."""
    import json

    from mlflow import MlflowClient

    client = MlflowClient(absolute_tracking_uri())
    id_file = state / PARENT_RUN_FILE
    if resume and id_file.exists():
        return id_file.read_text().strip()
    exp_id = experiment_id(client, cfg.tracking.experiment_name)
    run = client.create_run(exp_id, run_name=f"tune-{exp_name}", tags=run_tags(exp_name, "tune"))
    t, fit = cfg.tune, cfg.experiment(exp_name).fit
    for key in ("num_samples", "search", "scheduler", "max_concurrent_trials"):
        client.log_param(run.info.run_id, f"tune/{key}", getattr(t, key))
    client.log_param(run.info.run_id, "tune/max_epochs", t.trial_epochs(fit))
    client.log_param(run.info.run_id, "tune/space", json.dumps(space, sort_keys=True))
    state.mkdir(parents=True, exist_ok=True)
    id_file.write_text(run.info.run_id)
    (state / STARTED_FILE).write_text(json.dumps(_started_with(cfg, exp_name, space, expected)))
    return run.info.run_id


def _started_with(cfg: PipelineConfig, exp_name: str, space: dict, expected: int) -> dict:
    """What a trial trains and the sweep decides by, as the keys params.yaml names them
    (`tune.max_epochs` and `tune.grace_period` as resolved, `tune.space` with the defaults)."""
    import json

    from pipeline.tuning.results import flatten

    t, exp = cfg.tune, cfg.experiment(exp_name)
    tune = {k: v for k, v in t.model_dump(by_alias=True).items() if k not in RUN_ONLY}
    tune.update(max_epochs=t.trial_epochs(exp.fit), grace_period=t.grace_epochs(exp.fit))
    sweep = {
        "seed": cfg.seed,
        "trainer": cfg.trainer.model_dump(exclude={"progress_bar", "gates"}),
        "tune": {**tune, "space": space},
        "experiments": {exp_name: exp.model_dump(by_alias=True, include={"data", "model", "fit"})},
    }
    return {"trials": expected, **json.loads(json.dumps(flatten(sweep), default=str))}


def _changed_since_start(started: dict, now: dict) -> str | None:
    """The first key whose value differs, as `key: then X, now Y`."""
    for key in sorted(started.keys() | now.keys()):
        if key != "trials" and started.get(key) != now.get(key):
            return f"{key}: {started.get(key)!r} when the sweep started, {now.get(key)!r} now"
    return None


def _finish_parent(parent: str, out: Path, best: dict | None, status: str, errored: set) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(absolute_tracking_uri())
    if best:
        client.log_metric(parent, "best/val_loss", best["val_loss"])
        client.log_param(parent, "best/trial", best["trial"])
        client.log_artifacts(parent, str(out))
    _end_runs(parent, status, errored)


def _end_runs(parent: str, status: str, errored: frozenset | set = frozenset()) -> None:
    """The sweep's run ends `status`. A trial's run still RUNNING (its actor was killed first:
    stopped by the scheduler, or the sweep by its cluster's loss) ends KILLED, or FAILED where
    the trial errored."""
    end_with_children(
        parent,
        status,
        lambda child: "FAILED" if child.data.tags.get("trial_id") in errored else "KILLED",
    )


def _sweep_state(
    cfg: PipelineConfig, exp_name: str, resume: bool, space: dict, expected: int
) -> tuple[Path, Path]:
    """(the prepared data, Ray's state folder of this sweep), checked before anything starts."""
    import json

    from ray import tune as ray_tune

    prepared = prepared_dir(exp_name).resolve()
    if not (prepared / "meta.json").exists():
        raise DataError(f"{prepared}: not prepared; run `dvc repro prepare@{exp_name}` first")
    state = (
        Path(cfg.tune.storage_path or ".ray_results").expanduser().resolve() / f"tune-{exp_name}"
    )
    if resume and not ray_tune.Tuner.can_restore(str(state)):
        raise ConfigError(f"--resume: no sweep state to resume at {state} (tune.storage_path)")
    for saved in state.glob("experiment_state-*.json") if resume else []:
        try:  # Ray left one it cannot read out and started the sweep over, as interrupted
            json.loads(saved.read_bytes())
        except ValueError:
            raise DataError(f"{saved}: damaged; start over without --resume") from None
    started = state / STARTED_FILE
    if not (resume and started.exists()):
        return prepared, state
    try:
        then = json.loads(started.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DataError(
            f"{started}: not the sweep's settings; start over without --resume"
        ) from None
    if then.get("trials") != expected:  # it would end 'interrupted' at every --resume
        raise ConfigError(
            f"tune.num_samples or tune.space: the sweep in {state} was started with "
            f"{then.get('trials')} trials, not {expected}; --resume continues a sweep as it "
            "was started"
        )
    if changed := _changed_since_start(then, _started_with(cfg, exp_name, space, expected)):
        raise ConfigError(  # the trials left ran the new settings, the finished the old (exit 0)
            f"{changed}; --resume continues a sweep as it was started (put it back, or start "
            "over without --resume)"
        )
    return prepared, state


def _trainable(cfg: PipelineConfig, exp_name: str, prepared: Path, state: Path, parent: str):
    """`run_trial` with everything but the sampled params bound, and its resources."""
    from ray import tune as ray_tune

    t = cfg.tune
    return ray_tune.with_resources(
        ray_tune.with_parameters(
            run_trial,
            raw=cfg.model_dump(by_alias=True),
            exp_name=exp_name,
            max_epochs=t.trial_epochs(cfg.experiment(exp_name).fit),
            prepared=str(prepared),
            tracking_uri=absolute_tracking_uri(),
            parent_run_id=parent,
            ckpt_root=str(state / "trial_checkpoints"),
        ),
        {"cpu": t.resources_per_trial.cpu, "gpu": t.resources_per_trial.gpu},
    )


def _finished_trials(state: Path, expected: int, exp_name: str, by: str | None) -> list:
    """Every trial of the sweep; raises when some did not finish (Tune returns normally after
    Ctrl+C, or the SIGTERM `by` names: the saved trial states tell an interrupted sweep)."""
    from ray import tune as ray_tune

    trials = ray_tune.ExperimentAnalysis(str(state)).trials
    done = [tr for tr in trials if tr.status in ("TERMINATED", "ERROR")]
    if len(done) < expected:
        stopped = f"{len(done)} of {expected} trials done; state kept in {state}; continue with "
        stopped += f"`lstm-pipeline tune {exp_name} --resume`"
        if by:
            raise Interrupted(f"sweep stopped by {by}: {stopped}")
        raise CtrlC(f"sweep interrupted: {stopped}")
    return trials


@contextmanager
def _sigterm_stops_sweep() -> Iterator[list]:
    """SIGTERM stops the sweep as Ctrl+C does (Tune saves its state), not with Ray's stack dump
    (its handler, installed by ray.init, killed the driver). Yields ["SIGTERM"] once received."""
    received = []

    def stop(*_):
        received.append("SIGTERM")
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Tune's not set yet
            raise Interrupted("sweep stopped by SIGTERM as it started or ended; run it again")
        os.kill(os.getpid(), signal.SIGINT)  # Tune's own handler: stop and save

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield received
    finally:
        if before is not None:  # None: a handler set outside Python (Ray's), kept
            signal.signal(signal.SIGTERM, before)


def _full(state: Path) -> SystemFault | None:
    """A full disk under the sweep's state: Ray's writes failed there, and it ended with
    `unexpected EOFError: Ran out of input` (exit 1) after a traceback per write."""
    with suppress(OSError):
        if shutil.disk_usage(state.parent).free < FULL_BELOW:
            return SystemFault(f"{state.parent}: No space left on device (tune.storage_path)")
    return None


def _every_trial_failed(grid) -> PipelineError:
    """The first trial's error as the stage's own, in one line (a config value the model
    refuses stays exit 2, a diverged fit exit 7); Ray wraps it in a RayTaskError."""
    err = next((r.error for r in grid if r.error), None)
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, PipelineError):
        return type(cause)(f"every trial failed; the first: {cause}")
    return PipelineError(
        f"every trial failed; the first: {type(cause).__name__}: {first_line(cause)}"
        if cause
        else "every trial failed"
    )


def _write_outputs(cfg, exp_name: str, state: Path, trials, grid, parent: str) -> Path:
    """results.csv, val_loss.png and best_params.yaml under tune/<exp>/; closes the parent run."""
    errored = {tr.trial_id for tr in trials if tr.status == "ERROR"}
    # Ray's trial number (the start of experiment_tag), shown in its progress table too.
    numbers = {tr.trial_id: int(tr.experiment_tag.split("_", 1)[0]) for tr in trials}
    table = results_table(state / RESULT_LOG, numbers)
    out = tune_dir(exp_name)
    try:
        if table.empty:
            raise _every_trial_failed(grid)
        best = best_params(table, exp_name, cfg.tune.scheduler)
    except PipelineError:
        _finish_parent(parent, out, None, "FAILED", errored)
        raise
    try:
        with atomic_dir(out) as tmp:
            write_results(table, best, tmp)
        _finish_parent(parent, out, best, "FINISHED", errored)
    except Exception as err:  # the disk or MLflow: the trials are done and kept
        err.add_note(
            f"`lstm-pipeline tune {exp_name} --resume` writes the sweep's results without "
            "training its trials again"
        )
        raise
    return out


def tune(cfg: PipelineConfig, exp_name: str, resume: bool = False) -> Path:
    """Sweep, then write tune/<exp>/; one MLflow parent run with a child run per trial."""
    exp, t = cfg.experiment(exp_name), cfg.tune
    ensure_reachable()
    check_writable(tune_dir(exp_name))  # before the trials, not after
    if tune_dir(exp_name).is_file():  # the temp beside it passed; the results failed at the end
        raise SystemFault(
            f"{tune_dir(exp_name)}: cannot write there (a file where its folder goes)"
        )
    space = search_space(exp, t)
    check_values(cfg.model_dump(by_alias=True), exp_name, space, t.trial_epochs(exp.fit))
    ray_space = to_ray(space, t.search)
    check_scheduler(cfg, exp.fit, ray_space)
    address, key = resolve_address(t.address)
    if address:  # fail fast, before anything starts
        check_reachable(address, key)
    else:
        check_local_cpus(t.resources_per_trial)
    expected = expected_trials(t.num_samples, ray_space)
    prepared, state = _sweep_state(cfg, exp_name, resume, space, expected)
    lock = state.with_name(f"{state.name}.lock")
    busy = f"{exp_name}: another sweep of this experiment is running (it holds {lock})"
    with held_lock(lock, busy + "; wait for it to end"), ray_session(address, key):
        check_resources(t.resources_per_trial)
        if not resume and state.exists():  # every check passed: the earlier state can go
            shutil.rmtree(state)
        parent = _parent_run(cfg, exp_name, state, resume, space, expected)
        when_head_lost(lambda: _end_runs(parent, "FAILED"))
        trainable = _trainable(cfg, exp_name, prepared, state, parent)
        with _sigterm_stops_sweep() as by:
            try:
                grid = tuner(cfg, exp.fit, trainable, ray_space, state, resume).fit()
            except Exception as err:
                with suppress(Exception):  # the sweep's own error is the one to report
                    _end_runs(parent, "FAILED")
                if full := _full(state):
                    raise full from err
                raise
        try:
            trials = _finished_trials(state, expected, exp_name, by and by[0])
            return _write_outputs(cfg, exp_name, state, trials, grid, parent)
        except Exception as err:  # the run ends with the sweep, however it ends
            with suppress(Exception):  # MLflow may be what failed
                _end_runs(parent, "KILLED" if isinstance(err, CtrlC | Interrupted) else "FAILED")
            if full := _full(state):
                raise full from err
            raise
