"""Conjunctive matches, shared by group policy and security groups: a rule is one clause flow
per value of each dimension (sources, destinations, classifier), not their cross product."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, Flow, port_masks
from policyfabric.agent.view import Rule


def classifier_matches(rule: Rule) -> list[dict[str, str | int]]:
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
    of: int | None = None,
) -> None:
    """Record the clause flows of conjunction ``cid``: a flow with the same match in several
    conjunctions is one flow with several ``conjunction`` actions (see ``clause_flows``). ``parts``
    are its first dimensions, of ``of`` (default: all of them; the others are recorded elsewhere,
    in another section)."""
    for i, matches in enumerate(parts, 1):
        action = f"conjunction({cid},{i}/{of or len(parts)})"
        for m in matches:
            pairs = {**extra, **m} if extra else m
            key = tuple((k, v if isinstance(v, str) else str(v)) for k, v in pairs.items())  # flow()'s match
            clauses[(table, priority, key)].append(action)


def clause_flows(clauses: Clauses, cookie: int = AGENT_COOKIE) -> list[Flow]:
    """The clause flows recorded, one per match: several conjunctions' actions sorted together."""
    return [
        Flow(table, priority, match, (acts[0],) if len(acts) == 1 else tuple(sorted(set(acts))), cookie)
        for (table, priority, match), acts in clauses.items()
    ]
