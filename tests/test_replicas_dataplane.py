"""Agent failover between authority replicas, on real Open vSwitch: two replicas on a 3-member
etcd cluster, a two-host lab whose agents were given replica A's address only (they learn B from
the handshake). A is killed (-9) while a TCP connection runs through both hosts: the agents are
connected to B within 5 s, the connection stays up, no flow is removed, and B's policy applies.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from policyfabric.client import Client
from policyfabric.lab.authority import authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.lab.lab import Lab
from policyfabric.model import scenario as sc
from tests.conftest import etcd_prefix
from tests.lab_harness import SCENARIOS, flows_with_age, measured, own_processes, serve

pytestmark = [
    pytest.mark.dataplane,
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]

ECHO_CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=2)
print("connected", flush=True)
for i in range(int(sys.argv[2])):
    s.sendall(b"ping %d\\n" % i)
    assert s.recv(100) == b"ping %d\\n" % i
    time.sleep(0.1)
print("ok")
"""


def held_by(url: str) -> dict[str, str]:
    """The connected agents a replica lists (every replica's), and the replica holding each."""
    with Client(url, timeout=2) as client:
        return {a["name"]: a["replica"] for a in client.agents() if a["connected"]}


def test_agents_fail_over_to_another_replica_and_the_dataplane_keeps_forwarding(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd_cluster.url + etcd_prefix()
    a, b = (authority_in(tmp_path / n, extra=["--store", url, "--keepalive", "0.5"]) for n in "ab")
    scenario = SCENARIOS / "two_hosts.yaml"
    lab = Lab.create(scenario, tmp_path / "lab")
    try:
        a.start()
        b.start()
        lab.up(sc.load(scenario), authority=(a.url, "{}:{}".format(*a.opflex)))
        first = held_by(a.url)
        assert set(first) == {"h1", "h2"} and len(set(first.values())) == 1  # both on A
        server = serve(lab, "web1", "tcp-echo", 80)  # web1 on h1, app1 on h2: through both hosts
        try:
            before = {h: flows_with_age(lab, h) for h in ("h1", "h2")}
            client = subprocess.Popen(
                ["ip", "netns", "exec", lab.state.endpoints["app1"].netns, sys.executable, "-c", ECHO_CLIENT,
                 lab.state.endpoints["web1"].ips[0], "80"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert client.stdout is not None and client.stdout.readline().strip() == "connected"
            time.sleep(1)
            a.kill()
            killed = time.monotonic()
            while set(held_by(b.url).items()) & set(first.items()) or set(held_by(b.url)) != {"h1", "h2"}:
                assert time.monotonic() - killed < 5, "the agents did not reach replica B within 5 s"
                time.sleep(0.05)
            print(f"both agents connected to B {time.monotonic() - killed:.2f} s after A was killed")
            out, errs = client.communicate(timeout=30)
            assert client.returncode == 0 and out.strip() == "ok", errs
            for host, flows in before.items():
                after = flows_with_age(lab, host)
                gone = [f for f in flows if f not in after]
                assert not gone, f"{host}: flows removed across the failover: {gone[:3]}"
            assert measured(lab, "app2", "web1", "tcp/80") == "allow"
        finally:
            server.kill()
            server.wait()
    finally:
        a.kill()
        left = lab.down(keep_logs=True)
        b.kill()
        assert left == []
        assert own_processes(lab.state.directory) == [], "the lab left processes behind"
