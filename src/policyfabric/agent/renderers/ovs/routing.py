"""Distributed routing (table 40): every host with endpoints on a router's subnets answers ARP
and IPv6 neighbour solicitations for their gateways with the router's MAC and routes between them
itself, IPv4 and IPv6 alike. The routes to an endpoint are in that endpoint's section, the
gateways' flows in the router's (``pipeline.py``).

IPv6 neighbour discovery is answered in flows, as ARP is (no packet goes to the agent): the
solicitation is turned into the advertisement in place: addresses swapped, ICMPv6 type 136, the
router, solicited and override flags, the option's type from source to target link-layer address.
OVS sets ``nd_tll`` only on a flow whose match says the packet is an advertisement, so the
rewritten packet looks itself up again (``resubmit`` to the same table) and a second flow, which
matches advertisements from the router's own MAC (no endpoint can send from it: port security),
writes the MAC into the option and sends it back. The router answers for each IPv6 gateway address
and for its link-local address (EUI-64 of its MAC, ``model.addressing.router_link_local``), which
its router advertisements come from and an autoconfigured endpoint's default route points to."""

from __future__ import annotations

from collections.abc import Sequence

from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, flow, ip_hex
from policyfabric.agent.renderers.ovs.switching import arp_reply, is_v6
from policyfabric.agent.renderers.ovs.tables import (
    ARP,
    L2,
    POLICY,
    ROUTING,
    goto,
    set_field,
)
from policyfabric.agent.view import BridgeDomain, Endpoint, Router, RouterInterface
from policyfabric.model.addressing import router_link_local

NS, NA = 135, 136  # ICMPv6 neighbour solicitation and advertisement
NA_FLAGS = 0xE0000000  # router, solicited, override (RFC 4861 4.4: the first 3 bits of "reserved")
TARGET_MAC = 2  # the NA's option: target link-layer address (a solicitation carries 1, its source's)


def routed_flows(
    ep: Endpoint, bd: BridgeDomain, router: int, router_mac: str, tunnel_port: int, cookie: int = AGENT_COOKIE
) -> tuple[Flow, ...]:
    """Table 40: packets for the endpoint's addresses (IPv4 and IPv6) that reached router ``router``
    leave it with the router's MAC as source and the endpoint's as destination, TTL (hop limit) - 1,
    on the endpoint's bridge domain, to its port or its host (remote when ``ep.vtep``)."""
    where = [set_field(ep.ofport or 0, "reg4")]
    if ep.vtep is not None:
        where = [set_field(tunnel_port, "reg4"), set_field(ip_hex(ep.vtep), "reg7")]
    return tuple(
        flow(
            ROUTING,
            100,
            {"reg6": hex(router), "ipv6": "", "ipv6_dst": ip}
            if is_v6(ip)
            else {"reg6": hex(router), "ip": "", "nw_dst": ip},
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
    )


def nd_answer(vni: int, ip: str, mac: str, cookie: int = AGENT_COOKIE) -> tuple[Flow, ...]:
    """Answer neighbour solicitations for ``ip`` in the bridge domain with ``mac``, from the host
    itself (the module docstring says how). A solicitation from the unspecified address (duplicate
    address detection of ``ip`` by an endpoint) is not answered: an advertisement to ``::`` would
    be no answer, and port security keeps the endpoint from using the address anyway."""
    where: dict[str, str | int] = {"reg2": hex(vni), "icmp6": ""}
    ask = {**where, "icmp_type": NS, "nd_target": ip}
    return (
        flow(ARP, 110, {**ask, "ipv6_src": "::"}, "drop", cookie=cookie),
        flow(
            ARP,
            100,
            ask,
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
            set_field(mac, "eth_src"),
            "move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[]",
            set_field(ip, "ipv6_src"),
            set_field(TARGET_MAC, "nd_options_type"),
            set_field(NA_FLAGS, "nd_reserved"),
            set_field(NA, "icmpv6_type"),
            f"resubmit(,{ARP})",
            cookie=cookie,
        ),
        flow(
            ARP,
            100,
            {**where, "icmp_type": NA, "dl_src": mac, "nd_target": ip},
            set_field(mac, "nd_tll"),
            "IN_PORT",
            cookie=cookie,
        ),
    )


def router_flows(router: Router, legs: Sequence[tuple[BridgeDomain, RouterInterface]]) -> list[Flow]:
    """A router's legs on bridge domains with local endpoints (``legs``: each with its bridge
    domain): the host answers ARP for their IPv4 gateways and neighbour solicitations for their
    IPv6 gateways and the router's link-local address with the router's MAC, and sends what is
    addressed to that MAC to routing. (The routes to endpoints are in the endpoints' sections:
    ``routed_flows``; remote endpoints are routed straight to their host, no gateway in the path.)"""
    flows: list[Flow] = []
    seen: set[int] = set()  # bridge domains done (a bridge domain may hold several of its subnets)
    for bd, leg in legs:
        if is_v6(leg.gateway_ip):
            flows += nd_answer(bd.vni, leg.gateway_ip, router.mac)
        else:
            flows.append(arp_reply(bd.vni, leg.gateway_ip, router.mac))
        if bd.vni in seen:
            continue
        seen.add(bd.vni)
        if any(is_v6(other.gateway_ip) for b, other in legs if b.vni == bd.vni):
            flows += nd_answer(bd.vni, router_link_local(router.mac), router.mac)
        match = {"reg2": hex(bd.vni), "dl_dst": router.mac}
        flows.append(flow(L2, 100, match, set_field(router.number, "reg6"), goto(ROUTING)))
    return flows
