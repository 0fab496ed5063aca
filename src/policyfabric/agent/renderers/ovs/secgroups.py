"""Neutron security groups (tables 62 and 63) of the local endpoints they govern; remote groups
are address sets (one clause flow per member address, shared by every rule naming the group).

A security group of local ports is a section (its rules, its ports' clauses), and so is each
remote group's address set (its members' clause flows): a member joining changes only the
latter, by the new address's flows (``pipeline.py``)."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from policyfabric.agent.renderers.ovs.conjunctions import (
    Clauses,
    add_conjunction,
    classifier_matches,
    clause_flows,
    conj_id,
)
from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, flow
from policyfabric.agent.renderers.ovs.logflows import (
    DEFAULT_DENY_IN,
    DEFAULT_DENY_OUT,
    RULE,
    log_action,
    rule_id,
)
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


def port_flow(port: int, cookie: int = AGENT_COOKIE, log: bool = False) -> Flow:
    """A port security groups govern: default deny ingress (its endpoint's section has it); with
    ``log`` (one of its groups logs: ``logs``) the drop sends the agent a copy first."""
    return flow(SG_INGRESS, 10, {"reg4": port}, *_deny(DEFAULT_DENY_IN, port, log), cookie=cookie)


def logs(sgs: Sequence[tuple[SecurityGroup, Families]], direction: str = "in") -> bool:
    """Whether a port of these security groups logs its default deny in ``direction`` (in:
    ingress, out: egress): one of them logs a rule of that direction, as the nftables ruleset
    decides it (``nftables/ruleset.sg_rules``), so both renderers log the same drops."""
    return any(r.log and r.direction == direction for sg, _ in sgs for r in sg.rules)


def _deny(kind: int, port: int, log: bool) -> tuple[str, ...]:
    return (log_action(kind, False, port),) if log else ("drop",)


def _logged(rule: SgRule, actions: tuple[str, ...]) -> tuple[str, ...]:
    """A rule's pass, with the copy to the agent first when it logs."""
    return (log_action(RULE, True, rule_id(rule.key)), *actions) if rule.log else actions


def _family(rule: SgRule, field: str) -> tuple[str, str]:
    """(ethertype keyword, address field) of the remote side of ``rule`` on ``field`` (src or dst)."""
    return ("ipv6", f"ipv6_{field}") if rule.ethertype == 0x86DD else ("ip", f"nw_{field}")


def sg_conj_id(rule: SgRule) -> int:
    """The conjunction id of a security-group rule's flows: the one place it is made, so the
    explain catalogs (``agent/trace_rpc.catalog_of`` from the view, ``agent/explain.catalog``
    from the intent) name a rule by exactly the id its flows carry, ICMP type and code included."""
    return sg_conj_id_of(
        rule.key, str(rule.ethertype), str(rule.protocol), str(rule.ports), str(rule.remote_prefix),
        rule.icmp_type, rule.icmp_code,
    )  # fmt: skip


def sg_conj_id_of(
    key: str,
    ethertype: str,
    protocol: str,
    ports: str,
    prefix: str,
    icmp_type: int | None,
    icmp_code: int | None,
) -> int:
    """``sg_conj_id`` from the rule's parts as ``str()`` prints them (for a catalog read from the
    intent, which has no ``SgRule``)."""
    return conj_id("sg", key, ethertype, protocol, ports, prefix, *icmp_key(icmp_type, icmp_code))


def icmp_key(icmp_type: int | None, icmp_code: int | None) -> tuple[str, ...]:
    """What a rule's ICMP type and code add to its conjunction id (nothing when unset, so the ids
    of every other rule stay what they were; ``agent/explain.py`` names rules by the same id)."""
    return () if icmp_type is None else (f"icmp{icmp_type}/{icmp_code}",)


def sg_classifier_matches(rule: SgRule) -> list[dict[str, str | int]]:
    """The classifier's matches, narrowed to the rule's ICMP type and code when it has them (OVS
    spells both ICMP and ICMPv6's ``icmp_type``/``icmp_code``)."""
    matches = classifier_matches(rule)
    if rule.icmp_type is None or rule.protocol not in (1, 58):
        return matches
    extra: dict[str, str | int] = {"icmp_type": rule.icmp_type}
    if rule.icmp_code is not None:
        extra["icmp_code"] = rule.icmp_code
    return [{**m, **extra} for m in matches]


def remote_groups(sg: SecurityGroup) -> list[str]:
    """The remote groups ``sg``'s rules name (those with no remote prefix: a prefix wins), sorted."""
    return sorted(
        {r.remote_group for r in sg.rules if r.remote_group is not None and r.remote_prefix is None}
    )


Families = tuple[tuple[str, bool, bool], ...]  # (remote group, has IPv4 members, has IPv6 members)


@dataclass(frozen=True)
class Shape:
    """How a rule is matched: a conjunction ``cid`` of ``clauses`` dimensions in ``table``: the
    local ports (1), the remote side if it has one (a prefix: 2, here; a remote group's members:
    2, in the address set's section), the classifier (last)."""

    table: int
    egress: bool
    eth: str  # the ethertype keyword (ip or ipv6)
    field: str  # the remote address field (nw_src, ipv6_dst...)
    cid: int
    clauses: int
    prefix: Mapping[str, str | int] | None  # a remote prefix's clause match


def shape(rule: SgRule, families: Families) -> Shape | None:
    """``rule``'s conjunction; None when it can match nothing (a remote group with no member of its
    family: ``families`` says which groups have members of which)."""
    egress = rule.direction == "out"
    eth, field = _family(rule, "dst" if egress else "src")
    prefix: Mapping[str, str | int] | None = None
    if rule.remote_prefix is not None:
        net_ = ipaddress.ip_network(rule.remote_prefix, strict=False)
        prefix = None if net_.prefixlen == 0 else {eth: "", field: str(net_)}
        clauses = 3 if prefix else 2
    elif rule.remote_group is not None:
        members = next(((v4, v6) for g, v4, v6 in families if g == rule.remote_group), (False, False))
        if not members[eth == "ipv6"]:
            return None  # an empty remote group: nothing can match
        clauses = 3
    else:
        clauses = 2
    return Shape(SG_EGRESS if egress else SG_INGRESS, egress, eth, field, sg_conj_id(rule), clauses, prefix)


def port_flows(
    port: int, sgs: Sequence[tuple[SecurityGroup, Families]], cookie: int = AGENT_COOKIE
) -> list[Flow]:
    """A local port's part of its security groups (``sgs``, each with its remote groups' families):
    egress default deny once any of them has egress rules, and the port's clause of every rule
    (egress by in_port on the sender's host, table 62; ingress by output port on the receiver's,
    table 63). The endpoint's section has them, so a port joining costs its own flows."""
    egress_drop, clauses = port_template(tuple(sgs))
    deny = _deny(DEFAULT_DENY_OUT, port, logs(sgs, "out"))
    flows = [flow(SG_EGRESS, 10, {"in_port": port}, *deny, cookie=cookie)] if egress_drop else []
    value = str(port)
    return flows + [Flow(table, 100, ((field, value),), actions, cookie) for table, field, actions in clauses]


@lru_cache(maxsize=1 << 12)
def port_template(
    sgs: tuple[tuple[SecurityGroup, Families], ...],
) -> tuple[bool, tuple[tuple[int, str, tuple[str, ...]], ...]]:
    """What any port of security groups ``sgs`` gets: whether egress is default deny, and its clause
    flows (table, the port's field, conjunction actions); the same for every port of the groups."""
    egress = any(r.direction == "out" for sg, _ in sgs for r in sg.rules)
    clauses: Clauses = defaultdict(list)
    for sg, families in sgs:
        for rule in sg.rules:
            s = shape(rule, families)
            if s is not None:
                add_conjunction(
                    clauses, s.table, 100, s.cid, [[{"in_port" if s.egress else "reg4": ""}]], of=s.clauses
                )
    return egress, tuple((f.table, f.match[0][0], f.actions) for f in clause_flows(clauses))


def sg_flows(sg: SecurityGroup, families: Families) -> list[Flow]:
    """A security group with local ports: each rule is a conjunction of the ports (their
    endpoints' sections: ``port_flows``), the remote side (a prefix here; a remote group's members
    in its address set's section: ``member_flows``) and the classifier, decided by its own flow;
    what ingress rules pass is committed to conntrack."""
    flows = []
    clauses: Clauses = defaultdict(list)
    for rule in sg.rules:
        s = shape(rule, families)
        if s is None:
            continue
        parts: list[Sequence[Mapping[str, str | int]]] = [[]]  # 1: the ports, in their sections
        if s.clauses == 3:
            parts.append([s.prefix] if s.prefix is not None else [])  # 2: the remote side
        parts.append(sg_classifier_matches(rule))
        add_conjunction(clauses, s.table, 100, s.cid, parts)
        if s.egress:
            flows.append(flow(SG_EGRESS, 100, {"conj_id": s.cid}, *_logged(rule, (goto(SG_INGRESS),))))
        else:  # ct(commit) needs the ethertype in the match
            flows.append(flow(SG_INGRESS, 100, {s.eth: "", "conj_id": s.cid}, *_logged(rule, COMMIT)))
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
            acts[eth == "ipv6", table, eth, key].add(f"conjunction({sg_conj_id(rule)},2/3)")
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
