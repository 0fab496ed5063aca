"""External networks on ``br-int``: floating IPs and SNAT, compiled as pure functions.

A host's port on an external network (``--external NETWORK=IFACE``) is
classified to ``EXT_IN`` (the tables, and what each may do: ``tables.py``).
What this host does there:

- **floating IPs of its own endpoints** (DVR: NAT happens on the endpoint's
  host): it answers ARP for the floating IP with a MAC derived from it;
  inbound packets are DNAT'ed (conntrack zone of the router) and then routed
  to the endpoint like any routed packet, with "the outside" (class
  ``OUTSIDE``) as the source group, so group policy and security groups
  judge them; outbound packets of the endpoint pass policy, then are SNAT'ed
  to the floating IP on the way out;
- **SNAT for routers it is the active gateway of**: compute hosts send the
  traffic of endpoints without a floating IP to the active gateway through
  the tunnel (a per-router transit VNI), after policy; the gateway SNATs it
  to the router's external address. Replies are un-NAT'ed and routed back to
  the endpoint's host, whose conntrack knows them as established. A packet
  from outside that matches no SNAT connection is dropped: nothing opens a
  connection inward through SNAT.

Next hops on the external network are resolved from ARP seen on the port
(a ``learn`` action fills ``NEIGHBOUR``), primed by the agent's ARP requests for
the network's gateway address; an on-link address not learned yet goes via
the gateway.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, flow, ip_hex
from policyfabric.agent.renderers.ovs.tables import (
    CLASSIFY,
    EXT_ARP,
    EXT_IN,
    EXT_IN_NAT,
    NAT_OUT,
    NEIGHBOUR,
    NEXTHOP,
    OUTPUT,
    OUTSIDE,
    POLICY,
    REPLY_ONLY,
    ROUTING,
    goto,
    set_field,
)
from policyfabric.agent.view import Endpoint, ExternalNet, FloatingIp, Network, Router

NEIGHBOUR_IDLE = 600  # seconds a learned next-hop MAC lives without traffic


def transit_vni(router: Router) -> int:
    """The tunnel key of a router's traffic to its SNAT gateway (outside the bridge domains' range)."""
    return 0xF00000 | router.number


def nat_zone(router: Router) -> int:
    """The conntrack zone of a router's NAT (routing domains use their small VNI numbers)."""
    return 0xC000 | (router.number & 0x3FFF)


def arp_answer(
    table: int, where: Mapping[str, str | int], ip: str, mac: str, cookie: int = AGENT_COOKIE
) -> Flow:
    """Answer "who has ``ip``" (among packets matching ``where``) with ``mac``, from the host itself."""
    return flow(
        table,
        100,
        {**where, "arp": "", "arp_op": 1, "arp_tpa": ip},
        "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
        set_field(mac, "eth_src"),
        set_field(2, "arp_op"),
        "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]",
        "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]",
        set_field(mac, "arp_sha"),
        set_field(ip, "arp_spa"),
        "IN_PORT",
        cookie=cookie,
    )


def _v4(ep: Endpoint) -> str | None:
    return next((ip for ip in ep.ips if ":" not in ip), None)


@dataclass(frozen=True)
class LocalFip:
    fip: FloatingIp
    endpoint: Endpoint
    address: str  # the endpoint's IPv4 address it maps to
    router: Router
    port: int  # this host's port on the floating IP's network


def local_fips(
    floating_ips: Iterable[FloatingIp],
    local: Mapping[str, Endpoint],
    external: Mapping[str, ExternalNet],
    routers: Sequence[Router],
) -> Iterator[LocalFip]:
    """Floating IPs of this host's endpoints (``local``, by key), on networks this host has a port
    on, behind a router (of ``routers``, sorted by URI) of the endpoint's subnet with a gateway on
    that network."""
    for fip in floating_ips:
        ep, ext = local.get(fip.endpoint), external.get(fip.network)
        address = _v4(ep) if ep else None
        if ep is None or address is None or ext is None or ext.ofport is None:
            continue
        router = next(
            (r for r in routers if ep.bd in r.bds and r.gateway and r.gateway.network == fip.network), None
        )
        if router is not None:
            yield LocalFip(fip, ep, address, router, ext.ofport)


def _learn(port: int, cookie: int) -> str:
    """From an ARP packet on external port ``port``: "to reach SPA, send to SHA out of this port".
    The learned flows' ``cookie`` is not the one of the port's own table 73 flows: when the last
    learning flow goes (delete_learned), OVS flushes every flow of the table with the learn's
    cookie, and a bundle that replaces the learning flow (the port under a new ofport) deletes the
    old one before the new one counts: the port's new table 73 flows would go with the learned
    ones."""
    return (
        f"learn(table={NEIGHBOUR},priority=100,idle_timeout={NEIGHBOUR_IDLE},delete_learned,"
        f"cookie={cookie:#x},NXM_NX_REG4[]={port},NXM_NX_REG9[]=NXM_OF_ARP_SPA[],"
        "load:NXM_NX_ARP_SHA[]->NXM_OF_ETH_DST[],output:NXM_OF_IN_PORT[])"
    )


def port_flows(ext: ExternalNet, learned_cookie: int) -> list[Flow]:
    """A port on an external network: classify, learn neighbours (``learned_cookie`` on what is
    learned), pick the next hop."""
    port = ext.ofport or 0
    gw = ip_hex(ext.gateway_ip)
    return [
        flow(CLASSIFY, 100, {"in_port": port}, goto(EXT_IN)),
        flow(EXT_IN, 200, {"in_port": port, "arp": ""}, _learn(port, learned_cookie), goto(EXT_ARP)),
        flow(OUTPUT, 100, {"reg4": port}, goto(NAT_OUT)),
        flow(
            NEXTHOP,
            100,
            {"reg4": port, "ip": "", "nw_dst": ext.cidr},
            "move:NXM_OF_IP_DST[]->NXM_NX_REG9[]",
            goto(NEIGHBOUR),
        ),
        flow(NEXTHOP, 50, {"reg4": port, "ip": ""}, set_field(gw, "reg9"), goto(NEIGHBOUR)),
        # not learned yet: an on-link address goes via the gateway; an unknown gateway: drop
        flow(NEIGHBOUR, 20, {"reg4": port, "reg9": gw}, "drop"),
        flow(NEIGHBOUR, 10, {"reg4": port}, set_field(gw, "reg9"), f"resubmit(,{NEIGHBOUR})"),
    ]


def fip_flows(f: LocalFip, vrf_zone: int) -> list[Flow]:
    zone, r, port = nat_zone(f.router), f.router.number, f.port
    return [
        arp_answer(EXT_ARP, {"in_port": port}, f.fip.ip, f.fip.mac),
        # inbound: DNAT to the endpoint, then routed to it with the outside as the source group
        flow(
            EXT_IN,
            100,
            {"in_port": port, "ip": "", "nw_dst": f.fip.ip},
            set_field(r, "reg6"),
            set_field(vrf_zone, "reg3"),
            set_field(OUTSIDE, "reg0"),
            f"ct(commit,zone={zone},nat(dst={f.address}),table={EXT_IN_NAT})",
        ),
        # outbound: policy first (the outside as the destination group), then SNAT on the way out
        flow(
            ROUTING,
            60,
            {"reg6": hex(r), "ip": "", "nw_src": f.address},
            set_field(OUTSIDE, "reg1"),
            set_field(port, "reg4"),
            "dec_ttl",
            goto(POLICY),
        ),
        flow(
            NAT_OUT,
            100,
            {"reg6": hex(r), "reg4": port, "ip": "", "nw_src": f.address},
            set_field(f.fip.mac, "eth_src"),
            f"ct(commit,zone={zone},nat(src={f.fip.ip}),table={NEXTHOP})",
        ),
    ]


def snat_gateway_flows(
    router: Router, ext: ExternalNet, tunnel_port: int | None, vrf_zone: int
) -> list[Flow]:
    """The active gateway of ``router``: SNAT what compute hosts send, un-NAT replies only."""
    assert router.gateway is not None
    gw, zone, r, port = router.gateway, nat_zone(router), router.number, ext.ofport or 0
    flows = [
        arp_answer(EXT_ARP, {"in_port": port}, gw.ip, router.mac),
        flow(
            EXT_IN,
            100,
            {"in_port": port, "ip": "", "nw_dst": gw.ip},
            set_field(r, "reg6"),
            set_field(vrf_zone, "reg3"),
            set_field(OUTSIDE, "reg0"),
            set_field(f"{REPLY_ONLY:#x}/{REPLY_ONLY:#x}", "reg5"),
            f"ct(zone={zone},nat,table={EXT_IN_NAT})",
        ),
        flow(
            NAT_OUT,
            50,
            {"reg6": hex(r), "reg4": port, "ip": ""},
            set_field(router.mac, "eth_src"),
            f"ct(commit,zone={zone},nat(src={gw.ip}),table={NEXTHOP})",
        ),
        # this host's own endpoints of the router: straight out (after policy)
        flow(
            ROUTING,
            40,
            {"reg6": hex(r), "ip": ""},
            set_field(OUTSIDE, "reg1"),
            set_field(port, "reg4"),
            "dec_ttl",
            goto(POLICY),
        ),
    ]
    if tunnel_port is not None:  # other hosts' endpoints: judged there, sent here in the transit VNI
        flows.append(
            flow(
                CLASSIFY,
                100,
                {"in_port": tunnel_port, "tun_id": hex(transit_vni(router))},
                set_field(r, "reg6"),
                set_field(port, "reg4"),
                goto(NAT_OUT),
            )
        )
    return flows


def to_gateway_flows(router: Router, tunnel_port: int) -> list[Flow]:
    """A compute host: the router's traffic to the outside goes to the active gateway, after policy."""
    assert router.gateway is not None and router.gateway.active_vtep is not None
    return [
        flow(
            ROUTING,
            40,
            {"reg6": hex(router.number), "ip": ""},
            set_field(OUTSIDE, "reg1"),
            set_field(transit_vni(router), "reg2"),
            set_field(tunnel_port, "reg4"),
            set_field(ip_hex(router.gateway.active_vtep), "reg7"),
            "dec_ttl",
            goto(POLICY),
        )
    ]


def base_flows() -> list[Flow]:
    """The fixed external-network flows (every host has them, routers to the outside or not)."""
    misses = (EXT_IN, EXT_ARP, EXT_IN_NAT, NAT_OUT, NEXTHOP, NEIGHBOUR)
    flows = [flow(table, 0, None, "drop") for table in misses]
    flows += [
        # after DNAT (floating IP) or un-SNAT: route to the endpoint; through SNAT, replies only
        flow(EXT_IN_NAT, 200, {"ct_state": "+inv+trk"}, "drop"),
        flow(EXT_IN_NAT, 150, {"ct_state": "+new+trk", "reg5": f"{REPLY_ONLY:#x}/{REPLY_ONLY:#x}"}, "drop"),
        flow(EXT_IN_NAT, 100, {"ct_state": "+trk", "ip": ""}, goto(ROUTING)),
        # replies through SNAT were judged by policy on the endpoint's host, which sees them as established
        flow(POLICY, 300, {"reg5": f"{REPLY_ONLY:#x}/{REPLY_ONLY:#x}"}, goto(OUTPUT)),
    ]
    return flows


def router_external_flows(
    router: Router,
    ext: ExternalNet | None,
    *,
    gateway_here: bool,
    has_local: bool,
    tunnel_port: int | None,
    vrf_zone: int,
) -> list[Flow]:
    """A router's way to the outside from this host: SNAT if this host is its active gateway
    (``gateway_here``) with a port on the network (``ext``), else, for a host with endpoints on
    its subnets (``has_local``), to the active gateway through the tunnel; and its own subnets
    never leak to the outside."""
    gw = router.gateway
    flows: list[Flow] = []
    if gw is None:
        return flows
    if gateway_here and ext is not None and ext.ofport is not None:
        flows += snat_gateway_flows(router, ext, tunnel_port, vrf_zone)
    elif has_local and gw.snat and gw.active_vtep and tunnel_port is not None:
        flows += to_gateway_flows(router, tunnel_port)
    if has_local:
        flows += [
            flow(ROUTING, 90, {"reg6": hex(router.number), "ip": "", "nw_dst": leg.prefix}, "drop")
            for leg in router.interfaces
            if ":" not in leg.prefix
        ]
    return flows


@dataclass(frozen=True)
class Announcement:
    """An address this host answers for on an external network: announced (gratuitous ARP) when it
    appears, and used as the sender of ARP requests that resolve the network's gateway."""

    port: int
    ip: str
    mac: str
    gateway_ip: str


def announcements(net: Network, fips: Iterable[LocalFip]) -> list[Announcement]:
    """The addresses this host answers for on external networks: its endpoints' floating IPs
    (``fips``, from ``local_fips``) and the external addresses of routers it is the active gateway of."""
    out = [Announcement(f.port, f.fip.ip, f.fip.mac, net.external[f.fip.network].gateway_ip) for f in fips]
    for router in net.routers.values():
        gw = router.gateway
        ext = net.external.get(gw.network) if gw else None
        if gw and ext and ext.ofport is not None and net.is_active_gateway(router):
            out.append(Announcement(ext.ofport, gw.ip, router.mac, ext.gateway_ip))
    return sorted(out, key=lambda a: (a.port, a.ip))


def arp_frame(sender_mac: str, sender_ip: str, target_ip: str) -> bytes:
    """A broadcast ARP request (gratuitous when ``target_ip`` is ``sender_ip``)."""
    mac = bytes.fromhex(sender_mac.replace(":", ""))
    spa, tpa = ipaddress.IPv4Address(sender_ip).packed, ipaddress.IPv4Address(target_ip).packed
    eth = b"\xff" * 6 + mac + b"\x08\x06"
    arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + spa + b"\x00" * 6 + tpa
    return eth + arp + b"\x00" * 18  # padded to the 60-byte minimum
