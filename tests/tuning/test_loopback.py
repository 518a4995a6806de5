"""A local Ray that the pipeline starts is private: its servers listen on loopback only."""

import os
import signal
import sys
import threading

import psutil
import pytest
import ray

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


def test_a_sigterm_while_ray_starts_waits_until_it_has_started():
    """Raised inside the core worker's construction, the stop left it half-made and
    ray.shutdown aborted the command (exit -6, nothing said)."""
    started_when_stopped = []
    previous = signal.signal(
        signal.SIGTERM, lambda *_: started_when_stopped.append(ray.is_initialized())
    )
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        with ray_session():
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert started_when_stopped == [True]
