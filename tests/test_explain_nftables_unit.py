"""The nftables walk on a table the kernel gave back: tests/data/nft/ruleset.json is
``nft -j list table inet policyfabric`` of ruleset.nft (the renderer's shapes: the verdict map,
an endpoint's chain with its jumps, group and security-group layers, named and anonymous sets,
prefixes, port ranges), so what is evaluated is the kernel's own rendering of the rules, not ours.
Each case is the first packet of a connection into or out of endpoint 1 (10.0.0.1 on qbr1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policyfabric.agent.renderers.nftables.explain import Packet, Table, Unevaluable, evaluate

DOC = json.loads((Path(__file__).parent / "data" / "nft" / "ruleset.json").read_text())


def table() -> Table:
    return Table.from_json(DOC)


@pytest.mark.parametrize(
    ("packet", "verdict", "chain", "index"),
    [
        # into 10.0.0.1 from 10.0.0.2, a member of its own group g5: intra-group drop comes first
        (Packet("qbr1", False, "10.0.0.2", "10.0.0.1", 6, dport=80), "drop", "ep1_in_g", 0),
        # from 10.0.0.3 (not in g5): no group rule returns → the group chain's default drop
        (Packet("qbr1", False, "10.0.0.3", "10.0.0.1", 6, dport=22), "drop", "ep1_in_g", 7),
        # from 10.0.0.1 itself (egress): both layers return → ep1_out's accept
        (Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 17, dport=53), "accept", "ep1_out", 2),
        # neither the endpoint's source nor its destination: port security
        (Packet("qbr1", False, "10.0.0.5", "10.0.0.6", 1, icmp_type=8), "drop", "ep1", 5),
        # another bridge: not in the verdict map → the base chain's policy
        (Packet("qbr9", False, "10.0.0.5", "10.0.0.6", 6, dport=80), "accept", "forward", -1),
        # IPv6 to an endpoint with no IPv6 address: its chain's last rule (``ip daddr`` never matches)
        (Packet("qbr1", True, "fd00::2", "fd00::1", 58, icmp_type=128), "drop", "ep1", 5),
    ],
)
def test_the_walk_finds_the_rule_the_kernel_would_apply(
    packet: Packet, verdict: str, chain: str, index: int
) -> None:
    found = evaluate(table(), packet)
    assert (found.verdict, found.chain, found.index) == (verdict, chain, index)
    assert index == -1 or found.path[-1] == (chain, index)


def test_returns_continue_in_the_calling_chain() -> None:
    found = evaluate(table(), Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80))
    assert found.path == (("forward", 0), ("ep1", 3), ("ep1_out", 0), ("ep1_out_g", 0), ("ep1_out", 1),
                          ("ep1_out_sg", 0), ("ep1_out", 2))  # fmt: skip


def test_a_table_read_object_by_object_gives_the_same_verdict_listing_only_what_it_walks() -> None:
    whole = table()

    def load(kind: str, name: str) -> dict[str, object]:
        items = [i for i in DOC["nftables"] if kind in i and i[kind]["name"] == name]
        if kind == "chain":
            items += [i for i in DOC["nftables"] if "rule" in i and i["rule"]["chain"] == name]
        return {"nftables": items}

    lazy = Table(load)
    packet = Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80)
    assert evaluate(lazy, packet) == evaluate(whole, packet)
    assert lazy.loads == 6 and set(lazy.chains) == {"forward", "ep1", "ep1_out", "ep1_out_g", "ep1_out_sg"}


def test_an_expression_it_does_not_know_stops_the_walk() -> None:
    doc = json.loads(json.dumps(DOC))
    for item in doc["nftables"]:
        if "rule" in item and item["rule"]["chain"] == "ep1" and item["rule"]["handle"] == 21:
            item["rule"]["expr"][0]["match"]["left"] = {"meta": {"key": "mark"}}
    with pytest.raises(Unevaluable, match="mark"):
        evaluate(Table.from_json(doc), Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80))
