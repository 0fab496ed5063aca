"""Sections: the incremental compiler and the sectioned planner against a from-scratch compile.

The property: for random sequences of view changes (endpoints coming, going, moving between groups
and bridge domains and security groups, rules added, security group members joining and leaving,
routers and their legs, floating IPs, the gateway moving, the tunnel port changing), a long-lived
``SectionCompiler`` gives the sections a fresh one gives, and a switch that applied each step's
sectioned plan (``Mirror.update``) holds exactly the flows, cookies included, of a from-scratch
compile; replaying a plan changes nothing; planning the same sections again is empty. The records
are the same objects across steps where nothing changed (as the agent's view keeps them), or new
and merely equal (a step may rebuild them all), or both.

Then the pieces: shared flows counted (a flow leaves when no section wants it; identical flows of
several sections carry the winning section's cookie; conjunction clauses merged), the choice
between different flows of one key, ``Sections`` equality and derivation, the cookie layout and
its reverse lookup, and the renderer's identity shortcut for an unchanged view.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs.applier import FlowApplier
from policyfabric.agent.renderers.ovs.flowmods import AddFlow, DeleteFlow, Mirror, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import (
    AGENT_COOKIE,
    COOKIE_MASK,
    COOKIE_TAG,
    Flow,
    cookie_id,
    cookie_kind,
    flow,
    is_agents,
    is_learned,
)
from policyfabric.agent.renderers.ovs.pipeline import SectionCompiler, compile_pipeline, compile_sections
from policyfabric.agent.renderers.ovs.renderer import OvsRenderer
from policyfabric.agent.renderers.ovs.sections import (
    KINDS,
    REROOT,
    SectionKey,
    Sections,
    cookie_of,
    resolve,
    section_id,
    stamp,
)
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch
from policyfabric.agent.renderers.ovs.tables import EXT_IN, NEIGHBOUR, POLICY_CT, SG_INGRESS
from policyfabric.agent.renderers.ovs.verify import check_flow
from policyfabric.agent.values import parse_ip
from policyfabric.agent.view import Endpoint, Network
from tests.fabric import (
    ICMP,
    IPV6,
    TCP,
    bridge_domain,
    contract,
    endpoint,
    external_network,
    floating_ip,
    from_tunnel,
    gateway,
    group,
    ip_packet,
    leg,
    mac,
    members,
    network,
    router,
    rule,
    security_group,
    sg_rule,
    switch,
)

# ---- a small fabric whose every part a step may change

BD1, BD2 = bridge_domain("bd1", 0x10001, 0x10000), bridge_domain("bd2", 0x10002, 0x10000)
SUBNET = {"bd1": 1, "bd2": 2}
HTTP = contract("http", rule("http.in", protocol=TCP, ports=80))
SSH = contract("ssh", rule("ssh.both", protocol=TCP, ports=22, direction="bidirectional"))
GROUPS = {
    "web": group("web", 0x4001, BD1, provides=[HTTP]),
    "app": group("app", 0x4002, BD1, consumes=[HTTP], provides=[SSH]),
    "db": group("db", 0x4003, BD2, consumes=[SSH], intra_allow=False),
}
GROUP_BD = {"web": "bd1", "app": "bd1", "db": "bd2"}
SGA_RULES = (
    sg_rule("sga.ssh", protocol=TCP, ports=22, remote_group="sga"),
    sg_rule("sga.v6", ethertype=IPV6, remote_group="sgb"),
)
SGB_RULES = (
    sg_rule("sgb.web", protocol=TCP, ports=80, remote_prefix="10.9.0.0/16"),
    sg_rule("sgb.icmp", protocol=ICMP, remote_group="sga"),
)
EXTRA_SG_RULE = sg_rule("sga.out", "out", protocol=TCP, ports=(8000, 8010))
EXTRA_RULES = (rule("http.alt", protocol=TCP, ports=8080, order=1), rule("http.udp", protocol=17, ports=53))
EXT = external_network("/ext/", "203.0.113.0/24", "203.0.113.1", ofport=50)
HOSTS = {"h1": "192.0.2.1", "h2": "192.0.2.2"}


@dataclass(frozen=True)
class Slot:
    """Where and what one endpoint is (a step changes one of these)."""

    bd: str
    group: str | None  # None: no EPG (security groups alone)
    sgs: tuple[str, ...]
    v6: bool = False


@dataclass
class Fabric:
    """The changing state a view is made of."""

    local: dict[int, Slot] = field(default_factory=dict)
    remote: dict[int, Slot] = field(default_factory=dict)
    extra_rules: int = 0  # of EXTRA_RULES, added to http
    sg_rule: bool = False  # EXTRA_SG_RULE in sga
    joined: frozenset[str] = frozenset()  # addresses in sga's set that are no endpoint's
    legs: frozenset[str] = frozenset({"bd1"})  # the router's legs (empty: no router)
    gateway: str = "h1"  # the router's active SNAT gateway host
    fips: frozenset[int] = frozenset()  # local slots with a floating IP
    tunnel: int | None = 100
    host: str = "h1"


class Records:
    """The view's records, the same objects as long as what they are made of is the same."""

    def __init__(self) -> None:
        self._memo: dict[Any, Any] = {}

    def forget(self) -> None:
        self._memo.clear()

    def _once(self, key: Any, make: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def endpoint(self, i: int, slot: Slot, local: bool) -> Endpoint:
        def make() -> Endpoint:
            n = SUBNET[slot.bd]
            ips = [f"10.{n}.0.{(10 if local else 100) + i}"] + ([f"fd00:{n}::{i + 1:x}"] if slot.v6 else [])
            where: dict[str, Any] = {"ofport": 1 + i} if local else {"vtep": HOSTS["h2"]}
            return endpoint(
                f"{'l' if local else 'r'}{i}",
                mac(i, block=1 if local else 2),
                *ips,
                bd=slot.bd,
                group=GROUPS[slot.group] if slot.group else None,
                security_groups=slot.sgs,
                **where,
            )

        return self._once(("ep", i, slot, local), make)  # type: ignore[no-any-return]

    def view(self, fabric: Fabric) -> Network:
        local = [self.endpoint(i, s, True) for i, s in sorted(fabric.local.items())]
        remote = [self.endpoint(i, s, False) for i, s in sorted(fabric.remote.items())]
        http = self._once(
            ("http", fabric.extra_rules),
            lambda: contract("http", *HTTP.rules, *EXTRA_RULES[: fabric.extra_rules]),
        )
        sga = self._once(
            ("sga", fabric.sg_rule),
            lambda: security_group("sga", *SGA_RULES, *([EXTRA_SG_RULE] if fabric.sg_rule else [])),
        )
        sgb = self._once("sgb", lambda: security_group("sgb", *SGB_RULES))
        sets = members([*local, *remote], [sga, sgb])
        sets["sga"] = tuple(sorted({*sets["sga"], *map(parse_ip, fabric.joined)}))
        routers = []
        if fabric.legs:
            gw = gateway(EXT, "203.0.113.2", active_host=fabric.gateway, active_vtep=HOSTS[fabric.gateway])
            legs = [leg({"bd1": BD1, "bd2": BD2}[b], f"10.{SUBNET[b]}.0.0/24") for b in sorted(fabric.legs)]
            routers.append(
                self._once(("router", fabric.legs, fabric.gateway), lambda: router("r1", *legs, gateway=gw))
            )
        by_slot = dict(zip(sorted(fabric.local), local, strict=True))
        fips = [
            floating_ip(f"203.0.113.{20 + i}", EXT, by_slot[i]) for i in sorted(fabric.fips) if i in by_slot
        ]
        net = network(
            local=local,
            remote=remote,
            groups=GROUPS.values(),
            contracts=[http, SSH],
            bds=[BD1, BD2],
            security_groups=[sga, sgb],
            address_sets=sets,
            routers=routers,
            external=[EXT],
            floating_ips=fips,
            host=fabric.host,
        )
        return replace(net, tunnel_port=fabric.tunnel)


def slots(bds: Iterable[str] = ("bd1", "bd2")) -> st.SearchStrategy[Slot]:
    def of_bd(bd: str) -> st.SearchStrategy[Slot]:
        groups = [None, *(g for g, b in GROUP_BD.items() if b == bd)]
        sgs = st.lists(st.sampled_from(["sga", "sgb"]), unique=True, max_size=2).map(tuple)
        return st.builds(Slot, st.just(bd), st.sampled_from(groups), sgs, st.booleans())

    return st.sampled_from(list(bds)).flatmap(of_bd)


SLOTS = range(5)
STEPS = st.one_of(
    st.tuples(st.just("local"), st.sampled_from(SLOTS), st.none() | slots()),  # add, change or remove
    st.tuples(st.just("remote"), st.sampled_from(SLOTS), st.none() | slots()),
    st.tuples(st.just("rules"), st.integers(0, len(EXTRA_RULES))),
    st.tuples(st.just("sg_rule"), st.booleans()),
    st.tuples(st.just("join"), st.sampled_from(["10.1.0.77", "10.2.0.78", "fd00:9::9"]), st.booleans()),
    st.tuples(st.just("legs"), st.sampled_from([frozenset(), frozenset({"bd1"}), frozenset({"bd1", "bd2"})])),
    st.tuples(st.just("gateway"), st.sampled_from(sorted(HOSTS))),
    st.tuples(st.just("fip"), st.sampled_from(SLOTS), st.booleans()),
    st.tuples(st.just("tunnel"), st.sampled_from([100, 101, None])),
    st.tuples(st.just("host"), st.sampled_from(sorted(HOSTS))),
    st.tuples(st.just("forget")),  # every record a new object, merely equal to the last
)


def step(fabric: Fabric, records: Records, change: tuple[Any, ...]) -> None:
    kind, *args = change
    if kind in ("local", "remote"):
        side = fabric.local if kind == "local" else fabric.remote
        if args[1] is None:
            side.pop(args[0], None)
        else:
            side[args[0]] = args[1]
    elif kind == "rules":
        fabric.extra_rules = args[0]
    elif kind == "sg_rule":
        fabric.sg_rule = args[0]
    elif kind == "join":
        fabric.joined = fabric.joined | {args[0]} if args[1] else fabric.joined - {args[0]}
    elif kind == "legs":
        fabric.legs = args[0]
    elif kind == "gateway":
        fabric.gateway = args[0]
    elif kind == "fip":
        fabric.fips = fabric.fips | {args[0]} if args[1] else fabric.fips - {args[0]}
    elif kind == "tunnel":
        fabric.tunnel = args[0]
    elif kind == "host":
        fabric.host = args[0]
    else:
        records.forget()


def labelled(flows: Iterable[Flow]) -> set[tuple[Flow, int]]:
    """Flows with their cookies, as a switch holds them."""
    return {(f, f.cookie) for f in flows}


@settings(max_examples=150, deadline=None)
@given(st.lists(STEPS, min_size=1, max_size=30), st.booleans())
def test_a_sectioned_plan_per_step_keeps_the_switch_equal_to_a_fresh_compile(
    changes: list[tuple[Any, ...]], enforce: bool
) -> None:
    fabric, records = Fabric(), Records()
    compiler, mirror = SectionCompiler(enforce), None
    sw = FakeSwitch(verify=check_flow)
    for change in [("local", 0, Slot("bd1", "web", ("sga",))), *changes]:
        step(fabric, records, change)
        net = records.view(fabric)
        sections = compiler.compile(net, net.tunnel_port)
        fresh = compile_sections(net, net.tunnel_port, enforce)
        assert dict(sections.parts) == dict(fresh.parts)  # the same sections, from either compiler
        assert sections == fresh
        if mirror is None:
            mirror = Mirror.of(sections)
            commands: list[Any] = [ReplaceFlows(tuple(mirror.flows.values()))]
        else:
            commands = mirror.update(sections)
        sw.apply(commands)
        expected = compile_pipeline(net, net.tunnel_port, enforce)
        assert labelled(sw.flows()) == labelled(expected)
        assert labelled(mirror.flows.values()) == labelled(expected)
        sw.apply(commands)  # a replayed bundle changes nothing
        assert labelled(sw.flows()) == labelled(expected)
        assert mirror.update(sections) == []  # nothing left to do
        # what a restarted agent's first sync would send: the same flows, so replace-flows
        # changes none
        assert labelled(Mirror.of(fresh).flows.values()) == labelled(mirror.flows.values())
        assert compiler.compile(net, net.tunnel_port) is sections  # the same view: the same object


def test_an_unchanged_view_compiles_to_the_same_bridge_object() -> None:
    records = Records()
    fabric = Fabric(local={0: Slot("bd1", "web", ("sga",)), 1: Slot("bd2", "db", ())}, fips=frozenset({0}))
    renderer = OvsRenderer(api.RendererContext("h1"), FlowApplier("unix:/nowhere", channel=False))
    net = records.view(fabric)
    first = renderer.compile(net)
    assert renderer.compile(replace(net)) is first  # a new Network of the same records
    records.forget()
    again = renderer.compile(records.view(fabric))  # every record new, merely equal
    assert again is first
    fabric.local[1] = Slot("bd2", "db", (), v6=True)  # an address more, on its own section only
    changed = renderer.compile(records.view(fabric))
    assert changed is not first and changed != first
    assert changed.sections.changed_since(first.sections) == {("ep", "acme/l1")}


# ---- shared flows


def section(kind: str, name: str, *flows: Flow) -> tuple[SectionKey, tuple[Flow, ...]]:
    key = (kind, name)
    return key, stamp(key, flows)


ARP_ANSWER = flow(20, 100, {"reg2": "0x10001", "arp": "", "arp_tpa": "10.1.0.5"}, "IN_PORT")
OUT = flow(70, 100, {"reg4": 3}, "output:3")


def test_a_flow_two_sections_want_stays_until_neither_does_with_the_winners_cookie() -> None:
    a, b = section("ep", "acme/a", ARP_ANSWER, OUT), section("remote", "acme/b", ARP_ANSWER)
    mirror = Mirror.of(Sections(dict([a, b])))
    # identical flows: one on the bridge, the cookie of the section that ranks last (remote > ep)
    assert mirror.flows[ARP_ANSWER.key].cookie == cookie_of(b[0])
    assert mirror.owners(ARP_ANSWER.key) == [a[0], b[0]]
    [change] = mirror.update(Sections(dict([a])))  # b goes: the flow stays, now a's
    assert change == AddFlow(ARP_ANSWER.with_cookie(cookie_of(a[0])))
    assert mirror.update(Sections(dict([a, b]))) == [AddFlow(ARP_ANSWER.with_cookie(cookie_of(b[0])))]
    assert mirror.update(Sections(dict([b]))) == [DeleteFlow(OUT.with_cookie(cookie_of(a[0])))]
    assert mirror.update(Sections({})) == [DeleteFlow(ARP_ANSWER.with_cookie(cookie_of(b[0])))]
    assert mirror.flows == {} and mirror.owners(ARP_ANSWER.key) == []


def test_conjunction_clauses_of_several_sections_are_one_flow_with_all_their_actions() -> None:
    match = {"ct_state": "+new+trk", "reg0": "0x4001"}
    http = section("contract", "http", flow(POLICY_CT, 1000, match, "conjunction(7,1/3)"))
    ssh = section("contract", "ssh", flow(POLICY_CT, 1000, match, "conjunction(9,1/3)", "conjunction(3,1/2)"))
    mirror = Mirror.of(Sections(dict([http])))
    [change] = mirror.update(Sections(dict([http, ssh])))
    assert isinstance(change, AddFlow)
    assert change.flow.actions == ("conjunction(3,1/2)", "conjunction(7,1/3)", "conjunction(9,1/3)")
    assert change.flow.cookie == cookie_of(ssh[0])  # "ssh" > "http"
    [change] = mirror.update(Sections(dict([ssh])))
    assert change == AddFlow(ssh[1][0])  # back to ssh's own


def test_a_group_party_to_two_contracts_at_one_priority_gets_both_packets_through() -> None:
    """app consumes http (tcp/80 to web) and provides ssh (tcp/22 from db), both rules at one
    priority: app's source clause is one flow that two contracts' sections want, and it must carry
    both conjunctions (a packet of each contract passes; a packet of neither does not)."""
    web1 = endpoint("web1", mac(1), "10.1.0.1", bd=BD1, group=GROUPS["web"], ofport=1)
    app1 = endpoint("app1", mac(2), "10.1.0.2", bd=BD1, group=GROUPS["app"], ofport=2)
    db1 = endpoint("db1", mac(3), "10.1.0.3", bd=BD1, group=replace(GROUPS["db"], bd="bd1"), ofport=3)
    net = network(local=[web1, app1, db1], groups=[*GROUPS.values()], contracts=[HTTP, SSH], bds=[BD1])
    sections = compile_sections(net, None)
    shared = {f.key for f in sections.get(("contract", "http"))} & {
        f.key for f in sections.get(("contract", "ssh"))
    }
    assert shared  # the premise: the two contracts' sections share clause flows
    sw = switch(net, None)
    assert sw.send(ip_packet(app1, web1, dport=80)).ports == [1]
    assert sw.send(ip_packet(db1, app1, dport=22)).ports == [2]
    assert sw.send(ip_packet(app1, db1, dport=22)).ports == [3]  # ssh is bidirectional
    assert sw.send(ip_packet(app1, web1, dport=22)).dropped


def test_a_member_of_two_remote_groups_passes_the_rules_of_both() -> None:
    """A remote endpoint in sg/one and sg/two: its address's clause flow is wanted by both address
    sets' sections and carries both rules' conjunctions."""
    one = security_group("sg/one", sg_rule("sg/one#22", protocol=TCP, ports=22, remote_group="sg/one"))
    two = security_group("sg/two", sg_rule("sg/two#80", protocol=TCP, ports=80, remote_group="sg/two"))
    here = endpoint("here", mac(1), "10.1.0.1", bd=BD1, ofport=1, security_groups=[one, two])
    there = endpoint("there", mac(2), "10.1.0.2", bd=BD1, vtep="192.0.2.2", security_groups=[one, two])
    net = network(local=[here], remote=[there], bds=[BD1], security_groups=[one, two])
    sections = compile_sections(net, 100)
    assert {f.key for f in sections.get(("addrset", "sg/one", "10.1.0.2"))} == {
        f.key for f in sections.get(("addrset", "sg/two", "10.1.0.2"))
    }
    sw = switch(net)
    for port in (22, 80):
        assert sw.send(from_tunnel(ip_packet(there, here, dport=port), 0x10001, 0)).ports == [1]
    assert sw.send(from_tunnel(ip_packet(there, here, dport=443), 0x10001, 0)).dropped


def test_different_flows_with_one_key_resolve_the_same_whatever_the_order() -> None:
    """Two endpoints claiming one address (not valid input): the section that ranks last wins,
    as the flow compiled last did before sections; never a mix, never order-dependent."""
    mine = section("ep", "acme/a", ARP_ANSWER)
    theirs = section("ep", "acme/b", replace(ARP_ANSWER, actions=("drop",)))
    router_leg = section("router", "r1", replace(ARP_ANSWER, actions=("output:9",)))
    for parts in ([mine, theirs, router_leg], [router_leg, theirs, mine], [theirs, mine]):
        got = resolve({k: s[0] for k, s in parts})
        winner = max((k for k, _ in parts), key=lambda k: (KINDS[k[0]], k))
        assert got == dict(parts)[winner][0]
    assert Mirror.of(Sections(dict([mine, theirs]))).flows == Mirror.of(Sections(dict([theirs, mine]))).flows


def test_a_flat_list_of_flows_is_one_section_and_the_last_of_a_key_wins() -> None:
    later = replace(OUT, actions=("drop",))
    assert list(Sections.of([OUT, ARP_ANSWER, later])) == [later, ARP_ANSWER]


# ---- Sections


def test_sections_derived_from_one_root_compare_in_their_changes_only() -> None:
    a, b = section("ep", "acme/a", OUT), section("ep", "acme/b", ARP_ANSWER)
    root = Sections(dict([a]))
    one = root.derive(dict([b]))
    two = one.derive({a[0]: ()})
    assert one.base is root and two.base is root and set(two.changed) == {a[0], b[0]}
    assert dict(two.parts) == dict([b]) and two.get(a[0]) == () and two.get(b[0]) == b[1]
    assert one.changed_since(two) == {a[0], b[0]} and root.changed_since(one) == {b[0]}
    assert one != two and one == root.derive(dict([b])) and root == one.derive({b[0]: ()})
    assert Sections(dict([a, b])) == one  # no common root: compared in full
    many = root.derive({("ep", f"acme/x{i}"): b[1] for i in range(REROOT + 1)})
    assert many.base is None and len(dict(many.parts)) == REROOT + 2  # a new root, no chain


# ---- cookies


def test_a_cookie_carries_the_tag_the_origin_the_kind_and_the_sections_id() -> None:
    key = ("contract", "/PolicyUniverse/PolicySpace/acme/GbpContract/http/")
    cookie = cookie_of(key)
    assert cookie & COOKIE_MASK == COOKIE_TAG == 0x5046 << 48
    assert cookie_kind(cookie) == KINDS["contract"] and cookie_id(cookie) == section_id(key) < 1 << 40
    assert is_agents(cookie) and not is_learned(cookie)
    learned = cookie_of(key, learned=True)
    assert learned != cookie and is_learned(learned) and not is_agents(learned)
    assert cookie_id(learned) == cookie_id(cookie) and cookie_kind(learned) == cookie_kind(cookie)
    assert not is_agents(0) and not is_learned(0) and is_agents(AGENT_COOKIE)
    kinds = {cookie_kind(cookie_of((kind, "x"))) for kind in KINDS}
    assert len(kinds) == len(KINDS)  # each kind its own nibble


def test_section_ids_are_the_same_in_every_process() -> None:
    """Cookies must survive a restart (replace-flows with nothing changed touches nothing), so the
    id is a hash of the key's text, not Python's per-process hash."""
    key = ("ep", "acme/web1")
    code = f"from policyfabric.agent.renderers.ovs.sections import cookie_of; print(cookie_of({key!r}))"
    seen = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
        seen.add(
            int(
                subprocess.run(
                    [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
                ).stdout
            )
        )
    assert seen == {cookie_of(key)}


def test_every_compiled_flow_carries_its_sections_cookie_and_the_applier_names_the_section() -> None:
    fabric = Fabric(
        local={0: Slot("bd1", "web", ("sga",))}, remote={1: Slot("bd1", "app", ("sga",))}, fips=frozenset({0})
    )
    net = Records().view(fabric)
    sections = compile_sections(net, net.tunnel_port)
    for key, flows in sections.parts.items():
        assert {f.cookie for f in flows} == {cookie_of(key)}
    applier = FlowApplier("unix:/nowhere", run=lambda argv, **_: "", channel=False)  # ovs-ofctl: done
    applier.sync(sections)
    assert applier.installed is not None
    kinds = set()
    for f in applier.installed.values():
        [key] = applier.section_of(f.cookie)  # the section the flow came from
        assert f.key in {g.key for g in sections.parts[key]}
        kinds.add(key[0])
    assert {
        "ep",
        "remote",
        "bd",
        "router",
        "extnet",
        "fip",
        "group",
        "contract",
        "sg",
        "addrset",
        "base",
    } <= kinds
    assert applier.section_of(0x1234) == []
    # what the external port's learn action adds: tagged apart, and named by the same section
    [learning] = [f for f in applier.installed.values() if f.table == EXT_IN and "learn(" in f.actions[0]]
    learned_cookie = int(learning.actions[0].split("cookie=")[1].split(",")[0], 16)
    assert is_learned(learned_cookie) and applier.section_of(learned_cookie) == [("extnet", EXT.uri)]
    assert f"learn(table={NEIGHBOUR}" in learning.actions[0]


def test_the_security_group_flows_of_a_port_are_in_its_endpoints_section() -> None:
    """A port joining a security group costs its own section: its clauses are there, the rules'
    own flows in the group's section, the members' in the address set's."""
    fabric = Fabric(local={0: Slot("bd1", "web", ("sga",)), 1: Slot("bd1", "app", ("sga",))})
    records = Records()
    compiler = SectionCompiler()
    net = records.view(fabric)
    before = compiler.compile(net, net.tunnel_port)
    fabric.local[2] = Slot("bd1", "web", ("sga",))
    net = records.view(fabric)
    after = compiler.compile(net, net.tunnel_port)
    assert after.changed_since(before) == {
        ("ep", "acme/l2"),
        ("bd", "bd1"),  # its port floods ARP
        ("addrset", "sga", "10.1.0.12"),  # its address in sga's set
    }
    port_clause = [f for f in after.get(("ep", "acme/l2")) if f.table == SG_INGRESS and f.priority == 100]
    assert port_clause and all(a.startswith("conjunction(") for f in port_clause for a in f.actions)


def test_a_security_group_named_by_no_active_rule_has_no_member_sections() -> None:
    fabric = Fabric(local={0: Slot("bd1", "web", ("sgb",))}, joined=frozenset({"10.1.0.77"}))
    net = Records().view(fabric)
    keys = set(compile_sections(net, net.tunnel_port).parts)
    assert ("addrset", "sga", "10.1.0.77") in keys  # sgb's icmp rule names sga
    fabric.local[0] = Slot("bd1", "web", ())
    net = Records().view(fabric)
    assert not any(k[0] in ("addrset", "sg") for k in compile_sections(net, net.tunnel_port).parts)


@pytest.mark.parametrize("enforce", [True, False])
def test_compile_pipeline_is_the_sections_resolved(enforce: bool) -> None:
    fabric = Fabric(
        local={0: Slot("bd1", "web", ("sga",)), 1: Slot("bd2", "db", ("sgb",))},
        remote={2: Slot("bd1", "app", ())},
    )
    net = Records().view(fabric)
    flows = compile_pipeline(net, net.tunnel_port, enforce)
    assert len({f.key for f in flows}) == len(flows)
    sections = compile_sections(net, net.tunnel_port, enforce)
    assert labelled(flows) == labelled(sections) == labelled(Mirror.of(sections).flows.values())
    assert enforce == any(isinstance(k, tuple) and k[0] == "sg" for k in sections.parts)
