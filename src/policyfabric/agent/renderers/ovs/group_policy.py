"""Group policy (tables 60 and 61): conntrack, then contracts between endpoint groups for new
connections, as conjunctions; what passes goes on to the security groups (table 62). Each
contract is a section of its own (``pipeline.py``): its clause flows are merged with other
contracts' where they share a match (``sections.resolve``)."""

from __future__ import annotations

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
from policyfabric.agent.renderers.ovs.logflows import RULE, log_action, rule_id
from policyfabric.agent.renderers.ovs.tables import (
    NEW,
    OUTPUT,
    OUTSIDE,
    POLICY,
    POLICY_CT,
    SG_EGRESS,
    ZONE,
    goto,
)
from policyfabric.agent.view import Contract, Group, Rule


def base_flows() -> list[Flow]:
    """Conntrack, then group policy for new connections: the fixed part (what it allows goes on to
    the security groups, table 62)."""
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
    return flows


PASSED = (goto(SG_EGRESS),)


def group_flow(group: Group) -> Flow:
    """A group with local endpoints: new connections within it pass or not (``intra_allow``)."""
    pair = {"ct_state": NEW, "reg0": hex(group.classid), "reg1": hex(group.classid)}
    return flow(POLICY_CT, 2500, pair, *(PASSED if group.intra_allow else ("drop",)))


def parties(
    groups: Iterable[Group], outside: bool
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Each contract's providers and consumers (class ids, sorted); with ``outside`` (this host has
    a floating IP), the outside consumes what EPGs provide."""
    providers: dict[str, list[int]] = defaultdict(list)
    consumers: dict[str, list[int]] = defaultdict(list)
    for group in groups:
        for c in group.provides:
            providers[c].append(group.classid)
        for c in group.consumes:
            consumers[c].append(group.classid)
    if outside:
        for c in providers:
            consumers[c].append(OUTSIDE)
    return (
        {c: tuple(sorted(v)) for c, v in providers.items()},
        {c: tuple(sorted(v)) for c, v in consumers.items()},
    )


def contract_flows(contract: Contract, providers: Sequence[int], consumers: Sequence[int]) -> list[Flow]:
    """A contract's rules between the groups that provide and consume it: a conjunction per rule
    and direction (sources, destinations, classifier), decided by its own flow."""
    if not providers or not consumers:
        return []
    uri, prov, cons = contract.uri, list(providers), list(consumers)
    flows = []
    clauses: Clauses = defaultdict(list)
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
                classifier_matches(rule),
            ]
            add_conjunction(clauses, POLICY_CT, priority, cid, parts, {"ct_state": NEW})
            flows.append(flow(POLICY_CT, priority, {"ct_state": NEW, "conj_id": cid}, *verdict(uri, rule)))
    return flows + clause_flows(clauses)


def verdict(uri: str, rule: Rule) -> tuple[str, ...]:
    """A contract rule's decision: on to the security groups, or drop; a rule that logs first
    sends the agent a copy naming it (``logflows.py``; only new connections get here)."""
    final = PASSED if rule.allow else ()
    if rule.log:
        return (log_action(RULE, rule.allow, rule_id(uri, rule.key)), *final)
    return final or ("drop",)
