"""The Neutron integration's pure parts, without Neutron: the mapping (Neutron resources ->
policyfabric objects, checked against policyfabric's own models), the journal's ordering and
retry decisions, and the full sync's plan. integrations/neutron is put on the path: the
distribution is not installed in policyfabric's environment, and these modules import no Neutron."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integrations" / "neutron"))

from networking_policyfabric import columns, journal, mapping, reconcile  # type: ignore[import-not-found]

from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_COLLECTION

PROJECT = "0123456789abcdef0123456789abcdef"
NET = "6f1c2a9e-1b7d-4c1e-9d0a-2f4b5e6a7c8d"
EXT = "0c2b7f3e-5d4a-4e1b-8c9d-1a2b3c4d5e6f"
SUB4 = "a1b2c3d4-0000-4000-8000-000000000001"
SUB6 = "a1b2c3d4-0000-4000-8000-000000000002"
PORT = "b1b2c3d4-0000-4000-8000-000000000003"
SG = "c1b2c3d4-0000-4000-8000-000000000004"
SG2 = "c1b2c3d4-0000-4000-8000-000000000005"

NETWORK = {"id": NET, "project_id": PROJECT, "mtu": 1442, "router:external": False}
EXTERNAL = {"id": EXT, "project_id": PROJECT, "mtu": 1500, "router:external": True}
SUBNET4 = {
    "id": SUB4, "network_id": NET, "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1", "ip_version": 4,
    "enable_dhcp": True, "dns_nameservers": ["10.1.0.2"],
    "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.1.0.254"}],
    "ipv6_ra_mode": None, "ipv6_address_mode": None,
}  # fmt: skip
SUBNET6 = {
    "id": SUB6, "network_id": NET, "cidr": "fd00:1::/64", "gateway_ip": "fd00:1::1", "ip_version": 6,
    "enable_dhcp": True, "dns_nameservers": [], "host_routes": [],
    "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac",
}  # fmt: skip


def model(obj: mapping.Obj) -> o.Spec:
    """The policyfabric model of a mapped object: what the authority would parse it as."""
    spec = BY_COLLECTION[obj.collection].spec.model_validate(obj.body)
    assert spec.problems() == [], spec.problems()
    return spec


def a_port(**over: object) -> dict[str, object]:
    p: dict[str, object] = {
        "id": PORT, "project_id": PROJECT, "network_id": NET, "device_owner": "compute:nova",
        "mac_address": "FA:16:3E:00:00:01",
        "fixed_ips": [{"subnet_id": SUB4, "ip_address": "10.1.0.10"},
                      {"subnet_id": SUB6, "ip_address": "fd00:1::f816:3eff:fe00:1"}],
        "security_groups": [SG], "port_security_enabled": True, "allowed_address_pairs": [],
        "binding:host_id": "H1",
    }  # fmt: skip
    p.update(over)
    return p


def test_project_becomes_tenant_with_port_security_groups() -> None:
    objs = mapping.tenant(PROJECT)
    assert [(x.collection, x.body["name"]) for x in objs] == [
        ("tenants", PROJECT),
        ("security-groups", mapping.OPEN_GROUP),
        ("security-groups", mapping.CLOSED_GROUP),
    ]
    for x in objs:
        model(x)


def test_network_becomes_bridge_domain_with_neutrons_mtu() -> None:
    bd = mapping.network(NETWORK)
    assert bd is not None
    spec = model(bd)
    assert isinstance(spec, o.BridgeDomain)
    assert (spec.name, spec.tenant, spec.mtu, spec.l3_context) == (NET, PROJECT, 1442, NET)
    assert mapping.network(EXTERNAL) is None  # an external network is made from its subnet
    with pytest.raises(mapping.Refused, match="MTU 9200"):
        mapping.network({**NETWORK, "mtu": 9200})


def test_subnet_keeps_dhcp_dns_routes_gateway_and_ipv6_modes() -> None:
    spec = model(mapping.subnet(SUBNET4, NETWORK))
    assert isinstance(spec, o.Subnet)
    assert spec.bridge_domain == NET and str(spec.gateway_ip) == "10.1.0.1"
    assert [str(s) for s in spec.dns_nameservers] == ["10.1.0.2"]
    assert [(str(r.destination), str(r.nexthop)) for r in spec.host_routes] == [
        ("192.168.0.0/16", "10.1.0.254")
    ]
    six = model(mapping.subnet(SUBNET6, NETWORK))
    assert isinstance(six, o.Subnet)
    assert (six.ipv6_ra_mode, six.ipv6_address_mode, six.auto_address) == ("slaac", "slaac", True)
    off = mapping.subnet({**SUBNET4, "enable_dhcp": False}, NETWORK)
    assert off.body["enable_dhcp"] is False


def test_subnets_policyfabric_cannot_express_are_refused() -> None:
    with pytest.raises(mapping.Refused, match="outside"):
        mapping.subnet({**SUBNET4, "gateway_ip": "10.2.0.1"}, NETWORK)
    with pytest.raises(mapping.Refused, match="too small"):
        mapping.subnet({**SUBNET4, "cidr": "10.1.0.0/31", "gateway_ip": "10.1.0.0"}, NETWORK)


def test_subnet_without_gateway_gets_a_stand_in_no_port_may_take() -> None:
    no_gw = {**SUBNET4, "gateway_ip": None}
    spec = model(mapping.subnet(no_gw, NETWORK))
    assert isinstance(spec, o.Subnet) and str(spec.gateway_ip) == "10.1.0.254"
    with pytest.raises(mapping.Refused, match=r"10\.1\.0\.254 is the gateway policyfabric gives"):
        mapping.port(
            a_port(fixed_ips=[{"subnet_id": SUB4, "ip_address": "10.1.0.254"}]), NETWORK, {SUB4: no_gw}
        )
    ok = mapping.port(
        a_port(fixed_ips=[{"subnet_id": SUB4, "ip_address": "10.1.0.1"}]), NETWORK, {SUB4: no_gw}
    )
    assert ok is not None and model(ok)


ROUTER = "d1b2c3d4-0000-4000-8000-000000000006"
ROUTER2 = "d1b2c3d4-0000-4000-8000-000000000009"
NET2 = "6f1c2a9e-1b7d-4c1e-9d0a-2f4b5e6a7c8e"


def test_a_network_is_its_own_routing_domain_until_a_router_joins_it() -> None:
    """The l3_context follows Neutron's routers: two networks of one project with the same CIDR
    are in two l3_contexts on no router (Neutron allows that), in the router's when on one."""
    alone = mapping.network_objects(NETWORK, None)
    assert [(x.collection, x.body["name"]) for x in alone] == [("l3-contexts", NET), ("bridge-domains", NET)]
    other = mapping.network_objects({**NETWORK, "id": NET2}, None)
    assert alone[-1].body["l3_context"] != other[-1].body["l3_context"]
    routed = mapping.network_objects(NETWORK, ROUTER)
    assert [(x.collection, x.body["name"]) for x in routed] == [
        ("l3-contexts", NET), ("l3-contexts", ROUTER), ("bridge-domains", NET),
    ]  # fmt: skip
    for x in routed:
        model(x)
    assert routed[-1].body["l3_context"] == ROUTER
    objs = mapping.router_objects({"id": ROUTER, "project_id": PROJECT}, [SUB4], None, [])
    assert [(x.collection, x.body["name"]) for x in objs] == [("l3-contexts", ROUTER), ("routers", ROUTER)]
    assert objs[1].body["l3_context"] == routed[-1].body["l3_context"]
    assert mapping.network_objects(EXTERNAL, None) == []


def test_overlapping_subnets_of_networks_apart_pass_the_authoritys_own_check() -> None:
    """policyfabric's own rule (addresses unique per l3_context), run on what the mapping gives:
    the same CIDR on two networks on no router, or on two routers, is accepted; on one router it
    is refused (the driver refuses it in precommit first)."""
    from policyfabric.model import rules
    from policyfabric.model.kinds import BY_NAME
    from policyfabric.model.rules import Obj as ModelObj

    class View:
        def __init__(self, objs: list[ModelObj]) -> None:
            self.objs = objs

        def list(self, kind: object, tenant: str | None = None) -> list[ModelObj]:
            return [x for x in self.objs if x.kind == kind and getattr(x.spec, "tenant", None) == tenant]

        def find(self, kind: object, tenant: str | None, name: str) -> ModelObj | None:
            return next((x for x in self.list(kind, tenant) if x.spec.name == name), None)

    def world(router_a: str | None, router_b: str | None) -> tuple[ModelObj, View]:
        objs: list[ModelObj] = [ModelObj(BY_NAME["tenant"], "t", model(mapping.tenant(PROJECT)[0]))]
        for i, (net_id, sub_id, router_id) in enumerate(((NET, SUB4, router_a), (NET2, SUB6, router_b))):
            net = {**NETWORK, "id": net_id}
            for x in [
                *mapping.network_objects(net, router_id),
                mapping.subnet({**SUBNET4, "id": sub_id}, net),
            ]:
                spec = model(x)
                objs.append(ModelObj(BY_NAME[spec.KIND], f"id{i}-{x.collection}-{x.body['name']}", spec))
        return objs[-1], View(objs)

    for apart in ((None, None), (ROUTER, None), (ROUTER, ROUTER2)):
        last, view = world(*apart)
        assert rules.validate(last, view) == []
    last, view = world(ROUTER, ROUTER)
    with pytest.raises(Exception, match="overlaps subnet"):
        rules.validate(last, view)


def test_a_network_on_two_routers_is_refused() -> None:
    ports = [{"device_id": ROUTER}, {"device_id": ROUTER}]
    assert mapping.network_router(NET, ports) == ROUTER
    assert mapping.network_router(NET, []) is None
    with pytest.raises(mapping.Refused, match="on routers"):
        mapping.network_router(NET, [*ports, {"device_id": ROUTER2}])


def test_overlap_within_a_project_is_found_across_families_apart() -> None:
    assert mapping.overlaps("10.1.0.0/24", ["10.2.0.0/24", "10.1.0.128/25"]) == "10.1.0.128/25"
    assert mapping.overlaps("10.1.0.0/24", ["10.2.0.0/24", "fd00:1::/64"]) is None


def test_external_subnet_becomes_the_external_network() -> None:
    sub = {**SUBNET4, "id": SUB4, "network_id": EXT, "cidr": "203.0.113.0/24", "gateway_ip": "203.0.113.1"}
    ext = mapping.subnet(sub, EXTERNAL)
    spec = model(ext)
    assert isinstance(spec, o.ExternalNetwork)
    assert (spec.name, str(spec.cidr), str(spec.gateway_ip)) == (EXT, "203.0.113.0/24", "203.0.113.1")


def test_port_becomes_endpoint_with_mac_addresses_groups_and_host() -> None:
    ep = mapping.port(a_port(), NETWORK, {SUB4: SUBNET4, SUB6: SUBNET6})
    assert ep is not None
    spec = model(ep)
    assert isinstance(spec, o.Endpoint)
    assert spec.mac == "fa:16:3e:00:00:01"
    # Neutron's SLAAC address is the EUI-64 the authority computes from the same MAC: sent as slaac
    assert [str(a) for a in spec.ip] == ["10.1.0.10", "slaac"]
    assert (spec.subnet, spec.security_groups, spec.host) == (SUB4, [SG], "h1")


def test_port_security_off_and_no_groups_get_the_drivers_groups() -> None:
    subs = {SUB4: SUBNET4, SUB6: SUBNET6}
    off = mapping.port(a_port(port_security_enabled=False, security_groups=[]), NETWORK, subs)
    none = mapping.port(a_port(security_groups=[]), NETWORK, subs)
    assert off is not None and none is not None
    assert off.body["security_groups"] == [mapping.OPEN_GROUP]
    assert none.body["security_groups"] == [mapping.CLOSED_GROUP]


def test_ports_that_are_not_endpoints() -> None:
    subs = {SUB4: SUBNET4}
    for owner in ("network:router_interface", "network:router_gateway", "network:dhcp", "network:floatingip"):
        assert mapping.port(a_port(device_owner=owner), NETWORK, subs) is None
    assert mapping.port(a_port(fixed_ips=[]), NETWORK, subs) is None  # no address: no subnet yet
    assert mapping.port(a_port(), EXTERNAL, subs) is None
    unbound = mapping.port(a_port(**{"binding:host_id": ""}), NETWORK, subs)
    assert unbound is not None and "host" not in unbound.body


def test_allowed_address_pairs_become_the_endpoints_pairs() -> None:
    subs = {SUB4: SUBNET4}
    pairs = [
        {"ip_address": "10.1.0.200", "mac_address": "fa:16:3e:00:00:01"},  # Neutron fills the own MAC
        {"ip_address": "10.1.0.0/28", "mac_address": "FA:16:3E:00:00:99"},
        {"ip_address": "fd00:1::5/128", "mac_address": "fa:16:3e:00:00:01"},
    ]
    ep = mapping.port(a_port(allowed_address_pairs=pairs), NETWORK, subs)
    assert ep is not None
    assert ep.body["allowed_address_pairs"] == [
        {"ip": "10.1.0.200"}, {"ip": "10.1.0.0/28", "mac": "fa:16:3e:00:00:99"}, {"ip": "fd00:1::5"},
    ]  # fmt: skip
    plain = mapping.port(a_port(), NETWORK, subs)
    assert plain is not None and "allowed_address_pairs" not in plain.body
    if "allowed_address_pairs" in o.Endpoint.model_fields:  # the model that has them (merged separately)
        spec = model(ep)
        assert len(spec.model_dump()["allowed_address_pairs"]) == 3
    # an authority whose model lacks the field: refused in precommit, not by the authority later
    assert mapping.unsupported(ep, {"Endpoint": ["name", "ip", "mac"]}) == ["allowed_address_pairs"]
    assert mapping.unsupported(ep, {"Endpoint": ["name", "allowed_address_pairs"]}) == []
    assert mapping.unsupported(plain, {"Endpoint": ["name"]}) == []


def test_an_admins_port_on_a_projects_network_lives_in_the_networks_tenant() -> None:
    admin = "f" * 32
    ep = mapping.port(a_port(project_id=admin), NETWORK, {SUB4: SUBNET4})
    assert ep is not None and ep.body["tenant"] == PROJECT
    # its groups are the admin project's: copied into the network's tenant, with their remote groups
    assert mapping.foreign_groups(a_port(project_id=admin), NETWORK) == [SG]
    assert mapping.foreign_groups(a_port(), NETWORK) == []
    assert mapping.foreign_groups(a_port(project_id=admin, port_security_enabled=False), NETWORK) == []
    groups = {
        SG: {"id": SG, "project_id": admin, "security_group_rules": [rule(remote_group_id=SG2)]},
        SG2: {"id": SG2, "project_id": admin, "security_group_rules": [rule(remote_group_id=SG)]},
    }
    assert mapping.group_closure([SG], groups) == [SG, SG2]
    assert mapping.group_closure([SG2, "missing"], groups) == [SG2, SG]
    copy = mapping.security_group(groups[SG], PROJECT)
    assert (copy.body["tenant"], copy.body["name"]) == (PROJECT, SG)
    assert mapping.security_group(groups[SG]).body["tenant"] == admin


def rule(**over: object) -> dict[str, object]:
    r: dict[str, object] = {
        "direction": "ingress", "ethertype": "IPv4", "protocol": None, "port_range_min": None,
        "port_range_max": None, "remote_ip_prefix": None, "remote_group_id": None,
    }  # fmt: skip
    r.update(over)
    return r


@pytest.mark.parametrize(
    ("neutron", "expected"),
    [
        (rule(protocol="tcp", port_range_min=22, port_range_max=22), {"protocol": "tcp", "port": 22}),
        (
            rule(protocol="6", port_range_min=1000, port_range_max=2000),
            {"protocol": "tcp", "port": "1000-2000"},
        ),
        (rule(protocol="17"), {"protocol": "udp"}),
        (rule(protocol="tcp", port_range_min=1, port_range_max=65535), {"protocol": "tcp"}),
        (rule(protocol="icmp"), {"protocol": "icmp"}),
        (rule(ethertype="IPv6", protocol="icmp"), {"protocol": "icmpv6", "ethertype": "ipv6"}),
        (rule(ethertype="IPv6", protocol="ipv6-icmp"), {"protocol": "icmpv6", "ethertype": "ipv6"}),
        (rule(ethertype="IPv6", protocol="58"), {"protocol": "icmpv6", "ethertype": "ipv6"}),
        (rule(remote_ip_prefix="10.1.0.5/24"), {"remote_ip_prefix": "10.1.0.0/24"}),
        (rule(remote_ip_prefix="0.0.0.0/0"), {}),
        (rule(remote_group_id=SG2), {"remote_group": SG2}),
        (rule(direction="egress", ethertype="IPv6"), {"direction": "egress", "ethertype": "ipv6"}),
        (
            rule(protocol="icmp", port_range_min=8, port_range_max=0),
            {"protocol": "icmp", "icmp_type": 8, "icmp_code": 0},
        ),
        (rule(protocol="icmp", port_range_min=3), {"protocol": "icmp", "icmp_type": 3}),
        (
            rule(ethertype="IPv6", protocol="ipv6-icmp", port_range_min=135, port_range_max=0),
            {"protocol": "icmpv6", "ethertype": "ipv6", "icmp_type": 135, "icmp_code": 0},
        ),
    ],
)
def test_security_group_rule_semantics(neutron: dict[str, object], expected: dict[str, object]) -> None:
    got = mapping.security_group_rule(neutron)
    want = {"direction": "ingress", "ethertype": "ipv4", **expected}
    assert got == want
    if "icmp_type" not in got or "icmp_type" in o.SecurityGroupRule.model_fields:  # merged separately
        o.SecurityGroupRule.model_validate(got)


def test_icmp_type_and_code_are_refused_in_precommit_by_an_authority_without_them() -> None:
    sg = {"id": SG, "project_id": PROJECT, "security_group_rules": [rule(protocol="icmp", port_range_min=8)]}
    obj = mapping.security_group(sg)
    assert mapping.unsupported(obj, {"SecurityGroupRule": ["direction", "protocol"]}) == ["icmp_type"]
    assert mapping.unsupported(obj, {"SecurityGroupRule": ["icmp_type", "icmp_code"]}) == []
    assert mapping.unsupported(obj, {}) == []  # nothing read from the authority: nothing judged


@pytest.mark.parametrize(
    ("neutron", "why"),
    [
        (rule(protocol="sctp"), "protocol 'sctp'"),
        (rule(protocol="132"), "protocol '132'"),
        (rule(protocol="icmp", port_range_max=0), "ICMP code 0 without a type"),
        (rule(remote_address_group_id="x"), "address groups"),
    ],
)
def test_security_group_rules_policyfabric_cannot_express(neutron: dict[str, object], why: str) -> None:
    with pytest.raises(mapping.Refused, match=why):
        mapping.security_group_rule(neutron)


def test_group_without_egress_rules_lets_nothing_out() -> None:
    sg = {"id": SG, "project_id": PROJECT, "security_group_rules": [rule(protocol="tcp")]}
    spec = model(mapping.security_group(sg))
    assert isinstance(spec, o.SecurityGroup)
    egress = [r for r in spec.rules if r.direction == "egress"]
    assert len(egress) == 1 and str(egress[0].remote_ip_prefix) == "0.0.0.0/32"
    default = {
        "id": SG, "project_id": PROJECT,
        "security_group_rules": [rule(direction="egress"), rule(direction="egress", ethertype="IPv6"),
                                 rule(remote_group_id=SG), rule(remote_group_id=SG, ethertype="IPv6")],
    }  # fmt: skip
    spec = model(mapping.security_group(default))
    assert isinstance(spec, o.SecurityGroup)
    assert len(spec.rules) == 4 and all(r.remote_ip_prefix is None for r in spec.rules)


def test_router_and_floating_ip() -> None:
    r = {
        "id": ROUTER, "project_id": PROJECT,
        "external_gateway_info": {"network_id": EXT, "enable_snat": True},
    }  # fmt: skip
    gw_port = {"fixed_ips": [{"ip_address": "2001:db8::5"}, {"ip_address": "203.0.113.5"}]}
    obj = mapping.router(r, [SUB6, SUB4, SUB4], mapping.gateway_address(gw_port), ["GW1"])
    spec = model(obj)
    assert isinstance(spec, o.Router)
    assert spec.interfaces == sorted([SUB4, SUB6]) and spec.l3_context == ROUTER
    assert spec.external_gateway is not None
    assert (spec.external_gateway.network, str(spec.external_gateway.ip), spec.external_gateway.hosts) == (
        EXT, "203.0.113.5", ["gw1"],
    )  # fmt: skip
    plain = mapping.router({**r, "external_gateway_info": None}, [], None, [])
    assert "external_gateway" not in plain.body
    fip = {"id": "e1b2c3d4-0000-4000-8000-000000000007", "project_id": PROJECT, "floating_network_id": EXT,
           "floating_ip_address": "203.0.113.10", "port_id": PORT}  # fmt: skip
    fspec = model(mapping.floating_ip(fip))
    assert isinstance(fspec, o.FloatingIp)
    assert (str(fspec.ip), fspec.endpoint, fspec.network) == ("203.0.113.10", PORT, EXT)


# ---- the journal


def rows(*spec: tuple[int, str, str]) -> list[journal.Row]:
    return [journal.Row(seq, res, oid, PROJECT) for seq, res, oid in spec]


def test_journal_sends_in_order_and_skips_rows_a_later_row_supersedes() -> None:
    js = rows((1, "network", "n"), (2, "port", "p"), (3, "security_group", "s"), (4, "port", "p"))
    row, skipped, wait = journal.head(js, now=0.0)
    assert row is not None and row.seq == 1 and skipped == [] and wait is None
    done = [journal.after(js[0], journal.SENT, 0.0), *js[1:]]
    row, skipped, _ = journal.head(done, now=0.0)
    # the port's first row would send the port's current state before its new group: the later row does
    assert [r.seq for r in skipped] == [2] and row is not None and row.seq == 3


def test_journal_waits_while_the_authority_is_away_and_keeps_order() -> None:
    js = rows((1, "network", "n"), (2, "subnet", "s"))
    first = js[0]
    for _ in range(8):
        first = journal.after(first, journal.classify(None), now=100.0)
        assert first.state == journal.PENDING  # never given up while away
    assert first.next_try == 100.0 + journal.BACKOFF_MAX
    row, _, wait = journal.head([first, js[1]], now=105.0)
    assert row is None and wait == first.next_try  # the second row does not overtake the first
    row, _, _ = journal.head([first, js[1]], now=111.0)
    assert row is not None and row.seq == 1


def test_journal_gives_up_on_a_refused_row_and_moves_on() -> None:
    js = rows((1, "port", "p"), (2, "port", "q"))
    first = js[0]
    for _ in range(journal.MAX_REFUSALS):
        first = journal.after(first, journal.classify(422), now=0.0, error="422 invalid: nope")
    assert first.state == journal.FAILED and first.error == "422 invalid: nope"
    row, _, _ = journal.head([first, js[1]], now=1000.0)
    assert row is not None and row.seq == 2


def test_outcomes_of_http_statuses() -> None:
    assert [journal.classify(s) for s in (200, 201, 404, 409, 422, 403, 500, 503, 401, None)] == [
        "sent", "sent", "sent", "refused", "refused", "refused", "away", "away", "away", "away",
    ]  # fmt: skip
    assert [journal.backoff(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]


def test_refusals_name_the_resources_to_send_again() -> None:
    in_use = (
        f"409 in_use: subnet '{SUB4}' is in use by endpoint '{PORT}', endpoint '{PORT}': delete or change"
    )
    assert journal.mentioned(in_use, SUB4) == [("port", PORT)]
    missing = f"422 invalid: no subnet named '{SUB6}' in tenant '{PROJECT}'"
    assert journal.mentioned(missing, PORT) == [("subnet", SUB6)]
    overlap = f"409 conflict: 10.1.0.0/24 overlaps subnet '{SUB6}' (10.1.0.0/24) in l3_context 'default'"
    assert journal.mentioned(overlap, SUB4) == [("subnet", SUB6)]
    used = f"409 in_use: bridge domain '{NET}' is in use by subnet '{SUB4}' and floating IP '{SG}'"
    assert journal.mentioned(used, NET) == [("subnet", SUB4), ("floatingip", SG)]
    assert journal.mentioned("422 invalid: a port needs protocol tcp or udp", PORT) == []


# ---- the full sync's plan


def test_full_sync_creates_updates_and_deletes_only_what_the_driver_made() -> None:
    desired = [*mapping.tenant(PROJECT), *mapping.network_objects(NETWORK, None)]
    actual = {
        "tenants": [{"name": PROJECT}, {"name": "acme"}],
        "l3-contexts": [{"name": "default", "tenant": PROJECT}, {"name": "vrf1", "tenant": "acme"}],
        "bridge-domains": [{"name": "f" * 8 + "-0000-4000-8000-000000000000", "tenant": PROJECT}],
        "external-networks": [{"name": "public"}, {"name": EXT}],
    }
    items = reconcile.plan([x for x in desired if x is not None], actual)
    ops = [(i["op"], i["kind"], i["object"]["name"]) for i in items]
    assert ("delete", "bridge-domains", "f" * 8 + "-0000-4000-8000-000000000000") in ops
    assert ("delete", "external-networks", EXT) in ops
    assert not any(name in ("acme", "vrf1", "public") for _, _, name in ops)  # the operator's own
    assert ("update", "tenants", PROJECT) in ops and ("create", "bridge-domains", NET) in ops
    assert [op for op, _, _ in ops] == sorted((op for op, _, _ in ops), key=lambda op: op != "delete")
    kinds = [k for op, k, _ in ops if op != "delete"]
    assert kinds.index("tenants") < kinds.index("l3-contexts") < kinds.index("bridge-domains")


# ---- the journal table's time columns


def test_journal_times_are_stored_to_the_subsecond() -> None:
    """A retry time (epoch seconds, ~1.8e9) in MySQL's single-precision FLOAT is a multiple of
    128 s: the head row waited up to a minute after the authority came back, or was retried with no
    backoff. The column is DOUBLE, and an older table's FLOAT columns are widened."""
    assert str(columns.time_type().compile(dialect=mysql.dialect())) == "DOUBLE"
    pg = postgresql.dialect()  # type: ignore[no-untyped-call]
    assert str(columns.time_type().compile(dialect=pg)) == "DOUBLE PRECISION"
    old = [
        {"name": "seq", "type": mysql.BIGINT()},
        {"name": "next_try", "type": mysql.FLOAT()},
        {"name": "created_at", "type": mysql.FLOAT()},
    ]
    assert columns.widen_statements("t", old, "mysql") == [
        "ALTER TABLE t MODIFY next_try DOUBLE NOT NULL, MODIFY created_at DOUBLE NOT NULL"
    ]
    new = [{"name": "next_try", "type": mysql.DOUBLE()}, {"name": "created_at", "type": mysql.DOUBLE()}]
    assert columns.widen_statements("t", new, "mysql") == []
    assert columns.widen_statements("t", old, "postgresql") == []
    # what single precision did to a retry half a second away
    engine = sa.create_engine("sqlite://")
    meta = sa.MetaData()
    table = sa.Table("j", meta, sa.Column("t", columns.time_type()))
    meta.create_all(engine)
    when = 1_795_820_000.5
    with engine.begin() as conn:
        conn.execute(table.insert().values(t=when))
        assert conn.execute(sa.select(table.c.t)).scalar_one() == when
