"""Allowed address pairs and ICMP type/code in security group rules, end to end without sockets:
the model's checks (and the REST edge's errors), the intent through the policy tree and its wire
form to the agent's view, the Open vSwitch pipeline on the fake switch, and the nftables text.
Real packets: test_addrpairs_dataplane.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from policyfabric.agent.reader import local_endpoint, policy_view
from policyfabric.agent.renderers.nftables.addresses import destinations, sources
from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset
from policyfabric.agent.values import parse_ip, parse_mac, parse_prefix
from policyfabric.agent.view import Endpoint, IpAddress, SgRule
from policyfabric.model import objects as o
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, members_uri, uri_of
from tests import fabric
from tests.conftest import Api, error
from tests.fabric import ICMP, TCP, arp_request, ip_packet, mac, security_group, sg_rule
from tests.test_pipeline_unit import APP, BD, HTTP, WEB
from tests.test_policy_roundtrip import over_the_wire
from tests.test_secgroups_unit import vm

T = "acme"

# ---- the model ----------------------------------------------------------------------------------


def rule(**fields: Any) -> o.SecurityGroupRule:
    return o.SecurityGroupRule(direction="ingress", **fields)


def test_icmp_type_and_code_need_an_icmp_protocol_and_a_code_needs_its_type() -> None:
    assert rule(protocol="icmp", icmp_type=8, icmp_code=0).problems("rules[0].") == []
    assert rule(protocol="icmpv6", icmp_type=128).problems("rules[0].") == []
    assert rule(protocol="icmpv6", icmp_type=128).ethertype == "ipv6"
    wrong = rule(protocol="tcp", icmp_type=8).problems("rules[2].")
    assert [(p.field, "icmp or icmpv6" in p.message) for p in wrong] == [("rules[2].icmp_type", True)]
    orphan = rule(protocol="icmp", icmp_code=3).problems("rules[0].")
    assert [p.field for p in orphan] == ["rules[0].icmp_code"] and "icmp_type" in orphan[0].message
    for bad in ({"icmp_type": 256}, {"icmp_type": -1}, {"icmp_type": 8, "icmp_code": 300}):
        with pytest.raises(ValidationError) as raised:
            rule(protocol="icmp", **bad)
        assert raised.value.errors()[0]["loc"][0] in ("icmp_type", "icmp_code")


def ep(**fields: Any) -> o.Endpoint:
    return o.Endpoint(name="e1", tenant=T, subnet="s1", ip=["10.0.0.5"], mac="02:00:00:00:00:05", **fields)


def test_allowed_address_pairs_take_addresses_and_prefixes_of_either_family() -> None:
    e = ep(
        allowed_address_pairs=[
            {"ip": "10.0.0.100"},
            {"ip": "10.0.1.0/24", "mac": "02:00:00:00:00:AA"},
            {"ip": "fd00::100"},
        ]
    )
    assert e.problems() == []
    assert e.model_dump(mode="json")["allowed_address_pairs"] == [
        {"ip": "10.0.0.100", "mac": None},
        {"ip": "10.0.1.0/24", "mac": "02:00:00:00:00:aa"},
        {"ip": "fd00::100", "mac": None},
    ]


def test_allowed_address_pairs_refused() -> None:
    twice = ep(allowed_address_pairs=[{"ip": "10.0.0.100"}, {"ip": "10.0.0.100", "mac": "02:00:00:00:00:05"}])
    assert [p.field for p in twice.problems()] == ["allowed_address_pairs[1].ip"]
    # the same address with another MAC is another pair (Neutron keys pairs by both)
    assert (
        ep(
            allowed_address_pairs=[{"ip": "10.0.0.100"}, {"ip": "10.0.0.100", "mac": "02:00:00:00:00:06"}]
        ).problems()
        == []
    )
    for pairs, where in (
        ([{"ip": f"10.0.0.{i}"} for i in range(100, 111)], ("allowed_address_pairs",)),  # 11 > 10
        ([{"ip": "10.0.0.1/24"}], ("allowed_address_pairs", 0, "ip")),  # host bits set
        ([{"ip": "10.0.0.100", "mac": "01:00:5e:00:00:01"}], ("allowed_address_pairs", 0, "mac")),
        (
            [{"ip": "10.0.0.100", "mac_address": "02:00:00:00:00:06"}],
            ("allowed_address_pairs", 0, "mac_address"),
        ),
    ):
        with pytest.raises(ValidationError) as raised:
            ep(allowed_address_pairs=pairs)
        assert raised.value.errors()[0]["loc"] == where


def test_the_rest_edge_names_the_field(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    base = {"tenant": t, "epg": "ga", "ip": "10.1.0.10"}
    r = api.post("endpoints", {**base, "name": "e1", "allowed_address_pairs": [{"ip": "10.1.0.9/24"}]})
    assert r.status_code in (400, 422) and "allowed_address_pairs" in error(r)["field"]
    made = api.ok("endpoints", {**base, "name": "e2", "allowed_address_pairs": [{"ip": "10.1.0.100"}]})
    assert made["allowed_address_pairs"] == [{"ip": "10.1.0.100", "mac": None}]
    # a shared virtual address: another endpoint may list the same pair (it claims nothing)
    other = {**base, "name": "e3", "ip": "10.1.0.11", "allowed_address_pairs": [{"ip": "10.1.0.100"}]}
    assert api.post("endpoints", other).status_code in (200, 201)
    sg = {"name": "g1", "tenant": t, "rules": [{"direction": "ingress", "protocol": "udp", "icmp_type": 3}]}
    r = api.post("security-groups", sg)
    assert r.status_code in (400, 422) and error(r)["field"] == "rules[0].icmp_type"


# ---- intent → policy tree → wire → the agent's view ---------------------------------------------

INTENT: dict[str, list[o.Spec]] = {
    "l3_context": [o.L3Context(name="vrf1", tenant=T)],
    "bridge_domain": [o.BridgeDomain(name="bd1", tenant=T, l3_context="vrf1")],
    "subnet": [o.Subnet(name="s1", tenant=T, bridge_domain="bd1", cidr="10.0.0.0/24")],
    "security_group": [
        o.SecurityGroup(
            name="ssh",
            tenant=T,
            rules=[
                o.SecurityGroupRule(direction="ingress", protocol="tcp", port=22, remote_group="ssh"),
                o.SecurityGroupRule(direction="ingress", protocol="icmp", icmp_type=8, icmp_code=0),
                o.SecurityGroupRule(direction="ingress", protocol="icmpv6", icmp_type=128),
            ],
        )
    ],
    "endpoint": [
        o.Endpoint(
            name="vm1",
            tenant=T,
            subnet="s1",
            ip=["10.0.0.5"],
            mac="02:00:00:00:00:05",
            security_groups=["ssh"],
            allowed_address_pairs=[
                {"ip": "10.0.0.100"},
                {"ip": "10.0.2.0/24", "mac": "02:00:00:00:00:aa"},
            ],
        )
    ],
}


def test_pairs_and_icmp_cross_the_wire_and_come_back_in_the_view() -> None:
    from policyfabric.authority.opflex.policy_tree import tenant_tree

    cache = over_the_wire(tenant_tree(T, INTENT, {}))
    pf = cache[endpoint_uri(T, "vm1")].properties
    assert pf[Prop.ALLOWED_ADDRESS_PAIRS] == [
        "10.0.0.100/32 02:00:00:00:00:05",
        "10.0.2.0/24 02:00:00:00:00:aa",
    ]
    clf = cache[uri_of(T, Cls.GBPE_L24_CLASSIFIER, "sg.ssh.1")].properties
    assert (clf[Prop.ICMP_TYPE], clf[Prop.ICMP_CODE]) == (8, 0)  # the model's own properties
    assert Prop.ICMP_TYPE not in cache[uri_of(T, Cls.GBPE_L24_CLASSIFIER, "sg.ssh.0")].properties
    view = policy_view(cache)
    sg = view.security_groups[uri_of(T, Cls.GBP_SEC_GROUP, "ssh")]
    assert [(r.protocol, r.icmp_type, r.icmp_code) for r in sg.rules] == [
        (6, None, None),
        (1, 8, 0),
        (58, 128, None),
    ]
    # the pair's single address is a member of ssh (its prefix is not: a member is one address)
    members = cache[members_uri(T, "ssh")].children
    assert sorted(cache[m].properties[Prop.ADDRESS] for m in members) == [
        "10.0.0.100",
        "10.0.0.5",
        "255.255.255.255",
    ]
    assert dict(view.address_sets)[uri_of(T, Cls.GBP_SEC_GROUP, "ssh")] == ("10.0.0.100", "10.0.0.5")
    local = local_endpoint(cache, view.groups, f"{T}/vm1", endpoint_uri(T, "vm1"), 7)
    assert local is not None
    assert local.allowed_pairs == (
        (parse_prefix("10.0.0.100/32"), parse_mac("02:00:00:00:00:05")),
        (parse_prefix("10.0.2.0/24"), parse_mac("02:00:00:00:00:aa")),
    )
    assert local.pair_hosts == ("10.0.0.100",) and local.pair_macs == ("02:00:00:00:00:aa",)


def test_a_pair_value_that_does_not_parse_leaves_the_endpoint_out() -> None:
    from policyfabric.authority.opflex.policy_tree import tenant_tree

    cache = over_the_wire(tenant_tree(T, INTENT, {}))
    mo = cache[endpoint_uri(T, "vm1")]
    mo.properties[Prop.ALLOWED_ADDRESS_PAIRS] = ["10.0.0.100/32 02:00:00:00:00:05 extra"]
    problems: list[Any] = []
    view = policy_view(cache)
    assert (
        local_endpoint(cache, view.groups, f"{T}/vm1", endpoint_uri(T, "vm1"), 7, problems=problems) is None
    )
    assert [p.field for p in problems] == [Prop.ALLOWED_ADDRESS_PAIRS]


# ---- Open vSwitch, on the fake switch -----------------------------------------------------------

OPEN = security_group("sg/open", sg_rule("sg/open#0"))
ECHO = security_group("sg/echo", replace(sg_rule("sg/echo#0", protocol=ICMP), icmp_type=8, icmp_code=0))
SSH = security_group("sg/ssh", sg_rule("sg/ssh#0", protocol=TCP, ports=22, remote_group="sg/ssh"))
PAIR_MAC = mac(99, 1)


def with_pairs(e: Endpoint, *pairs: tuple[str, str | None]) -> Endpoint:
    return replace(e, allowed_pairs=tuple((parse_prefix(p), parse_mac(m or e.mac)) for p, m in pairs))


def switch(*eps: Endpoint, sets: dict[str, tuple[IpAddress, ...]] | None = None) -> Any:
    groups = (OPEN, ECHO, SSH)
    net = fabric.network(
        local=eps,
        groups=[WEB, APP],
        contracts=[HTTP],
        bds=[BD],
        security_groups=groups,
        address_sets=sets if sets is not None else fabric.members(eps, groups),
    )
    return fabric.switch(net)


VIP = with_pairs(
    vm("vip", 1, "sg/open", "sg/ssh", ofport=11), ("10.0.0.100/32", None), ("10.0.5.0/24", PAIR_MAC)
)
PEER = vm("peer", 2, "sg/open", ofport=12)
GUARD = vm("guard", 3, "sg/echo", "sg/ssh", ofport=13)


def test_port_security_admits_the_pairs_and_nothing_else() -> None:
    sw = switch(VIP, PEER)
    assert sw.send(ip_packet(VIP, PEER, nw_src="10.0.0.100")).ports == [12]
    assert sw.send(ip_packet(VIP, PEER, nw_src="10.0.0.101")).dropped  # no pair lists it
    # the prefix pair, from its own MAC only
    assert sw.send(ip_packet(VIP, PEER, nw_src="10.0.5.7", dl_src=PAIR_MAC)).ports == [12]
    assert sw.send(ip_packet(VIP, PEER, nw_src="10.0.5.7")).dropped
    assert sw.send(ip_packet(VIP, PEER, nw_src="10.0.0.100", dl_src=PAIR_MAC)).dropped
    # ARP for the virtual address: its holder's answers (and gratuitous ARP) pass
    answer = {**arp_request(VIP, PEER.ips[0]), "arp_op": 2, "arp_spa": "10.0.0.100", "dl_dst": PEER.mac}
    assert sw.send(answer).ports == [12]
    assert sw.send({**answer, "arp_spa": "10.0.0.101"}).dropped
    # the same endpoint without pairs: the virtual address is dropped
    plain = switch(replace(VIP, allowed_pairs=()), PEER)
    assert plain.send(ip_packet(VIP, PEER, nw_src="10.0.0.100")).dropped


def test_traffic_to_a_pair_is_delivered_to_its_endpoint() -> None:
    sw = switch(VIP, PEER)
    # to the virtual address at the endpoint's own MAC (what its ARP answer said)
    assert sw.send(ip_packet(PEER, VIP, nw_dst="10.0.0.100")).ports == [11]
    # to the pair's own MAC
    assert sw.send(ip_packet(PEER, VIP, nw_dst="10.0.5.7", dl_dst=PAIR_MAC)).ports == [11]
    # the fabric does not answer ARP for a pair (the holder does): the request floods to it
    assert 11 in sw.send(arp_request(PEER, "10.0.0.100")).ports


def test_a_pair_naming_another_endpoints_mac_does_not_take_its_frames() -> None:
    """Neutron lets a pair name another port's MAC (tempest's pairs are another port's address and
    MAC): the sender is admitted from it, but frames to that MAC still go to its owner."""
    thief = with_pairs(vm("thief", 4, "sg/open", ofport=14), (f"{PEER.ips[0]}/32", PEER.mac))
    for order in ((thief, PEER), (PEER, thief)):
        sw = switch(VIP, *order)
        assert sw.send(ip_packet(VIP, PEER)).ports == [12]
        assert sw.send(ip_packet(thief, VIP, dl_src=PEER.mac, nw_src=PEER.ips[0])).ports == [11]


def ips(*addresses: str) -> tuple[IpAddress, ...]:
    return tuple(parse_ip(a) for a in addresses)


def test_a_pair_address_is_a_member_for_remote_group_rules() -> None:
    """The authority puts a pair's address in the member sets (the wire test above); with it
    there, a rule naming the group admits it; without it, not."""
    members = fabric.members((VIP, PEER, GUARD), (OPEN, ECHO, SSH))
    sw = switch(VIP, PEER, GUARD, sets={**members, "sg/ssh": ips("10.0.0.1", "10.0.0.100", "10.0.0.3")})
    assert sw.send(ip_packet(VIP, GUARD, dport=22, nw_src="10.0.0.100")).ports == [13]
    assert sw.send(ip_packet(PEER, GUARD, dport=22)).dropped  # not a member
    sw = switch(VIP, PEER, GUARD, sets={**members, "sg/ssh": ips("10.0.0.1", "10.0.0.3")})
    assert sw.send(ip_packet(VIP, GUARD, dport=22, nw_src="10.0.0.100")).dropped


def icmp(src: Endpoint, dst: Endpoint, kind: int, code: int = 0) -> dict[str, Any]:
    packet = ip_packet(src, dst, proto=ICMP, icmp_type=kind, icmp_code=code)
    for key in ("tp_src", "tp_dst"):
        del packet[key]
    return packet


def test_an_icmp_type_rule_admits_that_type_and_code_only() -> None:
    # a fresh switch for each: the fake switch's conntrack keys ICMP by addresses alone (the
    # kernel's by type and id), so an echo request admitted first would let the others pass
    assert switch(PEER, GUARD).send(icmp(PEER, GUARD, 8)).ports == [13]  # echo request
    assert switch(PEER, GUARD).send(icmp(PEER, GUARD, 13)).dropped  # timestamp request
    assert switch(PEER, GUARD).send(icmp(PEER, GUARD, 8, code=1)).dropped  # the rule names code 0
    assert switch(PEER, GUARD).send(icmp(GUARD, PEER, 13)).ports == [12]  # peer's group admits all IPv4


def test_two_rules_differing_only_in_icmp_type_are_two_conjunctions() -> None:
    from policyfabric.agent.renderers.ovs.secgroups import sg_conj_id as _cid

    base = replace(sg_rule("sg/x#0", protocol=ICMP), icmp_type=8)
    assert _cid(base) != _cid(replace(base, icmp_type=0))
    assert _cid(replace(base, icmp_type=None)) == _cid(sg_rule("sg/x#0", protocol=ICMP))  # unchanged ids


# ---- nftables -----------------------------------------------------------------------------------


def hybrid(*eps: Endpoint) -> tuple[Endpoint, ...]:
    return tuple(replace(e, interface=f"qvo{e.ofport}") for e in eps)


def test_nftables_writes_icmp_types_and_the_pairs_in_the_endpoint_chain() -> None:
    net = fabric.network(
        local=hybrid(VIP, GUARD), bds=[BD], security_groups=(OPEN, ECHO, SSH), address_sets={}
    )
    text = compile_ruleset(net).text()
    assert "meta nfproto ipv4 icmp type 8 icmp code 0 return" in text
    # the way is the port (the Ethernet source: its tap and its pair's MAC), the pairs' prefixes
    # its port security
    assert "ether saddr { 02:00:00:00:01:01, 02:00:00:00:01:63 } jump ep11_out" in text
    assert "ip saddr != { 10.0.0.1, 10.0.0.100, 10.0.5.0/24 } drop" in text
    assert "ip daddr { 10.0.0.1, 10.0.0.100 } jump ep11_in" in text  # a prefix pair is no destination
    v6 = replace(sg_rule("sg/v6#0", protocol=58, ethertype=0x86DD), icmp_type=128)
    from policyfabric.agent.renderers.nftables.icmp import icmp_match

    assert icmp_match(v6) == "icmpv6 type 128"
    assert isinstance(v6, SgRule)


def test_nftables_sources_never_overlap() -> None:
    e = with_pairs(
        vm("x", 10, ofport=20), ("10.0.0.0/24", None), ("10.0.0.77/32", None), ("fd00::7/128", None)
    )
    assert sources(e, False) == ["10.0.0.0/24"]  # 10.0.0.10 and .77 are inside: one interval
    assert sources(e, True) == ["fd00::7"]
    assert destinations(e, False) == ["10.0.0.10", "10.0.0.77"]


def test_an_ipv6_pair_passes_port_security_and_its_neighbour_discovery_too() -> None:
    vip6 = with_pairs(replace(VIP, allowed_pairs=()), ("fd00::100/128", None))
    sw = switch(vip6, PEER)
    packet = {
        "in_port": 11,
        "eth_type": "ipv6",
        "dl_src": vip6.mac,
        "dl_dst": PEER.mac,
        "ipv6_src": "fd00::100",
        "ipv6_dst": "fd00::2",
        "nw_proto": 58,
        "icmp_type": 136,  # a neighbour advertisement for the virtual address
    }
    assert 12 in sw.send(packet).ports
    assert sw.send({**packet, "ipv6_src": "fd00::101"}).dropped
    assert switch(replace(vip6, allowed_pairs=()), PEER).send(packet).dropped


def test_explain_names_an_icmp_typed_rule_by_its_conjunction() -> None:
    """``explain`` names a rule by the conjunction id the agent gives it: the ICMP part included."""
    from policyfabric.agent.explain import catalog
    from policyfabric.agent.renderers.ovs.secgroups import sg_conj_id as _cid
    from policyfabric.authority.opflex.policy_tree import tenant_tree

    [sg] = INTENT["security_group"]
    cat = catalog([{"name": T, "security_groups": [sg.model_dump(mode="json", exclude={"tenant"})]}])
    view = policy_view(over_the_wire(tenant_tree(T, INTENT, {})))
    rules = view.security_groups[uri_of(T, Cls.GBP_SEC_GROUP, "ssh")].rules
    assert [cat.rules.get(_cid(r)) for r in rules] == [f"security-group {T}/ssh rule {i}" for i in range(3)]


def installed(net: Any) -> Any:
    """The compiled ruleset as the kernel gives it back (``nft -f`` then ``nft -j list``), in a
    network namespace of its own that goes with the process."""
    import json
    import subprocess

    from policyfabric.agent.renderers.nftables.explain import Table

    text = compile_ruleset(net).text()
    script = "nft -f - && nft -j list table inet policyfabric"
    done = subprocess.run(["unshare", "-n", "sh", "-c", script], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return Table.from_json(json.loads(done.stdout))


@pytest.mark.parametrize("prefix", ["0.0.0.0/0", "10.0.0.0/24"])
def test_a_pair_covering_peers_does_not_turn_their_packets_into_the_endpoints_own(prefix: str) -> None:
    """A pair whose prefix covers a peer (Neutron's 0.0.0.0/0, the endpoint's own subnet): the
    peer's packet to the endpoint is still judged by the endpoint's ingress security groups
    (guard admits ICMP echo and tcp/22 from ssh members only), its own by its egress ones."""
    from policyfabric.agent.renderers.nftables.explain import Packet, evaluate

    guard = with_pairs(GUARD, (prefix, None))
    sgs = (OPEN, ECHO, SSH)
    net = fabric.network(local=hybrid(guard, PEER), bds=[BD], security_groups=sgs, address_sets={})
    table = installed(net)
    inbound = Packet("qbr13", False, PEER.ips[0], GUARD.ips[0], 6, dport=8080, ether_src=PEER.mac)
    verdict = evaluate(table, inbound)
    assert (verdict.verdict, verdict.chain) == ("drop", "ep13_in_sg")
    # from guard's port: its egress (open)
    outbound = Packet("qbr13", False, GUARD.ips[0], PEER.ips[0], 6, dport=8080, ether_src=GUARD.mac)
    assert evaluate(table, outbound).verdict == "accept"
    # from guard's port, from an address no pair covers: port security
    if prefix != "0.0.0.0/0":
        spoofed = Packet("qbr13", False, "192.0.2.9", PEER.ips[0], 6, dport=8080, ether_src=GUARD.mac)
        drop = evaluate(table, spoofed)
        assert (drop.verdict, drop.chain) == ("drop", "ep13_out")


def test_pairs_from_the_wire_are_bounded_as_the_model_bounds_them() -> None:
    from policyfabric.agent.endpoints import parse_pairs
    from policyfabric.model.objects import MAX_ALLOWED_ADDRESS_PAIRS

    own = parse_mac("02:00:00:00:00:01")
    listed = [f"10.9.0.{i}/32" for i in range(MAX_ALLOWED_ADDRESS_PAIRS + 1)]
    assert len(parse_pairs(listed[:-1], own)) == MAX_ALLOWED_ADDRESS_PAIRS
    with pytest.raises(ValueError, match="more than"):
        parse_pairs(listed, own)
