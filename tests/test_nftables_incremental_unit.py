"""The nftables renderer's compile by part and its deltas, without a kernel.

The compiler keeps what it made from the last views; these check that the memo never shows in the
result (a warm compiler and a fresh one agree on every view of random change sequences, also when
every record is replaced by an equal new one), that unchanged parts are the same objects, and that
a change's delta is the size of the change: a member joining is one element, an endpoint coming is
its own chains and one element of each map, whatever else the host holds.
(tests/test_nftables_incremental_dataplane.py applies the deltas to a kernel.)
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from policyfabric.agent.renderers.nftables.compiler import RulesetCompiler, changed
from policyfabric.agent.renderers.nftables.delta import changes
from policyfabric.agent.renderers.nftables.ruleset import TABLE, address_set, compile_ruleset
from policyfabric.agent.values import parse_ip, parse_mac
from policyfabric.agent.view import Endpoint, IpAddress, Network, SecurityGroup, SgRule
from tests.nft_views import Fabric

SG = "/PolicyUniverse/PolicySpace/t/GbpSecGroup/sg/"
BD = "/PolicyUniverse/PolicySpace/t/GbpBridgeDomain/bd/"
RULES = (
    SgRule(f"{SG}#0", 0, True, "in", 0x0800, 6, (22, 22), remote_group=SG),
    SgRule(f"{SG}#1", 1, True, "in", 0x0800, 1, None, remote_group=SG),
)


def member(i: int, local: bool) -> Endpoint:
    ip = parse_ip(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    mac = parse_mac(f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}")
    where: dict[str, object] = {"ofport": i, "interface": f"qvo{i}"} if local else {"vtep": "192.0.2.2"}
    return Endpoint(f"t/ep{i}", mac, (ip,), BD, 0, security_groups=(SG,), **where)  # type: ignore[arg-type]


def group_of(n: int, local: int) -> Network:
    """``n`` members of one security group, ``local`` of them on this host (bench/secgroups.py's)."""
    eps = [member(i, i <= local) for i in range(1, n + 1)]
    return Network(
        local=tuple(e for e in eps if e.ofport),
        remote=tuple(e for e in eps if not e.ofport),
        security_groups={SG: SecurityGroup(SG, RULES)},
        address_sets={SG: tuple(e.ips[0] for e in eps)},
    )


def joined(net: Network, i: int) -> Network:
    new = member(i, local=False)
    return replace(net, remote=(*net.remote, new), address_sets={SG: (*net.address_sets[SG], new.ips[0])})


def set_name() -> str:
    return f"{address_set(SG)}_4"


def members(net: Network, name: str) -> set[str]:
    """A set's elements read straight from the view, the compiler's counting aside."""
    base, family = name.rsplit("_", 1)
    if base.startswith("sg"):
        found = [a for uri, addrs in net.address_sets.items() if address_set(uri) == base for a in addrs]
    else:
        eps = (*net.local, *net.remote)
        found = [a for e in eps if e.classid and (base == "gall" or base == f"g{e.classid}") for a in e.ips]
    return {a for a in found if (":" in a) == (family == "6")}


@pytest.mark.parametrize("seed", range(40))
def test_a_warm_compiler_agrees_with_a_fresh_one_on_every_view(seed: int) -> None:
    fabric = Fabric.random(seed)
    warm = RulesetCompiler()
    for _ in range(40):
        net = fabric.network()
        got, fresh = warm(net), compile_ruleset(net)
        assert got == fresh
        assert got.text() == fresh.text()
        assert {name: set(e) for name, e in got.sets.items()} == {n: members(net, n) for n in got.sets}
        fabric.change()


def test_the_changes_cover_what_the_fabric_does() -> None:
    """The random sequences do reach the parts they are meant to test (not an empty exercise)."""
    seen: set[str] = set()
    kinds: set[str] = set()
    for seed in range(40):
        fabric = Fabric.random(seed)
        for _ in range(40):
            ruleset = compile_ruleset(fabric.network())
            for name, elements in ruleset.sets.items():
                kind = "every" if name.startswith("gall") else "sg" if name.startswith("sg") else "group"
                seen.add(f"{kind} {'empty' if not elements else 'v6' if name.endswith('_6') else 'v4'}")
            rules = [r for c in ruleset.chain_map.values() for r in c.rules]
            seen |= {"peer" for r in rules if "@g" in r and r.endswith(" return") and " dport " in r}
            kinds.add(fabric.change())
    kinds_of_set = {f"{k} {e}" for k in ("every", "sg", "group") for e in ("empty", "v4", "v6")}
    assert kinds_of_set | {"peer"} <= seen
    assert len(kinds) == 12


def test_unchanged_parts_are_the_same_objects() -> None:
    compiler = RulesetCompiler()
    net = group_of(300, 20)
    before = compiler(net)
    after = compiler(joined(net, 301))
    assert after.chain_map is before.chain_map and after.bridges is before.bridges
    assert [n for n in after.sets if after.sets[n] is not before.sets[n]] == [set_name()]
    # a view whose records are all new but equal: an equal ruleset, and nothing to send
    copied = Network(
        local=tuple(replace(e) for e in net.local),
        remote=tuple(replace(e) for e in net.remote),
        security_groups={SG: SecurityGroup(SG, tuple(replace(r) for r in RULES))},
        address_sets={SG: tuple(IpAddress(a.encode().decode()) for a in net.address_sets[SG])},
    )
    assert copied.address_sets[SG][0] is not net.address_sets[SG][0]
    again = compiler(copied)
    assert again == before and changes(before, again).text == ""


@pytest.mark.parametrize("n", [100, 3000])
def test_a_member_joining_or_leaving_is_one_element(n: int) -> None:
    compiler = RulesetCompiler()
    net = group_of(n, 20)
    before = compiler(net)
    after = compiler(joined(net, n + 1))
    new = f"10.{(n + 1) >> 16 & 255}.{(n + 1) >> 8 & 255}.{(n + 1) & 255}"
    join = changes(before, after)
    assert join.text == f"add element inet {TABLE} {set_name()} {{ {new} }}\n"
    assert (join.added, join.removed, join.chains, join.elements_only) == (1, 0, 0, True)
    leave = changes(after, compiler(net))
    assert leave.text == f"delete element inet {TABLE} {set_name()} {{ {new} }}\n"
    assert (leave.added, leave.removed) == (0, 1)


@pytest.mark.parametrize("local", [10, 200])
def test_an_endpoint_coming_writes_its_own_chains_and_one_element_of_each_map(local: int) -> None:
    """What it touches, whatever the number of other endpoints on the host."""
    compiler = RulesetCompiler()
    net = group_of(500, local)
    before = compiler(net)
    new = replace(member(1000, local=True), ofport=1000, interface="qvo1000")
    came = replace(net, local=(*net.local, new), address_sets={SG: (*net.address_sets[SG], new.ips[0])})
    delta = changes(before, compiler(came))
    lines = delta.text.splitlines()
    chains = {line.split()[-1] for line in lines if line.startswith("add chain")}
    assert chains == {f"ep1000{s}" for s in ("", "_in", "_out", "_in_g", "_in_sg", "_out_g", "_out_sg")}
    assert not any(line.startswith("flush chain") for line in lines)  # no other chain written again
    assert f'add element inet {TABLE} ports {{ "qbr1000" : jump ep1000 }}' in lines
    assert f'add element inet {TABLE} zones {{ "qbr1000" : 1000 }}' in lines
    assert f"add element inet {TABLE} {set_name()} {{ 10.0.3.232 }}" in lines
    assert delta.chains == 7 and not delta.elements_only
    gone = changes(compiler(came), compiler(net)).text.splitlines()
    assert f'delete element inet {TABLE} ports {{ "qbr1000" }}' in gone
    in_order = sorted(chains, key=lambda c: (c != "ep1000", c))  # as the chains were listed
    assert gone[-7:] == [f"delete chain inet {TABLE} {c}" for c in in_order]


def test_a_rule_change_writes_again_the_chains_that_use_it_and_no_other() -> None:
    compiler = RulesetCompiler()
    other = "/PolicyUniverse/PolicySpace/t/GbpSecGroup/other/"
    net = group_of(50, 6)
    sgs = {SG: SecurityGroup(SG, RULES), other: SecurityGroup(other, RULES[1:])}
    moved = tuple(replace(e, security_groups=(other,)) if e.ofport and e.ofport > 3 else e for e in net.local)
    net = replace(net, local=moved, security_groups=sgs)
    before = compiler(net)
    http = SgRule(f"{SG}#2", 2, True, "in", 0x0800, 6, (80, 80))
    after = compiler(replace(net, security_groups={**sgs, SG: SecurityGroup(SG, (*RULES, http))}))
    delta = changes(before, after)
    flushed = [line.split()[-1] for line in delta.text.splitlines() if line.startswith("flush chain")]
    assert flushed == ["ep1_in_sg", "ep2_in_sg", "ep3_in_sg"]  # the endpoints in the group, ingress
    assert "tcp dport 80 return" in delta.text and delta.chains == 3


def test_endpoints_sharing_a_bridge_or_port_keep_the_first() -> None:
    """Two local endpoints on one bridge cannot both have it: the first by key does (the map has
    one element per bridge), and the ruleset stays one the kernel takes."""
    a, b = member(1, local=True), replace(member(2, local=True), interface="qvo1")
    c = replace(member(3, local=True), ofport=1, interface="qvo3")
    ruleset = compile_ruleset(Network(local=(b, c, a), security_groups={SG: SecurityGroup(SG, RULES)}))
    assert dict(ruleset.bridges) == {"qbr1": 1}
    assert "endpoint t/ep1 (qbr1)" in ruleset.chains


def test_changed_cuts_the_same_head_and_tail() -> None:
    a, b, c, d = (object() for _ in range(4))
    assert changed((a, b, c), (a, b, c)) == ((), ())
    assert changed((a, b), (a, b, c)) == ((), (c,))
    assert changed((a, b, c), (a, c)) == ((b,), ())
    assert changed((a, b, c), (a, d, c)) == ((b,), (d,))
    assert changed((a, a), (a, a, a)) == ((), (a,))  # the head and tail never overlap
    assert changed((), (a,)) == ((), (a,))
