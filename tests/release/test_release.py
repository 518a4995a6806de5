"""Release against a real `mlflow server`: champion, refused worse candidate, promoted better one,
the same model again (no second version).

Each candidate is trained, exported and validated by a real `dvc repro` in a temp git repo, with
every MLflow run going to the server; `predict` then fetches `models:/...@champion` without torch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import copy_repo
from tests.release.conftest import accuracy

pytestmark = pytest.mark.slow

EXP = "lstm_italypowerdemand"
NAME = f"lstm-pipeline-{EXP}"
BASE = ["trainer.progress_bar=false"]
BIN = Path(sys.executable).parent


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def candidate(repo: Path, *overrides: str, min_accuracy=0, check: bool = True) -> dict:
    """Compose params.yaml with `overrides`, then train, export and validate through dvc.

    Short trainings miss the experiment's accuracy gate, so it is lowered: the release gates decide.
    """
    gate = f"experiments.{EXP}.validate.min.accuracy={min_accuracy}"
    sh(repo, "lstm-pipeline", "compose", *BASE, gate, *overrides)
    sh(repo, "dvc", "repro", f"validate@{EXP}", check=check)
    return json.loads((repo / f"metrics/{EXP}/validate.json").read_text())


def registry_state(client: MlflowClient) -> tuple[list[str], dict]:
    versions = sorted(v.version for v in client.search_model_versions(f"name='{NAME}'"))
    return versions, dict(client.get_registered_model(NAME).aliases)


@pytest.fixture(scope="module")
def story(server, tmp_path_factory):
    """The whole release story, step by step; the tests below check what each step left."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    os.environ["MLFLOW_TRACKING_URI"] = server
    for cmd in (("git", "init", "-q"), ("git", "add", "-A")):
        sh(repo, *cmd)
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    client = MlflowClient(server)
    release = ("lstm-pipeline", "release", "--exp", EXP)
    s = {"repo": repo, "client": client}

    s["first"] = candidate(repo, "trainer.max_epochs=10")
    s["first_release"] = sh(repo, *release, "--promote")
    s["after_first"] = registry_state(client)

    s["worse"] = candidate(repo, "trainer.max_epochs=1", f"experiments.{EXP}.fit.lr=0.00001")
    s["worse_release"] = sh(repo, *release, "--promote", check=False)
    s["after_worse"] = registry_state(client)

    s["better"] = candidate(repo, "trainer.max_epochs=30")  # the best epoch is 23
    s["better_release"] = sh(repo, *release, "--promote")
    s["after_better"] = registry_state(client)

    s["again_release"] = sh(repo, *release)  # the same model.onnx: no second version
    s["after_again"] = registry_state(client)

    # a gate tightened in params.yaml after validate ran: the report passed the old one
    gate = f"experiments.{EXP}.validate.min.accuracy=0.999"
    sh(repo, "lstm-pipeline", "compose", *BASE, gate, "trainer.max_epochs=30")
    s["stale_release"] = sh(repo, *release, "--promote", check=False)
    s["after_stale"] = registry_state(client)

    # the same training as `better`: only validate reruns, with a gate it cannot meet
    s["failed"] = candidate(repo, "trainer.max_epochs=30", min_accuracy=0.999, check=False)
    s["failed_release"] = sh(repo, *release, "--promote", check=False)
    s["after_failed"] = registry_state(client)
    yield s
    os.environ.pop("MLFLOW_TRACKING_URI")


def test_first_release_becomes_champion(story):
    assert story["after_first"] == (["1"], {"champion": "1"})
    assert "no champion yet" in story["first_release"].stdout
    client = story["client"]
    version = client.get_model_version(NAME, "1")
    assert {"git_commit", "git_dirty", "dvc_lock_sha256", "onnx_sha256", "data_sha256"} <= set(
        version.tags
    )
    assert client.get_run(version.run_id).data.tags["stage"] == "train"  # the version's lineage
    release_run = version.tags["release_run_id"]
    assert client.get_run(release_run).data.metrics["accuracy"] == story["first"]["accuracy"]
    artifacts = {a.path for a in client.list_artifacts(release_run, "validate")}
    assert "validate/validate.json" in artifacts


def test_worse_candidate_is_refused_and_registry_unchanged(story):
    assert story["worse"]["accuracy"] < story["first"]["accuracy"] - 0.005
    proc = story["worse_release"]
    assert proc.returncode == 4
    assert "accuracy vs champion" in proc.stdout and "FAIL" in proc.stdout
    # a chance-level model: below the test split's most frequent class as well
    assert proc.stderr.strip().endswith(
        "release refused by accuracy vs baseline, accuracy vs champion; registry unchanged"
    )
    assert story["after_worse"] == story["after_first"]


def test_better_candidate_is_promoted_and_old_champion_stays_reachable(story, ucr_csv):
    assert story["better"]["accuracy"] >= story["first"]["accuracy"]
    assert story["after_better"] == (["1", "2"], {"champion": "2"})
    assert "previous: version 1" in story["better_release"].stdout
    assert story["after_again"] == story["after_better"]
    assert "version 2 @champion already holds" in story["again_release"].stdout
    proc = sh(
        story["repo"], "lstm-pipeline", "predict", f"models:/{NAME}/1", *ucr_csv, "-o", "v1.csv"
    )
    assert proc.returncode == 0
    assert accuracy(story["repo"] / "v1.csv", ucr_csv) == story["first"]["accuracy"]


def test_a_report_made_with_other_params_is_refused(story):
    """It was released: dvc status said validate@<exp> changed, release trusted the report."""
    proc = story["stale_release"]
    assert proc.returncode == 4
    assert f"validate.json was made with other params than params.yaml's (experiments.{EXP} " in (
        proc.stderr
    )
    assert story["after_stale"] == story["after_again"]


def test_failed_validation_is_refused(story):
    assert story["failed"]["passed"] is False
    proc = story["failed_release"]
    assert proc.returncode == 4
    assert "validate.json passed  False (accuracy" in proc.stdout
    assert story["after_failed"] == story["after_again"]


def test_predict_from_champion_without_torch_reproduces_validate(story, ucr_csv, tmp_path):
    args = ["predict", f"models:/{NAME}@champion", *ucr_csv, "-o", "pred.csv"]
    blocked = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        f"from pipeline.cli import main; sys.exit(main({args!r}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", blocked], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert accuracy(tmp_path / "pred.csv", ucr_csv) == story["better"]["accuracy"]
