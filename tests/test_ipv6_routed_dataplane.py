"""Distributed IPv6 routing with real Open vSwitch, namespaces and packets (ipv6_routed.yaml).

The hosts answer neighbour solicitations for the router's gateway and link-local addresses
themselves, route between the subnets with the hop limit decremented, on one host or through the
tunnel, under the contract's tcp6 rules and the security groups' IPv6 rules; an endpoint's SLAAC
address is routed to and allowed out like a declared one.
"""

from __future__ import annotations

import re

import pytest

from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.model import scenario as sc
from policyfabric.model.addressing import router_link_local
from tests.lab_harness import SCENARIOS, lab_fixture, measured, ns_run, serving, settled, until
from tests.test_routing_dataplane import tunnel_tx

pytestmark = pytest.mark.dataplane
SCENARIO = SCENARIOS / "ipv6_routed.yaml"
ROUTER_MAC = re.compile(r"lladdr (02:50:46:fe:[0-9a-f:]{5}) router")  # router_identity's MACs

lab = lab_fixture(SCENARIO)


def netns(lab: Lab, name: str) -> str:
    return lab.state.endpoints[name].netns


def test_the_ipv6_matrix_matches_the_intent(lab: Lab) -> None:
    results = lab.probe(checked_plan(sc.load(SCENARIO)).expect)
    assert [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok] == []


def ping6(lab: Lab, src: str, dst: str, *extra: str) -> str:
    done = ns_run(netns(lab, src), "ping", "-6", "-n", "-c", "1", "-W", "2", *extra, dst)
    return done.stdout


def test_the_hop_limit_drops_by_one_at_the_router(lab: Lab) -> None:
    """db1 answers cli2 (same host) and cli1 (across hosts) with hop limit 64; the router takes
    one: the replies arrive with 63. With a hop limit of 1 the request dies at the router."""
    for src in ("cli2", "cli1"):
        out = ping6(lab, src, "fd00:3::10")
        assert re.search(r"ttl=63\b", out), (src, out)
        assert "1 received" not in ping6(lab, src, "fd00:3::10", "-t", "1"), src


def test_the_host_answers_neighbour_discovery_for_the_gateway_and_the_routers_link_local(lab: Lab) -> None:
    ns = netns(lab, "app2")
    ping6(lab, "app2", "fd00:1::10")  # resolves the gateway (the ping itself is not allowed)
    gateway = ns_run(ns, "ip", "-6", "neigh", "show", "fd00:2::1").stdout
    found = ROUTER_MAC.search(gateway)
    assert found, gateway  # the router's MAC, with the router flag the advertisement set
    mac = found.group(1)
    link_local = router_link_local(mac)
    ping6(lab, "app2", f"{link_local}%eth0")  # nothing answers the echo; the solicitation is answered
    entry = ns_run(ns, "ip", "-6", "neigh", "show", link_local, "dev", "eth0").stdout
    assert f"lladdr {mac} router" in entry, entry
    assert not re.search(r"FAILED|INCOMPLETE", entry), entry


def test_same_host_ipv6_routing_never_leaves_the_host(lab: Lab) -> None:
    with serving(lab, ("web1", "tcp", 80)):
        measured(lab, "app2", "web1", "tcp6/80")  # neighbours resolved
        before = settled(lambda: tunnel_tx(lab, "h1"))
        for _ in range(3):
            assert measured(lab, "app2", "web1", "tcp6/80") == "allow"  # both on h1
        assert settled(lambda: tunnel_tx(lab, "h1")) == before
        assert measured(lab, "app1", "web1", "tcp6/80") == "allow"  # app1 is on h2: the tunnel
        assert until(lambda: tunnel_tx(lab, "h1") > before) < 2.0


def test_a_slaac_address_is_routed_to_and_let_out(lab: Lab) -> None:
    """web3's intent lists ``slaac``: its host and the others know its EUI-64 address in web6
    (from the intent, not from its packets). Given that address (as a router advertisement would
    give it; here by hand), web3 is reached across hosts through the router, under the contract,
    and its answers pass its port security."""
    ns, address = netns(lab, "web3"), "fd00:1::ff:fe00:303"  # EUI-64 of 02:00:00:00:03:03
    assert address in lab.state.endpoints["web3"].ips
    ns_run(ns, "ip", "-6", "addr", "replace", f"{address}/64", "dev", "eth0", "nodad")
    ns_run(ns, "ip", "-6", "route", "replace", "default", "via", "fd00:1::1", "metric", "2048")
    with serving(lab, ("web3", "tcp", 80), ("web3", "tcp", 22)):
        assert measured(lab, "app2", "web3", "tcp6/80") == "allow"  # h1 → h2, to the SLAAC address
        assert measured(lab, "app1", "web3", "tcp6/80") == "allow"  # h2, routed on its host
        assert measured(lab, "app2", "web3", "tcp6/22") == "deny"  # the contract's drop rule
    # within its group (intra-group allowed), bridged to web1 on h1: from its SLAAC address it is
    # answered; from another address in web6, not its own, what it sends goes nowhere
    ns_run(ns, "ip", "-6", "addr", "add", "fd00:1::99/128", "dev", "eth0", "nodad")
    for source, answered in ((address, True), ("fd00:1::99", False)):
        out = ns_run(ns, "ping", "-6", "-n", "-c", "1", "-W", "2", "-I", source, "fd00:1::10").stdout
        assert ("1 received" in out) == answered, (source, out)
