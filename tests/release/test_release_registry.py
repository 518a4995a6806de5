"""Release into a real `mlflow server` with models the real stages made in-process (no dvc repro,
under a minute): the baseline gate, one version per ONNX file, and the version's lineage."""

import json
import os
import signal
import subprocess
import time
from importlib.metadata import version as package_version
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from pipeline import tracking
from pipeline.cli import main
from pipeline.io import file_digest
from pipeline.registry import history
from pipeline.tracking import run_tags
from tests.conftest import BIN, REPO, write_params

FORECAST, CLASSIFY = "lstm_airline", "lstm_italypowerdemand"
REQUIRED = ("mlflow", "numpy", "onnx", "onnxruntime")  # what a served ONNX model runs on


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True)


@pytest.fixture(scope="module")
def made(server, tmp_path_factory) -> tuple[Path, dict]:
    """A git repo where prepare, train, export and validate ran against the server, and the
    dvc.lock entries `dvc repro` would have written: a forecaster trained too briefly to beat its
    seasonal-naive baseline (validate does not check it here), and a classifier."""
    root = tmp_path_factory.mktemp("repo")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["trainer"]["progress_bar"] = False
    exps = {exp: params["experiments"][exp] for exp in (FORECAST, CLASSIFY)}
    params["experiments"] = exps
    exps[FORECAST]["fit"].update(max_epochs=1, lr=1e-4)
    exps[FORECAST]["model"]["season_norm"] = 0  # with it, an untrained model is seasonal naive
    exps[CLASSIFY]["fit"].update(max_epochs=10)  # 3 left it at chance: below its baseline
    for exp in exps.values():
        exp["validate"] = {"quantize": False}
    cwd, uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = server
    try:
        write_params(params)
        git(root, "init", "-q")
        git(root, "add", "params.yaml")
        git(root, "commit", "-qm", "init")
        lock = {}
        for exp in exps:
            for stage in ("prepare", "train", "export", "validate"):
                assert main([stage, exp]) == 0
            onnx, report = f"models/{exp}/model.onnx", f"metrics/{exp}/validate.json"
            lock[f"validate@{exp}"] = {
                "deps": [{"path": onnx, "md5": file_digest(onnx, "md5")}],
                "outs": [{"path": report, "md5": file_digest(report, "md5")}],
            }
        Path("dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": lock}))
    finally:
        os.chdir(cwd)
        os.environ.pop("MLFLOW_TRACKING_URI")
        if uri:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    return root, params


@pytest.fixture
def release(made, server, tmp_path, monkeypatch, capsys):
    """`lstm-pipeline release --exp EXP ...` into the registered model `name`: (exit, out, err)."""
    root, params = made
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)

    def run(name: str, exp: str, *flags: str, **tracking) -> tuple[int, str, str]:
        changed = {
            **params,
            "release": {**params["release"], "model_name": name},
            "tracking": {**params["tracking"], **tracking},
        }
        path = write_params(changed, tmp_path / "params.yaml")
        code = main(["release", "--exp", exp, "--params", str(path), *flags])
        return code, *capsys.readouterr()

    return run


def state(server: str, name: str) -> tuple[list[str], dict]:
    client = MlflowClient(server)
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{name}'"))
    return versions, dict(client.get_registered_model(name).aliases)


def test_forecaster_worse_than_its_seasonal_naive_is_refused_by_default(made, server, release):
    report = json.loads((made[0] / f"metrics/{FORECAST}/validate.json").read_text())
    assert report["passed"] and report["mae"] > report["seasonal_naive_mae"]

    code, out, err = release("refused-{exp}", FORECAST, "--promote")
    assert code == 4
    (row,) = [line for line in out.splitlines() if line.startswith("mae vs baseline")]
    bound = f"< {report['seasonal_naive_mae']:.6g} (seasonal_naive_mae)"
    assert bound in row and row.endswith("FAIL")
    assert err.strip().endswith("release refused by mae vs baseline; registry unchanged")
    client = MlflowClient(server)
    assert client.search_registered_models(f"name = 'refused-{FORECAST}'") == []
    experiment = client.get_experiment_by_name("lstm-pipeline")
    released = f"tags.stage = 'release' and tags.exp = '{FORECAST}'"
    assert client.search_runs([experiment.experiment_id], released) == []


def test_the_same_model_twice_is_one_version(server, release):
    name = f"twice-{CLASSIFY}"
    code, out, _ = release("twice-{exp}", CLASSIFY, "--promote")
    assert code == 0
    assert "> 0.501458 (majority_accuracy)" in out  # its accuracy vs baseline
    for flags in (["--promote"], []):
        code, out, _ = release("twice-{exp}", CLASSIFY, *flags)
        assert code == 0
        assert out.splitlines()[-1] == (
            f"{name} version 1 @champion already holds models/{CLASSIFY}/model.onnx"
            " (same sha256): nothing registered, aliases unchanged"
        )
    assert state(server, name) == (["1"], {"champion": "1"})


def test_promoting_a_registered_challenger_moves_champion_to_it(server, release, tmp_path, capsys):
    name = f"promote-{CLASSIFY}"
    assert release("promote-{exp}", CLASSIFY)[0] == 0
    assert state(server, name) == (["1"], {"challenger": "1"})
    code, out, _ = release("promote-{exp}", CLASSIFY, "--promote")
    assert code == 0
    assert out.splitlines()[-1].endswith("(same sha256): promoted it to @champion")
    assert state(server, name) == (["1"], {"champion": "1"})
    moves = [(e["alias"], e["from"], e["to"]) for e in history(MlflowClient(server), name)]
    assert moves == [("challenger", None, "1"), ("champion", None, "1"), ("challenger", "1", None)]
    assert main(["release", "--history", CLASSIFY, "--params", str(tmp_path / "params.yaml")]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split(" | ")[1:4] for row in rows] == [
        ["@challenger", "-", "v1"], ["@champion", "-", "v1"], ["@challenger", "v1", "-"]
    ]  # fmt: skip


def test_the_history_of_a_model_never_released_is_one_line(
    made, server, tmp_path, capsys, monkeypatch
):
    root, params = made
    path = write_params({**params, "release": {**params["release"], "model_name": "never-{exp}"}},
                        tmp_path / "params.yaml")  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert main(["release", "--history", CLASSIFY, "--params", str(path)]) == 6
    err = capsys.readouterr().err
    assert err.startswith(f"lstm-pipeline release: error: never-{CLASSIFY} at {server}: ")
    assert err.count("\n") == 1


def test_the_version_belongs_to_its_training_run_and_flags_a_dirty_tree(
    made, server, release, tmp_path
):
    code, out, _ = release("lineage-{exp}", CLASSIFY)
    assert code == 0
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name("lstm-pipeline")
    ckpt = file_digest(made[0] / f"models/{CLASSIFY}/model.ckpt")
    (trained,) = client.search_runs([experiment.experiment_id], f"tags.ckpt_sha256 = '{ckpt}'")
    training = trained.info.run_id
    assert f"(training run {training})" in out

    version = client.get_model_version(f"lineage-{CLASSIFY}", "1")
    assert version.run_id == training
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == training  # the ONNX model is an output of the training run
    assert version.tags["git_dirty"] == "true"  # the stages' outputs are untracked here
    assert version.tags["git_commit"] == trained.data.tags["git_commit"]
    released = client.get_run(version.tags["release_run_id"])
    assert released.data.tags["training_run_id"] == training
    report = json.loads((made[0] / f"metrics/{CLASSIFY}/validate.json").read_text())
    assert released.data.metrics["accuracy"] == report["accuracy"]
    files = download_artifacts(
        f"models:/lineage-{CLASSIFY}/1", dst_path=tmp_path, tracking_uri=server
    )
    requirements = (Path(files) / "requirements.txt").read_text().split()
    assert sorted(requirements) == sorted(f"{p}=={package_version(p)}" for p in REQUIRED)


def test_a_model_trained_against_another_store_is_its_release_runs(server, release):
    code, out, _ = release("elsewhere-{exp}", CLASSIFY, experiment_name="elsewhere")
    assert code == 0
    assert "(no run here trained this checkpoint)" in out
    version = MlflowClient(server).get_model_version(f"elsewhere-{CLASSIFY}", "1")
    assert version.run_id == version.tags["release_run_id"]


def test_run_tags_flag_changed_and_untracked_files_but_not_ignored_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path(".gitignore").write_text("ignored/\n")
    Path("tracked.txt").write_text("a\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")

    def dirty() -> str:
        return run_tags("exp", "stage")["git_dirty"]

    Path("ignored").mkdir()
    Path("ignored/secret.env").write_text("TOKEN=x\n")
    assert dirty() == "false"
    Path("new.txt").write_text("b\n")
    assert dirty() == "true"
    Path("new.txt").unlink()
    Path("tracked.txt").write_text("changed\n")
    assert dirty() == "true"


def test_a_git_status_that_outlasts_its_bound_tags_the_tree_unknown(tmp_path, monkeypatch):
    """Not a missing tag that reads like a clean tree: a release card shows what was known."""
    fake = tmp_path / "bin/git"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = rev-parse ] && echo abc123 && exit 0\nexec sleep 30\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(tracking, "GIT_TIMEOUT_S", 0.5)
    tags = run_tags("exp", "stage")
    assert (tags["git_commit"], tags["git_dirty"]) == ("abc123", "unknown")


def test_a_card_path_that_is_a_folder_is_refused_before_the_registry_changes(
    server, release, tmp_path
):
    code, _, err = release("card-{exp}", CLASSIFY, "--card", str(tmp_path))
    assert code == 3 and err.strip().endswith("is a folder; --card takes the card's file path")
    (tmp_path / "taken").write_text("a file where the card's folder must be")
    code, _, err = release("card-{exp}", CLASSIFY, "--card", str(tmp_path / "taken/card.md"))
    card = tmp_path / "taken/card.md"
    assert code == 8 and err.strip().splitlines()[-1] == (
        f"lstm-pipeline release: error: {card}: cannot write there (File exists: {card.parent})"
    )
    assert not MlflowClient(server).search_registered_models(f"name = 'card-{CLASSIFY}'")


def test_a_card_over_a_pipeline_file_or_at_no_path_is_refused(server, release):
    """`--card models/<exp>/model.onnx` wrote the card over the model (exit 0); `--card ''`
    was 'unexpected AttributeError'."""
    onnx = Path(f"models/{CLASSIFY}/model.onnx")
    before = onnx.read_bytes()
    code, _, err = release("card-{exp}", CLASSIFY, "--card", str(onnx))
    assert code == 3 and err.strip().endswith(
        f"{onnx}: one of the pipeline's files; --card takes a new path"
    )
    assert onnx.read_bytes() == before
    code, _, err = release("card-{exp}", CLASSIFY, "--card", "")
    assert code == 3 and err.strip().endswith(".: is a folder; --card takes the card's file path")
    assert not MlflowClient(server).search_registered_models(f"name = 'card-{CLASSIFY}'")


def test_a_release_beside_another_of_the_experiment_is_refused(server, release):
    """Two at once registered the same model.onnx twice, each naming the same previous
    champion (exit 0 both)."""
    import fcntl

    lock = Path(f".resume/{CLASSIFY}/release.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:  # as the other release holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = release("lock-{exp}", CLASSIFY)
    assert code == 1 and "another release of this experiment is running" in err
    assert not MlflowClient(server).search_registered_models(f"name = 'lock-{CLASSIFY}'")


def test_a_version_left_without_an_alias_becomes_the_challenger(server, release):
    """A release stopped between registering the version and aliasing it: the next one aliases
    it (it used to say 'nothing registered, aliases unchanged' for ever)."""
    name = f"bare-{CLASSIFY}"
    assert release("bare-{exp}", CLASSIFY)[0] == 0
    MlflowClient(server).delete_registered_model_alias(name, "challenger")
    code, out, _ = release("bare-{exp}", CLASSIFY)
    assert code == 0 and out.splitlines()[-1].endswith("(same sha256): made it @challenger")
    assert state(server, name) == (["1"], {"challenger": "1"})


def test_an_alias_move_is_recorded_by_a_user_without_a_name(tmp_path, monkeypatch):
    """`docker run -u 1234`: no passwd entry and no $USER. getpass raised KeyError after the
    alias had moved, so the move went unrecorded."""
    import getpass

    from pipeline.registry import move_alias

    def nameless():
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr(getpass, "getuser", nameless)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("m")
    client.create_model_version("m", str(tmp_path))
    move_alias(client, "m", "champion", "1", commit="abc")
    assert client.get_registered_model("m").aliases == {"champion": 1}
    (event,) = history(client, "m")
    assert event["by"].startswith(f"uid {os.getuid()}@") and event["to"] == "1"


def test_the_card_goes_through_a_link_to_standard_output(made, server, tmp_path):
    """`--card /dev/stdout > f.md` wrote through the descriptor, not over the link."""
    root, params = made
    changed = {**params, "release": {**params["release"], "model_name": "stdout-{exp}"}}
    path = write_params(changed, tmp_path / "params.yaml")
    stdout = tmp_path / "stdout"
    stdout.symlink_to("/proc/self/fd/1")  # what /dev/stdout is, outside /dev
    log = tmp_path / "log.md"
    log.write_text("earlier\n")
    command = [BIN / "lstm-pipeline", "release", "--exp", CLASSIFY, "--params", path]
    with open(log, "a") as appended:  # `>> log.md`
        done = subprocess.run(
            [*command, "--card", stdout],
            cwd=root, env={**os.environ, "MLFLOW_TRACKING_URI": server},
            stdout=appended, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (version,) = MlflowClient(server).search_model_versions(f"name = 'stdout-{CLASSIFY}'")
    assert stdout.is_symlink()
    written = log.read_text()  # the release's lines around the card
    assert written.startswith("earlier\n") and version.description in written


def test_a_card_to_dash_is_all_of_standard_output(made, server, tmp_path):
    """`--card -` wrote a file named `-`; the card is now stdout's only text, the release's lines
    go to stderr."""
    root, params = made
    changed = {**params, "release": {**params["release"], "model_name": "dash-{exp}"}}
    path = write_params(changed, tmp_path / "params.yaml")
    done = subprocess.run(
        [BIN / "lstm-pipeline", "release", "--exp", CLASSIFY, "--params", path, "--card", "-"],
        cwd=root, env={**os.environ, "MLFLOW_TRACKING_URI": server},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (version,) = MlflowClient(server).search_model_versions(f"name = 'dash-{CLASSIFY}'")
    assert done.stdout == version.description and not (root / "-").exists()
    assert f"registered dash-{CLASSIFY} version 1" in done.stderr
    assert "Successfully registered" not in done.stderr  # MLflow's line, said by release's own


def test_sigterm_during_a_release_is_one_line_and_its_rerun_finishes_it(made, server, tmp_path):
    """It ended with exit 143 and no line."""
    root, params = made
    changed = {**params, "release": {**params["release"], "model_name": "term-{exp}"}}
    path = write_params(changed, tmp_path / "params.yaml")
    command = [BIN / "lstm-pipeline", "release", "--exp", CLASSIFY, "--params", path]
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "LSTM_PIPELINE_WARM": "0"}
    proc = subprocess.Popen(command, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # in its imports or its work: the handler is set before either
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.endswith(
        "lstm-pipeline release: stopped by SIGTERM; run it again (it aliases a version it "
        "registered)\n"
    )
    assert subprocess.run(command, cwd=root, env=env).returncode == 0
    client = MlflowClient(server)
    (version,) = client.search_model_versions(f"name = 'term-{CLASSIFY}'")
    assert client.get_registered_model(f"term-{CLASSIFY}").aliases == {"challenger": "1"}
