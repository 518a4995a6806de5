"""The training logger sends metrics in batches, and keeps what it has not sent beside the resume
point, so a training killed between two batches loses none of them."""

import pytest
from mlflow import MlflowClient

from pipeline.errors import Interrupted
from pipeline.training.logger import PENDING_FILE, PatientMLFlowLogger


def test_metrics_go_in_batches_and_a_killed_trainings_unsent_metrics_are_sent_next_time(workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    first = PatientMLFlowLogger(experiment_name="e", tracking_uri=uri, pending_dir=workdir)
    run_id, client = first.run_id, MlflowClient(uri)

    def steps() -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, "val/loss"))

    for epoch in range(50):
        first.log_metrics({"val/loss": 1 / (epoch + 1), "epoch": epoch}, step=epoch)
    assert steps() == [0]  # the first went at once; the rest wait for the next batch
    assert len(first.pending) == 49
    kept = workdir / PENDING_FILE
    assert len(kept.read_text().splitlines()) == 49  # one line appended per epoch

    # the process is killed here, in the middle of appending a line; the next training (it
    # resumes) continues the same run without the cut line
    kept.write_text(kept.read_text() + '[{"val/loss": 0.0')
    second = PatientMLFlowLogger(
        experiment_name="e", tracking_uri=uri, run_id=run_id, pending_dir=workdir
    )
    assert second.flush()
    assert steps() == list(range(50))
    history = client.get_metric_history(run_id, "epoch")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == list(range(50))
    assert not (workdir / PENDING_FILE).exists()


def test_a_trial_stopped_by_the_scheduler_ends_its_run_killed_not_failed(workdir):
    # Ray Tune stops a trial by sys.exit(0) in its report; Lightning then finalizes "failed"
    uri = f"sqlite:///{workdir}/mlflow.db"
    client = MlflowClient(uri)
    for error, status in ((SystemExit(0), "KILLED"), (SystemExit(1), "FAILED")):
        logger = PatientMLFlowLogger(experiment_name="e", tracking_uri=uri)
        run_id = logger.run_id  # the run starts
        try:
            raise error
        except SystemExit:
            logger.finalize("failed")
        assert client.get_run(run_id).info.status == status


def test_refused_params_keep_the_runs_values_and_a_deleted_run_is_refused_not_unreachable(
    workdir, capsys
):
    """A resumed run's param logged before with another value held back every metric behind it,
    and the stage ended 120 s later with exit 6, the server "unreachable"."""
    import pytest

    from pipeline.errors import TrackingError
    from pipeline.training.logger import deliver

    uri = f"sqlite:///{workdir}/mlflow.db"
    first = PatientMLFlowLogger(experiment_name="e", tracking_uri=uri, pending_dir=workdir)
    first.log_hyperparams({"x": 1})
    run_id, client = first.run_id, MlflowClient(uri)
    second = PatientMLFlowLogger(
        experiment_name="e", tracking_uri=uri, run_id=run_id, pending_dir=workdir
    )
    second.log_hyperparams({"x": 2, "y": 3})
    second.log_metrics({"val/loss": 0.5}, step=0)
    assert second.flush()
    assert "refused params of run" in capsys.readouterr().err
    # the run keeps what it has, and takes the new one
    assert client.get_run(run_id).data.params == {"x": "1", "y": "3"}
    assert [m.value for m in client.get_metric_history(run_id, "val/loss")] == [0.5]

    client.delete_run(run_id)  # in the UI, while the training runs
    second.send_at = 0.0
    second.log_metrics({"val/loss": 0.25}, step=1)
    warned = capsys.readouterr().err
    assert "refuses run" in warned and "unreachable" not in warned, warned
    assert len(second.pending) == 1
    with pytest.raises(TrackingError, match="refuses run .*'active' state.*run the train stage"):
        deliver(second, lambda: None, workdir)  # at once, not after DELIVER_S
    assert len((workdir / PENDING_FILE).read_text().splitlines()) == 1  # kept for the rerun


def test_a_sigterm_while_metrics_are_sent_is_a_stop_not_an_outage(workdir, monkeypatch, capsys):
    """train's SIGTERM handler raises Interrupted, an Exception: caught as the server's fault,
    it printed `MLflow tracking server unreachable (...: stopped by SIGTERM; ...)` and the
    delivery waited 5 s before it stopped."""
    uri = f"sqlite:///{workdir}/mlflow.db"
    logger = PatientMLFlowLogger(experiment_name="e", tracking_uri=uri, pending_dir=workdir)
    for epoch in range(3):
        logger.log_metrics({"val/loss": 1.0, "epoch": epoch}, step=epoch)

    def stopped_while_sending():
        raise Interrupted("e: stopped by SIGTERM; run the train stage again to resume")

    monkeypatch.setattr(logger, "_send_first", stopped_while_sending)
    with pytest.raises(Interrupted):
        logger.flush()
    with pytest.raises(Interrupted):
        logger.finalize("success")
    assert not logger.down and capsys.readouterr().err == ""
