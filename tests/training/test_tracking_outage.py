"""A tracking server killed mid-training and started again: the training completes, writes its
outputs, and every epoch's metrics reach the server."""

import os
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from tests.conftest import BIN, free_port, start_server, stop_server
from tests.training.test_resume import setup_repo

pytestmark = pytest.mark.slow

EXP, EPOCHS = "lstm_airline", 300


def test_server_killed_and_restarted_mid_training(tmp_path, mlflow_template):
    repo = setup_repo(tmp_path / "repo", EXP, mlflow_template, max_epochs=EPOCHS)
    root, port = tmp_path / "server", free_port()
    root.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(root, port)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    train = subprocess.Popen(
        [BIN / "lstm-pipeline", "train", EXP], cwd=repo, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        while not list((repo / ".resume" / EXP).glob("*/resume.ckpt")):
            assert train.poll() is None
            time.sleep(0.05)
        stop_server(server, signal.SIGKILL)  # the server dies mid-training
        time.sleep(3)
        server = start_server(root, port)  # and comes back on the same port and store
        _, err = train.communicate(timeout=300)
        assert train.returncode == 0, err[-3000:]
        assert "warning: MLflow tracking server unreachable" in err
        assert (repo / f"models/{EXP}/model.ckpt").exists()
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("lstm-pipeline").experiment_id
        (run,) = client.search_runs([experiment])
        assert run.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/loss")}
        assert len(steps) == EPOCHS
        assert "ckpt_sha256" in run.data.tags
    finally:
        if train.poll() is None:
            train.kill()
        stop_server(server)


def test_a_server_gone_after_the_outputs_are_written_is_said_at_once(tmp_path, monkeypatch, capsys):
    """train's last wait (up to 120 s for the run's results) was silent."""
    from pipeline.errors import TrackingError
    from pipeline.training.logger import PatientMLFlowLogger, deliver

    root, port = tmp_path / "server", free_port()
    root.mkdir()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    server = start_server(root, port)
    try:
        logger = PatientMLFlowLogger(experiment_name="outage", tracking_uri=uri)
        logger.log_metrics({"val/loss": 1.0}, step=0)
        assert logger.flush()  # the run is open
    finally:
        stop_server(server, signal.SIGKILL)
    logger.log_metrics({"val/loss": 0.5}, step=1)
    monkeypatch.setattr("pipeline.training.logger.DELIVER_S", 1.0)
    with pytest.raises(TrackingError, match="the server did not take its results for 1 s"):
        deliver(logger, lambda: None, tmp_path)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "retrying" in line]
    assert warnings == [
        f"warning: the outputs are written; MLflow at {uri} does not take the run's results "
        "yet, retrying for up to 1 s"
    ]
