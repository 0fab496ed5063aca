"""The Open vSwitch pipeline of ``br-int``, compiled as a pure function.

``compile_pipeline(network, tunnel_port)`` returns every flow the bridge
should hold; it does no I/O. The table map (docs/openflow.md has the long
version):

====  =============  ============================================================
 0    CLASSIFY       local port → regs (group, bridge domain, zone); tunnel → VNI
10    PORT_SECURITY  source MAC, IP and ARP fields must be the endpoint's own
20    ARP            answer ARP requests for known endpoints locally
30    L2             destination MAC in the bridge domain → port or remote host;
                     ARP/ND multicast to the bridge domain's ports and hosts only
60    POLICY         IP → conntrack (zone = routing domain)
61    POLICY_CT      established/related pass; new: contracts as conjunctions
70    OUTPUT         to the port, or into the tunnel with VNI and source group
====  =============  ============================================================

Registers: reg0 source group class id, reg1 destination group class id,
reg2 bridge domain VNI, reg3 conntrack zone, reg4 output port, reg5 bit 0 =
arrived from a tunnel, reg7 remote host (tunnel IPv4 destination).

Policy is checked on both hosts of a cross-host flow: the sender knows the
destination's group from the registry, the receiver gets the source group in
a Geneve option (``tun_metadata0``, class 0x5046). VXLAN-GBP would be the
OpFlex way, but OVS's userspace datapath does not put the GBP extension on
the wire (checked with OVS 3.1), so the tunnels are Geneve. Each host's conntrack sees both
directions, so replies pass as established on both.
"""

from __future__ import annotations

import ipaddress
import zlib
from collections import defaultdict
from collections.abc import Iterable
from functools import lru_cache

from policyfabric.agent.renderers.ovs.flows import Flow, flow, ip_hex, port_masks
from policyfabric.agent.view import BridgeDomain, Endpoint, Network, Rule

CLASSIFY, PORT_SECURITY, ARP, L2, POLICY, POLICY_CT, OUTPUT = 0, 10, 20, 30, 60, 61, 70

ZONE = "NXM_NX_REG3[0..15]"
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
ND_MULTICAST = "33:33:00:00:00:00/ff:ff:00:00:00:00"
NEW = "+new+trk"


def goto(table: int) -> str:
    return f"goto_table:{table}"


def set_field(value: int | str, field: str) -> str:
    """``set_field``, not ``load``: OVS reports loads back as set_field, and ``replace-flows``
    would then see every loading flow as changed and rewrite it on each full sync."""
    return f"set_field:{value if isinstance(value, str) else hex(value)}->{field}"


def link_local(mac: str) -> str:
    """The EUI-64 IPv6 link-local address of ``mac``."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def _is_v6(ip: str) -> bool:
    return ":" in ip


# ---- per-endpoint flows: pure functions of one frozen record, memoised, so a recompile after a
# change costs one dictionary lookup per unchanged endpoint (the incremental part of the compiler)


@lru_cache(maxsize=1 << 17)
def local_endpoint_flows(ep: Endpoint, bd: BridgeDomain) -> tuple[Flow, ...]:
    """Classification, port security, its own ARP probes, L2 delivery and output of a local endpoint."""
    port = ep.ofport or 0
    flows = [
        flow(
            CLASSIFY,
            100,
            {"in_port": port},
            set_field(ep.classid, "reg0"),
            set_field(bd.vni, "reg2"),
            set_field(bd.vrf & 0xFFFF, "reg3"),
            goto(PORT_SECURITY),
        ),
        flow(
            L2,
            100,
            {"reg2": hex(bd.vni), "dl_dst": ep.mac},
            set_field(ep.classid, "reg1"),
            set_field(port, "reg4"),
            goto(POLICY),
        ),
        flow(OUTPUT, 100, {"reg4": port}, f"output:{port}"),
    ]
    # port security: only its own MAC and addresses (ARP sender fields included)
    src: dict[str, str | int] = {"in_port": port, "dl_src": ep.mac}
    for ip in ep.ips:
        if _is_v6(ip):
            flows.append(flow(PORT_SECURITY, 100, {**src, "ipv6": "", "ipv6_src": ip}, goto(ARP)))
        else:
            flows.append(flow(PORT_SECURITY, 100, {**src, "ip": "", "nw_src": ip}, goto(ARP)))
            flows.append(
                flow(PORT_SECURITY, 100, {**src, "arp": "", "arp_spa": ip, "arp_sha": ep.mac}, goto(ARP))
            )
            # an endpoint announcing or probing its own address is not answered
            flows.append(flow(ARP, 200, {"in_port": port, "arp": "", "arp_op": 1, "arp_tpa": ip}, goto(L2)))
    # IPv6 neighbour discovery needs the link-local address, and DAD the unspecified one
    flows.append(flow(PORT_SECURITY, 100, {**src, "ipv6": "", "ipv6_src": link_local(ep.mac)}, goto(ARP)))
    flows.append(flow(PORT_SECURITY, 100, {**src, "icmp6": "", "ipv6_src": "::"}, goto(ARP)))
    return (*flows, *arp_answers(ep, bd))


@lru_cache(maxsize=1 << 17)
def arp_answers(ep: Endpoint, bd: BridgeDomain) -> tuple[Flow, ...]:
    """Answer "who has IP" for an endpoint of the bridge domain on the host, so ARP stays local."""
    return tuple(
        flow(
            ARP,
            100,
            {"reg2": hex(bd.vni), "arp": "", "arp_op": 1, "arp_tpa": ip},
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]",
            set_field(ep.mac, "eth_src"),
            set_field(2, "arp_op"),
            "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]",
            "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]",
            set_field(ep.mac, "arp_sha"),
            set_field(ip, "arp_spa"),
            "IN_PORT",
        )
        for ip in ep.ips
        if not _is_v6(ip)
    )


@lru_cache(maxsize=1 << 17)
def remote_endpoint_flows(ep: Endpoint, bd: BridgeDomain, tunnel_port: int) -> tuple[Flow, ...]:
    """L2 delivery to a remote endpoint through the tunnel, and ARP answers for it."""
    l2 = flow(
        L2,
        100,
        {"reg2": hex(bd.vni), "reg5": "0", "dl_dst": ep.mac},
        set_field(ep.classid, "reg1"),
        set_field(tunnel_port, "reg4"),
        set_field(ip_hex(ep.vtep or "0.0.0.0"), "reg7"),
        goto(POLICY),
    )
    return (l2, *arp_answers(ep, bd))


def endpoint_flows(net: Network, tunnel_port: int | None) -> list[Flow]:
    flows: list[Flow] = []
    local_bds = set()
    for ep in net.local:
        bd = net.bds.get(ep.bd)
        if bd is not None:
            local_bds.add(bd.uri)
            flows += local_endpoint_flows(ep, bd)
    if tunnel_port is not None:
        for ep in net.remote:
            bd = net.bds.get(ep.bd)
            if bd is not None and bd.uri in local_bds and ep.vtep is not None:
                flows += remote_endpoint_flows(ep, bd, tunnel_port)
    return flows


def classify(net: Network, tunnel_port: int | None) -> list[Flow]:
    """Tunnel traffic by VNI (local ports are classified by their own flows), and the default drop."""
    flows = []
    if tunnel_port is not None:
        for bd in {net.bds[e.bd] for e in net.local if e.bd in net.bds}:
            flows.append(
                flow(
                    CLASSIFY,
                    100,
                    {"in_port": tunnel_port, "tun_id": hex(bd.vni)},
                    set_field(bd.vni, "reg2"),
                    set_field(bd.vrf & 0xFFFF, "reg3"),
                    set_field("0x1/0x1", "reg5"),
                    "move:NXM_NX_TUN_METADATA0[0..15]->NXM_NX_REG0[0..15]",
                    goto(L2),
                )
            )
    flows.append(flow(CLASSIFY, 0, None, "drop"))
    flows.append(flow(PORT_SECURITY, 0, None, "drop"))
    flows.append(flow(ARP, 0, None, goto(L2)))
    return flows


def _tunnel_out(vni: int, vtep: str, tunnel_port: int) -> list[str]:
    return [
        set_field(vni, "tun_id"),
        set_field(vtep, "tun_dst"),
        "move:NXM_NX_REG0[0..15]->NXM_NX_TUN_METADATA0[0..15]",
        f"output:{tunnel_port}",
    ]


def flooding(net: Network, tunnel_port: int | None) -> list[Flow]:
    """ARP and IPv6 neighbour discovery reach the bridge domain's own ports and the hosts that have
    members in it; other broadcast and multicast stays out of a default-deny fabric."""
    flows = []
    ports_of: dict[int, list[int]] = defaultdict(list)
    vteps_of: dict[int, set[str]] = defaultdict(set)
    for ep in net.local:
        bd = net.bds.get(ep.bd)
        if bd is not None:
            ports_of[bd.vni].append(ep.ofport or 0)
    if tunnel_port is not None:
        for ep in net.remote:
            bd = net.bds.get(ep.bd)
            if bd is not None and bd.vni in ports_of and ep.vtep is not None:
                vteps_of[bd.vni].add(ep.vtep)
    for vni, ports in sorted(ports_of.items()):
        local_out = [f"output:{p}" for p in sorted(ports)]
        remote_out: list[str] = []
        for vtep in sorted(vteps_of[vni]):
            remote_out += _tunnel_out(vni, vtep, tunnel_port or 0)
        for kind, dst in (("arp", MULTICAST), ("icmp6", ND_MULTICAST)):
            match = {"reg2": hex(vni), "reg5": "0", kind: "", "dl_dst": dst}
            flows.append(flow(L2, 50, match, *local_out, *remote_out))
            if tunnel_port is not None:
                flows.append(flow(L2, 50, {**match, "reg5": "1"}, *local_out))
    flows.append(flow(L2, 0, None, "drop"))
    return flows


def _classifier_matches(rule: Rule) -> list[dict[str, str | int]]:
    """The L3/L4 part of a rule, one match per ethertype and port mask."""
    families = [rule.ethertype] if rule.ethertype else [0x0800, 0x86DD]
    out: list[dict[str, str | int]] = []
    for eth in families:
        v6 = eth == 0x86DD
        base: dict[str, str | int]
        if rule.protocol is None:
            base = {"ipv6" if v6 else "ip": ""}
        elif rule.protocol == 6:
            base = {"tcp6" if v6 else "tcp": ""}
        elif rule.protocol == 17:
            base = {"udp6" if v6 else "udp": ""}
        elif rule.protocol == 1:
            if v6:
                continue
            base = {"icmp": ""}
        elif rule.protocol == 58:
            if not v6:
                continue
            base = {"icmp6": ""}
        else:
            base = {"ipv6" if v6 else "ip": "", "nw_proto": rule.protocol}
        if rule.ports and rule.protocol in (6, 17):
            out += [{**base, "tp_dst": m} for m in port_masks(*rule.ports)]
        else:
            out.append(base)
    return out


def conj_id(*parts: str) -> int:
    """A conjunction id that stays the same when other rules come and go (no flow churn)."""
    return zlib.crc32("|".join(parts).encode()) & 0x7FFFFFFF or 1


def policy(net: Network) -> list[Flow]:
    flows = [
        flow(POLICY, 100, {"ip": ""}, f"ct(table={POLICY_CT},zone={ZONE})"),
        flow(POLICY, 100, {"ipv6": ""}, f"ct(table={POLICY_CT},zone={ZONE})"),
        flow(POLICY, 0, None, goto(OUTPUT)),
        flow(POLICY_CT, 3000, {"ct_state": "+inv+trk"}, "drop"),
        flow(POLICY_CT, 2900, {"ct_state": "-new+est+trk"}, goto(OUTPUT)),
        flow(POLICY_CT, 2900, {"ct_state": "-new+rel+trk"}, goto(OUTPUT)),
        flow(POLICY_CT, 0, None, "drop"),
    ]
    commit = (f"ct(commit,zone={ZONE})", goto(OUTPUT))
    local_groups = {e.classid for e in net.local if e.classid}
    for group in net.groups.values():
        if group.classid in local_groups:
            for eth in ("ip", "ipv6"):  # ct() needs the ethertype in the match
                pair = {"ct_state": NEW, eth: "", "reg0": hex(group.classid), "reg1": hex(group.classid)}
                flows.append(flow(POLICY_CT, 2500, pair, *(commit if group.intra_allow else ("drop",))))
    providers: dict[str, list[int]] = defaultdict(list)
    consumers: dict[str, list[int]] = defaultdict(list)
    for group in net.groups.values():
        for c in group.provides:
            providers[c].append(group.classid)
        for c in group.consumes:
            consumers[c].append(group.classid)
    clauses: dict[tuple[int, int, tuple[tuple[str, str], ...]], list[str]] = defaultdict(list)
    for uri, contract in sorted(net.contracts.items()):
        prov, cons = sorted(providers[uri]), sorted(consumers[uri])
        if not prov or not cons:
            continue
        for rule in contract.rules:
            variants = {"in": [(cons, prov)], "out": [(prov, cons)]}.get(
                rule.direction, [(cons, prov), (prov, cons)]
            )
            priority = (2000 if not rule.allow else 1000) - min(rule.order, 900)
            for n, (srcs, dsts) in enumerate(variants):
                cid = conj_id(uri, rule.key, str(n), str(rule.ethertype), str(rule.protocol), str(rule.ports))
                parts: list[Iterable[dict[str, str | int]]] = [
                    [{"reg0": hex(s)} for s in srcs],
                    [{"reg1": hex(d)} for d in dsts],
                    _classifier_matches(rule),
                ]
                for i, matches in enumerate(parts, 1):
                    for m in matches:
                        key = flow(POLICY_CT, priority, {"ct_state": NEW, **m}).match
                        clauses[(POLICY_CT, priority, key)].append(f"conjunction({cid},{i}/3)")
                final = commit if rule.allow else ("drop",)
                for eth in ("ip", "ipv6"):
                    flows.append(
                        flow(POLICY_CT, priority, {"ct_state": NEW, eth: "", "conj_id": cid}, *final)
                    )
    for (table, priority, match), actions in clauses.items():
        flows.append(Flow(table, priority, match, tuple(sorted(set(actions)))))
    return flows


def tunnel_output(tunnel_port: int | None) -> list[Flow]:
    flows = [flow(OUTPUT, 0, None, "drop")]
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


def compile_pipeline(net: Network, tunnel_port: int | None) -> list[Flow]:
    """Every flow ``br-int`` should hold for this network view, deduplicated."""
    flows = [
        *classify(net, tunnel_port),
        *endpoint_flows(net, tunnel_port),
        *flooding(net, tunnel_port),
        *policy(net),
        *tunnel_output(tunnel_port),
    ]
    return list(dict.fromkeys(flows))  # unordered by design: the applier diffs by match
