import shutil
from pathlib import Path

import psutil
import pytest

from pipeline.cli import main
from tests.conftest import write_params

EXP = "lstm_italypowerdemand"


def sweep_params(params: dict, **tune) -> dict:
    """One experiment, a small sweep: the given tune keys over short defaults."""
    params["experiments"] = {EXP: params["experiments"][EXP]}
    params["trainer"]["progress_bar"] = False
    params["tune"].update(
        num_samples=2,
        max_epochs=2,
        max_concurrent_trials=2,
        space={"fit": {"batch_size": None, "weight_decay": None}, "model": {"cell": None}},
    )
    params["tune"].update(tune)
    return params


@pytest.fixture(scope="session")
def prepared_data(tmp_path_factory):
    """data/prepared/<exp> made once by the real prepare stage; tests copy it."""
    import yaml

    from tests.conftest import REPO

    root = tmp_path_factory.mktemp("prepared")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    write_params(sweep_params(params), root / "params.yaml")
    import os

    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["prepare", EXP]) == 0
    finally:
        os.chdir(cwd)
    return root / "data" / "prepared" / EXP


@pytest.fixture
def tune_workdir(workdir, prepared_data):
    shutil.copytree(prepared_data, Path("data/prepared") / EXP)
    return workdir


def listening_ips(procs: list[psutil.Process]) -> set[str]:
    """The addresses the processes' TCP servers listen on."""
    ips = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        ips |= {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN}
    return ips


LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
