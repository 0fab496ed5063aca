"""Group policy (tables 60 and 61): conntrack, then contracts between endpoint groups for new
connections, as conjunctions; what passes goes on to the security groups (table 62)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.conjunctions import (
    Clauses,
    add_conjunction,
    classifier_matches,
    clause_flows,
    conj_id,
)
from policyfabric.agent.renderers.ovs.flows import Flow, flow
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
from policyfabric.agent.view import Network


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
                    classifier_matches(rule),
                ]
                add_conjunction(clauses, POLICY_CT, priority, cid, parts, {"ct_state": NEW})
                final = passed if rule.allow else ("drop",)
                flows.append(flow(POLICY_CT, priority, {"ct_state": NEW, "conj_id": cid}, *final))
    return flows + clause_flows(clauses)
