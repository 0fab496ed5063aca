"""Neutron security groups (tables 62 and 63) of the local endpoints they govern; remote groups
are address sets (one clause flow per member address, shared by every rule naming the group)."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Mapping, Sequence

from policyfabric.agent.renderers.ovs.conjunctions import (
    Clauses,
    add_conjunction,
    classifier_matches,
    clause_flows,
    conj_id,
)
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.switching import is_v6
from policyfabric.agent.renderers.ovs.tables import (
    OUTPUT,
    SG_EGRESS,
    SG_INGRESS,
    ZONE,
    goto,
)
from policyfabric.agent.view import Network, SgRule


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
            {eth: "", key: a} for a in net.address_sets.get(rule.remote_group, ()) if is_v6(a) == v6
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
        # to the tunnel or an ungoverned port; priority 1, as 0 is the miss's (only IP comes here)
        flow(SG_INGRESS, 1, {"ip": ""}, *commit),
        flow(SG_INGRESS, 1, {"ipv6": ""}, *commit),
        flow(SG_INGRESS, 0, None, "drop"),
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
            parts.append(classifier_matches(rule))
            add_conjunction(clauses, table, 100, cid, parts)
            if egress:
                flows.append(flow(SG_EGRESS, 100, {"conj_id": cid}, goto(SG_INGRESS)))
            else:  # ct(commit) needs the ethertype in the match
                eth = "ipv6" if rule.ethertype == 0x86DD else "ip"
                flows.append(flow(SG_INGRESS, 100, {eth: "", "conj_id": cid}, *commit))
    return flows + clause_flows(clauses)
