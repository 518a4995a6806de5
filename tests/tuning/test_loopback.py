"""A local Ray that the pipeline starts is private: its servers listen on loopback only."""

import sys

import psutil
import pytest

from pipeline.errors import ConfigError
from pipeline.ray_cluster import ray_session
from tests.tuning.conftest import LOOPBACK_IPS, listening_ips


def test_local_ray_listens_on_loopback_only():
    with ray_session():
        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        names = {p.name() for p in procs}
        ips = listening_ips(procs)
    assert {"gcs_server", "raylet"} <= names
    assert ips and ips <= LOOPBACK_IPS, ips


def test_a_python_whose_path_has_a_space_is_refused_before_ray_starts(monkeypatch):
    """Ray splits the worker command at the space: every trial stayed PENDING, for ever."""
    monkeypatch.setattr(sys, "executable", "/tmp/my clone/.venv/bin/python")
    with pytest.raises(ConfigError, match="cannot start workers from a Python whose path has"):
        with ray_session():
            pytest.fail("Ray started")
