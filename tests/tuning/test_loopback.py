"""A local Ray that the pipeline starts is private: its servers listen on loopback only."""

import psutil

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
