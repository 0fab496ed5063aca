"""Distributed routing in the compiled pipeline, evaluated by the fake switch.

Two subnets on two bridge domains of one routing domain, joined by a router:
every host answers ARP for the gateways and routes between them itself.
Real packets: test_routing_dataplane.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policyfabric.agent.view import Endpoint, Network, Router
from tests import fabric
from tests.fabric import (
    TCP,
    TUNNEL,
    arp_request,
    as_local,
    as_remote,
    bridge_domain,
    contract,
    endpoint,
    group,
    leg,
    mac,
    routed,
    router,
    rule,
    switch,
)

WEB_BD = bridge_domain("bd-web", vni=0x10001, vrf=0x10000)
APP_BD = bridge_domain("bd-app", vni=0x10002, vrf=0x10000)
HTTP = contract("http", rule("http.in", protocol=TCP, ports=80))
WEB = group("web", 0x4001, WEB_BD, provides=[HTTP])
APP = group("app", 0x4002, APP_BD, consumes=[HTTP])
R1 = router("r1", leg(APP_BD, "10.2.0.0/24"), leg(WEB_BD, "10.1.0.0/24"))
WEB1 = endpoint("web1", mac(1, 1), "10.1.0.10", bd=WEB_BD, group=WEB, ofport=1)
APP2 = endpoint("app2", mac(2, 2), "10.2.0.21", bd=APP_BD, group=APP, ofport=2)
APP1_REMOTE = endpoint("app1", mac(1, 2), "10.2.0.20", bd=APP_BD, group=APP, vtep="192.0.2.2")


def network(
    local: Iterable[Endpoint],
    remote: Iterable[Endpoint] = (),
    routers: Iterable[Router] | Mapping[str, Router] = (R1,),
) -> Network:
    """A host of acme's routed fabric: ``local`` on its ports, ``remote`` elsewhere; ``routers`` as
    records or by URI (test_external_unit builds its hosts on this, and on the records above)."""
    return fabric.network(
        local=local,
        remote=remote,
        groups=[WEB, APP],
        contracts=[HTTP],
        bds=[WEB_BD, APP_BD],
        routers=routers.values() if isinstance(routers, Mapping) else routers,
    )


def test_the_gateway_answers_arp_on_the_host_with_the_router_mac() -> None:
    answer = switch(network((WEB1, APP2))).send(arp_request(APP2, "10.2.0.1"))
    assert answer.ports == [2]
    assert answer.outputs[0][1]["arp_sha"] == R1.mac and answer.outputs[0][1]["arp_spa"] == "10.2.0.1"


def test_same_host_routing_rewrites_macs_decrements_ttl_and_applies_policy() -> None:
    sw = switch(network((WEB1, APP2)))
    out = sw.send(routed(APP2, R1, "10.1.0.10"))
    assert out.ports == [1]  # straight to web1's port: the packet never leaves the host
    header = out.outputs[0][1]
    assert (header["dl_src"], header["dl_dst"], header["nw_ttl"]) == (R1.mac, WEB1.mac, 63)
    assert sw.send(routed(APP2, R1, "10.1.0.10", dport=22, tp_src=40001)).dropped  # the contract: tcp/80
    assert sw.send(routed(APP2, R1, "10.1.0.10", ttl=1, tp_src=40002)).dropped  # TTL runs out at the router


def test_cross_host_routing_goes_straight_to_the_destination_host() -> None:
    sender = switch(network((WEB1,), (APP1_REMOTE,)))
    assert sender.send(routed(WEB1, R1, "10.2.0.20", dport=80)).dropped  # web may not open to app
    app1 = as_local(APP1_REMOTE, 5)
    h2 = switch(network((app1,), (as_remote(WEB1, "192.0.2.1"),)))
    out = h2.send(routed(app1, R1, "10.1.0.10"))
    assert out.ports == [TUNNEL]
    header = out.outputs[0][1]
    # into the tunnel to web1's host, on web's bridge domain, with app's group
    assert (header["tun_dst"], header["tun_id"], header["tun_metadata0"]) == (
        "192.0.2.1",
        WEB_BD.vni,
        APP.classid,
    )
    # web1's host delivers it by its (rewritten) destination MAC, and checks policy again
    h1 = switch(network((WEB1,), (APP1_REMOTE,)))
    arrived = h1.send({**header, "in_port": TUNNEL})
    assert arrived.ports == [1] and arrived.outputs[0][1]["dl_dst"] == WEB1.mac
    assert h1.send({**header, "in_port": TUNNEL, "tp_dst": 22, "tp_src": 40009}).dropped


def test_no_router_no_routing_and_other_routing_domains_stay_apart() -> None:
    assert switch(network((WEB1, APP2), routers=())).send(routed(APP2, R1, "10.1.0.10")).dropped
    # a second tenant with the same addresses and its own router: its packets reach only its endpoints
    b_web = bridge_domain("b-web", vni=0x20001, vrf=0x20000)
    b_app = bridge_domain("b-app", vni=0x20002, vrf=0x20000)
    r2 = router("r2", leg(b_app, "10.2.0.0/24"), leg(b_web, "10.1.0.0/24"))
    bgroup = group("bweb", 0x5001, b_web)
    bweb = endpoint("bweb1", mac(1, 3), "10.1.0.10", bd=b_web, group=bgroup, ofport=7, tenant="beta")
    bapp = endpoint("bapp1", mac(2, 3), "10.2.0.21", bd=b_app, ofport=8, tenant="beta")
    view = fabric.network(
        local=(WEB1, APP2, bweb, bapp),
        groups=[WEB, APP, bgroup],
        contracts=[HTTP],
        bds=[WEB_BD, APP_BD, b_web, b_app],
        routers=[R1, r2],
    )
    sw = switch(view)
    assert sw.send(routed(APP2, R1, "10.1.0.10")).ports == [1]  # acme's web1
    beta = sw.send(routed(bapp, r2, "10.1.0.10", tp_src=40005))
    assert 1 not in beta.ports  # never acme's web1 (beta's policy drops it: no contract)
    through_acme = sw.send(routed(bapp, R1, "10.1.0.10", tp_src=40006))
    assert through_acme.dropped  # acme's router is not on beta's bridge domains
