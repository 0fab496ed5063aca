"""Intent → MO tree → wire → the agent's typed view gives back what the intent says.

The authority writes policy with ``authority/opflex/policy_tree.py``; an agent
reads it with ``agent/view.py`` and ``agent/endpoints.py``. Both spell GBP
names through ``opflex/gbp.py``; these tests hold the two ends to each other:
every MO goes through its JSON wire form (as it would over a session) before
the reader sees it, and the expected values are written out here from the
intent, not computed by the code under test. Pure and fast: no sockets.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from policyfabric.agent.endpoints import declaration
from policyfabric.agent.reader import local_endpoint, policy_view, remote_endpoints
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    DhcpSubnet,
    Endpoint,
    ExternalNet,
    FloatingIp,
    Group,
    IpAddress,
    Ipv4Address,
    Ipv6Subnet,
    Mac,
    Network,
    Prefix,
    RouterGateway,
    RouterInterface,
    Rule,
    SgRule,
    router_identity,
)
from policyfabric.authority.opflex.policy_tree import EndpointMemo, global_tree, tenant_tree
from policyfabric.authority.opflex.repository import tenant_of
from policyfabric.model import objects as o
from policyfabric.opflex.gbp import (
    NO_MEMBER,
    Cls,
    Prop,
    endpoint_uri,
    external_network_uri,
    members_uri,
    uri_of,
)
from policyfabric.opflex.mo import MO, Tree, ref
from policyfabric.opflex.uri import EPR_L2, EPR_L3, child, unescape

T = "acme"
IPV4, IPV6 = 0x0800, 0x86DD
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58


def over_the_wire(*trees: Tree) -> dict[str, MO]:
    """The agent's cache after resolving every object: each MO through JSON and back."""
    cache: dict[str, MO] = {}
    for tree in trees:
        for uri, mo in tree.mos.items():
            cache[uri] = MO.from_wire(json.loads(json.dumps(mo.to_wire())))
    return cache


def policy(
    objects: Mapping[str, Sequence[o.Spec]],
    ids: Mapping[str, Mapping[str, int]],
    gateways: Mapping[str, tuple[str, str]] | None = None,
    networks: Sequence[o.ExternalNetwork] = (),
    tenant: str = T,
) -> dict[str, MO]:
    return over_the_wire(tenant_tree(tenant, objects, ids, gateways), global_tree([tenant], networks))


def u(cls: str, name: str) -> str:
    return uri_of(T, cls, name)


# ---- one intent with every kind of object -------------------------------------------------------

PUBLIC = o.ExternalNetwork(
    name="public", cidr="203.0.113.0/24", gateway_ip="203.0.113.1", physical_network="physnet1"
)
INTENT: dict[str, list[o.Spec]] = {
    "l3_context": [o.L3Context(name="vrf1", tenant=T)],
    "bridge_domain": [
        o.BridgeDomain(name="bd-web", tenant=T, l3_context="vrf1", mtu=1400),
        o.BridgeDomain(name="bd-app", tenant=T, l3_context="vrf1"),
    ],
    "subnet": [
        o.Subnet(name="s-web", tenant=T, bridge_domain="bd-web", cidr="10.1.0.0/24"),
        o.Subnet(name="s-app", tenant=T, bridge_domain="bd-app", cidr="10.2.0.0/24", gateway_ip="10.2.0.254"),
        o.Subnet(name="s-v6", tenant=T, bridge_domain="bd-web", cidr="2001:db8:1::/64", ipv6_ra_mode="slaac"),
    ],
    "contract": [
        o.Contract(
            name="http",
            tenant=T,
            rules=[
                o.ContractRule(
                    name="web-in", classifier=o.Classifier(protocol="tcp", port=80, ethertype="ipv4")
                ),
                o.ContractRule(
                    name="rtp",
                    classifier=o.Classifier(protocol="udp", port="5000-5010", direction="bidirectional"),
                    action="drop",
                ),
                o.ContractRule(
                    name="ping", classifier=o.Classifier(protocol="icmp", direction="out"), action="log"
                ),
            ],
        )
    ],
    "endpoint_group": [
        o.EndpointGroup(name="web", tenant=T, bridge_domain="bd-web", provides=["http"], intra_group="deny"),
        o.EndpointGroup(name="app", tenant=T, bridge_domain="bd-app", consumes=["http"]),
    ],
    "security_group": [
        o.SecurityGroup(
            name="ssh",
            tenant=T,
            rules=[
                o.SecurityGroupRule(
                    direction="ingress", protocol="tcp", port=22, remote_ip_prefix="192.0.2.0/24"
                ),
                o.SecurityGroupRule(direction="egress"),
                o.SecurityGroupRule(
                    direction="ingress", protocol="tcp", port="8000-8080", remote_group="ssh"
                ),
                o.SecurityGroupRule(direction="ingress", protocol="icmpv6", remote_ip_prefix="2001:db8::/32"),
            ],
        )
    ],
    "endpoint": [
        o.Endpoint(
            name="web1",
            tenant=T,
            epg="web",
            ip=["10.1.0.10", "slaac"],
            mac="02:00:00:00:00:01",
            security_groups=["ssh"],
            host="h1",
        ),
        o.Endpoint(name="app1", tenant=T, epg="app", ip=["10.2.0.20"], mac="02:00:00:00:00:02"),
        o.Endpoint(
            name="vm9",
            tenant=T,
            subnet="s-app",
            ip=["10.2.0.30"],
            mac="02:00:00:00:00:09",
            security_groups=["ssh"],
        ),
    ],
    "router": [
        o.Router(
            name="r1",
            tenant=T,
            l3_context="vrf1",
            interfaces=["s-web", "s-app"],
            external_gateway=o.ExternalGateway(network="public", hosts=["gw1", "gw2"], ip="203.0.113.2"),
        )
    ],
    "floating_ip": [
        o.FloatingIp(name="f1", tenant=T, network="public", ip="203.0.113.10", endpoint="web1"),
        o.FloatingIp(name="f2", tenant=T, network="public", ip="203.0.113.11"),  # unbound: not rendered
    ],
}
IDS = {
    "vni": {"l3_context/vrf1": 7001, "bridge_domain/bd-web": 5001, "bridge_domain/bd-app": 5002},
    "classid": {"endpoint_group/web": 16385, "endpoint_group/app": 16386},
}
GATEWAYS = {"r1": ("gw2", "192.0.2.4")}
SLAAC_WEB1 = IpAddress("2001:db8:1::ff:fe00:1")  # web1's SLAAC address: 02:00:00:00:00:01 in s-v6


def full() -> tuple[dict[str, MO], Network]:
    cache = policy(INTENT, IDS, GATEWAYS, [PUBLIC])
    return cache, policy_view(cache)


def test_bridge_domains_carry_their_vni_and_their_routing_domains_zone() -> None:
    _, view = full()
    assert {uri: replace(bd, ipv6=()) for uri, bd in view.bds.items()} == {  # IPv6 subnets: below
        u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"): BridgeDomain(
            u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"),
            5001,
            7001,
            1400,
            dhcp_subnets(INTENT["subnet"], "bd-web"),
            slaac=(Prefix("2001:db8:1::/64"),),  # s-v6, a SLAAC subnet
        ),
        u(Cls.GBP_BRIDGE_DOMAIN, "bd-app"): BridgeDomain(
            u(Cls.GBP_BRIDGE_DOMAIN, "bd-app"), 5002, 7001, 1442, dhcp_subnets(INTENT["subnet"], "bd-app")
        ),
    }
    advertised = Ipv6Subnet(Prefix("2001:db8:1::/64"), IpAddress("2001:db8:1::1"), "slaac")  # s-v6
    assert view.bds[u(Cls.GBP_BRIDGE_DOMAIN, "bd-web")].ipv6 == (advertised,)
    assert view.bds[u(Cls.GBP_BRIDGE_DOMAIN, "bd-app")].ipv6 == ()


def test_groups_carry_their_class_id_bridge_domain_and_contracts() -> None:
    _, view = full()
    http = u(Cls.GBP_CONTRACT, "http")
    assert dict(view.groups) == {
        u(Cls.GBP_EP_GROUP, "web"): Group(
            u(Cls.GBP_EP_GROUP, "web"), 16385, u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"), False, (http,), ()
        ),
        u(Cls.GBP_EP_GROUP, "app"): Group(
            u(Cls.GBP_EP_GROUP, "app"), 16386, u(Cls.GBP_BRIDGE_DOMAIN, "bd-app"), True, (), (http,)
        ),
    }


def test_contract_rules_come_back_in_order_with_their_classifier_and_action() -> None:
    _, view = full()
    http = u(Cls.GBP_CONTRACT, "http")
    assert dict(view.contracts) == {
        http: Contract(
            http,
            (
                Rule("http.web-in", 0, True, "in", IPV4, TCP, (80, 80)),
                Rule("http.rtp", 1, False, "bidirectional", None, UDP, (5000, 5010)),
                Rule("http.ping", 2, True, "out", None, ICMP, None, log=True),  # action log: allow, and log
            ),
        )
    }


def test_security_groups_keep_prefixes_remote_groups_and_their_address_set() -> None:
    _, view = full()
    ssh = u(Cls.GBP_SEC_GROUP, "ssh")
    assert view.security_groups[ssh].rules == (
        SgRule(f"{ssh}#0", 0, True, "in", IPV4, TCP, (22, 22), remote_prefix=Prefix("192.0.2.0/24")),
        SgRule(f"{ssh}#1", 1, True, "out", IPV4, None, None),
        SgRule(f"{ssh}#2", 2, True, "in", IPV4, TCP, (8000, 8080), remote_group=ssh),
        SgRule(f"{ssh}#3", 3, True, "in", IPV6, ICMPV6, None, remote_prefix=Prefix("2001:db8::/32")),
    )
    # its members' addresses from the intent, web1's slaac entry as its SLAAC address (the
    # placeholder that keeps an empty set closed for reference peers is not a member)
    assert dict(view.address_sets) == {ssh: ("10.1.0.10", "10.2.0.30", SLAAC_WEB1)}


def test_routers_have_a_leg_per_subnet_and_the_elected_external_gateway() -> None:
    _, view = full()
    r1 = u(Cls.PF_ROUTER, "r1")
    [router] = view.routers.values()
    number, mac = router_identity(r1)
    assert (router.uri, router.number, router.mac) == (r1, number, mac)
    assert router.interfaces == (
        RouterInterface(u(Cls.GBP_BRIDGE_DOMAIN, "bd-app"), IpAddress("10.2.0.254"), Prefix("10.2.0.0/24")),
        RouterInterface(u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"), IpAddress("10.1.0.1"), Prefix("10.1.0.0/24")),
    )
    assert router.gateway == RouterGateway(
        external_network_uri("public"), Ipv4Address("203.0.113.2"), True, "gw2", Ipv4Address("192.0.2.4")
    )


def test_external_networks_and_bound_floating_ips() -> None:
    _, view = full()
    public = external_network_uri("public")
    assert dict(view.external) == {
        public: ExternalNet(public, "public", Prefix("203.0.113.0/24"), Ipv4Address("203.0.113.1"))
    }
    assert view.floating_ips == (FloatingIp(Ipv4Address("203.0.113.10"), public, "acme/web1"),)


def test_without_an_election_the_gateway_has_no_active_host() -> None:
    view = policy_view(policy(INTENT, IDS, None, [PUBLIC]))
    [router] = view.routers.values()
    assert router.gateway is not None and (router.gateway.active_host, router.gateway.active_vtep) == (
        "",
        None,
    )


def test_local_endpoints_from_their_intent() -> None:
    cache, view = full()
    web1 = local_endpoint(cache, view.groups, "acme/web1", endpoint_uri(T, "web1"), 7, "tap-web1")
    assert web1 == Endpoint(
        "acme/web1",
        Mac("02:00:00:00:00:01"),
        (IpAddress("10.1.0.10"), SLAAC_WEB1),  # its slaac entry: EUI-64 of its MAC in s-v6
        u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"),
        16385,
        ofport=7,
        security_groups=(u(Cls.GBP_SEC_GROUP, "ssh"),),
        interface="tap-web1",
    )
    # no group: its bridge domain is its subnet's, class id 0, judged by security groups
    vm9 = local_endpoint(cache, view.groups, "acme/vm9", endpoint_uri(T, "vm9"), 9)
    assert vm9 == Endpoint(
        "acme/vm9",
        Mac("02:00:00:00:00:09"),
        (IpAddress("10.2.0.30"),),
        u(Cls.GBP_BRIDGE_DOMAIN, "bd-app"),
        0,
        ofport=9,
        security_groups=(u(Cls.GBP_SEC_GROUP, "ssh"),),
    )
    assert vm9.sg_governed and not local_endpoint(cache, view.groups, "acme/x", endpoint_uri(T, "x"), 1)


def test_declarations_and_what_another_host_makes_of_them() -> None:
    cache, _ = full()
    decl = declaration(cache, T, "web1", "tap-web1", "192.0.2.1")
    assert decl is not None
    bd, rd = u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"), u(Cls.GBP_ROUTING_DOMAIN, "vrf1")
    assert decl.bridge_domain == bd
    l2_uri = child(EPR_L2, "EprL2Ep", bd, "02:00:00:00:00:01")
    # its addresses as the model lists them, slaac resolved (EUI-64 of its MAC); its tunnel is ours
    assert [(m.subject, m.properties) for m in decl.l2_children] == [
        ("EprL3Net", {"ip": "10.1.0.10"}),
        ("EprL3Net", {"ip": SLAAC_WEB1}),
        ("PfEpTunnel", {"tunnelIp": "192.0.2.1", "classid": 16385}),
    ]
    assert decl.l2.to_wire() == {
        "subject": "EprL2Ep",
        "uri": l2_uri,
        "properties": [
            {"name": "uuid", "data": "acme/web1"},
            {"name": "mac", "data": "02:00:00:00:00:01"},
            {"name": "group", "data": u(Cls.GBP_EP_GROUP, "web")},
            {"name": "context", "data": bd},
            {"name": "interfaceName", "data": "tap-web1"},
        ],
        "children": [
            l2_uri + "EprL3Net/10.1.0.10/",
            l2_uri + "EprL3Net/2001%3adb8%3a1%3a%3aff%3afe00%3a1/",
            l2_uri + "PfEpTunnel/",
        ],
        "parent_subject": "EprL2Universe",
        "parent_uri": "/EprL2Universe/",
        "parent_relation": "EprL2Ep",
    }
    l3, l3_slaac = decl.l3  # one per address, its SLAAC address too
    assert (l3.subject, l3.uri) == ("EprL3Ep", child(EPR_L3, "EprL3Ep", rd, "10.1.0.10"))
    assert (l3.properties["ip"], l3.properties["context"]) == ("10.1.0.10", rd)
    assert (l3_slaac.uri, l3_slaac.properties["ip"]) == (child(EPR_L3, "EprL3Ep", rd, SLAAC_WEB1), SLAAC_WEB1)
    # a remote host reads the declaration back from the registry
    wired = {m.uri: MO.from_wire(json.loads(json.dumps(m.to_wire()))) for m in decl.all}
    assert remote_endpoints(wired, "192.0.2.99", set()) == (
        Endpoint(
            "acme/web1",
            Mac("02:00:00:00:00:01"),
            (IpAddress("10.1.0.10"), SLAAC_WEB1),
            bd,
            16385,
            vtep=Ipv4Address("192.0.2.1"),
        ),
    )
    assert remote_endpoints(wired, "192.0.2.1", set()) == ()  # its own host skips it
    # vm9 has no group: no group reference, no class id
    vm9 = declaration(cache, T, "vm9")
    assert vm9 is not None and Prop.GROUP not in vm9.l2.properties
    assert [m.subject for m in vm9.l2_children] == ["EprL3Net"]  # no tunnel given, no class id


# ---- random intents -------------------------------------------------------------------------------

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
PROTOCOLS = {"tcp": TCP, "udp": UDP, "icmp": ICMP, "any": None}
ETHERTYPES = {"ipv4": IPV4, "ipv6": IPV6, "any": None}


@st.composite
def classifiers(draw: st.DrawFn) -> o.Classifier:
    protocol = draw(st.sampled_from(sorted(PROTOCOLS)))
    port: int | str | None = None
    if protocol in ("tcp", "udp") and draw(st.booleans()):
        low = draw(st.integers(1, 65535))
        high = draw(st.integers(low, 65535))
        port = low if low == high else f"{low}-{high}"
    ethertype = draw(st.sampled_from(["ipv4", "any"] if protocol == "icmp" else sorted(ETHERTYPES)))
    direction = draw(st.sampled_from(["in", "out", "bidirectional"]))
    return o.Classifier(protocol=protocol, port=port, ethertype=ethertype, direction=direction)


@st.composite
def intents(draw: st.DrawFn) -> tuple[str, dict[str, list[o.Spec]], dict[str, dict[str, int]]]:
    tenant = draw(LABEL)
    names = draw(st.lists(LABEL, min_size=4, max_size=4, unique=True))
    vrf, bd, epg, contract = names
    vnis = draw(st.lists(st.integers(1, 2**24 - 1), min_size=2, max_size=2))
    classid = draw(st.integers(1, 2**16 - 1))
    net = ipaddress.ip_network(f"10.{draw(st.integers(0, 255))}.0.0/24")
    rules = [
        o.ContractRule(
            name=n, classifier=draw(classifiers()), action=draw(st.sampled_from(["allow", "drop", "log"]))
        )
        for n in draw(st.lists(LABEL, max_size=4, unique=True))
    ]
    hosts = draw(st.lists(st.integers(2, 253), min_size=1, max_size=3, unique=True))
    mac = draw(st.integers(0, 2**40 - 1))
    eps = [
        o.Endpoint(
            name=f"ep{i}",
            tenant=tenant,
            epg=epg,
            ip=[str(net[h])],
            mac="02:" + ":".join(f"{(mac + i) >> (8 * k) & 0xFF:02x}" for k in range(4, -1, -1)),
        )
        for i, h in enumerate(hosts)
    ]
    objects: dict[str, list[o.Spec]] = {
        "l3_context": [o.L3Context(name=vrf, tenant=tenant)],
        "bridge_domain": [o.BridgeDomain(name=bd, tenant=tenant, l3_context=vrf)],
        "subnet": [o.Subnet(name="s", tenant=tenant, bridge_domain=bd, cidr=str(net))],
        "contract": [o.Contract(name=contract, tenant=tenant, rules=rules)],
        "endpoint_group": [o.EndpointGroup(name=epg, tenant=tenant, bridge_domain=bd, provides=[contract])],
        "endpoint": list(eps),
    }
    ids = {
        "vni": {f"l3_context/{vrf}": vnis[0], f"bridge_domain/{bd}": vnis[1]},
        "classid": {f"endpoint_group/{epg}": classid},
    }
    return tenant, objects, ids


def dhcp_subnets(subnets: Sequence[o.Spec], bd: str) -> tuple[DhcpSubnet, ...]:
    """What the agent answers DHCP with on bridge domain ``bd``: its IPv4 subnets with DHCP on."""
    return tuple(
        sorted(
            (
                DhcpSubnet(
                    Prefix(str(s.cidr)),
                    Ipv4Address(str(s.gateway_ip)),
                    tuple(Ipv4Address(str(a)) for a in s.dns_nameservers),
                    tuple((Prefix(str(r.destination)), Ipv4Address(str(r.nexthop))) for r in s.host_routes),
                )
                for s in subnets
                if isinstance(s, o.Subnet) and s.bridge_domain == bd and s.cidr.version == 4 and s.enable_dhcp
            ),
            key=lambda d: d.prefix,
        )
    )


def expected_rule(contract: str, order: int, rule: o.ContractRule) -> Rule:
    c = rule.classifier
    ports = None
    if isinstance(c.port, int):
        ports = (c.port, c.port)
    elif isinstance(c.port, str):
        low, high = c.port.split("-")
        ports = (int(low), int(high))
    return Rule(
        f"{contract}.{rule.name}",
        order,
        rule.action != "drop",
        c.direction,
        ETHERTYPES[c.ethertype],
        PROTOCOLS[c.protocol],
        ports,
        log=rule.action == "log" or rule.log,
    )


@settings(max_examples=60, deadline=None)
@given(intents())
def test_any_intent_comes_back_from_the_agents_view(
    intent: tuple[str, dict[str, list[o.Spec]], dict[str, dict[str, int]]],
) -> None:
    tenant, objects, ids = intent
    cache = policy(objects, ids, tenant=tenant)
    view = policy_view(cache)
    [vrf] = objects["l3_context"]
    [bd] = objects["bridge_domain"]
    [epg] = objects["endpoint_group"]
    [contract] = objects["contract"]
    assert isinstance(contract, o.Contract) and isinstance(bd, o.BridgeDomain)
    bd_uri = uri_of(tenant, Cls.GBP_BRIDGE_DOMAIN, bd.name)
    assert dict(view.bds) == {
        bd_uri: BridgeDomain(
            bd_uri,
            ids["vni"][f"bridge_domain/{bd.name}"],
            ids["vni"][f"l3_context/{vrf.name}"],
            bd.mtu,
            dhcp_subnets(objects["subnet"], bd.name),
        )
    }
    group = view.groups[uri_of(tenant, Cls.GBP_EP_GROUP, epg.name)]
    assert (group.classid, group.bd) == (ids["classid"][f"endpoint_group/{epg.name}"], bd_uri)
    c_uri = uri_of(tenant, Cls.GBP_CONTRACT, contract.name)
    assert group.provides == (c_uri,)
    assert view.contracts[c_uri].rules == tuple(
        expected_rule(contract.name, i, r) for i, r in enumerate(contract.rules)
    )
    for ep in objects["endpoint"]:
        assert isinstance(ep, o.Endpoint)
        key = f"{tenant}/{ep.name}"
        local = local_endpoint(cache, view.groups, key, endpoint_uri(tenant, ep.name), 1)
        assert local is not None
        assert (local.mac, local.ips, local.bd, local.classid) == (
            ep.mac,
            tuple(map(str, ep.ip)),
            bd_uri,
            group.classid,
        )
        decl = declaration(cache, tenant, ep.name, None, "192.0.2.1")
        assert decl is not None
        [remote] = remote_endpoints({m.uri: m for m in decl.all}, "192.0.2.2", set())
        assert remote == Endpoint(
            key, Mac(str(ep.mac)), local.ips, bd_uri, group.classid, vtep=Ipv4Address("192.0.2.1")
        )
        [l3] = decl.l3
        assert l3.uri == child(
            EPR_L3, Cls.EPR_L3_EP, uri_of(tenant, Cls.GBP_ROUTING_DOMAIN, vrf.name), str(ep.ip[0])
        )


# ---- names that need escaping ---------------------------------------------------------------------

# what a URI gives meaning to ("/" separates names, "%" escapes), and anything else
ANY_NAME = st.text(st.sampled_from("/%:.~-_ ?#aZ0é") | st.characters(codec="utf-8"), min_size=1, max_size=12)


@settings(max_examples=80, deadline=None)
@given(st.lists(ANY_NAME, min_size=7, max_size=7, unique=True))
def test_names_are_escaped_in_uris_and_read_back_unchanged(names: list[str]) -> None:
    """The model only takes DNS labels, but nothing between writer and reader relies on that: any
    name is escaped into its URIs and comes back as it was."""
    tenant, vrf, bd, epg, ep, contract, rule = names

    def named(spec: Any, **renames: Any) -> Any:
        return spec.model_copy(update=renames)  # around the label check, on purpose

    objects: dict[str, list[o.Spec]] = {
        "l3_context": [named(o.L3Context(name="v", tenant="t"), name=vrf, tenant=tenant)],
        "bridge_domain": [
            named(o.BridgeDomain(name="b", tenant="t", l3_context="v"), name=bd, l3_context=vrf)
        ],
        "subnet": [
            named(o.Subnet(name="s", tenant="t", bridge_domain="b", cidr="10.0.0.0/24"), bridge_domain=bd)
        ],
        "contract": [
            named(
                o.Contract(name="c", tenant="t", rules=[o.ContractRule(name="r")]),
                name=contract,
                rules=[named(o.ContractRule(name="r"), name=rule)],
            )
        ],
        "endpoint_group": [
            named(
                o.EndpointGroup(name="g", tenant="t", bridge_domain="b"),
                name=epg,
                bridge_domain=bd,
                provides=[contract],
            )
        ],
        "endpoint": [
            named(
                o.Endpoint(name="e", tenant="t", epg="g", ip=["10.0.0.5"], mac="02:00:00:00:00:05"),
                name=ep,
                epg=epg,
            )
        ],
    }
    ids = {
        "vni": {f"bridge_domain/{bd}": 42, f"l3_context/{vrf}": 43},
        "classid": {f"endpoint_group/{epg}": 7},
    }
    cache = policy(objects, ids, tenant=tenant)
    view = policy_view(cache)
    bd_uri = uri_of(tenant, Cls.GBP_BRIDGE_DOMAIN, bd)
    c_uri = uri_of(tenant, Cls.GBP_CONTRACT, contract)
    assert dict(view.bds) == {bd_uri: BridgeDomain(bd_uri, 42, 43, 1442, dhcp_subnets(objects["subnet"], bd))}
    assert dict(view.groups) == {
        uri_of(tenant, Cls.GBP_EP_GROUP, epg): Group(
            uri_of(tenant, Cls.GBP_EP_GROUP, epg), 7, bd_uri, True, (c_uri,)
        )
    }
    assert [r.key for r in view.contracts[c_uri].rules] == [f"{contract}.{rule}"]
    e_uri = endpoint_uri(tenant, ep)
    assert tenant_of(e_uri) == tenant and unescape(e_uri.rstrip("/").rsplit("/", 1)[1]) == ep
    local = local_endpoint(cache, view.groups, f"{tenant}/{ep}", e_uri, 1)
    assert local is not None and (local.bd, local.classid) == (bd_uri, 7)
    decl = declaration(cache, tenant, ep)
    assert decl is not None and decl.l2.properties[Prop.UUID] == f"{tenant}/{ep}"
    assert decl.l3[0].uri == child(
        EPR_L3, Cls.EPR_L3_EP, uri_of(tenant, Cls.GBP_ROUTING_DOMAIN, vrf), "10.0.0.5"
    )


def test_a_peer_that_ignores_our_classes_sees_remote_groups_restricted_never_open() -> None:
    """What a reference peer reads: every ``Pf*`` object dropped (libopflex drops unknown classes).
    A rule limited to a remote group still carries the model's remote-address set, and that set
    is never empty (an empty one means "any address" to the reference agent), even for a group
    with no members; the classifier's ethertype is the model's enum constant, by name."""
    intent = {**INTENT, "security_group": [*INTENT["security_group"], _lonely_group()]}
    tree = tenant_tree("acme", intent, IDS, GATEWAYS)
    seen = {uri: mo for uri, mo in tree.mos.items() if not mo.subject.startswith("Pf")}
    rules = [mo for mo in seen.values() if mo.subject == Cls.GBP_SEC_GROUP_RULE]
    by_group = [r for r in rules if child(r.uri, Cls.PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC) in tree.mos]
    assert len(by_group) == 2
    for rule in by_group:
        [relation] = [
            seen[c]
            for c in rule.children
            if seen.get(c) and c.startswith(child(rule.uri, Cls.GBP_SEC_GROUP_RULE_TO_REMOTE_ADDRESS_RSRC))
        ]
        container = seen[relation.properties[Prop.TARGET]["reference_uri"]]
        addresses = [seen[c].properties[Prop.ADDRESS] for c in container.children]
        assert addresses and all(a != "0.0.0.0" for a in addresses), addresses
    lonely = seen[members_uri("acme", "nobody")]
    assert [seen[c].properties[Prop.ADDRESS] for c in lonely.children] == [NO_MEMBER]
    assert {
        mo.properties.get(Prop.ETHER_T) for mo in seen.values() if mo.subject == Cls.GBPE_L24_CLASSIFIER
    } <= {"ipv4", "ipv6", None}
    # and our agent reads the lonely group's set as empty: nothing allowed
    view = policy_view(tree.mos)
    assert view.address_sets[u(Cls.GBP_SEC_GROUP, "nobody")] == ()


def _lonely_group() -> o.SecurityGroup:
    """A group that allows ssh from its own members, of which there are none."""
    rule = o.SecurityGroupRule(direction="ingress", protocol="tcp", port=22, remote_group="nobody")
    return o.SecurityGroup(name="nobody", tenant=T, rules=[rule])


def test_a_rebuild_with_the_memo_reuses_what_did_not_change_and_equals_a_fresh_build() -> None:
    """The repository rebuilds a tenant's tree after every write: endpoints whose spec and bridge
    domain are the same keep their object (identical, so the diff skips them); a changed one, or
    one whose group moved to another bridge domain, is built anew; the tree always equals a build
    without the memo."""
    memo: EndpointMemo = {}
    first = tenant_tree("acme", INTENT, IDS, GATEWAYS, memo)
    web1 = endpoint_uri(T, "web1")
    moved = [s for s in INTENT["endpoint"] if s.name != "vm9"] + [
        o.Endpoint(name="vm9", tenant=T, subnet="s-app", ip=["10.2.0.31"], mac="02:00:00:00:00:09")
    ]
    again = tenant_tree("acme", {**INTENT, "endpoint": moved}, IDS, GATEWAYS, memo)
    assert again.mos[web1] is first.mos[web1]
    assert again.mos[endpoint_uri(T, "vm9")] is not first.mos[endpoint_uri(T, "vm9")]
    assert again.mos == tenant_tree("acme", {**INTENT, "endpoint": moved}, IDS, GATEWAYS).mos
    groups = [
        s.model_copy(update={"bridge_domain": "bd-app"}) if s.name == "web" else s
        for s in INTENT["endpoint_group"]
    ]
    regrouped = tenant_tree(
        "acme", {**INTENT, "endpoint": moved, "endpoint_group": groups}, IDS, GATEWAYS, memo
    )
    assert regrouped.mos[web1] is not again.mos[web1]
    assert regrouped.mos[web1].properties[Prop.BRIDGE_DOMAIN] == ref(
        Cls.GBP_BRIDGE_DOMAIN, u(Cls.GBP_BRIDGE_DOMAIN, "bd-app")
    )
    assert set(memo) == {s.name for s in moved}
