"""`policyfabric lab` with its authority on etcd (``--store``): real packets through a lab whose
intent lives in a 3-member etcd cluster, the lab's own (``--store etcd``) or one it is given
(``--store etcd://...``: a prefix of its own, deleted at ``lab down``); nothing left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.lab.processes import alive
from policyfabric.lab.state import LabState
from policyfabric.store.etcd import parse_url
from policyfabric.store.etcd_client import EtcdClient, prefix_end
from tests.lab_harness import SCENARIOS, own_processes

pytestmark = [
    pytest.mark.dataplane,
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]

TWO_HOSTS = SCENARIOS / "two_hosts.yaml"


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "policyfabric", "lab", *args], env=env, capture_output=True, text=True
    )


def keys_under(url: str) -> int:
    endpoints, prefix = parse_url(url)
    client = EtcdClient(endpoints)
    try:
        start = prefix.encode()
        return int(client.range(start, prefix_end(start), keys_only=True).get("count", 0))
    finally:
        client.close()


def test_up_on_an_etcd_cluster_of_its_own_which_outlives_lab_up_until_lab_down(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    up = lab("up", str(TWO_HOSTS), "--store", "etcd", "--state", str(state))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "starting an etcd cluster of 3 members" in up.stdout
        members = [pid for role, pid in LabState.load(state).pids.items() if role.startswith("etcd:")]
        assert len(members) == 3
        assert all(alive(pid) for pid in members)  # `lab up` exited; its cluster runs on
        probe = lab("probe", "--json", "--state", str(state))
        assert probe.returncode == 0 and json.loads(probe.stdout)["failed"] == 0, probe.stdout
    finally:
        down = lab("down", "--state", str(state))
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    assert not any(alive(pid) for pid in members)
    assert own_processes(str(state)) == []


def test_verify_on_a_given_cluster_keeps_intent_under_a_prefix_of_its_own(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    state = tmp_path / "lab"
    done = lab("verify", str(TWO_HOSTS), "--json", "--store", etcd_cluster.url, "--state", str(state))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["failed"] == 0 and report["passed"] == 10
    found = re.search(r"embedded authority \(etcd (etcd://\S+)\)", "".join(done.stderr.split("\n")))
    assert found, done.stderr
    store = found.group(1)
    assert store.startswith(etcd_cluster.url + "/policyfabric-lab-pf")
    assert keys_under(store) == 0  # `lab down` deleted the prefix the lab chose
    assert keys_under(etcd_cluster.url) == 0  # and the default /policyfabric/ was never touched
    assert own_processes(str(state)) == []
