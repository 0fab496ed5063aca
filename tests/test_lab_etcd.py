"""`policyfabric lab` with its authority on etcd (``--store``): real packets through a lab whose
intent lives in a 3-member etcd cluster, the lab's own (``--store etcd``) or one it is given
(``--store etcd://...``: a prefix of its own, deleted at ``lab down``); nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
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


def test_verify_on_an_etcd_cluster_of_its_own(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    done = lab("verify", str(TWO_HOSTS), "--json", "--store", "etcd", "--state", str(state))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["failed"] == 0 and report["passed"] == 10
    assert "starting an etcd cluster of 3 members" in done.stderr
    assert "embedded authority (etcd etcd://127.0.0.1:" in done.stderr
    assert not state.exists()
    assert own_processes(str(state)) == []  # the members ran with their data under it: all stopped


def test_up_on_a_given_cluster_keeps_intent_under_a_prefix_of_its_own(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    state = tmp_path / "lab"
    up = lab("up", str(TWO_HOSTS), "--store", etcd_cluster.url, "--state", str(state))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        store = LabState.load(state).store
        assert store.startswith(etcd_cluster.url + "/policyfabric-lab-pf")
        assert "on" + store in "".join(up.stdout.split())  # rich folds long lines
        assert keys_under(store) > 0
        assert keys_under(etcd_cluster.url) == 0  # the default /policyfabric/ prefix is not touched
        probe = lab("probe", "--json", "--state", str(state))
        assert probe.returncode == 0 and json.loads(probe.stdout)["failed"] == 0, probe.stdout
    finally:
        down = lab("down", "--state", str(state))
    assert down.returncode == 0, down.stderr
    assert keys_under(store) == 0
    assert own_processes(str(state)) == []
