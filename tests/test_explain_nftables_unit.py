"""The nftables walk on a table the kernel gave back: tests/data/nft/ruleset.json is
``nft -j list table inet policyfabric`` of ruleset.nft (the renderer's shapes: the verdict map,
an endpoint's chain with its jumps, group and security-group layers, named and anonymous sets,
prefixes, port ranges), so what is evaluated is the kernel's own rendering of the rules, not ours.
Each case is the first packet of a connection into or out of endpoint 1 (10.0.0.1 on qbr1); the
section after walks the ruleset the renderer itself writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policyfabric.agent.renderers.nftables.explain import Packet, Table, Unevaluable, evaluate

DOC = json.loads((Path(__file__).parent / "data" / "nft" / "ruleset.json").read_text())
OWN, PEER = "02:00:00:00:00:01", "02:00:00:00:00:02"  # endpoint 1's MAC (its port), another's


def table() -> Table:
    return Table.from_json(DOC)


@pytest.mark.parametrize(
    ("packet", "verdict", "chain", "index"),
    [
        # into 10.0.0.1 from 10.0.0.2, a member of its own group g5: intra-group drop comes first
        (Packet("qbr1", False, "10.0.0.2", "10.0.0.1", 6, dport=80, ether_src=PEER), "drop", "ep1_in_g", 0),
        # from 10.0.0.3 (not in g5): no group rule returns → the group chain's default drop
        (Packet("qbr1", False, "10.0.0.3", "10.0.0.1", 6, dport=22, ether_src=PEER), "drop", "ep1_in_g", 7),
        # from its port, 10.0.0.1 itself (egress): both layers return → ep1_out's accept
        (Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 17, dport=53, ether_src=OWN), "accept", "ep1_out", 4),
        # from its port, not from its address: port security
        (Packet("qbr1", False, "10.0.0.5", "10.0.0.6", 1, icmp_type=8, ether_src=OWN), "drop", "ep1_out", 0),
        # from br-int, not to its address
        (Packet("qbr1", False, "10.0.0.5", "10.0.0.6", 1, icmp_type=8, ether_src=PEER), "drop", "ep1", 5),
        # from br-int *from* its address (what a prefix pair may cover): still the way in
        (Packet("qbr1", False, "10.0.0.1", "10.0.0.1", 6, dport=22, ether_src=PEER), "drop", "ep1_in_g", 0),
        # another bridge: not in the verdict map → the base chain's policy
        (Packet("qbr9", False, "10.0.0.5", "10.0.0.6", 6, dport=80), "accept", "forward", -1),
        # IPv6 to an endpoint with no IPv6 address: its chain's last rule (``ip daddr`` never matches)
        (Packet("qbr1", True, "fd00::2", "fd00::1", 58, icmp_type=128, ether_src=PEER), "drop", "ep1", 5),
        # from its port, IPv6 (it has no IPv6 address): port security, ``ip saddr !=`` aside
        (Packet("qbr1", True, "fd00::1", "fd00::2", 58, icmp_type=128, ether_src=OWN), "drop", "ep1_out", 1),
    ],
)
def test_the_walk_finds_the_rule_the_kernel_would_apply(
    packet: Packet, verdict: str, chain: str, index: int
) -> None:
    found = evaluate(table(), packet)
    assert (found.verdict, found.chain, found.index) == (verdict, chain, index)
    assert index == -1 or found.path[-1] == (chain, index)


def test_returns_continue_in_the_calling_chain() -> None:
    found = evaluate(table(), Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80, ether_src=OWN))
    assert found.path == (("forward", 0), ("ep1", 3), ("ep1_out", 2), ("ep1_out_g", 0), ("ep1_out", 3),
                          ("ep1_out_sg", 0), ("ep1_out", 4))  # fmt: skip


def test_a_table_read_object_by_object_gives_the_same_verdict_listing_only_what_it_walks() -> None:
    whole = table()

    def load(kind: str, name: str) -> dict[str, object]:
        items = [i for i in DOC["nftables"] if kind in i and i[kind]["name"] == name]
        if kind == "chain":
            items += [i for i in DOC["nftables"] if "rule" in i and i["rule"]["chain"] == name]
        return {"nftables": items}

    lazy = Table(load)
    packet = Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80, ether_src=OWN)
    assert evaluate(lazy, packet) == evaluate(whole, packet)
    assert lazy.loads == 6 and set(lazy.chains) == {"forward", "ep1", "ep1_out", "ep1_out_g", "ep1_out_sg"}


def test_an_expression_it_does_not_know_stops_the_walk() -> None:
    doc = json.loads(json.dumps(DOC))
    for item in doc["nftables"]:
        if "rule" in item and item["rule"]["chain"] == "ep1" and item["rule"]["handle"] == 21:
            item["rule"]["expr"][0]["match"]["left"] = {"meta": {"key": "mark"}}
    with pytest.raises(Unevaluable, match="mark"):
        evaluate(Table.from_json(doc), Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80))


def test_a_packet_whose_port_is_not_known_is_not_guessed() -> None:
    """Without the Ethernet source the way through the endpoint's bridge is unknown: no verdict."""
    with pytest.raises(Unevaluable, match="Ethernet source"):
        evaluate(table(), Packet("qbr1", False, "10.0.0.1", "10.9.9.9", 6, dport=80))


# ---- on what the renderer writes ----------------------------------------------------------------
# The cases above walk a hand-written table; these walk ``compile_ruleset``'s, installed by the
# real ``nft`` (in a network namespace of its own) and listed back: every statement the renderer
# writes (the port's Ethernet source, DHCP's source ports, a logging rule's ``limit``) must be
# evaluable, and every rule on a path named by the compiler's labels, never by position.


def _generated() -> tuple[Table, object, object]:
    from dataclasses import replace

    from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset
    from policyfabric.agent.values import parse_ip, parse_ipv4, parse_prefix
    from policyfabric.agent.view import DhcpSubnet, Ipv6Subnet
    from tests import fabric
    from tests.test_addrpairs_unit import hybrid, installed
    from tests.test_pipeline_unit import BD
    from tests.test_secgroups_unit import vm

    served = replace(
        BD,
        dhcp=(DhcpSubnet(parse_prefix("10.0.0.0/24"), parse_ipv4("10.0.0.254")),),
        ipv6=(Ipv6Subnet(parse_prefix("fd00::/64"), parse_ip("fd00::fe"), STATEFUL, STATEFUL),),
    )
    logged = replace(fabric.sg_rule("sg/web#0", protocol=fabric.TCP, ports=80), log=True)
    v6 = fabric.sg_rule("sg/web#1", protocol=fabric.TCP, ports=80, ethertype=0x86DD)
    web = fabric.security_group("sg/web", logged, v6)
    a = replace(vm("a", 1, "sg/web", ofport=11), ips=(parse_ip("10.0.0.1"), parse_ip("fd00::1")))
    b = replace(vm("b", 2, "sg/web", ofport=12), ips=(parse_ip("10.0.0.2"), parse_ip("fd00::2")))
    net = fabric.network(local=hybrid(a, b), bds=[served], security_groups=(web,))
    return installed(net), net, compile_ruleset(net)


A_MAC, B_MAC = "02:00:00:00:01:01", "02:00:00:00:01:02"
STATEFUL = "dhcpv6-stateful"


@pytest.mark.parametrize(
    ("packet", "verdict", "chain"),
    [
        # from a's port, IPv6: its own address passes port security (``ip saddr`` never meets it)
        (
            Packet("qbr11", True, "fd00::1", "fd00::2", 6, dport=80, sport=40000, ether_src=A_MAC),
            "accept",
            "ep11_out",
        ),
        # to a, tcp/80: the logging rule's ``limit`` and ``log`` decide nothing, the rule after does
        (
            Packet("qbr11", False, "10.0.0.2", "10.0.0.1", 6, dport=80, sport=40000, ether_src=B_MAC),
            "accept",
            "ep11_in",
        ),
        (
            Packet("qbr11", False, "10.0.0.2", "10.0.0.1", 6, dport=81, sport=40000, ether_src=B_MAC),
            "drop",
            "ep11_in_sg",
        ),
        # DHCP: a's request from its port (no address yet) to the broadcast; the answer toward it
        (
            Packet("qbr11", False, "0.0.0.0", "255.255.255.255", 17, dport=67, sport=68, ether_src=A_MAC),
            "accept",
            "ep11_out",
        ),
        (
            Packet("qbr11", False, "10.0.0.254", "10.0.0.1", 17, dport=68, sport=67, ether_src=B_MAC),
            "accept",
            "ep11",
        ),
        (
            Packet("qbr11", True, "fe80::1", "ff02::1:2", 17, dport=547, sport=546, ether_src=A_MAC),
            "accept",
            "ep11_out",
        ),
        # the client's port toward a (not from the responder): policy, which admits tcp/80 only
        (
            Packet("qbr11", False, "10.0.0.2", "10.0.0.1", 17, dport=67, sport=68, ether_src=B_MAC),
            "drop",
            "ep11_in_sg",
        ),
        # from a's port to b's UDP/67 (not a server address): port security passes, then policy
        (
            Packet("qbr11", False, "0.0.0.0", "10.0.0.2", 17, dport=67, sport=68, ether_src=A_MAC),
            "drop",
            "ep11_out",
        ),
    ],
)
def test_the_walk_evaluates_the_ruleset_the_renderer_writes(packet: Packet, verdict: str, chain: str) -> None:
    from policyfabric.agent.renderers.nftables.explain import label

    table, net, applied = _generated()
    found = evaluate(table, packet)
    assert (found.verdict, found.chain) == (verdict, chain)
    names = [label(c, i, net, applied) for c, i in found.path]  # type: ignore[arg-type]
    assert all(not n.startswith("rule ") for n in names), names
