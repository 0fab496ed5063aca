"""Distributed IPv6 routing in the compiled pipeline, evaluated by the fake switch.

The IPv4 fabric of test_routing_unit.py with an IPv6 subnet on each bridge domain: the host
answers neighbour solicitations for the router's gateway and link-local addresses in flows (the
advertisement built by the flows' actions), routes by destination address with the hop limit
decremented, across hosts through the tunnel, and group policy, security groups and port
security judge IPv6 as they judge IPv4. Real packets: test_ipv6_routed_dataplane.py.
"""

from __future__ import annotations

from typing import Any

from policyfabric.agent.renderers.ovs.routing import NA_FLAGS
from policyfabric.agent.view import Endpoint, Network, Router
from policyfabric.model.addressing import link_local, router_link_local
from tests import fabric
from tests.fabric import (
    TCP,
    TUNNEL,
    as_local,
    as_remote,
    bridge_domain,
    contract,
    endpoint,
    group,
    leg,
    mac,
    router,
    rule,
    security_group,
    sg_rule,
    switch,
)

IPV6 = 0x86DD
WEB_BD = bridge_domain("bd-web", vni=0x10001, vrf=0x10000)
APP_BD = bridge_domain("bd-app", vni=0x10002, vrf=0x10000)
HTTP = contract(
    "http",
    rule("http.in", protocol=TCP, ports=80, ethertype=IPV6),
    rule("ssh.no", protocol=TCP, ports=22, allow=False),
)
WEB = group("web", 0x4001, WEB_BD, provides=[HTTP])
APP = group("app", 0x4002, APP_BD, consumes=[HTTP])
R1 = router(
    "r1",
    leg(WEB_BD, "10.1.0.0/24"),
    leg(WEB_BD, "fd00:1::/64"),
    leg(APP_BD, "10.2.0.0/24"),
    leg(APP_BD, "fd00:2::/64"),
)
WEB1 = endpoint("web1", mac(1, 1), "10.1.0.10", "fd00:1::10", bd=WEB_BD, group=WEB, ofport=1)
APP2 = endpoint("app2", mac(2, 2), "10.2.0.21", "fd00:2::21", bd=APP_BD, group=APP, ofport=2)
APP1_REMOTE = endpoint("app1", mac(1, 2), "10.2.0.20", "fd00:2::20", bd=APP_BD, group=APP, vtep="192.0.2.2")
ROUTER_LL = router_link_local(R1.mac)


def network(local: tuple[Endpoint, ...], remote: tuple[Endpoint, ...] = (), **extra: Any) -> Network:
    return fabric.network(
        local=local,
        remote=remote,
        groups=extra.pop("groups", [WEB, APP]),
        contracts=[HTTP],
        bds=[WEB_BD, APP_BD],
        routers=extra.pop("routers", [R1]),
        **extra,
    )


def v6(
    src: Endpoint, dst_ip: str, *, dl_dst: str, dport: int = 80, sport: int = 40000, hops: int = 64
) -> dict[str, Any]:
    """A TCP/IPv6 packet from ``src``'s port and global address."""
    return {
        "in_port": src.ofport,
        "eth_type": "ipv6",
        "dl_src": src.mac,
        "dl_dst": dl_dst,
        "ipv6_src": next(ip for ip in src.ips if ":" in ip),
        "ipv6_dst": dst_ip,
        "nw_proto": TCP,
        "nw_ttl": hops,
        "tp_src": sport,
        "tp_dst": dport,
    }


def routed6(src: Endpoint, via: Router, dst_ip: str, **kw: Any) -> dict[str, Any]:
    return v6(src, dst_ip, dl_dst=via.mac, **kw)


def solicitation(src: Endpoint, target: str, source: str | None = None) -> dict[str, Any]:
    """A neighbour solicitation for ``target`` from ``src`` (to the solicited-node multicast)."""
    low = int.from_bytes(bytes.fromhex(target.split(":")[-1].zfill(4)), "big")
    return {
        "in_port": src.ofport,
        "eth_type": "ipv6",
        "dl_src": src.mac,
        "dl_dst": f"33:33:ff:00:{low >> 8 & 0xFF:02x}:{low & 0xFF:02x}",
        "ipv6_src": source if source is not None else next(ip for ip in src.ips if ":" in ip),
        "ipv6_dst": "ff02::1:ff00:1",
        "nw_proto": 58,
        "nw_ttl": 255,
        "icmp_type": 135,
        "nd_target": target,
        "nd_reserved": 0,
        "nd_options_type": 1,
        "nd_sll": src.mac,
    }


def test_the_ipv6_gateway_is_answered_on_the_host_by_an_advertisement_built_in_flows() -> None:
    sw = switch(network((WEB1, APP2)))
    port, na = sw.send(solicitation(APP2, "fd00:2::1")).only
    assert port == 2  # back where it came from, never flooded
    assert (na["icmp_type"], na["nd_target"], na["nd_options_type"]) == (136, "fd00:2::1", 2)
    assert (na["dl_src"], na["dl_dst"], na["nd_tll"]) == (R1.mac, APP2.mac, R1.mac)
    assert (na["ipv6_src"], na["ipv6_dst"]) == ("fd00:2::1", "fd00:2::21")
    assert na["nd_reserved"] == NA_FLAGS  # router, solicited, override
    assert na["nw_ttl"] == 255  # the solicitation's hop limit, which ND insists on


def test_the_routers_link_local_address_is_answered_on_each_ipv6_leg() -> None:
    sw = switch(network((WEB1, APP2)))
    assert router_link_local("02:50:46:fe:00:01") == "fe80::50:46ff:fefe:1"  # EUI-64, U/L bit flipped
    for ep in (WEB1, APP2):
        own = str(link_local(ep.mac))
        port, na = sw.send(solicitation(ep, ROUTER_LL, source=own)).only
        assert (port, na["nd_tll"], na["ipv6_src"], na["ipv6_dst"]) == (ep.ofport, R1.mac, ROUTER_LL, own)
    # from a link-local address not its own, an endpoint is not heard (port security)
    assert sw.send(solicitation(APP2, ROUTER_LL, source="fe80::1")).dropped


def test_what_is_not_the_routers_is_not_answered() -> None:
    sw = switch(network((WEB1, APP2)))
    # duplicate address detection of the gateway address (from ::): no answer
    assert sw.send(solicitation(APP2, "fd00:2::1", source="::")).dropped
    # another endpoint's address: flooded to the bridge domain as before, not answered by the host
    flooded = sw.send(solicitation(APP2, "fd00:2::77"))
    assert all(h["icmp_type"] == 135 for _, h in flooded.outputs)
    # no router on the bridge domain, no answer for its would-be gateway
    alone = switch(network((WEB1, APP2), routers=()))
    assert all(h["icmp_type"] == 135 for _, h in alone.send(solicitation(APP2, "fd00:2::1")).outputs)
    # an endpoint may not pass an advertisement off as the router's (port security: not its MAC)
    forged = {**solicitation(APP2, "fd00:2::1"), "icmp_type": 136, "dl_src": R1.mac}
    assert sw.send(forged).dropped


def test_same_host_ipv6_routing_rewrites_macs_decrements_the_hop_limit_and_applies_policy() -> None:
    sw = switch(network((WEB1, APP2)))
    port, header = sw.send(routed6(APP2, R1, "fd00:1::10")).only
    assert port == 1
    assert (header["dl_src"], header["dl_dst"], header["nw_ttl"]) == (R1.mac, WEB1.mac, 63)
    assert sw.send(routed6(APP2, R1, "fd00:1::10", dport=22, sport=40001)).dropped  # the contract's drop
    assert sw.send(routed6(APP2, R1, "fd00:1::10", dport=8080, sport=40002)).dropped  # default deny
    assert sw.send(routed6(APP2, R1, "fd00:1::10", hops=1, sport=40003)).dropped  # hop limit runs out
    # the reply comes back through the router as established
    back = {
        **v6(WEB1, "fd00:2::21", dl_dst=R1.mac, dport=40000, sport=80),
        "ipv6_src": "fd00:1::10",
    }
    assert sw.send(back).ports == [2]
    # an IPv6-only rule is no IPv4 rule: tcp/80 over IPv4 is not allowed by it
    v4 = fabric.routed(APP2, R1, "10.1.0.10", tp_src=40004)
    assert sw.send(v4).dropped


def test_cross_host_ipv6_routing_goes_straight_to_the_destination_host() -> None:
    app1 = as_local(APP1_REMOTE, 5)
    h2 = switch(network((app1,), (as_remote(WEB1, "192.0.2.1"),)))
    port, header = h2.send(routed6(app1, R1, "fd00:1::10")).only
    assert port == TUNNEL
    assert (header["tun_dst"], header["tun_id"], header["tun_metadata0"]) == (
        "192.0.2.1",
        WEB_BD.vni,
        APP.classid,
    )
    assert (header["dl_dst"], header["nw_ttl"]) == (WEB1.mac, 63)
    h1 = switch(network((WEB1,), (APP1_REMOTE,)))
    arrived = h1.send({**header, "in_port": TUNNEL})
    assert arrived.ports == [1]
    assert h1.send({**header, "in_port": TUNNEL, "tp_dst": 22, "tp_src": 40009}).dropped
    # the way back: web1's host routes to app1's address from the registry, to app1's host
    out = h1.send({**v6(WEB1, "fd00:2::20", dl_dst=R1.mac, dport=40100, sport=80)})
    assert out.dropped  # web opens nothing to app (only app → web tcp/80): a new connection
    # the reply of the connection web1's host saw open goes back through the router, to app1's host
    reply = {**header, "in_port": 1, "dl_src": WEB1.mac, "dl_dst": R1.mac, "nw_ttl": 64}
    reply |= {"ipv6_src": "fd00:1::10", "ipv6_dst": "fd00:2::20", "tp_src": 80, "tp_dst": 40000}
    reply = {k: v for k, v in reply.items() if not k.startswith("tun_")}
    port, back = h1.send(reply).only
    assert (port, back["tun_dst"], back["tun_id"], back["dl_dst"]) == (
        TUNNEL,
        "192.0.2.2",
        APP_BD.vni,
        app1.mac,
    )


def test_ipv6_port_security_admits_its_own_addresses_and_link_local_only() -> None:
    sw = switch(network((WEB1, APP2)))
    assert sw.send(routed6(APP2, R1, "fd00:1::10", sport=41000)).ports == [1]
    spoofed = {**routed6(APP2, R1, "fd00:1::10", sport=41001), "ipv6_src": "fd00:2::99"}
    assert sw.send(spoofed).dropped
    other_mac = {**routed6(APP2, R1, "fd00:1::10", sport=41002), "dl_src": mac(9, 9)}
    assert sw.send(other_mac).dropped
    # its link-local address (EUI-64 of its MAC) may solicit the router
    ll = str(link_local(APP2.mac))
    assert sw.send(solicitation(APP2, ROUTER_LL, source=ll)).ports == [2]


SSH = security_group(
    "ssh6",
    sg_rule("ssh6.1", "in", protocol=TCP, ports=22, ethertype=IPV6, remote_group="ssh6"),
)


def test_a_security_group_on_ipv6_admits_its_members_ipv6_addresses() -> None:
    web1 = endpoint("web1", mac(1, 1), "10.1.0.10", "fd00:1::10", bd=WEB_BD, ofport=1, security_groups=[SSH])
    app2 = endpoint("app2", mac(2, 2), "10.2.0.21", "fd00:2::21", bd=APP_BD, ofport=2, security_groups=[SSH])
    app3 = endpoint("app3", mac(3, 2), "10.2.0.22", "fd00:2::22", bd=APP_BD, ofport=3)
    sw = switch(network((web1, app2, app3), groups=[], security_groups=[SSH]))
    assert sw.send(routed6(app2, R1, "fd00:1::10", dport=22)).ports == [1]  # a member, over IPv6
    assert sw.send(routed6(app3, R1, "fd00:1::10", dport=22)).dropped  # not a member
    assert sw.send(routed6(app2, R1, "fd00:1::10", dport=80, sport=40011)).dropped  # not the rule's port
    # the IPv6 rule is no IPv4 rule
    assert sw.send(fabric.routed(app2, R1, "10.1.0.10", dport=22, tp_src=40012)).dropped
    # neighbour discovery reaches a governed port whatever its rules say
    ns = solicitation(app3, "fd00:2::21")
    assert 2 in sw.send(ns).ports
