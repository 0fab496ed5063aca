"""The agent's reader refuses what does not parse; it never hands a renderer a string off the wire.

The finding: an address such as ``10.1.0.77 actions=drop\\ncookie=0x0,table=0,priority=65535,
actions=NORMAL #`` in a registry entry became a flow. Here every property that reaches a renderer,
in the registry's entries and in the policy objects, gets hostile values (flow syntax, spaces,
commas, newlines, an IPv6 zone, numbers out of range, the wrong JSON type): the object holding it
must be left out of the view, an ``Invalid`` must name its URI and property, and every compiled
flow must still be canonical (``canonical_flow``: each match value and action argument a canonical
address, MAC, number or keyword of its field). A hypothesis test then throws any values at any
properties and holds the compiled flows to the same check. Valid input: test_policy_roundtrip.py.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policyfabric.agent.endpoints import declaration
from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent
from policyfabric.agent.reader import local_endpoint, policy_view, remote_endpoints
from policyfabric.agent.renderers.configfile import compile_config
from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.values import InvalidPolicy
from policyfabric.agent.view import Invalid, Network
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, external_network_uri, members_uri
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import child
from tests.test_policy_roundtrip import GATEWAYS, IDS, INTENT, PUBLIC, T, policy, u

INJECTION = "10.1.0.77 actions=drop\ncookie=0x0,table=0,priority=65535,actions=NORMAL #"
HOSTILE: list[Any] = [
    INJECTION,
    "10.1.0.77,actions=NORMAL",
    " 10.1.0.77",
    "fe80::1%eth0 actions=NORMAL",
    "02:00:00:00:00:01\n",
    "0x4001,actions=NORMAL",
    167837773,
    -1,
    1 << 40,
    True,
    {"subject": "GbpEpGroup", "reference_uri": "/a b/,actions=NORMAL/"},
]
TUNNEL = 100


# ---- a host's view, as the agent builds it ------------------------------------------------------


def cache() -> dict[str, MO]:
    """The resolved policy of test_policy_roundtrip's intent, through the wire."""
    return policy(INTENT, IDS, GATEWAYS, [PUBLIC])


def registry(policy_cache: dict[str, MO]) -> list[MO]:
    """What another host (192.0.2.2) declared for app1, through the wire."""
    decl = declaration(policy_cache, T, "app1", "tap-app1", "192.0.2.2")
    assert decl is not None
    return [MO.from_wire(json.loads(json.dumps(m.to_wire()))) for m in decl.all]


def entry(entries: list[MO], where: str) -> MO:
    """app1's registry entry (``app1``), its address (``app1/ip``) or its tunnel (``app1/tunnel``)."""
    subject = {"app1": Cls.EPR_L2_EP, "app1/ip": Cls.EPR_L3_NET, "app1/tunnel": Cls.PF_EP_TUNNEL}[where]
    return next(m for m in entries if m.subject == subject)


def agent_view(policy_cache: dict[str, MO], entries: list[MO]) -> Network:
    """h1's view (web1 and vm9 plugged, hybrid; app1 remote; a port on the public network; the
    active SNAT gateway), built as ``OvsAgent.network`` builds it."""
    invalid: list[Invalid] = []
    base = policy_view(policy_cache, invalid)
    local = []
    for name, port in (("web1", 7), ("vm9", 9)):
        ep = local_endpoint(
            policy_cache, base.groups, f"{T}/{name}", endpoint_uri(T, name), port, f"qvo{port}", invalid
        )
        if ep is not None:
            local.append(ep)
    remote = remote_endpoints({m.uri: m for m in entries}, "192.0.2.1", {e.key for e in local}, invalid)
    external = {uri: replace(ext, ofport=5) for uri, ext in base.external.items()}
    return replace(
        base,
        local=tuple(local),
        remote=remote,
        external=external,
        host="gw2",
        tunnel_port=TUNNEL,
        invalid=tuple(invalid),
    )


# ---- what a canonical flow is -------------------------------------------------------------------

MAC = r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}"
INT = r"(?:0x[0-9a-f]+|[0-9]+)"
KEYWORDS = frozenset({"ip", "ipv6", "arp", "tcp", "udp", "icmp", "icmp6", "tcp6", "udp6"})
MAC_FIELDS = frozenset({"dl_src", "dl_dst", "arp_sha", "arp_tha", "eth_src", "eth_dst"})
IPV4_FIELDS = frozenset({"nw_src", "nw_dst", "arp_spa", "arp_tpa", "tun_dst"})
IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst"})
INT_FIELDS = re.compile(
    r"reg[0-9]|in_port|arp_op|nw_proto|icmp_type|conj_id|tun_id|tun_metadata0|tp_dst|tp_src"
)
NXM = r"NXM_(?:OF|NX)_[A-Z0-9_]+\[(?:[0-9]+\.\.[0-9]+)?\]"
ACTIONS = [
    re.compile(p)
    for p in (
        r"drop|IN_PORT|dec_ttl|CONTROLLER:[0-9]+",
        r"goto_table:[0-9]+|output:[0-9]+|resubmit\(,[0-9]+\)",
        r"controller\(max_len=[0-9]+,id=[0-9]+,userdata=[0-9a-f]{2}(?:\.[0-9a-f]{2})*,meter_id=[0-9]+\)",
        rf"conjunction\({INT},[0-9]+/[0-9]+\)",
        rf"move:{NXM}->{NXM}",
        rf"learn\(table=[0-9]+,priority=[0-9]+,idle_timeout=[0-9]+,delete_learned,cookie={INT},"
        rf"NXM_NX_REG4\[\]={INT},NXM_NX_REG9\[\]=NXM_OF_ARP_SPA\[\],"
        r"load:NXM_NX_ARP_SHA\[\]->NXM_OF_ETH_DST\[\],output:NXM_OF_IN_PORT\[\]\)",
    )
]
CT = re.compile(r"ct\((.*)\)")
CT_PART = re.compile(
    r"commit|nat|table=[0-9]+|zone=(?:[0-9]+|NXM_NX_REG3\[0\.\.15\])|nat\((?:src|dst)=(.+)\)"
)
SET_FIELD = re.compile(r"set_field:(.+)->([a-z_0-9]+)")


def canonical_ip(text: str, version: int, prefix: bool = False) -> bool:
    """``text`` is an address (or, with ``prefix``, a network) of ``version``, written canonically."""
    try:
        value: Any = ipaddress.ip_network(text) if prefix and "/" in text else ipaddress.ip_address(text)
    except ValueError:
        return False
    return value.version == version and str(value) == text and "%" not in text


def canonical_value(field: str, value: str) -> bool:
    if field in MAC_FIELDS:
        return re.fullmatch(rf"{MAC}(?:/{MAC})?", value) is not None
    if field in IPV4_FIELDS:
        return canonical_ip(value, 4, prefix=True)
    if field in IPV6_FIELDS:
        return canonical_ip(value, 6, prefix=True)
    if field == "ct_state":
        return re.fullmatch(r"(?:[+-](?:new|est|rel|rpl|inv|trk|snat|dnat))+", value) is not None
    if INT_FIELDS.fullmatch(field):
        return re.fullmatch(rf"{INT}(?:/{INT})?", value) is not None
    return False


def canonical_action(action: str) -> bool:
    if any(p.fullmatch(action) for p in ACTIONS):
        return True
    if m := SET_FIELD.fullmatch(action):
        return canonical_value(m.group(2), m.group(1))
    if m := CT.fullmatch(action):
        for part in re.split(r",(?![^(]*\))", m.group(1)):
            nat = CT_PART.fullmatch(part)
            if nat is None or (nat.group(1) is not None and not canonical_ip(nat.group(1), 4)):
                return False
        return True
    return False


def canonical_flow(flow: Flow) -> list[str]:
    """What is not canonical in ``flow`` (empty: all of it is)."""
    wrong = [
        f"{k}={v!r}" for k, v in flow.match if not ((v == "" and k in KEYWORDS) or canonical_value(k, v))
    ]
    wrong += [repr(a) for a in flow.actions if not canonical_action(a)]
    if len(flow.text().split()) != 2:
        wrong.append("whitespace in the text")
    return wrong


def rendered(net: Network) -> tuple[list[Flow], str]:
    """Every renderer's output for ``net``: the flows, and the nftables and config file text."""
    return compile_pipeline(net, TUNNEL), compile_ruleset(net).text() + compile_config(net, "h1")


def assert_canonical(net: Network) -> None:
    flows, text = rendered(net)
    for f in flows:
        assert canonical_flow(f) == [], f.text()
    assert "NORMAL" not in text and "actions=" not in text and "%eth0" not in text


# ---- valid input ---------------------------------------------------------------------------------


def test_the_checker_passes_the_valid_view_and_catches_the_finding() -> None:
    """The control: everything is there, nothing refused, every flow canonical; and the check
    itself fails on the injected flow of the finding."""
    c = cache()
    net = agent_view(c, registry(c))
    assert net.invalid == ()
    assert [e.key for e in net.local] == ["acme/web1", "acme/vm9"] and [e.key for e in net.remote] == [
        "acme/app1"
    ]
    assert net.floating_ips and len(net.contracts) == 1 and len(net.groups) == 2
    router = next(iter(net.routers.values()))
    assert len(router.interfaces) == 2 and router.gateway is not None
    assert_canonical(net)
    injected = Flow(20, 100, (("nw_src", INJECTION),), ("goto_table:30",))
    assert canonical_flow(injected) != []
    assert canonical_flow(Flow(20, 100, (("nw_src", "10.1.0.77"),), ("output:1,actions=NORMAL",))) != []


# ---- every field that reaches a renderer, with hostile values -----------------------------------

Present = Callable[[Network], bool]
SUBNETS_WEB = child(u(Cls.GBP_SUBNETS, "bd-web"), Cls.GBP_SUBNET, "s-web")
SG_REMOTE = child(u(Cls.GBP_SUBNETS, "sg.ssh.0"), Cls.GBP_SUBNET, "remote")
GATEWAY = child(u(Cls.PF_ROUTER, "r1"), Cls.PF_EXTERNAL_GATEWAY)
WEB_CTX = child(u(Cls.GBP_EP_GROUP, "web"), Cls.GBPE_INST_CONTEXT)
BD_CTX = child(u(Cls.GBP_BRIDGE_DOMAIN, "bd-web"), Cls.GBPE_INST_CONTEXT)
PROVIDES = child(
    u(Cls.GBP_EP_GROUP, "web"),
    Cls.GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC,
    Cls.GBP_CONTRACT,
    u(Cls.GBP_CONTRACT, "http"),
)
RULE = child(child(u(Cls.GBP_CONTRACT, "http"), Cls.GBP_SUBJECT, "default"), Cls.GBP_RULE, "web-in")
MEMBER = child(members_uri(T, "ssh"), Cls.GBP_SUBNET, "web1.10.1.0.10")


def local(name: str) -> Present:
    return lambda net: any(e.key == f"{T}/{name}" for e in net.local)


def has_leg(net: Network) -> bool:
    return any(i.prefix == "10.1.0.0/24" for r in net.routers.values() for i in r.interfaces)


def has_gateway(net: Network) -> bool:
    return any(r.gateway is not None for r in net.routers.values())


def has_contract(net: Network) -> bool:
    return u(Cls.GBP_CONTRACT, "http") in net.contracts


def has_web(net: Network) -> bool:
    return u(Cls.GBP_EP_GROUP, "web") in net.groups


def has_sg_prefix(net: Network) -> bool:
    return any(r.remote_prefix == "192.0.2.0/24" for sg in net.security_groups.values() for r in sg.rules)


def has_member(net: Network) -> bool:
    return "10.1.0.10" in net.address_sets.get(u(Cls.GBP_SEC_GROUP, "ssh"), ())


# (where the property is: the object's URI, or "app1" for its registry entry; the property; how a
# hostile value is put there; what must be gone from the view)
FIELDS: list[tuple[str, str, str, Callable[[Any], Any], Present]] = [
    ("PfEndpoint mac", endpoint_uri(T, "web1"), Prop.MAC, lambda v: v, local("web1")),
    ("PfEndpoint ip", endpoint_uri(T, "web1"), Prop.IP, lambda v: ["10.1.0.10", v], local("web1")),
    ("PfEndpoint ip, not a list", endpoint_uri(T, "web1"), Prop.IP, lambda v: v, local("web1")),
    (
        "PfEndpoint bridgeDomain",
        endpoint_uri(T, "web1"),
        Prop.BRIDGE_DOMAIN,
        lambda v: _ref(v),
        local("web1"),
    ),
    (
        "PfEndpoint securityGroup",
        endpoint_uri(T, "vm9"),
        Prop.SECURITY_GROUP,
        lambda v: [_ref(v)],
        local("vm9"),
    ),
    ("PfEndpoint epg", endpoint_uri(T, "web1"), Prop.EPG, lambda v: _ref(v), local("web1")),
    ("GbpSubnet virtualRouterIp", SUBNETS_WEB, Prop.VIRTUAL_ROUTER_IP, lambda v: v, has_leg),
    ("GbpSubnet address", SUBNETS_WEB, Prop.ADDRESS, lambda v: v, has_leg),
    ("GbpSubnet prefixLen", SUBNETS_WEB, Prop.PREFIX_LEN, lambda v: v, has_leg),
    ("PfExternalGateway ip", GATEWAY, Prop.IP, lambda v: v, has_gateway),
    ("PfExternalGateway activeTunnelIp", GATEWAY, Prop.ACTIVE_TUNNEL_IP, lambda v: v, has_gateway),
    ("PfExternalGateway snat", GATEWAY, Prop.SNAT, lambda v: v, has_gateway),
    ("PfExternalGateway network", GATEWAY, Prop.NETWORK, lambda v: _ref(v), has_gateway),
    (
        "PfExternalNetwork cidr",
        external_network_uri("public"),
        Prop.CIDR,
        lambda v: v,
        lambda n: bool(n.external),
    ),
    (
        "PfExternalNetwork gatewayIp",
        external_network_uri("public"),
        Prop.GATEWAY_IP,
        lambda v: v,
        lambda n: bool(n.external),
    ),
    ("PfFloatingIp ip", u(Cls.PF_FLOATING_IP, "f1"), Prop.IP, lambda v: v, lambda n: bool(n.floating_ips)),
    (
        "PfFloatingIp endpointKey",
        u(Cls.PF_FLOATING_IP, "f1"),
        Prop.ENDPOINT_KEY,
        lambda v: v,
        lambda n: bool(n.floating_ips),
    ),
    (
        "classifier dFromPort",
        u(Cls.GBPE_L24_CLASSIFIER, "http.web-in"),
        Prop.D_FROM_PORT,
        lambda v: v,
        has_contract,
    ),
    (
        "classifier dToPort",
        u(Cls.GBPE_L24_CLASSIFIER, "http.web-in"),
        Prop.D_TO_PORT,
        lambda v: v,
        has_contract,
    ),
    ("classifier prot", u(Cls.GBPE_L24_CLASSIFIER, "http.web-in"), Prop.PROT, lambda v: v, has_contract),
    ("classifier etherT", u(Cls.GBPE_L24_CLASSIFIER, "http.web-in"), Prop.ETHER_T, lambda v: v, has_contract),
    ("rule direction", RULE, Prop.DIRECTION, lambda v: v, has_contract),
    ("rule order", RULE, Prop.ORDER, lambda v: v, has_contract),
    ("deny action", u(Cls.GBP_ALLOW_DENY_ACTION, "deny"), Prop.ALLOW, lambda v: v, has_contract),
    ("group class id", WEB_CTX, Prop.CLASSID, lambda v: v, lambda n: has_web(n) or local("web1")(n)),
    ("group intraGroupPolicy", u(Cls.GBP_EP_GROUP, "web"), Prop.INTRA_GROUP_POLICY, lambda v: v, has_web),
    ("group's contract reference", PROVIDES, Prop.TARGET, lambda v: _ref(v), has_web),
    (
        "bridge domain VNI",
        BD_CTX,
        Prop.ENCAP_ID,
        lambda v: v,
        lambda n: u(Cls.GBP_BRIDGE_DOMAIN, "bd-web") in n.bds,
    ),
    ("security group member address", MEMBER, Prop.ADDRESS, lambda v: v, has_member),
    ("security group remote address", SG_REMOTE, Prop.ADDRESS, lambda v: v, has_sg_prefix),
    ("security group remote prefixLen", SG_REMOTE, Prop.PREFIX_LEN, lambda v: v, has_sg_prefix),
    ("registry ip", "app1/ip", Prop.IP, lambda v: v, lambda n: bool(n.remote)),
    ("registry mac", "app1", Prop.MAC, lambda v: v, lambda n: bool(n.remote)),
    ("registry tunnelIp", "app1/tunnel", Prop.TUNNEL_IP, lambda v: v, lambda n: bool(n.remote)),
    ("registry classid", "app1/tunnel", Prop.CLASSID, lambda v: v, lambda n: bool(n.remote)),
    ("registry context", "app1", Prop.CONTEXT, lambda v: v, lambda n: bool(n.remote)),
    ("registry uuid", "app1", Prop.UUID, lambda v: v, lambda n: bool(n.remote)),
]


def _ref(value: Any) -> Any:
    """A hostile string as a reference's target (other hostile values as they are)."""
    return {"subject": "GbpBridgeDomain", "reference_uri": value} if isinstance(value, str) else value


@pytest.mark.parametrize("case", FIELDS, ids=[f[0] for f in FIELDS])
def test_a_hostile_value_in_any_rendered_field_is_refused_and_named(
    case: tuple[str, str, str, Callable[[Any], Any], Present],
) -> None:
    _, where, prop, embed, present = case
    for hostile in HOSTILE:
        c = cache()
        entries = registry(c)
        mo = entry(entries, where) if where.startswith("app1") else c[where]
        mo.properties[prop] = embed(hostile)
        net = agent_view(c, entries)
        assert not present(net), f"{prop}={hostile!r} was not refused"
        at = entry(entries, "app1").uri if where.startswith("app1") else mo.uri  # the entry left out
        named = [i for i in net.invalid if i.uri == at]
        assert named and all("\n" not in str(i) for i in net.invalid), (hostile, net.invalid)
        assert prop in {i.field for i in named} or prop == Prop.TARGET, (hostile, named)
        assert_canonical(net)


def test_an_invalid_value_is_logged_once_and_raised_as_one_fault_until_it_is_gone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = cache()
    entries = registry(c)
    entry(entries, "app1/ip").properties[Prop.IP] = INJECTION
    invalid = agent_view(c, entries).invalid
    reports = InvalidPolicy("h1")
    session, other = object(), object()
    with caplog.at_level("WARNING"):
        raised = reports.update(invalid, session)
        assert reports.update(invalid, session) is None  # nothing new: nothing to say
        assert reports.update(invalid, other) == raised  # a new session hears it again
    assert raised is not None and raised[0] == "major"
    assert entries[0].uri in raised[1] and "ip" in raised[1] and "\n" not in raised[1]
    assert len([r for r in caplog.records if "invalid policy" in r.getMessage()]) == 1
    assert reports.update((), other) == ("cleared", "no invalid policy")
    assert reports.update((), other) is None


# ---- anything, anywhere --------------------------------------------------------------------------

STRINGS = [v for v in HOSTILE if isinstance(v, str)]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.sampled_from([*STRINGS, "10.1.0.99", "fd00::1", "02:00:00:00:00:99", "in", "allow", "/x/"])
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["subject", "reference_uri", "x"]), inner, max_size=2)
    ),
    max_leaves=6,
)
RENDERED = [(where, prop) for _, where, prop, _, _ in FIELDS]  # half the draws hit one of these


@st.composite
def hostile_caches(draw: st.DrawFn) -> tuple[dict[str, MO], list[MO]]:
    """The valid cache and registry with some properties set to any JSON value: half the time a
    property that reaches a renderer (as itself, or in a list or a reference), else any property
    of any object."""
    c = cache()
    entries = registry(c)
    mos = sorted(c.values(), key=lambda m: m.uri) + entries
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            where, prop = draw(st.sampled_from(RENDERED))
            mo = entry(entries, where) if where.startswith("app1") else c[where]
            hostile = draw(st.sampled_from(STRINGS) | JSON_VALUES)
            value = draw(st.sampled_from([hostile, [hostile], _ref(hostile)]))
        else:
            mo = draw(st.sampled_from(mos))
            prop = draw(st.sampled_from(sorted(mo.properties) or [Prop.NAME]))
            value = draw(JSON_VALUES)
        mo.properties[prop] = copy.deepcopy(value)
    return c, entries


def the_finding() -> tuple[dict[str, MO], list[MO]]:
    """The finding's address in a registry entry, and an IPv6 zone carrying flow text in an
    endpoint's intent: always among the examples."""
    c = cache()
    entries = registry(c)
    entry(entries, "app1/ip").properties[Prop.IP] = INJECTION
    c[endpoint_uri(T, "web1")].properties[Prop.IP] = ["10.1.0.10", "fe80::1%eth0 actions=NORMAL"]
    return c, entries


@settings(max_examples=200, deadline=None)
@example(the_finding())
@given(hostile_caches())
def test_whatever_the_properties_say_every_compiled_flow_is_canonical(
    hostile: tuple[dict[str, MO], list[MO]],
) -> None:
    """Rendering never fails either: what the reader lets through, the compilers can compile."""
    net = agent_view(*hostile)
    assert_canonical(net)


def test_the_agents_view_leaves_out_the_finding_and_names_it() -> None:
    """``OvsAgent.network`` (what the reconcile loop renders) with the finding in its registry cache:
    the injected entry is left out, the valid one stays, and the refusal is on the view."""
    agent = OvsAgent(
        AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock", tunnel_ip="192.0.2.1")
    )
    c = cache()
    entries = registry(c)
    app1 = entry(entries, "app1")
    ghosts = []
    for m in (app1, entry(entries, "app1/ip"), entry(entries, "app1/tunnel")):
        g = copy.deepcopy(m)
        g.uri = g.uri.replace("02%3a00%3a00%3a00%3a00%3a02", "02%3a00%3a00%3a00%3a00%3a77")
        g.children = [
            u.replace("02%3a00%3a00%3a00%3a00%3a02", "02%3a00%3a00%3a00%3a00%3a77") for u in g.children
        ]
        ghosts.append(g)
    ghost = ghosts[0]
    ghost.properties.update({Prop.UUID: "acme/ghost", Prop.MAC: "02:00:00:00:00:77"})
    ghosts[1].properties[Prop.IP] = INJECTION
    agent.client.policy = c
    agent.client.endpoints = {m.uri: m for m in (*entries, *ghosts)}
    agent.ovsdb = SimpleNamespace(ofports={})  # type: ignore[assignment]
    net = agent.network([Plugged("acme/web1", "qvo7", 7)], TUNNEL)
    assert [e.key for e in net.local] == ["acme/web1"] and [e.key for e in net.remote] == ["acme/app1"]
    assert [(i.uri, i.field) for i in net.invalid] == [(ghost.uri, Prop.IP)]
    assert_canonical(net)
