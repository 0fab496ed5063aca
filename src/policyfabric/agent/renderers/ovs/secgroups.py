"""Neutron security groups (tables 62 and 63) of the local endpoints they govern; remote groups
are address sets (one clause flow per member address, shared by every rule naming the group).

A security group of local ports is a section (its rules, its ports' clauses), and so is each
remote group's address set (its members' clause flows): a member joining changes only the
latter, by the new address's flows (``pipeline.py``)."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

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
from policyfabric.agent.view import SecurityGroup, SgRule

COMMIT = (f"ct(commit,zone={ZONE})", goto(OUTPUT))


def base_flows() -> list[Flow]:
    """Egress to ingress, ingress commits what passed (to the tunnel or an ungoverned port:
    priority 1, as 0 is the miss's, and only IP comes here)."""
    return [
        flow(SG_EGRESS, 0, None, goto(SG_INGRESS)),
        flow(SG_INGRESS, 1, {"ip": ""}, *COMMIT),
        flow(SG_INGRESS, 1, {"ipv6": ""}, *COMMIT),
        flow(SG_INGRESS, 0, None, "drop"),
    ]


def port_flow(port: int) -> Flow:
    """A port security groups govern: default deny ingress (its endpoint's section has it)."""
    return flow(SG_INGRESS, 10, {"reg4": port}, "drop")


def _family(rule: SgRule, field: str) -> tuple[str, str]:
    """(ethertype keyword, address field) of the remote side of ``rule`` on ``field`` (src or dst)."""
    return ("ipv6", f"ipv6_{field}") if rule.ethertype == 0x86DD else ("ip", f"nw_{field}")


def _cid(rule: SgRule) -> int:
    return conj_id(
        "sg", rule.key, str(rule.ethertype), str(rule.protocol), str(rule.ports), str(rule.remote_prefix)
    )


Families = tuple[tuple[str, bool, bool], ...]  # (remote group, has IPv4 members, has IPv6 members)


def sg_flows(sg: SecurityGroup, ports: Sequence[int], families: Families) -> list[Flow]:
    """A security group of local ``ports`` (sorted): egress on the sender's host (table 62, by
    in_port), ingress on the receiver's (table 63, by output port); egress default deny too once
    it has egress rules. Each rule is a conjunction of the ports, the remote side and the
    classifier; a remote group's member clauses are its address set's section (``member_flows``),
    and a rule whose remote group has no member of its family matches nothing (``families``)."""
    flows = []
    if any(r.direction == "out" for r in sg.rules):
        flows += [flow(SG_EGRESS, 10, {"in_port": p}, "drop") for p in ports]
    members = {g: (v4, v6) for g, v4, v6 in families}
    clauses: Clauses = defaultdict(list)
    for rule in sg.rules:
        egress = rule.direction == "out"
        eth, key = _family(rule, "dst" if egress else "src")
        remote: list[Mapping[str, str | int]] = []
        if rule.remote_prefix is not None:
            net_ = ipaddress.ip_network(rule.remote_prefix, strict=False)
            remote = [] if net_.prefixlen == 0 else [{eth: "", key: str(net_)}]
        elif (
            rule.remote_group is not None
            and not members.get(rule.remote_group, (False, False))[eth == "ipv6"]
        ):
            continue  # an empty remote group: nothing can match
        table = SG_EGRESS if egress else SG_INGRESS
        local: list[Mapping[str, str | int]] = [{"in_port": p} if egress else {"reg4": p} for p in ports]
        cid = _cid(rule)
        parts: list[Sequence[Mapping[str, str | int]]] = [local, *([remote] if remote else [])]
        if rule.remote_group is not None and rule.remote_prefix is None:
            parts.append([])  # the member clauses (2 of 3): the address set's section has them
        parts.append(classifier_matches(rule))
        add_conjunction(clauses, table, 100, cid, parts)
        if egress:
            flows.append(flow(SG_EGRESS, 100, {"conj_id": cid}, goto(SG_INGRESS)))
        else:  # ct(commit) needs the ethertype in the match
            flows.append(flow(SG_INGRESS, 100, {eth: "", "conj_id": cid}, *COMMIT))
    return flows + clause_flows(clauses)


Entry = tuple[int, str, str, tuple[str, ...]]  # table, ethertype keyword, address field, actions
Signature = tuple[tuple[Entry, ...], tuple[Entry, ...]]  # the entries for IPv4 members, for IPv6 ones


def member_signature(group: str, sgs: Iterable[SecurityGroup]) -> Signature:
    """What each member address of remote group ``group`` gets in the security groups ``sgs`` (those
    of local ports): per family, the clause flows (table, match field) and their conjunction actions."""
    acts: dict[tuple[bool, int, str, str], set[str]] = defaultdict(set)
    for sg in sgs:
        for rule in sg.rules:
            if rule.remote_group != group or rule.remote_prefix is not None:
                continue
            egress = rule.direction == "out"
            eth, key = _family(rule, "dst" if egress else "src")
            table = SG_EGRESS if egress else SG_INGRESS
            acts[eth == "ipv6", table, eth, key].add(f"conjunction({_cid(rule)},2/3)")
    entries: tuple[list[Entry], list[Entry]] = ([], [])
    for (v6, table, eth, key), actions in sorted(acts.items()):
        entries[v6].append((table, eth, key, tuple(sorted(actions))))
    return tuple(entries[0]), tuple(entries[1])


def member_flows(address: str, signature: Signature, cookie: int) -> tuple[Flow, ...]:
    """The clause flows of one member address of a remote group (``member_signature``), with the
    address set's ``cookie``."""
    return tuple(
        Flow(table, 100, ((eth, ""), (key, address)), actions, cookie)
        for table, eth, key, actions in signature[is_v6(address)]
    )
