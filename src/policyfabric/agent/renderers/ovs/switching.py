"""Switching on ``br-int``: classification, port security, local ARP answers, L2 delivery,
ARP/ND flooding within a bridge domain, and output to ports or the tunnel.

Per-endpoint flows are pure functions of one frozen record, built with their section's cookie;
the compiler (``pipeline.SectionCompiler``) makes each endpoint and each bridge domain a section
of its own and memoises the sections (not these: the flows would be kept twice).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, flow, ip_hex
from policyfabric.agent.renderers.ovs.tables import (
    ARP,
    CLASSIFY,
    L2,
    OUTPUT,
    POLICY,
    PORT_SECURITY,
    goto,
    set_field,
)
from policyfabric.agent.view import BridgeDomain, DhcpSubnet, Endpoint, Ipv4Address, bare
from policyfabric.model.addressing import link_local

TO_CONTROLLER = "CONTROLLER:65535"  # the whole packet to the agent (as ovs-ofctl writes it back)
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
ND_MULTICAST = "33:33:00:00:00:00/ff:ff:00:00:00:00"


def is_v6(ip: str) -> bool:
    return ":" in ip


def local_endpoint_flows(ep: Endpoint, bd: BridgeDomain, cookie: int = AGENT_COOKIE) -> tuple[Flow, ...]:
    """Classification, port security, its own ARP probes, L2 delivery and output of a local endpoint
    (its section's ``cookie`` on each: ``pipeline.local_section`` memoises the section)."""
    port = ep.ofport or 0
    flows = [
        flow(
            CLASSIFY,
            100,
            {"in_port": port},
            set_field(ep.classid, "reg0"),
            set_field(bd.vni, "reg2"),
            set_field(bd.zone, "reg3"),
            goto(PORT_SECURITY),
            cookie=cookie,
        ),
        flow(
            L2,
            100,
            {"reg2": hex(bd.vni), "dl_dst": ep.mac},
            set_field(ep.classid, "reg1"),
            set_field(port, "reg4"),
            goto(POLICY),
            cookie=cookie,
        ),
        flow(OUTPUT, 100, {"reg4": port}, f"output:{port}", cookie=cookie),
    ]
    # port security: only its own MAC and addresses (ARP sender fields included)
    src: dict[str, str | int] = {"in_port": port, "dl_src": ep.mac}
    for ip in ep.ips:
        if is_v6(ip):
            flows.append(
                flow(PORT_SECURITY, 100, {**src, "ipv6": "", "ipv6_src": ip}, goto(ARP), cookie=cookie)
            )
        else:
            flows.append(flow(PORT_SECURITY, 100, {**src, "ip": "", "nw_src": ip}, goto(ARP), cookie=cookie))
            flows.append(
                flow(
                    PORT_SECURITY,
                    100,
                    {**src, "arp": "", "arp_spa": ip, "arp_sha": ep.mac},
                    goto(ARP),
                    cookie=cookie,
                )
            )
            # an endpoint announcing or probing its own address is not answered
            flows.append(
                flow(
                    ARP,
                    200,
                    {"in_port": port, "arp": "", "arp_op": 1, "arp_tpa": ip},
                    goto(L2),
                    cookie=cookie,
                )
            )
    # IPv6 neighbour discovery needs the link-local address, and DAD the unspecified one
    flows.append(
        flow(
            PORT_SECURITY,
            100,
            {**src, "ipv6": "", "ipv6_src": str(link_local(ep.mac))},
            goto(ARP),
            cookie=cookie,
        )
    )
    flows.append(flow(PORT_SECURITY, 100, {**src, "icmp6": "", "ipv6_src": "::"}, goto(ARP), cookie=cookie))
    flows += pair_flows(ep, bd, cookie)
    flows += dhcp_flows(ep, bd, cookie)
    return (*flows, *arp_answers(ep, bd, cookie))


PAIR_MAC_PRIORITY = 90  # L2: under the endpoints' and routers' own MACs (100), over flooding (50)


def _in(prefix: str, field: str) -> dict[str, str | int]:
    """A match on ``field`` within ``prefix``: a host prefix as its address (as OVS writes it back),
    a /0 as no match at all."""
    if prefix.endswith("/0"):
        return {}
    return {field: bare(prefix)}


def pair_flows(ep: Endpoint, bd: BridgeDomain, cookie: int = AGENT_COOKIE) -> list[Flow]:
    """Port security for the endpoint's allowed address pairs (Neutron's): IP from each pair's
    prefix at the pair's MAC, ARP whose sender is that MAC and an address in the prefix (a VRRP
    master's replies and gratuitous ARP for its virtual address); for a pair MAC other than its
    own, IPv6 from that MAC's link-local address and DAD, and L2 delivery of frames to that MAC
    below an endpoint's own MAC (``PAIR_MAC_PRIORITY``): a pair may name another endpoint's MAC
    (Neutron allows it; tempest does it), and that endpoint keeps its frames.

    Delivery to a pair's address is by ARP and ND, as in Neutron: the fabric answers no ARP for
    it (``arp_answers`` does not list it), so a request floods the bridge domain and whichever
    port holds the address now answers it, which is what lets two ports share a virtual address
    and move it between them. A pair MAC that two endpoints of one host both list is delivered to
    one of them (their L2 flows have one key: ``sections.resolve`` picks the last by key)."""
    port = ep.ofport or 0
    flows: list[Flow] = []
    for prefix, mac in ep.allowed_pairs:
        src: dict[str, str | int] = {"in_port": port, "dl_src": mac}
        if is_v6(prefix):
            flows.append(
                flow(
                    PORT_SECURITY,
                    100,
                    {**src, "ipv6": "", **_in(prefix, "ipv6_src")},
                    goto(ARP),
                    cookie=cookie,
                )
            )
            continue
        flows.append(
            flow(PORT_SECURITY, 100, {**src, "ip": "", **_in(prefix, "nw_src")}, goto(ARP), cookie=cookie)
        )
        arp = {**src, "arp": "", **_in(prefix, "arp_spa"), "arp_sha": mac}
        flows.append(flow(PORT_SECURITY, 100, arp, goto(ARP), cookie=cookie))
    for mac in ep.pair_macs:
        src = {"in_port": port, "dl_src": mac}
        flows.append(
            flow(
                PORT_SECURITY,
                100,
                {**src, "ipv6": "", "ipv6_src": str(link_local(mac))},
                goto(ARP),
                cookie=cookie,
            )
        )
        flows.append(
            flow(PORT_SECURITY, 100, {**src, "icmp6": "", "ipv6_src": "::"}, goto(ARP), cookie=cookie)
        )
        flows.append(
            flow(
                L2,
                PAIR_MAC_PRIORITY,
                {"reg2": hex(bd.vni), "dl_dst": mac},
                set_field(ep.classid, "reg1"),
                set_field(port, "reg4"),
                goto(POLICY),
                cookie=cookie,
            )
        )
    return flows


def dhcp_subnet(ep: Endpoint, bd: BridgeDomain) -> tuple[DhcpSubnet, Ipv4Address] | None:
    """The DHCP-answered subnet of ``bd`` that holds one of ``ep``'s IPv4 addresses, and that address
    (the first such: an endpoint leases one address per interface); None: no DHCP for it."""
    for ip in ep.ips:
        if is_v6(ip):
            continue
        addr = ipaddress.IPv4Address(ip)
        for subnet in bd.dhcp:
            if addr in ipaddress.IPv4Network(subnet.prefix):
                return subnet, Ipv4Address(ip)
    return None


def dhcp_flows(ep: Endpoint, bd: BridgeDomain, cookie: int = AGENT_COOKIE) -> list[Flow]:
    """DHCPv4 on the endpoint's own host: its requests (from its MAC, client port 68 to server port
    67, broadcast or unicast renewals alike) go to the agent's responder (``agent/dhcp``), never
    on to the bridge domain or a tunnel; none of its packets from the server port 67 goes anywhere
    (an endpoint is no DHCP server: one flow for every port, ``base_flows``). Without a
    DHCP-answered subnet for its address, requests fall to port security, which drops them (their
    source 0.0.0.0 is not the endpoint's)."""
    port = ep.ofport or 0
    flows: list[Flow] = []
    if dhcp_subnet(ep, bd) is not None:
        ask: dict[str, str | int] = {"in_port": port, "dl_src": ep.mac, "udp": "", "tp_src": 68, "tp_dst": 67}
        flows.append(flow(PORT_SECURITY, 200, ask, TO_CONTROLLER, cookie=cookie))
    return flows + ipv6_config_flows(ep, bd, cookie)


def ipv6_config_flows(ep: Endpoint, bd: BridgeDomain, cookie: int = AGENT_COOKIE) -> list[Flow]:
    """Router advertisements and DHCPv6 on the endpoint's own host, as for DHCPv4: its router
    solicitations (ICMPv6 133) go to the agent when its bridge domain has a subnet advertised
    (``ipv6_ra_mode``), its DHCPv6 client messages (UDP 546 → 547) when one is answered by DHCPv6
    (``ipv6_address_mode`` dhcpv6-*); never its router advertisements (134) nor its DHCPv6 server
    messages (UDP source 547): an endpoint is no router and no DHCPv6 server."""
    port = ep.ofport or 0
    flows = [
        flow(PORT_SECURITY, 200, {"in_port": port, "icmp6": "", "icmp_type": 134}, "drop", cookie=cookie),
        flow(PORT_SECURITY, 200, {"in_port": port, "udp6": "", "tp_src": 547}, "drop", cookie=cookie),
    ]
    own: dict[str, str | int] = {"in_port": port, "dl_src": ep.mac}
    if any(s.ra_mode for s in bd.ipv6):
        rs: dict[str, str | int] = {**own, "icmp6": "", "icmp_type": 133}
        flows.append(flow(PORT_SECURITY, 200, rs, TO_CONTROLLER, cookie=cookie))
    if any(s.address_mode in ("dhcpv6-stateless", "dhcpv6-stateful") for s in bd.ipv6):
        ask: dict[str, str | int] = {**own, "udp6": "", "tp_src": 546, "tp_dst": 547}
        flows.append(flow(PORT_SECURITY, 200, ask, TO_CONTROLLER, cookie=cookie))
    return flows


MLD_TYPES = (130, 131, 132, 143)  # listener query, report, done; MLDv2 report


def mld_drops() -> list[Flow]:
    """Multicast listener discovery from local ports goes nowhere. Nothing here forwards IPv6
    multicast by listener (ND's groups are flooded whoever listens), so the reports only cost: a
    hundred endpoints whose IPv6 comes up at once send two or three each, the ND flood copies each
    to every port of the bridge domain, and on a loaded host the switch's upcall queue overflows
    and loses the router solicitations sent in the same seconds (bench/dhcp.py --family 6: with
    the reports flooded, the first solicitation reached the agent 18-26 s after the hundred came
    up; with them dropped, 2 s). Four flows in all, not per endpoint."""
    return [flow(PORT_SECURITY, 200, {"icmp6": "", "icmp_type": t}, "drop") for t in MLD_TYPES]


def arp_reply(vni: int, ip: str, mac: str, cookie: int = AGENT_COOKIE) -> Flow:
    """Answer "who has ``ip``" in the bridge domain with ``mac``, from the host itself."""
    return external.arp_answer(ARP, {"reg2": hex(vni)}, ip, mac, cookie)


def arp_answers(ep: Endpoint, bd: BridgeDomain, cookie: int = AGENT_COOKIE) -> tuple[Flow, ...]:
    """Answer "who has IP" for an endpoint of the bridge domain on the host, so ARP stays local."""
    return tuple(arp_reply(bd.vni, ip, ep.mac, cookie) for ip in ep.ips if not is_v6(ip))


def remote_endpoint_flows(
    ep: Endpoint, bd: BridgeDomain, tunnel_port: int, cookie: int = AGENT_COOKIE
) -> tuple[Flow, ...]:
    """L2 delivery to a remote endpoint through the tunnel, and ARP answers for it."""
    l2 = flow(
        L2,
        100,
        {"reg2": hex(bd.vni), "reg5": "0", "dl_dst": ep.mac},
        set_field(ep.classid, "reg1"),
        set_field(tunnel_port, "reg4"),
        set_field(ip_hex(ep.vtep or "0.0.0.0"), "reg7"),
        goto(POLICY),
        cookie=cookie,
    )
    return (l2, *arp_answers(ep, bd, cookie))


def base_flows(tunnel_port: int | None) -> list[Flow]:
    """The fixed switching flows: the misses of classification, port security, ARP, L2 and output,
    and the tunnel's output (its port is the view's)."""
    flows = [
        flow(CLASSIFY, 0, None, "drop"),
        flow(PORT_SECURITY, 0, None, "drop"),
        # DHCP server packets from any local port (only local ports reach PORT_SECURITY): one flow
        # for all, not one per endpoint (10,000 flows fewer at 10,000 endpoints)
        flow(PORT_SECURITY, 200, {"udp": "", "tp_src": 67}, "drop"),
        flow(ARP, 0, None, goto(L2)),
        flow(L2, 0, None, "drop"),
        flow(OUTPUT, 0, None, "drop"),
        *mld_drops(),
    ]
    if tunnel_port is not None:
        flows.append(
            flow(
                OUTPUT,
                100,
                {"reg4": tunnel_port},
                "move:NXM_NX_REG2[]->NXM_NX_TUN_ID[0..31]",
                "move:NXM_NX_REG7[]->NXM_NX_TUN_IPV4_DST[]",
                "move:NXM_NX_REG0[0..15]->NXM_NX_TUN_METADATA0[0..15]",
                f"output:{tunnel_port}",
            )
        )
    return flows


def _tunnel_out(vni: int, vtep: str, tunnel_port: int) -> list[str]:
    return [
        set_field(vni, "tun_id"),
        set_field(vtep, "tun_dst"),
        "move:NXM_NX_REG0[0..15]->NXM_NX_TUN_METADATA0[0..15]",
        f"output:{tunnel_port}",
    ]


def bd_flows(
    bd: BridgeDomain, ports: Sequence[int], vteps: Sequence[str], tunnel_port: int | None
) -> list[Flow]:
    """A bridge domain with local endpoints (on ``ports``, sorted): tunnel traffic in its VNI is
    classified to it; ARP and IPv6 neighbour discovery reach its own ports and the hosts that have
    members in it (``vteps``, sorted); other broadcast and multicast stays out of a default-deny
    fabric."""
    flows = []
    if tunnel_port is not None:
        flows.append(
            flow(
                CLASSIFY,
                100,
                {"in_port": tunnel_port, "tun_id": hex(bd.vni)},
                set_field(bd.vni, "reg2"),
                set_field(bd.zone, "reg3"),
                set_field("0x1/0x1", "reg5"),
                "move:NXM_NX_TUN_METADATA0[0..15]->NXM_NX_REG0[0..15]",
                goto(L2),
            )
        )
    local_out = [f"output:{p}" for p in ports]
    remote_out: list[str] = []
    for vtep in vteps:
        remote_out += _tunnel_out(bd.vni, vtep, tunnel_port or 0)
    for kind, dst in (("arp", MULTICAST), ("icmp6", ND_MULTICAST)):
        match = {"reg2": hex(bd.vni), "reg5": "0", kind: "", "dl_dst": dst}
        flows.append(flow(L2, 50, match, *local_out, *remote_out))
        if tunnel_port is not None:
            flows.append(flow(L2, 50, {**match, "reg5": "1"}, *local_out))
    return flows
