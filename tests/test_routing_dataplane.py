"""Distributed routing with real Open vSwitch, namespaces and packets.

Two subnets joined by a router, on two hosts, and a second tenant with the
very same addresses. Routed traffic obeys policy, stays on its host when
both ends are there, goes host to host otherwise, and never crosses tenants.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.lab.ovs import OvsInstance
from policyfabric.model import scenario as sc
from tests.lab_harness import SCENARIOS, lab_fixture, measured, serving, settled, until

pytestmark = pytest.mark.dataplane
SCENARIO = SCENARIOS / "routed.yaml"


lab = lab_fixture(SCENARIO)


def tunnel_tx(lab: Lab, host: str) -> int:
    """Unicast packets the host's bridge has sent into its tunnel so far: the n_packets of table
    70's flow for the tunnel port (flooded ARP and IPv6 neighbour discovery do not go through it)."""
    ovs = OvsInstance(Path(lab.state.hosts[host].rundir))
    port = ovs.vsctl("get", "Interface", "pf-geneve", "ofport").strip()
    flows = ovs.ofctl("--no-names", "dump-flows", ovs.mgmt("br-int"), f"table=70,reg4={port}")
    return sum(int(m) for m in re.findall(r"n_packets=(\d+)", flows))


def test_the_routed_matrix_matches_the_intent(lab: Lab) -> None:
    results = lab.probe(checked_plan(sc.load(SCENARIO)).expect)
    assert [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok] == []


def settled_tunnel_tx(lab: Lab, host: str) -> int:
    return settled(lambda: tunnel_tx(lab, host))


def test_same_host_routed_traffic_never_leaves_the_host(lab: Lab) -> None:
    with serving(lab, ("web1", "tcp", 80)):
        measured(lab, "app2", "web1", "tcp/80")  # ARP for the gateway etc. done
        before = settled_tunnel_tx(lab, "h1")
        for _ in range(3):
            assert measured(lab, "app2", "web1", "tcp/80") == "allow"  # app2 and web1 are both on h1
        assert settled_tunnel_tx(lab, "h1") == before
        assert measured(lab, "app1", "web1", "tcp/80") == "allow"  # app1 is on h2: through the tunnel
        took = until(lambda: tunnel_tx(lab, "h1") > before)  # (web1's replies go to h2; the counter works)
        assert took < 2.0, f"the counter lagged {took:.1f} s: the 2.5 s quiet window above proves nothing"


SNIFF = (
    "from scapy.all import IP, TCP, sniff\n"
    "got = sniff(iface='eth0', count=1, timeout=8, started_callback=lambda: print('ready', flush=True),\n"
    "            lfilter=lambda p: TCP in p and p[TCP].dport == 80)\n"
    "print(got[0][IP].ttl if got else -1)\n"
)


def test_the_ttl_drops_by_one_at_the_router(lab: Lab) -> None:
    """web1 sees app2's packets with TTL 63, not 64: they were routed, not bridged."""
    web1 = lab.state.endpoints["web1"].netns
    capture = subprocess.Popen(
        ["ip", "netns", "exec", web1, sys.executable, "-c", SNIFF], stdout=subprocess.PIPE, text=True
    )
    assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
    with serving(lab, ("web1", "tcp", 80)):
        assert measured(lab, "app2", "web1", "tcp/80") == "allow"
    out, _ = capture.communicate(timeout=15)
    assert out.strip() == "63"


def test_a_tenant_never_reaches_another_with_the_same_addresses(lab: Lab) -> None:
    """beta's bapp1 may reach 10.1.0.10:8080 in beta; acme's web1 (also 10.1.0.10) serves 8080 and
    beta's bweb1 does not: a connection would mean the packet crossed into acme."""
    with serving(lab, ("web1", "tcp", 8080)):
        assert measured(lab, "bapp1", "bweb1", "tcp/8080") == "deny"  # bweb1 refuses: nothing listens there
    with serving(lab, ("bweb1", "tcp", 8080)):
        assert measured(lab, "bapp1", "bweb1", "tcp/8080") == "allow"
