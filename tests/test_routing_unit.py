"""Distributed routing in the compiled pipeline, evaluated by the fake switch.

Two subnets on two bridge domains of one routing domain, joined by a router:
every host answers ARP for the gateways and routes between them itself.
Real packets: test_routing_dataplane.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    Endpoint,
    Group,
    Network,
    Router,
    RouterInterface,
    Rule,
    router_identity,
)
from tests.test_pipeline_unit import ip_packet

TUNNEL = 100
WEB_BD = BridgeDomain("bd-web", vni=0x10001, vrf=0x10000)
APP_BD = BridgeDomain("bd-app", vni=0x10002, vrf=0x10000)
WEB = Group("web", 0x4001, "bd-web", intra_allow=True, provides=("http",))
APP = Group("app", 0x4002, "bd-app", intra_allow=True, consumes=("http",))
HTTP = Contract("http", (Rule("http.in", 0, True, "in", None, 6, (80, 80)),))
R1 = Router(
    "r1",
    *router_identity("r1"),
    (
        RouterInterface("bd-app", "10.2.0.1", "10.2.0.0/24"),
        RouterInterface("bd-web", "10.1.0.1", "10.1.0.0/24"),
    ),
)
WEB1 = Endpoint("acme/web1", "02:00:00:00:01:01", ("10.1.0.10",), "bd-web", WEB.classid, ofport=1)
APP2 = Endpoint("acme/app2", "02:00:00:00:02:02", ("10.2.0.21",), "bd-app", APP.classid, ofport=2)
APP1_REMOTE = Endpoint(
    "acme/app1", "02:00:00:00:02:01", ("10.2.0.20",), "bd-app", APP.classid, vtep="192.0.2.2"
)


def network(local: tuple[Endpoint, ...], remote: tuple[Endpoint, ...] = (), routers: Any = None) -> Network:
    return Network(
        local,
        remote,
        {"web": WEB, "app": APP},
        {"http": HTTP},
        {"bd-web": WEB_BD, "bd-app": APP_BD},
        routers={"r1": R1} if routers is None else routers,
    )


def routed(src: Endpoint, dst_ip: str, dport: int = 80, ttl: int = 64, **extra: Any) -> dict[str, Any]:
    """A packet from ``src`` to an off-subnet address: to the gateway's (router's) MAC."""
    return ip_packet(src, src, dport=dport, **{"dl_dst": R1.mac, "nw_dst": dst_ip, "nw_ttl": ttl, **extra})


def test_the_gateway_answers_arp_on_the_host_with_the_router_mac() -> None:
    sw = FakeSwitch(compile_pipeline(network((WEB1, APP2)), TUNNEL))
    arp = {"in_port": 2, "eth_type": "arp", "dl_src": APP2.mac, "dl_dst": "ff:ff:ff:ff:ff:ff", "arp_op": 1,
           "arp_sha": APP2.mac, "arp_spa": "10.2.0.21", "arp_tpa": "10.2.0.1"}  # fmt: skip
    answer = sw.send(arp)
    assert answer.ports == [2]
    assert answer.outputs[0][1]["arp_sha"] == R1.mac and answer.outputs[0][1]["arp_spa"] == "10.2.0.1"


def test_same_host_routing_rewrites_macs_decrements_ttl_and_applies_policy() -> None:
    sw = FakeSwitch(compile_pipeline(network((WEB1, APP2)), TUNNEL))
    out = sw.send(routed(APP2, "10.1.0.10"))
    assert out.ports == [1]  # straight to web1's port: the packet never leaves the host
    header = out.outputs[0][1]
    assert (header["dl_src"], header["dl_dst"], header["nw_ttl"]) == (R1.mac, WEB1.mac, 63)
    assert sw.send(routed(APP2, "10.1.0.10", dport=22, tp_src=40001)).dropped  # the contract says tcp/80
    assert sw.send(routed(APP2, "10.1.0.10", ttl=1, tp_src=40002)).dropped  # TTL runs out at the router


def test_cross_host_routing_goes_straight_to_the_destination_host() -> None:
    sender = FakeSwitch(compile_pipeline(network((WEB1,), (APP1_REMOTE,)), TUNNEL))
    out = sender.send(routed(WEB1, "10.2.0.20", dport=80))  # web may not open to app: dropped
    assert out.dropped
    app1 = replace(APP1_REMOTE, ofport=5, vtep=None)
    web1_remote = replace(WEB1, ofport=None, vtep="192.0.2.1")
    h2 = FakeSwitch(compile_pipeline(network((app1,), (web1_remote,)), TUNNEL))
    out = h2.send(routed(app1, "10.1.0.10"))
    assert out.ports == [TUNNEL]
    header = out.outputs[0][1]
    # into the tunnel to web1's host, on web's bridge domain, with app's group
    assert (header["tun_dst"], header["tun_id"], header["tun_metadata0"]) == (
        "192.0.2.1",
        WEB_BD.vni,
        APP.classid,
    )
    # web1's host delivers it by its (rewritten) destination MAC, and checks policy again
    h1 = FakeSwitch(compile_pipeline(network((WEB1,), (APP1_REMOTE,)), TUNNEL))
    arrived = h1.send({**header, "in_port": TUNNEL})
    assert arrived.ports == [1] and arrived.outputs[0][1]["dl_dst"] == WEB1.mac
    assert h1.send({**header, "in_port": TUNNEL, "tp_dst": 22, "tp_src": 40009}).dropped


def test_no_router_no_routing_and_other_routing_domains_stay_apart() -> None:
    assert (
        FakeSwitch(compile_pipeline(network((WEB1, APP2), routers={}), TUNNEL))
        .send(routed(APP2, "10.1.0.10"))
        .dropped
    )
    # a second tenant with the same addresses and its own router: its packets reach only its endpoints
    other_bd = BridgeDomain("b-web", vni=0x20001, vrf=0x20000)
    other_app_bd = BridgeDomain("b-app", vni=0x20002, vrf=0x20000)
    legs = (
        RouterInterface("b-app", "10.2.0.1", "10.2.0.0/24"),
        RouterInterface("b-web", "10.1.0.1", "10.1.0.0/24"),
    )
    r2 = Router("r2", *router_identity("r2"), legs)
    bgroup = Group("bweb", 0x5001, "b-web", intra_allow=True)
    bweb = Endpoint("beta/bweb1", "02:00:00:00:03:01", ("10.1.0.10",), "b-web", 0x5001, ofport=7)
    bapp = Endpoint("beta/bapp1", "02:00:00:00:03:02", ("10.2.0.21",), "b-app", 0, ofport=8)
    net = Network(
        (WEB1, APP2, bweb, bapp),
        (),
        {"web": WEB, "app": APP, "bweb": bgroup},
        {"http": HTTP},
        {"bd-web": WEB_BD, "bd-app": APP_BD, "b-web": other_bd, "b-app": other_app_bd},
        routers={"r1": R1, "r2": r2},
    )
    sw = FakeSwitch(compile_pipeline(net, TUNNEL))
    assert sw.send(routed(APP2, "10.1.0.10")).ports == [1]  # acme's web1
    beta = sw.send(routed(bapp, "10.1.0.10", dl_dst=r2.mac, tp_src=40005))
    assert 1 not in beta.ports  # never acme's web1 (beta's policy drops it: no contract)
    through_acme = sw.send(routed(bapp, "10.1.0.10", dl_dst=R1.mac, tp_src=40006))
    assert through_acme.dropped  # acme's router is not on beta's bridge domains
