"""The Open vSwitch pipeline of ``br-int``, compiled as a pure function.

``compile_pipeline(network, tunnel_port)`` returns every flow the bridge
should hold; it does no I/O. The table map (docs/openflow.md has the long
version):

====  =============  ============================================================
 0    CLASSIFY       local port → regs (group, bridge domain, zone); tunnel → VNI
10    PORT_SECURITY  source MAC, IP and ARP fields must be the endpoint's own
20    ARP            answer ARP requests for known endpoints locally
30    L2             destination MAC in the bridge domain → port or remote host;
                     ARP/ND multicast to the bridge domain's ports and hosts only;
                     a router's MAC → 40 with the router in reg6
40    ROUTING        distributed routing: destination IP in the router's subnets →
                     router MAC as source, the endpoint's MAC, TTL - 1, its bridge
                     domain, group and port or host (then policy, as bridged)
60    POLICY         IP → conntrack (zone = routing domain); neighbour discovery passes
61    POLICY_CT      established/related pass; new: group policy (contracts as conjunctions)
62    SG_EGRESS      new, from a local port: its security groups' egress rules
63    SG_INGRESS     new, to a local port: its security groups' ingress rules; then commit
70    OUTPUT         to the port, or into the tunnel with VNI and source group
====  =============  ============================================================

Registers: reg0 source group class id, reg1 destination group class id,
reg2 bridge domain VNI, reg3 conntrack zone, reg4 output port, reg5 bit 0 =
arrived from a tunnel, reg6 router number, reg7 remote host (tunnel IPv4
destination).

A new connection passes only if every layer that applies to it allows it:
group policy when either end is in an EPG (an end without one, class 0, is
never a contract party), then the sender's security groups (on the sender's
host) and the receiver's (on the receiver's host) for endpoints they govern.
Remote groups are address sets: one clause flow per member address, shared by
every rule that names the group, so flows grow with members + rules.

Group policy is checked on both hosts of a cross-host flow: the sender knows the
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
from collections.abc import Mapping, Sequence
from functools import lru_cache

from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.flows import Flow, flow, ip_hex, port_masks
from policyfabric.agent.renderers.ovs.tables import (
    ARP,
    CLASSIFY,
    L2,
    NEW,
    OUTPUT,
    OUTSIDE,
    POLICY,
    POLICY_CT,
    PORT_SECURITY,
    ROUTING,
    SG_EGRESS,
    SG_INGRESS,
    ZONE,
    goto,
    set_field,
)
from policyfabric.agent.view import BridgeDomain, Endpoint, Network, Rule, SgRule

MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
ND_MULTICAST = "33:33:00:00:00:00/ff:ff:00:00:00:00"


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
            set_field(bd.zone, "reg3"),
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


def arp_reply(vni: int, ip: str, mac: str) -> Flow:
    """Answer "who has ``ip``" in the bridge domain with ``mac``, from the host itself."""
    return external.arp_answer(ARP, {"reg2": hex(vni)}, ip, mac)


@lru_cache(maxsize=1 << 17)
def arp_answers(ep: Endpoint, bd: BridgeDomain) -> tuple[Flow, ...]:
    """Answer "who has IP" for an endpoint of the bridge domain on the host, so ARP stays local."""
    return tuple(arp_reply(bd.vni, ip, ep.mac) for ip in ep.ips if not _is_v6(ip))


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
        if not _is_v6(ip)
    )


def routing(net: Network, tunnel_port: int | None) -> list[Flow]:
    """Distributed routing: a host with endpoints on a router's subnets answers ARP for their
    gateways with the router's MAC and routes between them itself, to local ports directly and to
    remote endpoints straight to their host (no gateway in the path)."""
    flows = [flow(ROUTING, 0, None, "drop")]
    local_bds = {e.bd for e in net.local}
    for router in sorted(net.routers.values(), key=lambda r: r.uri):
        if not router.bds & local_bds and not external.is_active_gateway(router, net):
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


def routed_bds(net: Network) -> set[str]:
    """Every bridge domain a router joins to one that has local endpoints: the agent learns their
    endpoints (registry) to route to them."""
    local_bds = {e.bd for e in net.local}
    return {
        bd
        for r in net.routers.values()
        if r.bds & local_bds or external.is_active_gateway(r, net)  # a gateway routes replies back
        for bd in r.bds
    }


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
                    set_field(bd.zone, "reg3"),
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


Clauses = dict[tuple[int, int, tuple[tuple[str, str], ...]], list[str]]


def add_conjunction(
    clauses: Clauses,
    table: int,
    priority: int,
    cid: int,
    parts: Sequence[Sequence[Mapping[str, str | int]]],
    extra: Mapping[str, str | int] | None = None,
) -> None:
    """Record the clause flows of conjunction ``cid``: a flow with the same match in several
    conjunctions is one flow with several ``conjunction`` actions (see ``clause_flows``)."""
    for i, matches in enumerate(parts, 1):
        action = f"conjunction({cid},{i}/{len(parts)})"
        for m in matches:
            pairs = {**extra, **m} if extra else m
            key = tuple((k, v if isinstance(v, str) else str(v)) for k, v in pairs.items())  # flow()'s match
            clauses[(table, priority, key)].append(action)


@lru_cache(maxsize=1 << 18)
def _clause_flow(
    table: int, priority: int, match: tuple[tuple[str, str], ...], actions: tuple[str, ...]
) -> Flow:
    """Memoised: an address set's unchanged clause flows are the same objects on every compile, which
    the applier's diff skips by identity."""
    return Flow(table, priority, match, actions)


def clause_flows(clauses: Clauses) -> list[Flow]:
    return [
        _clause_flow(table, priority, match, (acts[0],) if len(acts) == 1 else tuple(sorted(set(acts))))
        for (table, priority, match), acts in clauses.items()
    ]


def policy(net: Network) -> list[Flow]:
    """Conntrack, then group policy for new connections; what it allows goes on to the security
    groups (table 62)."""
    flows = [
        flow(POLICY, 100, {"ip": ""}, f"ct(table={POLICY_CT},zone={ZONE})"),
        flow(POLICY, 100, {"ipv6": ""}, f"ct(table={POLICY_CT},zone={ZONE})"),
        flow(POLICY, 0, None, goto(OUTPUT)),
        flow(POLICY_CT, 3000, {"ct_state": "+inv+trk"}, "drop"),
        flow(POLICY_CT, 2900, {"ct_state": "-new+est+trk"}, goto(OUTPUT)),
        flow(POLICY_CT, 2900, {"ct_state": "-new+rel+trk"}, goto(OUTPUT)),
        # neither end in an EPG: group policy does not apply, security groups alone judge
        flow(POLICY_CT, 1, {"ct_state": NEW, "reg0": "0", "reg1": "0"}, goto(SG_EGRESS)),
        # a router with an external gateway lets its subnets out (security groups may still refuse);
        # the outside may reach an endpoint without an EPG if its security groups say so
        flow(POLICY_CT, 2400, {"ct_state": NEW, "reg1": hex(OUTSIDE)}, goto(SG_EGRESS)),
        flow(POLICY_CT, 2400, {"ct_state": NEW, "reg0": hex(OUTSIDE), "reg1": "0"}, goto(SG_EGRESS)),
        flow(POLICY_CT, 0, None, "drop"),
    ]
    # IPv6 neighbour discovery (solicitations, advertisements, router solicitations) is to IPv6
    # what ARP is to IPv4; router advertisements from endpoints are not let through
    for icmp_type in (133, 135, 136):
        flows.append(flow(POLICY, 200, {"icmp6": "", "icmp_type": icmp_type}, goto(OUTPUT)))
    passed = (goto(SG_EGRESS),)
    local_groups = {e.classid for e in net.local if e.classid}
    for group in net.groups.values():
        if group.classid in local_groups:
            pair = {"ct_state": NEW, "reg0": hex(group.classid), "reg1": hex(group.classid)}
            flows.append(flow(POLICY_CT, 2500, pair, *(passed if group.intra_allow else ("drop",))))
    providers: dict[str, list[int]] = defaultdict(list)
    consumers: dict[str, list[int]] = defaultdict(list)
    for group in net.groups.values():
        for c in group.provides:
            providers[c].append(group.classid)
        for c in group.consumes:
            consumers[c].append(group.classid)
    if any(external.local_fips(net)):  # the outside, through a floating IP, consumes what EPGs provide
        for c in providers:
            consumers[c].append(OUTSIDE)
    clauses: Clauses = defaultdict(list)
    for uri, contract in sorted(net.contracts.items()):
        prov, cons = sorted(providers[uri]), sorted(consumers[uri])
        if not prov or not cons:
            continue
        for rule in contract.rules:
            variants = {"in": [(cons, prov)], "out": [(prov, cons)]}.get(
                rule.direction, [(cons, prov), (prov, cons)]
            )
            priority = rule.priority
            for n, (srcs, dsts) in enumerate(variants):
                cid = conj_id(uri, rule.key, str(n), str(rule.ethertype), str(rule.protocol), str(rule.ports))
                parts: list[Sequence[Mapping[str, str | int]]] = [
                    [{"reg0": hex(s)} for s in srcs],
                    [{"reg1": hex(d)} for d in dsts],
                    _classifier_matches(rule),
                ]
                add_conjunction(clauses, POLICY_CT, priority, cid, parts, {"ct_state": NEW})
                final = passed if rule.allow else ("drop",)
                flows.append(flow(POLICY_CT, priority, {"ct_state": NEW, "conj_id": cid}, *final))
    return flows + clause_flows(clauses)


def _remote_matches(rule: SgRule, net: Network, field: str) -> list[Mapping[str, str | int]] | None:
    """The remote side of a security group rule as clause matches on ``field`` (src or dst);
    [] when any address will do, None when nothing can match (an empty remote group)."""
    v6 = rule.ethertype == 0x86DD
    eth, key = ("ipv6", f"ipv6_{field}") if v6 else ("ip", f"nw_{field}")
    if rule.remote_prefix is not None:
        net_ = ipaddress.ip_network(rule.remote_prefix, strict=False)
        return [] if net_.prefixlen == 0 else [{eth: "", key: str(net_)}]
    if rule.remote_group is not None:
        found: list[Mapping[str, str | int]] = [
            {eth: "", key: a} for a in net.address_sets.get(rule.remote_group, ()) if _is_v6(a) == v6
        ]
        return found or None
    return []


def security_groups(net: Network) -> list[Flow]:
    """Neutron security groups of the local endpoints they govern: egress on the sender's host
    (table 62, by in_port), ingress on the receiver's (table 63, by output port); default deny
    ingress, and egress too once a group has egress rules. Table 63 commits what passed."""
    commit = (f"ct(commit,zone={ZONE})", goto(OUTPUT))
    flows = [
        flow(SG_EGRESS, 0, None, goto(SG_INGRESS)),
        flow(SG_INGRESS, 0, {"ip": ""}, *commit),
        flow(SG_INGRESS, 0, {"ipv6": ""}, *commit),
    ]
    ports_of: dict[str, list[int]] = defaultdict(list)  # security group → local ports it governs
    for ep in net.local:
        if not ep.sg_governed:
            continue
        port = ep.ofport or 0
        rules = [
            r for g in ep.security_groups if g in net.security_groups for r in net.security_groups[g].rules
        ]
        if any(r.direction == "out" for r in rules):
            flows.append(flow(SG_EGRESS, 10, {"in_port": port}, "drop"))
        flows.append(flow(SG_INGRESS, 10, {"reg4": port}, "drop"))
        for g in ep.security_groups:
            ports_of[g].append(port)
    clauses: Clauses = defaultdict(list)
    for uri, ports in sorted(ports_of.items()):
        sg = net.security_groups.get(uri)
        for rule in sg.rules if sg else ():
            egress = rule.direction == "out"
            remote = _remote_matches(rule, net, "dst" if egress else "src")
            if remote is None:
                continue
            table = SG_EGRESS if egress else SG_INGRESS
            local: list[Mapping[str, str | int]] = [
                {"in_port": p} if egress else {"reg4": p} for p in sorted(ports)
            ]
            cid = conj_id(
                "sg",
                rule.key,
                str(rule.ethertype),
                str(rule.protocol),
                str(rule.ports),
                str(rule.remote_prefix),
            )
            parts: list[Sequence[Mapping[str, str | int]]] = [local, *([remote] if remote else [])]
            parts.append(_classifier_matches(rule))
            add_conjunction(clauses, table, 100, cid, parts)
            if egress:
                flows.append(flow(SG_EGRESS, 100, {"conj_id": cid}, goto(SG_INGRESS)))
            else:  # ct(commit) needs the ethertype in the match
                eth = "ipv6" if rule.ethertype == 0x86DD else "ip"
                flows.append(flow(SG_INGRESS, 100, {eth: "", "conj_id": cid}, *commit))
    return flows + clause_flows(clauses)


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


def compile_pipeline(net: Network, tunnel_port: int | None, enforce_policy: bool = True) -> list[Flow]:
    """Every flow ``br-int`` should hold for this network view, deduplicated. With
    ``enforce_policy=False`` (another renderer, e.g. nftables, enforces policy on this host) the
    bridge forwards and checks port security only: table 60 passes everything to output."""
    rules = [*policy(net), *security_groups(net)] if enforce_policy else [flow(POLICY, 0, None, goto(OUTPUT))]
    flows = [
        *classify(net, tunnel_port),
        *endpoint_flows(net, tunnel_port),
        *flooding(net, tunnel_port),
        *routing(net, tunnel_port),
        *external.external_flows(net, tunnel_port, {e.bd for e in net.local}),
        *rules,
        *tunnel_output(tunnel_port),
    ]
    return list(dict.fromkeys(flows))  # unordered by design: the applier diffs by match
