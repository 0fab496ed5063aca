"""External networks, evaluated by the fake switch: packets in, verdicts and headers out.

Floating IPs are NATed on the endpoint's host, SNAT on the router's active gateway; replies
find their way back through conntrack; next hops come from ARP learned on the external port.
The gateway election and the agent's view of gateways are pure functions, tested as such.
Real packets: test_external_dataplane.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from policyfabric.agent.reader import policy_view
from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.flowmods import index, plan
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch, Result
from policyfabric.agent.renderers.ovs.tables import NEIGHBOUR, OUTSIDE
from policyfabric.agent.view import (
    Endpoint,
    Network,
    SecurityGroup,
    SgRule,
)
from policyfabric.authority.gateways import Candidate, GatewayHost, elect
from policyfabric.authority.opflex.policy_tree import tenant_tree
from policyfabric.model import objects as o
from tests.fabric import TUNNEL, as_remote, external_network, floating_ip, gateway, routed
from tests.fabric import switch as checked_switch
from tests.test_routing_unit import APP1_REMOTE, APP_BD, R1, WEB1, network

PUBLIC = external_network("/ext/public/", "203.0.113.0/24", "203.0.113.1")
PORT = 9  # each host's port on the public network
GW = gateway("/ext/public/", "203.0.113.2", active_host="gw1", active_vtep="192.0.2.3")
ROUTER = replace(R1, gateway=GW)
FIP = floating_ip("203.0.113.10", "/ext/public/", WEB1)
APP1 = replace(APP1_REMOTE, ofport=3, vtep=None)  # app1 at home, on h2 (192.0.2.2); no floating IP

INTERNET = "198.51.100.7"  # somewhere beyond the public network's gateway
UPSTREAM_MAC = "02:ee:00:00:00:01"  # the public network's gateway (203.0.113.1)
NEIGHBOUR_IP, NEIGHBOUR_MAC = "203.0.113.50", "02:ee:00:00:00:50"  # on the public network
WEB_OUT = SecurityGroup("sg/web-out", (SgRule("sg/web-out#0", 0, True, "out", 0x0800, 6, (80, 80)),))


# -- the hosts of the external fabric, and the packets they see --


def host(
    name: str, local: tuple[Endpoint, ...] = (), remote: tuple[Endpoint, ...] = (), port: int | None = PORT
) -> Network:
    """Host ``name``'s view: router r1 with its gateway on the public network (active on gw1), the
    floating IP of web1, and a port on the public network unless ``port`` is None."""
    base = network(local, remote, routers={"r1": ROUTER})
    ext = replace(PUBLIC, ofport=port) if port else PUBLIC
    return replace(base, external={PUBLIC.uri: ext}, floating_ips=(FIP,), host=name)


def switch(net: Network) -> FakeSwitch:
    """The host's pipeline, checked against the table map, on a fake switch."""
    return checked_switch(net)


def arp_on_public(sw: FakeSwitch, ip: str, mac: str, target: str = "203.0.113.99") -> Result:
    """A neighbour on the public network asks for ``target``: the host learns where ``ip`` is."""
    return sw.send(
        {"in_port": PORT, "eth_type": "arp", "dl_src": mac, "dl_dst": "ff:ff:ff:ff:ff:ff", "arp_op": 1,
         "arp_sha": mac, "arp_spa": ip, "arp_tha": "00:00:00:00:00:00", "arp_tpa": target}
    )  # fmt: skip


def from_outside(dst: str, dl_dst: str, src: str = INTERNET, dport: int = 80, sport: int = 40000,
                 **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A TCP packet arriving on the public port from the upstream gateway."""
    return {"in_port": PORT, "eth_type": "ip", "dl_src": UPSTREAM_MAC, "dl_dst": dl_dst,
            "nw_src": src, "nw_dst": dst, "nw_proto": 6, "nw_ttl": 64, "tp_src": sport, "tp_dst": dport,
            **extra}  # fmt: skip


def answer(header: dict[str, Any], in_port: int) -> dict[str, Any]:
    """The reply to a packet, as its receiver (on ``in_port``) sends it back: from the header it got."""
    return {**header, "in_port": in_port, "dl_src": header["dl_dst"], "dl_dst": header["dl_src"],
            "nw_src": header["nw_dst"], "nw_dst": header["nw_src"], "tp_src": header["tp_dst"],
            "tp_dst": header["tp_src"], "nw_ttl": 64}  # fmt: skip


def reply_from_outside(header: dict[str, Any]) -> dict[str, Any]:
    """What the outside sends back to a packet that left by the public port with ``header``."""
    return {**answer(header, PORT), "dl_src": UPSTREAM_MAC, "dl_dst": header["dl_src"]}


def tunnelled(header: dict[str, Any]) -> dict[str, Any]:
    """A packet that left a host by the tunnel with ``header``, as it arrives on the other end."""
    return {**header, "in_port": TUNNEL}


# -- floating IPs, on the endpoint's host --


def test_inbound_to_a_floating_ip_is_dnated_to_the_endpoint_when_policy_allows() -> None:
    h1 = switch(host("h1", (WEB1,)))
    port, header = h1.send(from_outside(FIP.ip, FIP.mac)).only
    assert port == WEB1.ofport
    assert (header["nw_src"], header["nw_dst"], header["nw_ttl"]) == (INTERNET, "10.1.0.10", 63)
    assert (header["dl_src"], header["dl_dst"]) == (R1.mac, WEB1.mac)
    # web provides http to the outside; nothing else gets in
    assert h1.send(from_outside(FIP.ip, FIP.mac, dport=22, sport=40001)).dropped


def test_the_reply_leaves_snated_to_the_floating_ip_with_its_mac() -> None:
    h1 = switch(host("h1", (WEB1,)))
    arp_on_public(h1, PUBLIC.gateway_ip, UPSTREAM_MAC)
    request = from_outside(FIP.ip, FIP.mac)
    _, delivered = h1.send(request).only
    port, header = h1.send(answer(delivered, WEB1.ofport or 0)).only
    assert port == PORT
    assert (header["nw_src"], header["tp_src"], header["nw_dst"]) == (FIP.ip, 80, INTERNET)
    assert (header["dl_src"], header["dl_dst"]) == (FIP.mac, UPSTREAM_MAC)


def test_outbound_from_an_endpoint_with_a_floating_ip_leaves_snated_to_it() -> None:
    h1 = switch(host("h1", (WEB1,)))
    arp_on_public(h1, PUBLIC.gateway_ip, UPSTREAM_MAC)
    port, header = h1.send(routed(WEB1, R1, INTERNET, dport=443)).only
    assert port == PORT
    assert (header["nw_src"], header["dl_src"], header["nw_ttl"]) == (FIP.ip, FIP.mac, 63)
    # the answer is un-NATed to web1, and passes as established whatever the port
    port, back = h1.send(reply_from_outside(header)).only
    assert port == WEB1.ofport
    assert (back["nw_dst"], back["tp_dst"], back["dl_dst"]) == ("10.1.0.10", 40000, WEB1.mac)


def test_arp_for_a_floating_ip_is_answered_by_its_endpoints_host_only() -> None:
    h1 = switch(host("h1", (WEB1,)))
    port, reply = arp_on_public(h1, PUBLIC.gateway_ip, UPSTREAM_MAC, target=FIP.ip).only
    assert port == PORT and (reply["arp_op"], reply["arp_sha"], reply["arp_spa"]) == (2, FIP.mac, FIP.ip)
    assert reply["dl_dst"] == UPSTREAM_MAC
    h2 = switch(host("h2", (APP1,), (as_remote(WEB1, "192.0.2.1"),)))
    assert arp_on_public(h2, PUBLIC.gateway_ip, UPSTREAM_MAC, target=FIP.ip).dropped
    assert h2.send(from_outside(FIP.ip, FIP.mac)).dropped


def test_the_outside_reaches_only_what_groups_provide() -> None:
    """A floating IP on app1 (its group consumes http, provides nothing) lets nothing in."""
    on_app1 = floating_ip("203.0.113.11", "/ext/public/", APP1)
    h2 = switch(replace(host("h2", (APP1,)), floating_ips=(on_app1,)))
    assert h2.send(from_outside(on_app1.ip, on_app1.mac)).dropped
    assert h2.send(from_outside(on_app1.ip, on_app1.mac, dport=22)).dropped
    # not for want of NAT: h2 answers for the floating IP, and app1 goes out through it
    port, answered = arp_on_public(h2, PUBLIC.gateway_ip, UPSTREAM_MAC, target=on_app1.ip).only
    assert port == PORT and (answered["arp_spa"], answered["arp_sha"]) == (on_app1.ip, on_app1.mac)
    port, header = h2.send(routed(APP1, R1, INTERNET)).only
    assert port == PORT and (header["nw_src"], header["dl_src"]) == (on_app1.ip, on_app1.mac)


def test_without_a_port_on_the_network_a_host_does_no_nat() -> None:
    h1 = switch(host("h1", (WEB1,), port=None))
    port, header = h1.send(routed(WEB1, R1, INTERNET)).only
    assert port == TUNNEL and header["nw_src"] == "10.1.0.10"  # to the gateway, as it is
    assert header["tun_id"] == external.transit_vni(ROUTER)
    assert h1.send(from_outside(FIP.ip, FIP.mac)).dropped  # port 9 is nothing to it


# -- SNAT, on the router's active gateway --


def test_a_compute_host_sends_snat_traffic_to_the_active_gateway_after_policy() -> None:
    app1 = replace(APP1, security_groups=("sg/web-out",))  # may only open tcp/80
    h2 = switch(replace(host("h2", (app1,)), security_groups={WEB_OUT.uri: WEB_OUT}))
    port, header = h2.send(routed(app1, R1, INTERNET, dport=80)).only
    assert port == TUNNEL
    assert (header["tun_id"], header["tun_dst"]) == (external.transit_vni(ROUTER), GW.active_vtep)
    assert (header["nw_src"], header["nw_dst"], header["nw_ttl"]) == ("10.2.0.20", INTERNET, 63)
    assert h2.send(routed(app1, R1, INTERNET, dport=22, tp_src=40001)).dropped  # its security group


def test_the_router_subnets_never_go_to_the_outside() -> None:
    h2 = switch(host("h2", (APP1,)))
    assert h2.send(routed(APP1, R1, "10.1.0.99")).dropped  # no such endpoint: not to the gateway either
    assert h2.send(routed(APP1, R1, "10.2.0.99")).dropped


def test_the_active_gateway_snats_unnats_replies_and_routes_them_back() -> None:
    h2 = switch(host("h2", (APP1,)))
    gw1 = switch(host("gw1", (), (APP1_REMOTE,)))
    arp_on_public(gw1, PUBLIC.gateway_ip, UPSTREAM_MAC)
    _, to_gateway = h2.send(routed(APP1, R1, INTERNET)).only
    port, out = gw1.send(tunnelled(to_gateway)).only
    assert port == PORT
    assert (out["nw_src"], out["tp_src"], out["nw_dst"]) == (GW.ip, 40000, INTERNET)
    assert (out["dl_src"], out["dl_dst"]) == (ROUTER.mac, UPSTREAM_MAC)
    # the reply: un-NATed and routed to app1's host, with the outside as its group
    port, back = gw1.send(reply_from_outside(out)).only
    assert port == TUNNEL
    assert (back["tun_id"], back["tun_dst"], back["tun_metadata0"]) == (APP_BD.vni, "192.0.2.2", OUTSIDE)
    assert (back["nw_dst"], back["tp_dst"], back["dl_dst"]) == ("10.2.0.20", 40000, APP1.mac)
    assert back["nw_ttl"] == 63
    port, home = h2.send(tunnelled(back)).only  # established on app1's host too
    assert port == APP1.ofport and home["nw_src"] == INTERNET


def test_a_new_connection_inbound_to_the_snat_address_is_dropped() -> None:
    gw1 = switch(host("gw1", (), (APP1_REMOTE,)))
    arp_on_public(gw1, PUBLIC.gateway_ip, UPSTREAM_MAC)
    assert gw1.send(from_outside(GW.ip, ROUTER.mac, dport=8081)).dropped
    assert gw1.conntrack.connections == []  # dropped before anything could commit it
    # nor does a stray segment of no connection (conntrack: invalid), to the gateway or a floating IP
    assert gw1.send(from_outside(GW.ip, ROUTER.mac, dport=8081, tcp_flags=0x10)).dropped
    h1 = switch(host("h1", (WEB1,)))
    assert h1.send(from_outside(FIP.ip, FIP.mac, tcp_flags=0x10)).dropped


def test_only_the_active_gateway_snats_or_answers_for_the_router() -> None:
    h2 = switch(host("h2", (APP1,)))
    _, to_gateway = h2.send(routed(APP1, R1, INTERNET)).only
    gw2 = switch(host("gw2", (), (APP1_REMOTE,)))
    arp_on_public(gw2, PUBLIC.gateway_ip, UPSTREAM_MAC)
    assert gw2.send(tunnelled(to_gateway)).dropped
    assert arp_on_public(gw2, PUBLIC.gateway_ip, UPSTREAM_MAC, target=GW.ip).dropped
    gw1 = switch(host("gw1", (), (APP1_REMOTE,)))
    port, reply = arp_on_public(gw1, PUBLIC.gateway_ip, UPSTREAM_MAC, target=GW.ip).only
    assert port == PORT and (reply["arp_sha"], reply["arp_spa"]) == (ROUTER.mac, GW.ip)


# -- next hops on the external network --


def test_next_hop_is_the_learned_neighbour_on_link_and_the_gateway_otherwise() -> None:
    h1 = switch(host("h1", (WEB1,)))
    assert h1.send(routed(WEB1, R1, INTERNET)).dropped  # nothing learned: nowhere to send it
    arp_on_public(h1, PUBLIC.gateway_ip, UPSTREAM_MAC)
    assert h1.send(routed(WEB1, R1, INTERNET, tp_src=40001)).only[1]["dl_dst"] == UPSTREAM_MAC
    # on link, not learned yet: via the gateway; learned: straight to it
    assert h1.send(routed(WEB1, R1, NEIGHBOUR_IP, tp_src=40002)).only[1]["dl_dst"] == UPSTREAM_MAC
    arp_on_public(h1, NEIGHBOUR_IP, NEIGHBOUR_MAC)
    port, header = h1.send(routed(WEB1, R1, NEIGHBOUR_IP, tp_src=40003)).only
    assert (port, header["dl_dst"], header["nw_src"]) == (PORT, NEIGHBOUR_MAC, FIP.ip)


def test_neighbours_are_forgotten_with_the_port_and_its_next_hops_survive_a_replugging() -> None:
    """Learned flows go when the last learning flow does (OVS's delete_learned flushes its table and
    cookie); the port back under a new ofport, in a delta or in the first sync after a restart
    (both delete the old learning flow before adding the new one), keeps its table 73 flows."""
    before = compile_pipeline(host("h1", (WEB1,)), TUNNEL)
    replugged = compile_pipeline(host("h1", (WEB1,), port=11), TUNNEL)
    for first_sync in (False, True):
        h1 = FakeSwitch(before)
        arp_on_public(h1, PUBLIC.gateway_ip, UPSTREAM_MAC)
        assert {f.table for f in h1.learned()} == {NEIGHBOUR}
        h1.apply(plan(None if first_sync else index(before), index(replugged)))
        assert h1.flows() == set(replugged) and not h1.learned()
    gone = compile_pipeline(host("h1", (WEB1,), port=None), TUNNEL)
    h1 = FakeSwitch(before)
    arp_on_public(h1, PUBLIC.gateway_ip, UPSTREAM_MAC)
    h1.apply(plan(index(before), index(gone)))
    assert h1.flows() == set(gone)


# -- the election and the agent's view (pure functions) --


def test_the_election_prefers_the_listed_order_and_never_preempts() -> None:
    net = "/ext/public/"
    c = [Candidate(("acme", "r1"), net, ("gw1", "gw2"))]
    live = {n: GatewayHost(n, ip, frozenset({net})) for n, ip in (("gw1", "192.0.2.3"), ("gw2", "192.0.2.4"))}
    assert elect(c, live, {}) == {("acme", "r1"): ("gw1", "192.0.2.3")}
    only_gw2 = {"gw2": live["gw2"]}
    assert elect(c, only_gw2, {}) == {("acme", "r1"): ("gw2", "192.0.2.4")}
    # gw1 is back, gw2 holds the role: it keeps it
    assert elect(c, live, {("acme", "r1"): ("gw2", "192.0.2.4")}) == {("acme", "r1"): ("gw2", "192.0.2.4")}
    # a host without a port on the network, or none alive: no gateway
    cut = {"gw1": replace(live["gw1"], networks=frozenset())}
    assert elect(c, cut, {("acme", "r1"): ("gw1", "192.0.2.3")}) == {}


def test_the_agents_view_reads_gateways_and_floating_ips_from_the_policy_tree() -> None:
    objects: dict[str, list[o.Spec]] = {
        "l3_context": [o.L3Context(name="vrf1", tenant="acme")],
        "bridge_domain": [o.BridgeDomain(name="bd", tenant="acme", l3_context="vrf1")],
        "subnet": [o.Subnet(name="s", tenant="acme", bridge_domain="bd", cidr="10.1.0.0/24")],
        "router": [
            o.Router(
                name="r1",
                tenant="acme",
                l3_context="vrf1",
                interfaces=["s"],
                external_gateway=o.ExternalGateway(network="public", hosts=["gw1", "gw2"], ip="203.0.113.2"),
            )
        ],
        "floating_ip": [
            o.FloatingIp(name="f", tenant="acme", network="public", ip="203.0.113.10", endpoint="e")
        ],
    }
    tree = tenant_tree("acme", objects, {}, {"r1": ("gw2", "192.0.2.4")})
    view = policy_view(tree.mos)
    [router] = view.routers.values()
    assert router.gateway is not None
    assert (router.gateway.ip, router.gateway.active_host, router.gateway.active_vtep) == (
        "203.0.113.2",
        "gw2",
        "192.0.2.4",
    )
    assert [(f.ip, f.endpoint) for f in view.floating_ips] == [("203.0.113.10", "acme/e")]
