"""The table map (``tables.py``) against the compiler, the checker (``verify.py``) and the docs.

Rich fabrics, compiled for each kind of host, must keep to the declared tables; the declarations
must allow what the compiler does and no more (so the map documents the pipeline, not a wish);
and each of the checker's rules is shown to refuse a hand-made flow that breaks it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from policyfabric.agent.renderers.ovs import tables, verify
from policyfabric.agent.renderers.ovs.flows import Flow, flow
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.tables import (
    ARP,
    CLASSIFY,
    EXT_IN,
    L2,
    NAT_OUT,
    NEIGHBOUR,
    NEXTHOP,
    OUTPUT,
    POLICY,
    POLICY_CT,
    PORT_SECURITY,
    ROUTING,
    SG_EGRESS,
    SG_INGRESS,
    TABLES,
    goto,
    set_field,
)
from policyfabric.agent.renderers.ovs.verify import TableMapError, check_flow, check_pipeline
from policyfabric.agent.view import DhcpSubnet, Ipv4Address, Network, Prefix
from tests.fabric import (
    ICMP,
    ICMP6,
    IPV4,
    IPV6,
    TCP,
    TUNNEL,
    UDP,
    as_remote,
    bridge_domain,
    contract,
    endpoint,
    external_network,
    floating_ip,
    gateway,
    group,
    leg,
    mac,
    network,
    router,
    rule,
    security_group,
    sg_rule,
)

DOC = Path(__file__).parents[1] / "docs" / "openflow.md"

# --- rich fabrics: every feature the compiler has, from each kind of host ---

WEB_BD = replace(  # its IPv4 subnet answered by DHCP on each host
    bridge_domain("bd-web", vni=0x10001, vrf=0x10000),
    mtu=1442,
    dhcp=(DhcpSubnet(Prefix("10.1.0.0/24"), Ipv4Address("10.1.0.1")),),
)
APP_BD = bridge_domain("bd-app", vni=0x10002, vrf=0x10000)
HTTP = contract(
    "http",
    rule("http.in", protocol=TCP, ports=80),  # IPv4 and IPv6
    rule("http.alt", protocol=TCP, ports=(8000, 8099), ethertype=IPV4, order=1),
    rule("http.no-telnet", protocol=TCP, ports=23, allow=False),
)
OPS = contract(
    "ops",
    rule("ops.snmp", protocol=UDP, ports=(161, 162), direction="out", ethertype=IPV4),
    rule("ops.ping", protocol=ICMP, direction="bidirectional"),
    rule("ops.ping6", protocol=ICMP6, direction="bidirectional", ethertype=IPV6),
    rule("ops.syslog", protocol=UDP, ports=514),  # IPv4 and IPv6
    rule("ops.gre", protocol=47, direction="bidirectional", ethertype=IPV4),
    rule("ops.any", direction="in"),
)
WEB = group("web", 0x4001, WEB_BD, provides=[HTTP, OPS])
APP = group("app", 0x4002, APP_BD, intra_allow=False, consumes=[HTTP, OPS])
SSH = security_group(
    "sg/ssh",
    sg_rule("sg/ssh#0", protocol=TCP, ports=22, remote_group="sg/ssh"),
    sg_rule("sg/ssh#1", protocol=TCP, ports=22, ethertype=IPV6, remote_prefix="2001:db8:1::/64"),
    sg_rule("sg/ssh#2", protocol=ICMP, remote_prefix="10.1.0.0/30"),
    sg_rule("sg/ssh#3", protocol=UDP, ports=(5000, 5099), remote_prefix="0.0.0.0/0"),
    sg_rule("sg/ssh#4", remote_group="sg/empty"),  # no members: left out
    sg_rule("sg/ssh#5", protocol=ICMP6, ethertype=IPV6),
    sg_rule("sg/ssh#6", protocol=UDP, ports=53, ethertype=IPV6),
    sg_rule("sg/ssh#7", protocol=47),
    replace(sg_rule("sg/ssh#8", protocol=ICMP6, ethertype=IPV6), icmp_type=128, icmp_code=0),
)
EGRESS = security_group(
    "sg/egress",
    sg_rule("sg/egress#0", "out", protocol=TCP, ports=443, remote_prefix="198.51.100.0/24"),
    sg_rule("sg/egress#1", "out", protocol=TCP, ports=22, remote_group=SSH),
    sg_rule("sg/egress#2", "out", protocol=ICMP6, ethertype=IPV6, remote_group=SSH),
    sg_rule("sg/egress#3", "out", ethertype=IPV6),
    sg_rule("sg/egress#4", "out", protocol=ICMP),
    sg_rule("sg/egress#5", "out", protocol=UDP, ports=(53, 54)),
    sg_rule("sg/egress#6", "out", protocol=TCP, ports=80, ethertype=IPV6),
    sg_rule("sg/egress#7", "out", protocol=UDP, ports=123, ethertype=IPV6),
    sg_rule("sg/egress#8", "out", protocol=47),
    replace(sg_rule("sg/egress#9", "out", protocol=ICMP), icmp_type=8, icmp_code=0),  # type and code
)
EMPTY = security_group("sg/empty")
PUBLIC = external_network("/ext/public/", "203.0.113.0/24", ofport=9)
R1 = router(
    "r1",
    leg(WEB_BD, "10.1.0.0/24"),
    leg(APP_BD, "10.2.0.0/24"),
    leg(APP_BD, "2001:db8:2::/64"),  # IPv6 legs are not routed (yet): no flows
    gateway=gateway(PUBLIC, "203.0.113.2", active_host="gw1", active_vtep="192.0.2.3"),
)

# on h1 (192.0.2.1): web1 (IPv4 and IPv6, a floating IP, security groups), web3 (no EPG), app1
WEB1 = endpoint(
    "web1", mac(1, 1), "10.1.0.10", "2001:db8:1::10", bd=WEB_BD, group=WEB, ofport=1, security_groups=[SSH]
)
WEB3 = replace(  # allowed address pairs: an address at its own MAC, an IPv6 prefix at another
    endpoint("web3", mac(3, 1), "10.1.0.12", bd=WEB_BD, ofport=3, security_groups=[SSH, EGRESS]),
    allowed_pairs=((Prefix("10.1.0.200/32"), mac(3, 1)), (Prefix("2001:db8:1::/64"), mac(9, 9))),
)
APP1 = endpoint("app1", mac(1, 2), "10.2.0.20", bd=APP_BD, group=APP, ofport=2)
# on h2 (192.0.2.2): web2, app2
WEB2 = endpoint("web2", mac(2, 1), "10.1.0.11", bd=WEB_BD, group=WEB, ofport=4, security_groups=[SSH])
APP2 = endpoint("app2", mac(2, 2), "10.2.0.21", "2001:db8:2::21", bd=APP_BD, group=APP, ofport=5)
ON = {WEB1: "192.0.2.1", WEB3: "192.0.2.1", APP1: "192.0.2.1", WEB2: "192.0.2.2", APP2: "192.0.2.2"}


def host(name: str, *local: str, external: bool = True) -> Network:
    """Host ``name`` of the fabric with the endpoints named ``local`` on its ports, the rest remote."""
    eps = {e.key.partition("/")[2]: e for e in ON}
    here = [eps[n] for n in local]
    there = [as_remote(e, vtep) for e, vtep in ON.items() if e not in here]
    return network(
        local=here,
        remote=there,
        groups=[WEB, APP],
        contracts=[HTTP, OPS],
        bds=[WEB_BD, APP_BD],
        security_groups=[SSH, EGRESS, EMPTY],
        routers=[R1],
        external=[PUBLIC] if external else [],
        floating_ips=[floating_ip("203.0.113.10", PUBLIC, WEB1)],
        host=name,
    )


HOSTS = {
    "floating ip host": host("h1", "web1", "web3", "app1"),
    "compute host to the gateway": host("h2", "web2", "app2", external=False),
    "active gateway, no endpoints": host("gw1"),
    "active gateway with endpoints": host("gw1", "web2", "app2"),
    "switching only": network(local=[APP1], groups=[APP], bds=[APP_BD]),
}


def every_pipeline() -> list[tuple[str, list[Flow]]]:
    """Each host's pipeline with and without a tunnel, enforcing policy or leaving it to nftables."""
    return [
        (
            f"{name}, tunnel {tunnel}, {'policy' if enforce else 'nftables mode'}",
            compile_pipeline(net, tunnel, enforce),
        )
        for name, net in HOSTS.items()
        for tunnel in (TUNNEL, None)
        for enforce in (True, False)
    ]


PIPELINES = every_pipeline()


@pytest.mark.parametrize(("name", "flows"), PIPELINES, ids=[n for n, _ in PIPELINES])
def test_every_flow_the_compiler_emits_keeps_to_the_table_map(name: str, flows: list[Flow]) -> None:
    check_pipeline(flows)


def test_the_fabrics_exercise_every_feature() -> None:
    """Otherwise the test above would prove less than it says."""
    flows = [f for _, fs in PIPELINES for f in fs]
    actions = {a.partition("(")[0].partition(":")[0] for f in flows for a in f.actions}
    assert {"conjunction", "ct", "learn", "resubmit", "dec_ttl", "move", "IN_PORT"} <= actions
    assert any("nat(dst=" in a for f in flows for a in f.actions)
    assert any(k == "ipv6_dst" for f in flows for k, _ in f.match)  # an IPv6 egress rule
    assert any(k == "ipv6_src" and v.endswith("/64") for f in flows for k, v in f.match)  # a v6 prefix
    assert {f.table for f in flows} == {t.number for t in TABLES}


def test_declarations_allow_what_the_compiler_does_and_no_more() -> None:
    """Union over the rich fabrics of what each table's flows match, write and go to: exactly the
    declarations. A field declared but never used is a stale line of the map."""
    used = verify.footprint(f for _, fs in PIPELINES for f in fs)
    stale = []
    for t in TABLES:
        u = used[t.number]
        for what, declared, seen in (
            ("matches", set(t.matches), u.matches),
            ("sets", set(t.sets), u.writes),
            ("goes to", set(t.goes_to), u.goes_to),
            ("outputs", {t.output}, {u.outputs}),
        ):
            if declared != seen:
                stale.append(f"{t.name} {what}: unused {declared - seen}, undeclared {seen - declared}")
    assert not stale


# --- the declarations themselves ---


def test_each_constant_is_its_tables_number_and_tables_go_forward() -> None:
    assert [t.number for t in TABLES] == sorted({t.number for t in TABLES})
    assert len({t.name for t in TABLES}) == len(TABLES)
    for t in TABLES:
        assert getattr(tables, t.name) == t.number
        # only the tables whose flows look a rewritten packet up again go to themselves
        assert all(n > t.number or n == t.number in (ARP, NEIGHBOUR) for n in t.goes_to), t.name
        assert t.miss is None or t.miss in t.goes_to, t.name
        assert all(n in tables.BY_NUMBER for n in (*t.goes_to, *t.learns)), t.name


def test_every_declared_field_is_known_and_every_register_has_a_role() -> None:
    roles = {r.name for r in tables.REGISTERS}
    for t in TABLES:
        assert t.matches | t.sets <= verify.FIELDS.keys(), t.name
        assert {f for f in t.matches | t.sets if f.startswith("reg")} <= roles, t.name


def test_every_table_is_reachable_from_classify() -> None:
    seen, todo = set(), [CLASSIFY]
    while todo:
        t = tables.BY_NUMBER[todo.pop()]
        if t.number not in seen:
            seen.add(t.number)
            todo += [*t.goes_to, *t.learns]
    assert seen == set(tables.BY_NUMBER)


# --- the checker refuses what breaks a rule, naming table, flow and culprit ---

IP = {"ip": ""}
BAD_FLOWS = {
    "undeclared table": (flow(50, 10, None, "drop"), "table 50 is not declared"),
    "priority": (flow(L2, 0x10000, None, "drop"), "not a 16-bit number"),
    "match undeclared": (flow(L2, 10, {**IP, "nw_src": "10.0.0.1"}, "drop"), "matches nw_src, which the"),
    "match unknown": (
        flow(L2, 10, {"vlan_tci": "1"}, "drop"),
        "vlan_tci, a field the table map does not know",
    ),
    "match prerequisite": (flow(PORT_SECURITY, 10, {"nw_src": "10.0.0.1"}, "drop"), "nw_src without"),
    "port needs a protocol": (flow(POLICY_CT, 10, {**IP, "tp_dst": 80}, "drop"), "tp_dst without"),
    "set undeclared": (flow(PORT_SECURITY, 10, None, set_field(1, "reg7"), goto(ARP)), "writes reg7"),
    "move undeclared": (flow(OUTPUT, 10, None, "move:NXM_NX_REG0[]->NXM_NX_REG1[]", "drop"), "writes reg1"),
    "set prerequisite": (flow(ARP, 10, None, set_field(2, "arp_op")), "writes arp_op without"),
    "read prerequisite": (
        flow(ARP, 10, None, "move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[]", "IN_PORT"),
        "reads arp_spa without",
    ),
    "goto back": (flow(POLICY, 10, None, goto(L2)), "goto_table to table 30 is not forward"),
    "goto itself": (flow(L2, 10, None, goto(L2)), "goto_table to table 30 is not forward"),
    "goto undeclared next": (flow(L2, 10, None, goto(OUTPUT)), "not among its next tables"),
    "goto undeclared table": (flow(L2, 10, None, goto(99)), "table 99, which the table map does not declare"),
    "goto not last": (flow(L2, 10, None, goto(POLICY), "output:1"), "is not the last action"),
    "drop not alone": (flow(L2, 10, None, "output:1", "drop"), "drop is not the only action"),
    "ct without ip": (flow(POLICY, 10, None, f"ct(table={POLICY_CT},zone=1)"), "without ip or ipv6"),
    "ct back": (flow(NAT_OUT, 10, IP, f"ct(commit,zone=1,table={POLICY})"), "ct to table 60 is not forward"),
    "nat undeclared": (
        flow(NAT_OUT, 10, IP, f"ct(commit,zone=1,nat(dst=10.0.0.1),table={NEXTHOP})"),
        "nw_dst",
    ),
    "resubmit back": (
        flow(NEIGHBOUR, 10, None, f"resubmit(,{NEXTHOP})"),
        "resubmit to table 72 is neither forward nor",
    ),
    "resubmit undeclared": (flow(NEXTHOP, 10, None, f"resubmit(,{NEXTHOP})"), "not among its next tables"),
    "output": (flow(POLICY_CT, 10, None, "output:1"), "output:1 outputs, which the table does not do"),
    "conjunction": (flow(L2, 10, None, "conjunction(7,1/2)"), "does not match conj_id"),
    "conjunction mixed": (flow(POLICY_CT, 10, None, "conjunction(7,1/2)", "drop"), "beside other actions"),
    "dec_ttl undeclared": (flow(POLICY, 10, IP, "dec_ttl", goto(OUTPUT)), "writes nw_ttl, which the"),
    "dec_ttl without ip": (flow(ROUTING, 10, None, "dec_ttl", goto(POLICY)), "dec_ttl without ip"),
    "learn undeclared": (
        flow(CLASSIFY, 10, None, f"learn(table={NEIGHBOUR},NXM_NX_REG4[]=1)"),
        "learns into",
    ),
    "learned match": (flow(EXT_IN, 10, None, f"learn(table={NEIGHBOUR},NXM_NX_REG0[]=1)"), "matching reg0"),
    "learned load": (
        flow(EXT_IN, 10, None, f"learn(table={NEIGHBOUR},load:NXM_OF_IN_PORT[]->NXM_NX_REG1[])"),
        "setting reg1",
    ),
    "load": (flow(L2, 10, None, "load:0x1->NXM_NX_REG1[]"), "use set_field"),
    "unknown action": (flow(L2, 10, None, "controller"), "action 'controller' is unknown to the checker"),
}


@pytest.mark.parametrize(("bad", "says"), BAD_FLOWS.values(), ids=BAD_FLOWS.keys())
def test_the_checker_refuses_a_flow_that_breaks_a_rule(bad: Flow, says: str) -> None:
    with pytest.raises(TableMapError) as refused:
        check_flow(bad)
    message = str(refused.value)
    assert says in message
    name = tables.BY_NUMBER[bad.table].name if bad.table in tables.BY_NUMBER else "undeclared"
    assert message.startswith(f"table {bad.table} ({name}): ") and bad.match_text() in message
    assert isinstance(refused.value, ValueError)  # what a fake switch may catch


def test_good_flows_pass_prerequisites_spelled_either_way_and_a_learned_flow() -> None:
    check_flow(flow(POLICY_CT, 10, {**IP, "nw_proto": TCP, "tp_dst": 80}, goto(SG_EGRESS)))
    check_flow(flow(SG_INGRESS, 10, {"tcp6": "", "tp_dst": 22}, "conjunction(7,1/2)"))
    check_flow(
        flow(
            NEIGHBOUR,
            100,
            {"reg4": 9, "reg9": "0xcb007101"},
            set_field("02:00:00:00:00:01", "eth_dst"),
            "output:NXM_OF_IN_PORT[]",
        )
    )  # a learned flow


def test_the_pipeline_needs_a_miss_in_every_table_it_uses_and_only_there() -> None:
    flows = compile_pipeline(HOSTS["switching only"], TUNNEL)
    check_pipeline(flows)
    without = [f for f in flows if (f.table, f.priority, f.match) != (ARP, 0, ())]
    with pytest.raises(
        TableMapError, match=r"table 20 \(ARP\) has no miss flow \(priority 0, no match, goto"
    ):
        check_pipeline(without)
    with pytest.raises(
        TableMapError, match="its miss flow does drop, where the table declares goto_table:30"
    ):
        check_pipeline([*without, flow(ARP, 0, None, "drop")])
    with pytest.raises(
        TableMapError, match="priority 0 is the miss flow's alone, not table=30,priority=0,arp"
    ):
        check_pipeline([*flows, flow(L2, 0, {"arp": ""}, "drop")])
    # a table the pipeline does not use needs no miss: here the policy tables after POLICY's
    check_pipeline(compile_pipeline(HOSTS["switching only"], TUNNEL, enforce_policy=False))
    # every problem at once
    with pytest.raises(TableMapError, match=r"^2 problem\(s\)"):
        check_pipeline([*without, flow(L2, 10, {"vlan_tci": "1"}, "drop")])


# --- docs/openflow.md holds the generated map ---


def test_the_doc_holds_the_table_map_as_generated() -> None:
    doc = DOC.read_text()
    assert tables.replace_section(doc) == doc, (
        "docs/openflow.md's table map differs from tables.py: regenerate it with "
        f"`{tables.COMMAND} --write docs/openflow.md`"
    )


def test_the_command_prints_the_map_and_rewrites_a_doc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert tables.main([]) == 0
    assert capsys.readouterr().out == tables.markdown()
    doc = tmp_path / "doc.md"
    doc.write_text(f"# before\n{tables.BEGIN}\nstale\n{tables.END}\nafter\n")
    tables.main(["--write", str(doc)])
    assert doc.read_text() == f"# before\n{tables.markdown()}after\n"
    with pytest.raises(ValueError, match="lacks the markers"):
        tables.replace_section("no markers")
