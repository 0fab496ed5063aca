"""Distributed routing (table 40): every host with endpoints on a router's subnets answers ARP
for their gateways with the router's MAC and routes between them itself."""

from __future__ import annotations

from functools import lru_cache

from policyfabric.agent.renderers.ovs.flows import Flow, flow, ip_hex
from policyfabric.agent.renderers.ovs.switching import arp_reply, is_v6
from policyfabric.agent.renderers.ovs.tables import (
    L2,
    POLICY,
    ROUTING,
    goto,
    set_field,
)
from policyfabric.agent.view import BridgeDomain, Endpoint, Network


@lru_cache(maxsize=1 << 17)
def routed_flows(
    ep: Endpoint, bd: BridgeDomain, router: int, router_mac: str, tunnel_port: int
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
        )
        for ip in ep.ips
        if not is_v6(ip)
    )


def routing(net: Network, tunnel_port: int | None) -> list[Flow]:
    """Distributed routing: a host with endpoints on a router's subnets answers ARP for their
    gateways with the router's MAC and routes between them itself, to local ports directly and to
    remote endpoints straight to their host (no gateway in the path)."""
    flows = [flow(ROUTING, 0, None, "drop")]
    local_bds = {e.bd for e in net.local}
    for router in sorted(net.routers.values(), key=lambda r: r.uri):
        if not router.bds & local_bds and not net.is_active_gateway(router):
            continue
        for leg in router.interfaces:
            bd = net.bds.get(leg.bd)
            if bd is None or leg.bd not in local_bds or ":" in leg.gateway_ip:
                continue
            flows.append(arp_reply(bd.vni, leg.gateway_ip, router.mac))
            match = {"reg2": hex(bd.vni), "dl_dst": router.mac}
            flows.append(flow(L2, 100, match, set_field(router.number, "reg6"), goto(ROUTING)))
        for ep in (*net.local, *net.remote):
            bd = net.bds.get(ep.bd)
            if bd is None or ep.bd not in router.bds or (ep.ofport is None and tunnel_port is None):
                continue
            flows += routed_flows(ep, bd, router.number, router.mac, tunnel_port or 0)
    return flows
