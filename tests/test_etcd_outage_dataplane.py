"""The whole etcd cluster down under a running fabric, on real Open vSwitch: an authority on a
3-member cluster of this module's own, a two-host lab. Every member is killed while a TCP
connection runs through both hosts: REST answers 503 with the error shape, the agents keep their
flows (none removed), the connection stays up and new connections are still judged by the policy
the hosts had. When the members come back, a write is accepted again and reaches the hosts' flows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from policyfabric.lab.authority import authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.lab.lab import Lab
from policyfabric.model import scenario as sc
from tests.conftest import etcd_prefix
from tests.lab_harness import SCENARIOS, flows_with_age, measured, own_processes, serve, serving
from tests.test_replicas_dataplane import ECHO_CLIENT

pytestmark = [
    pytest.mark.dataplane,
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]

OUTAGE = 4.0  # seconds with every member down: eight of the authority's keepalive periods below


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[EtcdCluster]:
    """A cluster of this module's own: its members are all stopped, which no other test may see."""
    with EtcdCluster() as cluster:
        yield cluster


def test_the_fabric_keeps_forwarding_with_every_etcd_member_down_and_resumes_after(
    own_cluster: EtcdCluster, tmp_path: Path
) -> None:
    url = own_cluster.url + etcd_prefix()
    authority = authority_in(tmp_path / "a", extra=["--store", url, "--keepalive", "0.5"])
    scenario = SCENARIOS / "two_hosts.yaml"
    lab = Lab.create(scenario, tmp_path / "lab")
    rest = httpx.Client(timeout=10)
    try:
        authority.start()
        lab.up(sc.load(scenario), authority=(authority.url, "{}:{}".format(*authority.opflex)))
        http = next(
            c for c in rest.get(f"{authority.url}/v1/contracts").json()["items"] if c["name"] == "http"
        )
        server = serve(lab, "web1", "tcp-echo", 80)  # web1 on h1, app1 on h2: through both hosts
        try:
            before = {h: flows_with_age(lab, h) for h in ("h1", "h2")}
            rounds = str(int(OUTAGE / 0.1) + 60)  # an echo each 0.1 s: the connection outlives the outage
            client = subprocess.Popen(
                ["ip", "netns", "exec", lab.state.endpoints["app1"].netns, sys.executable, "-c", ECHO_CLIENT,
                 lab.state.endpoints["web1"].ips[0], rounds],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert client.stdout is not None and client.stdout.readline().strip() == "connected"
            for i in range(len(own_cluster.members)):
                own_cluster.stop_member(i)
            try:
                down = time.monotonic()
                r = rest.post(f"{authority.url}/v1/contracts", json={"name": "lost", "tenant": "acme"})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                assert measured(lab, "app2", "web1", "tcp/80") == "allow"  # a new connection, judged
                assert measured(lab, "app1", "web1", "tcp/22") == "deny"  # as before the outage
                time.sleep(max(0.0, OUTAGE - (time.monotonic() - down)))
                for host, flows in before.items():
                    after = flows_with_age(lab, host)
                    gone = [f for f in flows if f not in after]
                    assert not gone, f"{host}: flows removed while etcd was down: {gone[:3]}"
            finally:
                own_cluster.start_members(timeout=60)
            out, errs = client.communicate(timeout=60)
            assert client.returncode == 0 and out.strip() == "ok", errs
        finally:
            server.kill()
            server.wait()
        ssh = {"name": "ssh-in", "classifier": {"protocol": "tcp", "port": 22}, "action": "allow"}
        with_ssh = {**http, "rules": [*http["rules"], ssh]}
        deadline = time.monotonic() + 30
        while True:  # the authority's first writes after the outage may still find no leader
            r = rest.put(f"{authority.url}/v1/contracts/{http['id']}", json=with_ssh)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.status_code == 503, r.text
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        with serving(lab, ("web1", "tcp", 22)):
            deadline = time.monotonic() + 10
            while measured(lab, "app1", "web1", "tcp/22") != "allow":
                assert time.monotonic() < deadline, "the write made after the outage did not reach the hosts"
                time.sleep(0.2)
    finally:
        rest.close()
        left = lab.down(keep_logs=True)
        authority.kill()
        assert left == []
        assert own_processes(lab.state.directory) == [], "the lab left processes behind"
