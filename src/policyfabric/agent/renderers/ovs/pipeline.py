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

from policyfabric.agent.renderers.ovs.flows import Flow, flow, ip_hex, port_masks
from policyfabric.agent.view import Endpoint, Network, Rule

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


def classify(net: Network, tunnel_port: int | None) -> list[Flow]:
    flows = []
    for ep in net.local:
        bd = net.bds.get(ep.bd)
        if bd is None:
            continue
        flows.append(
            flow(
                CLASSIFY,
                100,
                {"in_port": ep.ofport or 0},
                set_field(ep.classid, "reg0"),
                set_field(bd.vni, "reg2"),
                set_field(bd.vrf & 0xFFFF, "reg3"),
                goto(PORT_SECURITY),
            )
        )
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
    return flows


def port_security(net: Network) -> list[Flow]:
    """An endpoint may send only from its own MAC and addresses (ARP sender fields included)."""
    flows = []
    for ep in net.local:
        if ep.bd not in net.bds:
            continue
        port: dict[str, str | int] = {"in_port": ep.ofport or 0, "dl_src": ep.mac}
        for ip in ep.ips:
            if _is_v6(ip):
                flows.append(flow(PORT_SECURITY, 100, {**port, "ipv6": "", "ipv6_src": ip}, goto(ARP)))
            else:
                flows.append(flow(PORT_SECURITY, 100, {**port, "ip": "", "nw_src": ip}, goto(ARP)))
                flows.append(
                    flow(
                        PORT_SECURITY,
                        100,
                        {**port, "arp": "", "arp_spa": ip, "arp_sha": ep.mac},
                        goto(ARP),
                    )
                )
        # IPv6 neighbour discovery needs the link-local address, and DAD the unspecified one
        flows.append(
            flow(PORT_SECURITY, 100, {**port, "ipv6": "", "ipv6_src": link_local(ep.mac)}, goto(ARP))
        )
        flows.append(flow(PORT_SECURITY, 100, {**port, "icmp6": "", "ipv6_src": "::"}, goto(ARP)))
    flows.append(flow(PORT_SECURITY, 0, None, "drop"))
    return flows


def _known(net: Network) -> list[Endpoint]:
    return [*net.local, *net.remote]


def arp_responder(net: Network) -> list[Flow]:
    """Answer "who has IP" for every endpoint of the bridge domain, so ARP stays on the host."""
    flows = []
    for ep in net.local:
        for ip in ep.ips:
            if not _is_v6(ip):
                # an endpoint announcing or probing its own address is not answered
                flows.append(
                    flow(
                        ARP, 200, {"in_port": ep.ofport or 0, "arp": "", "arp_op": 1, "arp_tpa": ip}, goto(L2)
                    )
                )
    for ep in _known(net):
        bd = net.bds.get(ep.bd)
        if bd is None:
            continue
        for ip in ep.ips:
            if _is_v6(ip):
                continue
            flows.append(
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
            )
    flows.append(flow(ARP, 0, None, goto(L2)))
    return flows


def _tunnel_out(vni: int, vtep: str, tunnel_port: int) -> list[str]:
    return [
        set_field(vni, "tun_id"),
        set_field(vtep, "tun_dst"),
        "move:NXM_NX_REG0[0..15]->NXM_NX_TUN_METADATA0[0..15]",
        f"output:{tunnel_port}",
    ]


def l2(net: Network, tunnel_port: int | None) -> list[Flow]:
    flows = []
    ports_of: dict[int, list[int]] = defaultdict(list)
    vteps_of: dict[int, set[str]] = defaultdict(set)
    for ep in net.local:
        bd = net.bds.get(ep.bd)
        if bd is None:
            continue
        ports_of[bd.vni].append(ep.ofport or 0)
        flows.append(
            flow(
                L2,
                100,
                {"reg2": hex(bd.vni), "dl_dst": ep.mac},
                set_field(ep.classid, "reg1"),
                set_field(ep.ofport or 0, "reg4"),
                goto(POLICY),
            )
        )
    if tunnel_port is not None:
        for ep in net.remote:
            bd = net.bds.get(ep.bd)
            if bd is None or bd.vni not in ports_of or ep.vtep is None:
                continue
            vteps_of[bd.vni].add(ep.vtep)
            flows.append(
                flow(
                    L2,
                    100,
                    {"reg2": hex(bd.vni), "reg5": "0", "dl_dst": ep.mac},
                    set_field(ep.classid, "reg1"),
                    set_field(tunnel_port, "reg4"),
                    set_field(ip_hex(ep.vtep), "reg7"),
                    goto(POLICY),
                )
            )
    # ARP and IPv6 neighbour discovery reach the bridge domain's own ports and the hosts that
    # have members in it; other broadcast and multicast stays out of a default-deny fabric.
    for vni, ports in sorted(ports_of.items()):
        local_out = [f"output:{p}" for p in sorted(ports)]
        remote_out: list[str] = []
        for vtep in sorted(vteps_of[vni]):
            remote_out += _tunnel_out(vni, vtep, tunnel_port or 0)
        for kind, dst in (("arp", MULTICAST), ("icmp6", ND_MULTICAST)):
            flows.append(
                flow(
                    L2, 50, {"reg2": hex(vni), "reg5": "0", kind: "", "dl_dst": dst}, *local_out, *remote_out
                )
            )
            if tunnel_port is not None:
                flows.append(
                    flow(L2, 50, {"reg2": hex(vni), "reg5": "1", kind: "", "dl_dst": dst}, *local_out)
                )
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


def output(net: Network, tunnel_port: int | None) -> list[Flow]:
    flows = [flow(OUTPUT, 100, {"reg4": ep.ofport or 0}, f"output:{ep.ofport}") for ep in net.local]
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
    flows.append(flow(OUTPUT, 0, None, "drop"))
    return flows


def compile_pipeline(net: Network, tunnel_port: int | None) -> list[Flow]:
    """Every flow ``br-int`` should hold for this network view, deduplicated and sorted."""
    flows = [
        *classify(net, tunnel_port),
        *port_security(net),
        *arp_responder(net),
        *l2(net, tunnel_port),
        *policy(net),
        *output(net, tunnel_port),
    ]
    return sorted(set(flows))
