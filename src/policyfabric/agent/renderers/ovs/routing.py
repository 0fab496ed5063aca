"""Distributed routing (table 40): every host with endpoints on a router's subnets answers ARP
for their gateways with the router's MAC and routes between them itself. The routes to an
endpoint are in that endpoint's section, the gateways' flows in the router's (``pipeline.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, flow, ip_hex
from policyfabric.agent.renderers.ovs.switching import arp_reply, is_v6
from policyfabric.agent.renderers.ovs.tables import (
    L2,
    POLICY,
    ROUTING,
    goto,
    set_field,
)
from policyfabric.agent.view import BridgeDomain, Endpoint, Router, RouterInterface


def routed_flows(
    ep: Endpoint, bd: BridgeDomain, router: int, router_mac: str, tunnel_port: int, cookie: int = AGENT_COOKIE
) -> tuple[Flow, ...]:
    """Table 40: packets for the endpoint's IPv4 addresses that reached router ``router`` leave it
    with the router's MAC as source and the endpoint's as destination, TTL - 1, on the endpoint's
    bridge domain, to its port or its host (remote when ``ep.vtep``)."""
    where = [set_field(ep.ofport or 0, "reg4")]
    if ep.vtep is not None:
        where = [set_field(tunnel_port, "reg4"), set_field(ip_hex(ep.vtep), "reg7")]
    return tuple(
        flow(
            ROUTING,
            100,
            {"reg6": hex(router), "ip": "", "nw_dst": ip},
            set_field(router_mac, "eth_src"),
            set_field(ep.mac, "eth_dst"),
            "dec_ttl",
            set_field(bd.vni, "reg2"),
            set_field(ep.classid, "reg1"),
            *where,
            goto(POLICY),
            cookie=cookie,
        )
        for ip in ep.ips
        if not is_v6(ip)
    )


def router_flows(router: Router, legs: Sequence[tuple[BridgeDomain, RouterInterface]]) -> list[Flow]:
    """A router's legs on bridge domains with local endpoints (``legs``: each with its bridge
    domain): the host answers ARP for their gateways with the router's MAC and sends what is
    addressed to that MAC to routing. (The routes to endpoints are in the endpoints' sections:
    ``routed_flows``; remote endpoints are routed straight to their host, no gateway in the path.)"""
    flows = []
    for bd, leg in legs:
        if ":" in leg.gateway_ip:
            continue
        flows.append(arp_reply(bd.vni, leg.gateway_ip, router.mac))
        match = {"reg2": hex(bd.vni), "dl_dst": router.mac}
        flows.append(flow(L2, 100, match, set_field(router.number, "reg6"), goto(ROUTING)))
    return flows
