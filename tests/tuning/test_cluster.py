"""A real two-node Ray cluster on loopback with token authentication, as the README starts one:
`ray start --head` plus a second node joined with `ray start --address`, each with its own temp
dir and ports; ended by PID in teardown."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from pipeline.config import CONF_DIR
from tests.conftest import free_port, write_params
from tests.tuning.conftest import EXP, LOOPBACK_IPS, listening_ips, sweep_params

pytestmark = pytest.mark.slow
# `ray start`, except that it keeps --node-ip-address=127.0.0.1 (and the head's 127.0.0.1
# address): Ray's CLI swaps loopback for the host's address (resolve_ip_for_localhost), and a
# node on that address listens on every interface. On 127.0.0.1 Ray listens on loopback only.
# Clients keep 127.0.0.1 too with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (CLIENT_ENV).
RAY_START_ON_LOOPBACK = (
    "import sys; from ray._private import services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
TOKEN = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0123456789abcdef" * 2}
CLIENT_ENV = {**TOKEN, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
CPUS_PER_NODE = 2


def node_ports() -> list[str]:
    """Every port a node would otherwise take at a fixed default (shared host)."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "runtime-env-agent-port",
        "dashboard-agent-grpc-port",
        "dashboard-agent-listen-port",
        "metrics-export-port",
    )
    return [f"--{name}={free_port()}" for name in names]


def start_node(args: list[str], env: dict) -> subprocess.Popen:
    # --block keeps `ray start` as the parent of the node's processes: they are its descendants
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Unix socket path limit
    cmd = [
        sys.executable, "-c", RAY_START_ON_LOOPBACK, "start", "--block",
        "--node-ip-address=127.0.0.1", f"--num-cpus={CPUS_PER_NODE}",
        f"--temp-dir={temp_dir}", *node_ports(), *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    proc.temp_dir = temp_dir  # removed by end_by_pid
    return proc


def running(procs: list[psutil.Process], within: float) -> list[psutil.Process]:
    """Those of `procs` still running after at most `within` s. An ended process whose parent
    died first stays a zombie until PID 1 reaps it: ended all the same."""
    deadline = time.monotonic() + within
    while True:
        left = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        psutil.wait_procs(left, timeout=0.1)  # reaps those that are this process's children


def end_by_pid(procs: list[subprocess.Popen]) -> None:
    """End each node's process tree, then remove its temp dir (sessions, logs, sockets)."""
    tree = []
    for proc in procs:
        try:
            tree += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in tree:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    alive = running(tree, within=5)
    for p in alive:  # gcs_server may ignore SIGTERM
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    running(alive, within=10)
    for proc in procs:
        shutil.rmtree(proc.temp_dir, ignore_errors=True)


def alive_nodes(address: str, env: dict) -> int:
    code = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0


def wait_for_nodes(address: str, env: dict, count: int, deadline: float) -> None:
    while alive_nodes(address, env) < count:
        assert time.monotonic() < deadline, f"{count} node(s) did not come up"
        time.sleep(1)


@pytest.fixture(scope="module")
def cluster_nodes():
    """(the head's address, the `ray start --block` process of each node)."""
    env = {**os.environ, **TOKEN, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    client_env = {**env, **CLIENT_ENV}
    address = f"127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    head_args = ["--head", f"--port={port}", "--include-dashboard=false"]
    procs = [start_node(head_args, env)]
    previous = {key: os.environ.get(key) for key in CLIENT_ENV}
    try:
        deadline = time.monotonic() + 60
        wait_for_nodes(address, client_env, 1, deadline)
        procs.append(start_node([f"--address={address}"], env))
        wait_for_nodes(address, client_env, 2, deadline)
        os.environ.update(CLIENT_ENV)  # clients must match the cluster
        yield address, procs
    finally:
        end_by_pid(procs)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not any(p.poll() is None for p in procs)


@pytest.fixture(scope="module")
def cluster(cluster_nodes):
    return cluster_nodes[0]


def tune(env) -> subprocess.CompletedProcess:
    """The tune stage in its own process: Ray reads RAY_AUTH_MODE once per process, and this
    one imported Ray before the cluster's token was set."""
    cmd = [sys.executable, "-m", "pipeline", "tune", EXP]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_the_cluster_listens_on_loopback_only(cluster_nodes):
    _, procs = cluster_nodes
    nodes = [psutil.Process(p.pid) for p in procs]
    tree = [*nodes, *(child for node in nodes for child in node.children(recursive=True))]
    assert {"gcs_server", "raylet"} <= {p.name() for p in tree}
    ips = listening_ips(tree)
    assert ips and ips <= LOOPBACK_IPS, ips


def test_sweep_on_an_existing_cluster_uses_both_nodes(cluster, tune_workdir, params):
    # A trial takes a whole node, so the two concurrent trials run on different nodes.
    write_params(
        sweep_params(
            params, address=cluster, resources_per_trial={"cpu": CPUS_PER_NODE}, scheduler="fifo"
        )
    )
    proc = tune(os.environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tune_workdir / "tune" / EXP / "best_params.yaml").exists()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    trials = client.search_runs(
        [client.get_experiment_by_name("lstm-pipeline").experiment_id],
        "tags.stage = 'tune-trial'",
    )
    assert len(trials) == 2
    assert len({t.data.tags["ray_node_id"] for t in trials}) == 2


def test_trial_larger_than_any_node_is_refused(cluster, tune_workdir, params):
    write_params(sweep_params(params, address=cluster, resources_per_trial={"cpu": 3}))
    proc = tune(os.environ)
    assert proc.returncode == 2
    assert "tune.resources_per_trial.cpu: 3 exceeds the largest node of the cluster (2 CPUs)" in (
        proc.stderr
    )


def train_on(cluster: str, params: dict, workdir: Path) -> dict:
    """The train stage in a subprocess pointed at the cluster; returns its train.json."""
    write_params(params)
    env = {**os.environ, "RAY_ADDRESS": cluster}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", EXP],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((workdir / f"metrics/{EXP}/train.json").read_text())


def ray_ddp(params: dict) -> dict:
    """`-S trainer=ray_ddp`: Ray Train's TorchTrainer with 2 workers."""
    params["trainer"] = yaml.safe_load((CONF_DIR / "trainer" / "ray_ddp.yaml").read_text())
    return params


def test_ray_train_torch_trainer_with_two_cpu_workers(cluster, tune_workdir, params, monkeypatch):
    params = ray_ddp(sweep_params(params))
    params["trainer"]["max_epochs"] = 2
    metrics = train_on(cluster, params, tune_workdir)
    assert metrics["epochs_run"] == 2
    assert (tune_workdir / f"models/{EXP}/model.ckpt").exists()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("lstm-pipeline").experiment_id])
    assert run.data.tags["world_size"] == "2" and run.info.status == "FINISHED"


def test_ensemble_members_train_in_parallel_on_the_cluster(cluster, tune_workdir, params):
    params = sweep_params(params)
    params["experiments"][EXP]["fit"]["ensemble"] = 2
    params["trainer"]["max_epochs"] = 2
    metrics = train_on(cluster, params, tune_workdir)
    assert metrics["members"] == 2 and metrics["member1/epochs_run"] == 2
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("lstm-pipeline").experiment_id])
    members = [r for r in runs if "member" in r.data.tags]
    assert len(members) == 2 and all("ray_node_id" in r.data.tags for r in members)
    assert not any((tune_workdir / ".ray_results").iterdir())  # the shared checkpoints went


def test_a_client_without_the_clusters_token_gets_one_line(cluster, tune_workdir, params):
    write_params(sweep_params(params, address=cluster))
    client_env = {k: v for k, v in os.environ.items() if k not in TOKEN}
    proc = tune({**client_env, "RAY_AUTH_MODE": "disabled"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"lstm-pipeline tune: error: tune.address: the Ray cluster at {cluster} did not accept "
        "this client (its authentication token is missing or wrong here); a cluster started with "
        "token authentication needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token or "
        "RAY_AUTH_TOKEN) here too, as the README shows"
    ]


def test_an_ensemble_member_whose_worker_dies_ends_the_training_with_one_line(
    cluster_nodes, tune_workdir, params
):
    """Ray's error for a task whose worker died (not its code) ended the training `unexpected`,
    exit 1, with its runs RUNNING."""
    params = sweep_params(params)
    params["experiments"][EXP]["fit"]["ensemble"] = 2
    params["trainer"]["max_epochs"] = 100
    write_params(params)

    def both_members_started() -> bool:
        return len([r for r in runs_of("train") if "member" in r.data.tags]) == 2

    code, err = kill_mid_training(cluster_nodes, both_members_started, "ray::_member", count=1)
    assert code == 8, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(
        "lstm-pipeline train: error: an ensemble member's Ray worker was lost ("
    ) and err.strip().endswith("); run the command again")
    assert {r.info.status for r in runs_of("train")} == {"FAILED", "KILLED"}  # none RUNNING


def test_a_ray_train_worker_that_dies_ends_the_training_with_one_line(
    cluster_nodes, tune_workdir, params
):
    """It was `unexpected WorkerGroupError`, exit 1, with rank zero's run RUNNING."""
    params = ray_ddp(sweep_params(params))
    params["trainer"]["max_epochs"] = 100
    write_params(params)
    # both workers, rank zero's too: nothing on the cluster ends its run
    code, err = kill_mid_training(cluster_nodes, lambda: bool(runs_of("train")),
                                  "ray::RayTrainWorker", count=2)  # fmt: skip
    assert code == 8, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(
        "lstm-pipeline train: error: a Ray Train worker was lost ("
    ) and err.strip().endswith("); run the command again")
    assert [r.info.status for r in runs_of("train")] == ["FAILED"]  # not RUNNING


def test_a_ray_train_workers_own_error_is_stated_as_the_train_stage_states_it(
    cluster, tune_workdir, params
):
    """It was `unexpected WorkerGroupError: Training failed due to worker errors:`, exit 1."""
    write_params(ray_ddp(sweep_params(params)))
    (tune_workdir / "data/prepared" / EXP / "meta.json").write_text("{")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "train", EXP],
                          env={**os.environ, "RAY_ADDRESS": cluster}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"lstm-pipeline train: error: data/prepared/{EXP}/meta.json: not a valid meta.json "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"
    ]


def kill_mid_training(cluster_nodes, started, process: str, count: int) -> tuple[int, str]:
    """A training on the cluster; once `started()`, the first `count` of its worker processes
    named `process` on the nodes are killed. Its exit code and standard error."""
    address, nodes = cluster_nodes
    training = subprocess.Popen([sys.executable, "-m", "pipeline", "train", EXP],
                                env={**os.environ, "RAY_ADDRESS": address},
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not started():
            assert training.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        on_nodes = [c for node in nodes for c in psutil.Process(node.pid).children(True)]
        workers = [c for c in on_nodes if c.cmdline()[:1] == [process]]
        assert len(workers) >= count, [c.cmdline()[:1] for c in on_nodes]
        for worker in workers[:count]:
            worker.kill()
        _, err = training.communicate(timeout=120)
    finally:
        if training.poll() is None:
            training.kill()
    return training.returncode, err


def runs_of(stage: str) -> list:
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("lstm-pipeline")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], f"tags.stage = '{stage}'")


def test_a_head_node_lost_mid_sweep_ends_it_with_one_line(cluster_nodes, tune_workdir, params):
    """Ray's client waited 60 s for the lost head, then ended the sweep with its own lines and
    exit 1. An ensemble training on the cluster at the same time ends the same way. Last in the
    module: it takes the module's cluster down."""
    address, procs = cluster_nodes
    tune_keys = {"num_samples": 8, "max_epochs": 400, "scheduler": "fifo"}  # outlive the wait
    params["experiments"][EXP]["fit"]["patience"] = 400  # no early stop: a trial ended by
    write_params(sweep_params(params, address=address, **tune_keys))  # itself was not KILLED
    command = [sys.executable, "-m", "pipeline"]
    jobs = [subprocess.Popen([*command, "tune", EXP], stderr=subprocess.PIPE, text=True)]
    try:
        deadline = time.monotonic() + 120
        while not runs_of("tune-trial"):  # trials are running (the sweep read its params)
            assert jobs[0].poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        ensemble = sweep_params(params)  # the cluster's other 2 CPUs: a member on each
        ensemble["experiments"][EXP]["fit"]["ensemble"] = 2
        ensemble["trainer"]["max_epochs"] = 100
        write_params(ensemble)
        jobs.append(subprocess.Popen([*command, "train", EXP],
                                     env={**os.environ, "RAY_ADDRESS": address},
                                     stderr=subprocess.PIPE, text=True))  # fmt: skip
        while len([r for r in runs_of("train") if "member" in r.data.tags]) < 2:
            assert jobs[1].poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        while not any(r.info.status == "RUNNING" for r in runs_of("tune-trial")):
            assert time.monotonic() < deadline  # a trial runs when the head goes (not between)
            time.sleep(0.2)
        head = psutil.Process(procs[0].pid)
        for p in [head, *head.children(recursive=True)]:
            p.kill()
        lost = time.monotonic()
        errors = [job.communicate(timeout=60)[1] for job in jobs]
    finally:
        for job in jobs:
            if job.poll() is None:
                job.kill()
    assert [job.returncode for job in jobs] == [2, 2], [err[-2000:] for err in errors]
    assert time.monotonic() - lost < 20
    for stage, key, err in zip(
        ("tune", "train"), ("tune.address", "RAY_ADDRESS"), errors, strict=True
    ):
        assert err.strip().splitlines()[-1] == (
            f"lstm-pipeline {stage}: error: {key}: the Ray cluster at {address} stopped "
            "answering (its head node is gone?); run the command again once it is back (a sweep: "
            "with --resume, which keeps its finished trials)"
        )
    # no run left RUNNING in MLflow for ever (the ensemble's were, its members' on the workers)
    assert [r.info.status for r in runs_of("tune")] == ["FAILED"]
    trials = {r.info.status for r in runs_of("tune-trial")}
    assert "KILLED" in trials and "RUNNING" not in trials  # (a trial may have ended early)
    trained = {"member" in r.data.tags: r.info.status for r in runs_of("train")}
    assert trained == {False: "FAILED", True: "KILLED"}
