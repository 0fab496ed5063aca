"""Security groups in the compiled pipeline, evaluated by the fake switch.

Neutron semantics (default deny ingress; egress allowed until a group has
egress rules; replies pass by conntrack), remote groups as address sets, and
composition with group policy: a packet passes only if every layer that
applies to it allows it. Real packets: test_ovs_dataplane.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch
from policyfabric.agent.values import parse_ip
from policyfabric.agent.view import Endpoint, IpAddress, Network
from policyfabric.model.addressing import link_local
from tests import fabric
from tests.fabric import (
    ICMP,
    ICMP6,
    TCP,
    Packet,
    as_remote,
    endpoint,
    from_tunnel,
    ip_packet,
    mac,
    pipeline,
    reply,
    security_group,
    sg_rule,
)
from tests.test_pipeline_unit import APP, APP1, BD, HTTP, WEB, WEB1

SSH = security_group("sg/ssh", sg_rule("sg/ssh#0", protocol=TCP, ports=22, remote_group="sg/ssh"))
PING_FROM_NET = security_group("sg/ping", sg_rule("sg/ping#0", protocol=ICMP, remote_prefix="10.0.0.0/30"))
WEB_ONLY_OUT = security_group("sg/web-out", sg_rule("sg/web-out#0", "out", protocol=TCP, ports=80))
HTTP_IN = security_group("sg/http-in", sg_rule("sg/http-in#0", protocol=TCP, ports=80))
GROUPS = {g.uri: g for g in (SSH, PING_FROM_NET, WEB_ONLY_OUT, HTTP_IN)}


def vm(name: str, n: int, *sgs: str, ofport: int | None = None, vtep: str | None = None) -> Endpoint:
    """A plain Neutron endpoint: no EPG (class 0), only security groups; MAC ...:01:n, 10.0.0.n."""
    return endpoint(name, mac(n, 1), f"10.0.0.{n}", bd=BD, ofport=ofport, vtep=vtep, security_groups=sgs)


VM1 = vm("vm1", 1, "sg/ssh", "sg/ping", ofport=11)
VM2 = vm("vm2", 2, "sg/ssh", ofport=12)
VM3 = vm("vm3", 3, ofport=13)  # no groups at all: nothing may reach it
VM9 = vm("vm9", 9, "sg/web-out", ofport=19)


def members(eps: tuple[Endpoint, ...]) -> dict[str, tuple[IpAddress, ...]]:
    """The address sets of every group in GROUPS, from the members among ``eps``."""
    return fabric.members(eps, GROUPS)


def net(
    local: tuple[Endpoint, ...],
    remote: tuple[Endpoint, ...] = (),
    sets: Mapping[str, tuple[str, ...]] | None = None,
) -> Network:
    """A host with ``local`` on its ports; address sets from ``local`` and ``remote`` unless ``sets``."""
    return fabric.network(
        local=local,
        remote=remote,
        groups=[WEB, APP],
        contracts=[HTTP],
        bds=[BD],
        security_groups=GROUPS.values(),
        address_sets=sets,
    )


def switch(local: tuple[Endpoint, ...], remote: tuple[Endpoint, ...] = ()) -> FakeSwitch:
    return fabric.switch(net(local, remote))


def test_remote_group_admits_members_only_on_the_rule_port() -> None:
    outsider = vm("vm4", 4, "sg/web-out", ofport=14)  # not in sg/ssh
    sw = switch((VM1, VM2, outsider))
    assert sw.send(ip_packet(VM2, VM1, dport=22)).ports == [11]
    assert sw.send(ip_packet(VM2, VM1, dport=80)).dropped
    assert sw.send(ip_packet(outsider, VM1, dport=22)).dropped


def test_replies_pass_and_egress_is_open_without_egress_rules() -> None:
    sw = switch((VM1, VM2))
    request = ip_packet(VM2, VM1, dport=22)
    assert sw.send(request).ports == [11]
    assert sw.send(reply(request, in_port=11)).ports == [12]
    # vm1 may send anything (no egress rules), but vm2 admits only ssh from sg/ssh members
    assert sw.send(ip_packet(VM1, VM2, dport=22)).ports == [12]
    assert sw.send(ip_packet(VM1, VM2, dport=23)).dropped


def test_an_endpoint_without_groups_or_epg_admits_nothing() -> None:
    sw = switch((VM1, VM3))
    assert sw.send(ip_packet(VM1, VM3, dport=22)).dropped
    assert sw.send(ip_packet(VM1, VM3, proto=1, dport=0)).dropped


def test_remote_prefix() -> None:
    far = vm("vm7", 7, "sg/ssh", ofport=17)
    sw = switch((VM1, VM2, far))
    assert sw.send(ip_packet(VM2, VM1, proto=1, dport=0)).ports == [11]  # 10.0.0.2 is in 10.0.0.0/30
    assert sw.send(ip_packet(far, VM1, proto=1, dport=0)).dropped  # 10.0.0.7 is not


def test_egress_rules_restrict_egress() -> None:
    target = vm("vm5", 5, "sg/http-in", ofport=15)
    sw = switch((VM9, target, VM1))
    assert sw.send(ip_packet(VM9, target, dport=80)).ports == [15]
    assert sw.send(ip_packet(VM9, VM1, dport=22)).dropped  # vm9 may only send tcp/80


def test_ingress_is_judged_on_the_receivers_host() -> None:
    """From a tunnel, only the receiver's ingress rules apply, by source address."""
    sw = switch((VM1,), (as_remote(VM2, "192.0.2.2"),))
    base = from_tunnel(ip_packet(VM2, VM1, dport=22), BD.vni, 0)  # no EPG: class 0
    assert sw.send(base).ports == [11]
    assert sw.send({**base, "tp_dst": 80, "tp_src": 40001}).dropped
    assert sw.send({**base, "nw_src": "10.0.0.5", "tp_src": 40002}).dropped  # not a member


def test_both_layers_must_allow() -> None:
    """web1 (EPG web) also has a group admitting only ssh: the contract's tcp/80 is not enough."""
    web1 = replace(WEB1, security_groups=("sg/ssh",))
    sw = switch((web1, APP1, VM2))
    assert sw.send(ip_packet(APP1, web1, dport=80)).dropped
    sw = switch((replace(WEB1, security_groups=("sg/http-in",)), APP1))
    assert sw.send(ip_packet(APP1, WEB1, dport=80)).ports == [1]
    assert sw.send(ip_packet(APP1, WEB1, dport=22)).dropped  # the group would, the contract does not


def test_epg_members_and_group_only_endpoints_do_not_mix() -> None:
    """vm2 is in web1's group sg/ssh but in no EPG: no contract can name it, so group policy denies."""
    web1 = replace(WEB1, security_groups=("sg/ssh",))
    sw = switch((web1, VM2))
    assert sw.send(ip_packet(VM2, web1, dport=22)).dropped


def test_ipv6_neighbour_discovery_passes_policy() -> None:
    """vm3 admits nothing, but neighbour solicitations still reach it (router advertisements not)."""
    sw = switch((VM1, VM3))
    ns: Packet = {
        "in_port": VM1.ofport,
        "eth_type": "ipv6",
        "dl_src": VM1.mac,
        "dl_dst": VM3.mac,
        "ipv6_src": str(link_local(VM1.mac)),
        "nw_proto": ICMP6,
        "icmp_type": 135,
    }
    assert sw.send(ns).ports == [13]
    assert sw.send({**ns, "icmp_type": 134}).dropped


def _diff(a: list[Flow], b: list[Flow]) -> int:
    return len(set(a) ^ set(b))


def test_a_member_joining_changes_one_flow_whatever_the_size() -> None:
    """Address sets: flows grow with members + rules, and one join changes O(1) flows."""
    changed, sizes = [], []
    for n in (10, 100, 1000):
        remote = tuple(
            replace(
                vm(f"r{i}", 0, "sg/ssh", vtep="192.0.2.2"), ips=(parse_ip(f"10.1.{i // 250}.{i % 250 + 1}"),)
            )
            for i in range(n)
        )
        before = pipeline(net((VM1,), (), sets=members((VM1, *remote))))
        joined = replace(remote[0], key="acme/new", ips=(parse_ip("10.9.9.9"),))
        after = pipeline(net((VM1,), (), sets=members((VM1, *remote, joined))))
        changed.append(_diff(before, after))
        sizes.append(len(before))
    assert changed == [1, 1, 1]  # one address flow in vm1's ingress set
    assert sizes[2] - sizes[1] == 900  # one flow per member, not per member x rule x port


def test_a_local_member_joining_adds_its_port_and_address() -> None:
    before = pipeline(net((VM1, VM3)))
    after = pipeline(net((VM1, replace(VM3, security_groups=("sg/ssh",)))))
    # its port joins the rule's port clause, its address the set; no other flow changes
    assert _diff(before, after) == 2


def test_nftables_membership_changes_are_set_element_updates() -> None:
    """The Linux renderer's ruleset: a join is one element added; a rule change replaces the table."""
    from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset

    def hybrid(*eps: Endpoint) -> tuple[Endpoint, ...]:
        return tuple(replace(e, interface=f"qvo{e.ofport}") for e in eps)

    before = compile_ruleset(net(hybrid(VM1, VM3)))
    joined = {**members((VM1, VM3)), "sg/ssh": ("10.0.0.1", "10.0.0.77")}  # a remote member joins sg/ssh
    after = compile_ruleset(net(hybrid(VM1, VM3), sets=joined))
    assert after.update_from(before) == "add element inet policyfabric sgfefbdfaf_4 { 10.0.0.77 }\n"
    assert before.update_from(after) == "delete element inet policyfabric sgfefbdfaf_4 { 10.0.0.77 }\n"
    assert before.update_from(before) == ""
    other_rules = compile_ruleset(net(hybrid(VM1, replace(VM3, security_groups=("sg/http-in",)))))
    assert other_rules.update_from(before) is None  # chains changed: the whole table
    assert "sgfefbdfaf_4 { type ipv4_addr; elements = { 10.0.0.1 } }" in before.text()
