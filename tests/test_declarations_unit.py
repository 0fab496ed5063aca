"""The endpoint registry checks every declaration against the intent (in process, no sockets).

An agent may declare only endpoints of the intent, with the MAC, addresses, bridge domain, routing
domain, group and class id the intent gives them, a unicast IPv4 tunnel address and an interface
name; only the pinned host (or, once that host let it go, another) may declare a pinned endpoint,
and no agent may take over one that a live agent holds. Anything else is an RPC error that stores
and pushes nothing, is counted per agent and logged once. The intent is examples/demo.yaml; the
same attack with real agents and packets: test_trust_dataplane.py.
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policyfabric.agent.endpoints import bd_members_prefix, declaration
from policyfabric.authority.opflex import OpflexServer, chunks
from policyfabric.authority.service import Authority
from policyfabric.model import scenario as sc
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.model.parse import parse_spec
from policyfabric.opflex.gbp import Cls, Prop, uri_of
from policyfabric.opflex.mo import MO, ref
from policyfabric.opflex.rpc import RpcError, Session
from policyfabric.opflex.uri import EPR_L2, EPR_L3, child
from policyfabric.store.sqlite import SqliteStore
from tests.opflex_harness import REFERENCE, RecordingWriter, attach

DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"
BD = uri_of("acme", Cls.GBP_BRIDGE_DOMAIN, "bd1")
RD = uri_of("acme", Cls.GBP_ROUTING_DOMAIN, "vrf1")
INJECTION = "10.1.0.77 actions=drop\ncookie=0x0,table=0,priority=65535,actions=NORMAL #"


@dataclass
class Fabric:
    """An authority on demo.yaml, its OpFlex server, and sessions of h1, h2 and a rogue peer."""

    authority: Authority
    server: OpflexServer
    sessions: dict[str, Session]
    seen: dict[str, RecordingWriter]

    async def declare(self, agent: str, *mos: MO | dict[str, Any]) -> Any:
        wire = [m.to_wire() if isinstance(m, MO) else m for m in mos]
        result = await self.server._handle(
            self.sessions[agent], "endpoint_declare", [{"endpoint": wire, "prr": 60}]
        )
        await self.server.flush()
        return result

    async def undeclare(self, agent: str, uri: str) -> None:
        params = [{"subject": Cls.EPR_L2_EP, "endpoint_uri": uri}]
        await self.server._handle(self.sessions[agent], "endpoint_undeclare", params)
        await self.server.flush()

    def of(self, name: str, host: str, tunnel: str = "192.0.2.1") -> tuple[MO, list[MO]]:
        """The (L2, L3s) a well-behaved agent on ``host`` declares for ``name`` (the L2 alone, without
        its addresses and tunnel: ``request`` has them)."""
        decl = declaration(self.server.policy.trees["acme"].mos, "acme", name, f"pf-{name}", tunnel)
        assert decl is not None
        return decl.l2, decl.l3

    def request(self, name: str, tunnel: str = "192.0.2.1") -> list[MO]:
        """The L2 request a well-behaved agent sends for ``name``: its EprL2Ep, EprL3Net and PfEpTunnel."""
        decl = declaration(self.server.policy.trees["acme"].mos, "acme", name, f"pf-{name}", tunnel)
        assert decl is not None
        return [decl.l2, *decl.l2_children]

    def registry(self) -> dict[str, str]:
        """What the registry holds: URI -> declaring agent."""
        return {uri: d.agent for uri, d in self.server.registry.declarations.items()}

    def pushed(self, agent: str) -> list[tuple[list[str], list[str]]]:
        """(replaced URIs, deleted URIs) of each endpoint_update ``agent`` received."""
        return [
            ([m["uri"] for m in u["params"][0]["replace"]], [d["uri"] for d in u["params"][0]["delete"]])
            for u in self.seen[agent].messages("endpoint_update")
        ]

    def refused(self, agent: str) -> int:
        return int(next(a for a in self.server.agents_json() if a["name"] == agent)["refused_declarations"])

    def endpoint(self, name: str) -> dict[str, Any]:
        [record], _ = self.authority.list(K["endpoint"], "acme", name)
        return dict(record)

    async def settled(self, name: str, **want: Any) -> dict[str, Any]:
        """The stored endpoint once it has ``want`` (statuses are written in batches)."""
        for _ in range(200):
            record = self.endpoint(name)
            if all(record.get(k) == v for k, v in want.items()):
                return record
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name} is {record}, not {want}")

    async def change(self, name: str, **fields: Any) -> None:
        """An operator's REST update of endpoint ``name``, then the rebuild a commit triggers."""
        record = self.endpoint(name)
        spec = {
            k: record[k] for k in ("name", "tenant", "epg", "ip", "mac", "host") if record.get(k) is not None
        }
        self.authority.replace(K["endpoint"], record["id"], parse_spec(K["endpoint"], {**spec, **fields}))
        await self.rebuild()

    async def rebuild(self) -> None:
        await self.server.policy.rebuild({"acme"}, push=True)
        await self.server.flush()


def fabric(tmp_path: Path, test: Callable[[Fabric], Awaitable[None]]) -> None:
    scenario = sc.load(DEMO)
    assert sc.check(scenario) == []
    authority = Authority(SqliteStore(tmp_path / "db", sync="normal"))
    authority.create_many([(e.kind, e.spec) for e in scenario.in_order() if e.spec is not None])

    async def go() -> None:
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "acme"}, push=False)
        sessions, seen = {}, {}
        for agent in ("h1", "h2", "evil"):
            sessions[agent], seen[agent] = attach(server, agent)
        members = [{"subject": Cls.EPR_L2_EP, "endpoint_uri": bd_members_prefix(BD), "prr": 60}]
        await server._handle(sessions["h2"], "endpoint_resolve", members)
        await test(Fabric(authority, server, sessions, seen))

    asyncio.run(go())


async def refused(f: Fabric, agent: str, *mos: MO | dict[str, Any], why: str = "") -> str:
    """Declare; it must be refused with an ERROR naming ``why``, and change nothing."""
    before = f.registry()
    with pytest.raises(RpcError) as err:
        await f.declare(agent, *mos)
    assert err.value.code == "ERROR" and "Declaration refused" in err.value.message
    assert why in err.value.message, err.value.message
    assert "\n" not in err.value.message
    assert f.registry() == before
    return err.value.message


def test_a_well_behaved_declaration_is_stored_bound_and_pushed(tmp_path: Path) -> None:
    async def test(f: Fabric) -> None:
        l2, l3 = f.of("web1", "h1")
        assert await f.declare("h1", l2, *l3) == {}
        assert f.registry() == {l2.uri: "h1", l3[0].uri: "h1"}
        assert f.pushed("h2") == [([l2.uri], [])]  # the L3 is not under the bridge domain's prefix
        await f.settled("web1", host="h1", interface="pf-web1", status="BUILD")
        assert f.refused("h1") == 0

    fabric(tmp_path, test)


def test_the_ghost_with_flows_in_its_address_is_refused_and_the_session_lives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The finding: an endpoint that is not in the intent, with flow syntax in its address."""

    async def test(f: Fabric) -> None:
        uri = child(EPR_L2, Cls.EPR_L2_EP, BD, "02:00:00:00:00:77")
        address, tunnel = child(uri, Cls.EPR_L3_NET, INJECTION), child(uri, Cls.PF_EP_TUNNEL)
        ghost = [
            MO(
                Cls.EPR_L2_EP,
                uri,
                {Prop.UUID: "acme/ghost", Prop.MAC: "02:00:00:00:00:77", Prop.CONTEXT: BD},
                [address, tunnel],
            ),
            MO(Cls.EPR_L3_NET, address, {Prop.IP: INJECTION}, [], Cls.EPR_L2_EP, uri, Cls.EPR_L3_NET),
            MO(
                Cls.PF_EP_TUNNEL,
                tunnel,
                {Prop.TUNNEL_IP: "192.0.2.66"},
                [],
                Cls.EPR_L2_EP,
                uri,
                Cls.PF_EP_TUNNEL,
            ),
        ]
        with caplog.at_level(logging.WARNING):
            message = await refused(f, "evil", *ghost, why="'acme/ghost' is not an endpoint of the intent")
            await refused(f, "evil", *ghost)
        assert f.pushed("h2") == [] and f.refused("evil") == 2
        logged = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert len(logged) == 1 and "evil" in logged[0] and "acme/ghost" in logged[0], logged  # once
        assert message.count("actions=") == 0  # the value is not even echoed when the endpoint is unknown
        # the session is kept: the same peer is still served
        reply = await f.server._handle(f.sessions["evil"], "endpoint_resolve", [
            {"subject": Cls.EPR_L2_EP, "endpoint_uri": bd_members_prefix(BD), "prr": 60}
        ])  # fmt: skip
        assert reply == {"endpoint": []}

    fabric(tmp_path, test)


def _props(mo: MO, **changes: Any) -> MO:
    out = copy.deepcopy(mo)
    for name, value in changes.items():
        if value is None:
            out.properties.pop(name, None)
        else:
            out.properties[name] = value
    return out


OTHER_BD = uri_of("acme", Cls.GBP_BRIDGE_DOMAIN, "bd2")
Request = list[MO]


def _on(subject: str, **changes: Any) -> Callable[[Request], Request]:
    """Change the properties of the request's ``subject`` object."""
    return lambda r: [_props(m, **changes) if m.subject == subject else m for m in r]


def _l2(**changes: Any) -> Callable[[Request], Request]:
    return _on(Cls.EPR_L2_EP, **changes)


def _address(ip: Any) -> Callable[[Request], Request]:
    """Its EprL3Net child's address changed, the URI following where it can."""

    def change(r: Request) -> Request:
        out = []
        for m in r:
            if m.subject == Cls.EPR_L3_NET:
                m = _props(m, ip=ip)
                if isinstance(ip, str):
                    m.uri = child(r[0].uri, Cls.EPR_L3_NET, ip)
            out.append(m)
        return out

    return change


def _tunnel(**changes: Any) -> Callable[[Request], Request]:
    return _on(Cls.PF_EP_TUNNEL, **changes)


L2_MUTATIONS: dict[str, tuple[Callable[[Request], Request], str]] = {
    "ghost uuid": (_l2(uuid="acme/ghost"), "not an endpoint of the intent"),
    "uuid not a string": (_l2(uuid=["acme/web1"]), "not an endpoint of the intent"),
    "another MAC": (_l2(mac="02:00:00:00:00:99"), "is not its MAC"),
    "another's address": (_address("10.1.0.11"), "not one of its addresses"),
    "injection in ip": (_address(INJECTION), "not one of its addresses"),
    "an address with a scope": (_address("fe80::1%eth0,actions=NORMAL"), "not one of"),
    "ip a list": (_address(["10.1.0.10"]), "not one of its addresses"),
    "slaac as an address": (_address("slaac"), "not one of its addresses"),
    "an address under another URI": (
        lambda r: [
            MO(
                m.subject,
                child(r[0].uri, Cls.EPR_L3_NET, "10.1.0.11"),
                m.properties,
                [],
                m.parent_subject,
                m.parent_uri,
                m.parent_relation,
            )
            if m.subject == Cls.EPR_L3_NET
            else m
            for m in r
        ],
        "is not its address",
    ),
    "ip on the L2 itself": (_l2(ip=["10.1.0.10"]), "are not accepted"),
    "another bridge domain": (_l2(context=OTHER_BD), "bridge domain"),
    "context as a reference": (_l2(context=ref(Cls.GBP_BRIDGE_DOMAIN, BD)), "not its bridge domain"),
    "URI of another MAC": (
        lambda r: [MO(r[0].subject, child(EPR_L2, Cls.EPR_L2_EP, BD, "02:00:00:00:00:99"), r[0].properties)],
        "is not its bridge domain and MAC",
    ),
    "another class id": (_tunnel(classid=0x4002), "not its group's"),
    "class id as a bool": (_tunnel(classid=True), "not its group's"),
    "another group": (_l2(group=uri_of("acme", Cls.GBP_EP_GROUP, "app")), "not the group"),
    "group as a reference": (
        _l2(group=ref(Cls.GBP_EP_GROUP, uri_of("acme", Cls.GBP_EP_GROUP, "web"))),
        "not the group",
    ),
    "injection in interfaceName": (_l2(interfaceName="tap0\nactions=NORMAL"), "interface name"),
    "interfaceName too long": (_l2(interfaceName="a" * 65), "interface name"),
    "interfaceName with a slash": (_l2(interfaceName="../etc"), "interface name"),
    "injection in tunnelIp": (_tunnel(tunnelIp="192.0.2.1,actions=NORMAL"), "unicast IPv4"),
    "tunnelIp IPv6": (_tunnel(tunnelIp="2001:db8::1"), "unicast IPv4"),
    "tunnelIp multicast": (_tunnel(tunnelIp="224.0.0.1"), "unicast IPv4"),
    "tunnelIp with a space": (_tunnel(tunnelIp=" 192.0.2.1"), "unicast IPv4"),
    "tunnelIp a number": (_tunnel(tunnelIp=3221225985), "unicast IPv4"),
    "tunnelIp on the L2 itself": (_l2(tunnelIp="192.0.2.1"), "are not accepted"),
    "a property nobody reads": (_l2(actions="NORMAL"), "are not accepted"),
    "a property nobody reads on the tunnel": (_tunnel(actions="NORMAL"), "are not accepted"),
}


@pytest.mark.parametrize("mutation", sorted(L2_MUTATIONS))
def test_an_l2_declaration_that_differs_from_the_intent_is_refused(tmp_path: Path, mutation: str) -> None:
    """Declared by web1's own host, so only the content decides."""
    mutate, why = L2_MUTATIONS[mutation]

    async def test(f: Fabric) -> None:
        request = f.request("web1")
        await refused(f, "h1", *mutate(copy.deepcopy(request)), why=why)
        assert f.pushed("h2") == [] and f.refused("h1") == 1
        assert f.endpoint("web1")["status"] == "DOWN"
        assert await f.declare("h1", *request) == {}  # the control: unchanged, it is accepted
        assert [uri for uris, _ in f.pushed("h2") for uri in uris] == [m.uri for m in request]

    fabric(tmp_path, test)


def test_an_l3_declaration_that_differs_from_the_intent_is_refused(tmp_path: Path) -> None:
    async def test(f: Fabric) -> None:
        l2, [l3] = f.of("web1", "h1")
        other_rd = uri_of("acme", Cls.GBP_ROUTING_DOMAIN, "vrf2")
        for bad, why in (
            (_props(l3, ip="10.1.0.11"), "not one of its addresses"),
            (MO(l3.subject, child(EPR_L3, Cls.EPR_L3_EP, RD, "10.1.0.11"), l3.properties), "routing domain"),
            (_props(l3, context=ref(Cls.GBP_ROUTING_DOMAIN, other_rd)), "not its routing domain"),
            (_props(l3, ip=INJECTION), "not one of its addresses"),
            (_props(l3, tunnelIp="192.0.2.1"), "are not accepted"),
        ):
            await refused(f, "h1", l2, bad, why=why)  # all or nothing: the good L2 is not stored either
        assert f.registry() == {} and f.refused("h1") == 5
        assert await f.declare("h1", l2, l3) == {}

    fabric(tmp_path, test)


def test_child_objects_are_refused(tmp_path: Path) -> None:
    async def test(f: Fabric) -> None:
        l2, _ = f.of("web1", "h1")
        kid = MO("EprL2EpToSomething", l2.uri + "EprL2EpToSomething/", {"x": 1}, [], l2.subject, l2.uri, "k")
        await refused(f, "h1", l2, kid, why="child objects ['EprL2EpToSomething'] are not accepted")

    fabric(tmp_path, test)


def test_a_reference_agents_declaration_is_matched_by_its_uri_and_stored_as_checked(tmp_path: Path) -> None:
    """libopflex's agent names its endpoint by its endpoint file's uuid, not TENANT/NAME, and puts
    its security groups and attributes under it: matched by bridge domain and MAC, stored with
    TENANT/NAME and without the children (nothing it chose beyond the checked values is pushed).
    A uuid of our form still has to name the endpoint."""

    async def test(f: Fabric) -> None:
        l2, l3 = f.of("web1", "h1")
        theirs = _props(l2, **{Prop.UUID: "6f1b6a4e-55a0-4d38-9a1c-1c0c0c0c0c01", Prop.VM_NAME: "web1-vm"})
        theirs.children = [
            theirs.uri + "EprSecurityGroupContext/x/",
            theirs.uri + "GbpeReportedEpAttributeSet/",
        ]
        sgc = MO(Cls.EPR_SECURITY_GROUP_CONTEXT, theirs.children[0], {}, [], theirs.subject, theirs.uri, "s")
        attrs = MO(
            Cls.GBPE_REPORTED_EP_ATTRIBUTE_SET, theirs.children[1], {}, [], theirs.subject, theirs.uri, "a"
        )
        l3_theirs = _props(l3[0], **{Prop.UUID: "6f1b6a4e-55a0-4d38-9a1c-1c0c0c0c0c01"})
        assert await f.declare("h1", theirs, sgc, attrs, l3_theirs) == {}
        assert f.registry() == {l2.uri: "h1", l3[0].uri: "h1"}
        stored = f.server.registry.declarations[l2.uri].mos
        assert len(stored) == 1 and stored[0]["children"] == []
        props = {p["name"]: p["data"] for p in stored[0]["properties"]}
        assert props[Prop.UUID] == "acme/web1" and props[Prop.VM_NAME] == "web1-vm"
        await f.settled("web1", host="h1", interface="pf-web1", status="BUILD")
        other = _props(l2, **{Prop.UUID: "acme/web2"})
        await refused(f, "h1", other, why="is not its MAC")

    fabric(tmp_path, test)


def with_addresses(l2: MO, ips: list[str]) -> list[MO]:
    """``l2`` with these addresses as its EprL3Net children."""
    kids = [
        MO(Cls.EPR_L3_NET, child(l2.uri, Cls.EPR_L3_NET, ip), {Prop.IP: ip}, [], l2.subject, l2.uri, "n")
        for ip in ips
    ]
    top = MO(l2.subject, l2.uri, dict(l2.properties), [k.uri for k in kids], l2.parent_subject, l2.parent_uri)
    return [top, *kids]


def eui64(mac: str, prefix: str) -> str:
    """``prefix`` (a /64) with the modified EUI-64 interface identifier of ``mac`` (RFC 4291)."""
    octets = [int(x, 16) for x in mac.split(":")]
    iid = bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]])
    net = ipaddress.IPv6Network(prefix)
    return str(ipaddress.IPv6Address(net.network_address.packed[:8] + iid))


def test_derived_ipv6_addresses_are_declarable(tmp_path: Path) -> None:
    """web2 is ``slaac`` in net6 (fd00:1::/64): its link-local and SLAAC addresses are its own;
    web1 is not slaac: its link-local address is its own, an address in net6 is not."""

    async def test(f: Fabric) -> None:
        l2, _ = f.of("web2", "h2")
        mac = l2.properties[Prop.MAC]
        own = ["10.1.0.11", eui64(mac, "fe80::/64"), eui64(mac, "fd00:1::/64")]
        assert await f.declare("h2", *with_addresses(l2, own)) == {}
        web1, _ = f.of("web1", "h1")
        mac1 = web1.properties[Prop.MAC]
        assert await f.declare("h1", *with_addresses(web1, ["10.1.0.10", eui64(mac1, "fe80::/64")])) == {}
        why = "not one of its addresses"
        await refused(f, "h1", *with_addresses(web1, [eui64(mac1, "fd00:1::/64")]), why=why)
        await refused(f, "h1", *with_addresses(web1, [eui64(mac, "fe80::/64")]), why=why)

    fabric(tmp_path, test)


def test_a_pinned_endpoint_is_declared_by_its_host_only(tmp_path: Path) -> None:
    """The finding's second half: a peer declares web1 (pinned to h1) with its own tunnel address."""

    async def test(f: Fabric) -> None:
        evil, _ = f.of("web1", "evil", tunnel="192.0.2.66")
        await refused(f, "evil", evil, why="the intent pins it to host 'h1'")
        await refused(f, "h2", f.of("web1", "h2", tunnel="192.0.2.2")[0], why="pins it to host 'h1'")
        assert f.pushed("h2") == [] and f.endpoint("web1").get("host") == "h1"
        l2, l3 = f.of("web1", "h1")
        request = f.request("web1")
        assert await f.declare("h1", *request, *l3) == {}
        # held live by h1: the same answer, now for two reasons
        await refused(f, "evil", evil, why="declared by agent 'h1', whose session is live")
        assert {k: v for k, v in f.registry().items() if "EprL3Ep/" in k or k == l2.uri} == {
            l2.uri: "h1",
            l3[0].uri: "h1",
        }
        tunnel = [m for m in f.server.registry.declarations[l2.uri].mos if m["subject"] == Cls.PF_EP_TUNNEL]
        assert [p["data"] for t in tunnel for p in t["properties"] if p["name"] == Prop.TUNNEL_IP] == [
            "192.0.2.1"
        ]

    fabric(tmp_path, test)


def test_a_host_that_lets_an_endpoint_go_hands_it_over(tmp_path: Path) -> None:
    """An endpoint moving: its host undeclares it (unplugged), another host declares it."""

    async def test(f: Fabric) -> None:
        l2, l3 = f.of("web1", "h1")
        assert await f.declare("h1", l2, *l3) == {}
        await f.undeclare("h1", l2.uri)
        await f.settled("web1", status="DOWN")
        moved, moved_l3 = f.of("web1", "h2", tunnel="192.0.2.2")
        assert await f.declare("h2", moved, *moved_l3) == {}
        await f.settled("web1", host="h2", status="BUILD")
        await f.rebuild()  # the binding is the pin now: h2's declaration stands
        assert f.registry() == {l2.uri: "h2", l3[0].uri: "h2"}  # its addresses went with h1's L2
        await refused(f, "h1", l2, why="declared by agent 'h2'")

    fabric(tmp_path, test)


def test_an_endpoint_held_by_a_live_agent_cannot_be_taken_over_unless_its_session_is_gone(
    tmp_path: Path,
) -> None:
    async def test(f: Fabric) -> None:
        free = {"name": "free", "tenant": "acme", "epg": "web", "ip": ["10.1.0.40"]}
        f.authority.create(K["endpoint"], parse_spec(K["endpoint"], free))
        await f.rebuild()
        l2, l3 = f.of("free", "h1")
        assert await f.declare("h1", l2, *l3) == {}  # not pinned: the first host may declare it
        taken, taken_l3 = f.of("free", "evil", tunnel="192.0.2.66")
        await refused(f, "evil", taken, *taken_l3, why="declared by agent 'h1', whose session is live")
        f.server._closed(f.sessions["h1"])  # h1's session ends (its declarations live on, leased)
        assert await f.declare("evil", taken, *taken_l3) == {}
        assert f.registry() == {l2.uri: "evil", l3[0].uri: "evil"}

    fabric(tmp_path, test)


def test_declarations_the_intent_no_longer_allows_are_withdrawn(tmp_path: Path) -> None:
    async def test(f: Fabric) -> None:
        l2, l3 = f.of("web1", "h1")
        app2, app2_l3 = f.of("app2", "h1")
        assert await f.declare("h1", *f.request("web1"), *l3) == {}  # with its address (EprL3Net)
        assert await f.declare("h1", app2, *app2_l3) == {}
        await f.settled("web1", host="h1", status="BUILD")
        pushes = len(f.pushed("h2"))

        await f.change("web1", ip=["10.1.0.12"])  # its address changed: the old declarations are stale
        assert f.registry() == {app2.uri: "h1", app2_l3[0].uri: "h1"}
        assert f.pushed("h2")[pushes:] == [([], [l2.uri])]
        assert f.endpoint("web1")["status"] == "BUILD"  # its agent declares it again: no DOWN
        fresh, fresh_l3 = f.of("web1", "h1")
        assert await f.declare("h1", fresh, *fresh_l3) == {}
        await f.server.registry.written()  # its binding is in the store before the operator moves it

        await f.change("web1", host="h2")  # the intent moves it to another host
        assert fresh.uri not in f.registry()
        await f.settled("web1", status="DOWN")

        record = f.endpoint("app2")
        f.authority.delete(K["endpoint"], record["id"])  # the intent drops it
        await f.rebuild()
        assert f.registry() == {}
        assert f.pushed("h2")[-1] == ([], [app2.uri])

    fabric(tmp_path, test)


def test_an_endpoint_moved_to_another_group_keeps_its_declaration_rewritten_to_the_new_group(
    tmp_path: Path,
) -> None:
    """A group move is no reason to take the endpoint out of the other hosts' flows: its
    declarations (the EprL2Ep with its tunnel's class id, the EprL3Ep) are rewritten to the new
    group and class id and pushed as a replace, never a delete; what is stored is what a
    well-behaved agent declares after the move, which it then declares."""

    async def test(f: Fabric) -> None:
        l2, l3 = f.of("web1", "h1")
        assert await f.declare("h1", *f.request("web1"), *l3) == {}
        await f.settled("web1", host="h1", status="BUILD")
        old_classid = _classid(f, l2.uri)
        pushes = len(f.pushed("h2"))

        await f.change("web1", epg="app")
        assert f.registry() == {l2.uri: "h1", l3[0].uri: "h1"}  # still declared, by h1
        moved = f.pushed("h2")[pushes:]
        assert moved and all(deleted == [] for _, deleted in moved)
        assert l2.uri in {uri for replaced, _ in moved for uri in replaced}
        app = uri_of("acme", Cls.GBP_EP_GROUP, "app")
        for uri in (l2.uri, l3[0].uri):
            stored = MO.from_wire(f.server.registry.declarations[uri].mos[0])
            assert stored.properties[Prop.GROUP] == app
        assert _classid(f, l2.uri) not in (None, old_classid)

        after, after_l3 = f.of("web1", "h1")  # what h1 declares once it has seen the move
        assert after.properties[Prop.GROUP] == app
        assert _classid(f, l2.uri) == next(
            m.properties[Prop.CLASSID] for m in f.request("web1") if m.subject == Cls.PF_EP_TUNNEL
        )
        assert await f.declare("h1", *f.request("web1"), *after_l3) == {}  # accepted as it stands
        assert f.registry() == {l2.uri: "h1", l3[0].uri: "h1"}
        await f.server.registry.written()
        assert f.endpoint("web1")["status"] == "BUILD"  # never DOWN on the way

    fabric(tmp_path, test)


def _classid(f: Fabric, uri: str) -> Any:
    """The class id in the stored declaration's PfEpTunnel (None: it has none)."""
    for m in f.server.registry.declarations[uri].mos:
        if m["subject"] == Cls.PF_EP_TUNNEL:
            return MO.from_wire(m).properties.get(Prop.CLASSID)
    return None


def test_each_lease_ends_at_its_own_time(tmp_path: Path) -> None:
    """Declarations whose leases run out are undeclared at the first tick after, the others stay
    until theirs does (the registry looks at them only once the soonest lease may have ended)."""

    async def test(f: Fabric) -> None:
        async def declare(agent: str, prr: int, *mos: MO) -> None:
            request = [{"endpoint": [m.to_wire() for m in mos], "prr": prr}]
            assert await f.server._handle(f.sessions[agent], "endpoint_declare", request) == {}

        start = time.monotonic()
        web1, web1_l3 = f.of("web1", "h1")
        await declare("h1", 60, *f.request("web1"), *web1_l3)
        app1, _ = f.of("app1", "h2", tunnel="192.0.2.2")
        await declare("h2", 5, *f.request("app1", tunnel="192.0.2.2"))
        await f.server.registry.expire(start + 4)
        assert set(f.registry()) == {web1.uri, web1_l3[0].uri, app1.uri}
        await f.server.registry.expire(start + 10)
        assert set(f.registry()) == {web1.uri, web1_l3[0].uri}
        await f.server.registry.expire(start + 30)
        assert set(f.registry()) == {web1.uri, web1_l3[0].uri}
        await f.server.registry.expire(start + 70)
        assert f.registry() == {}
        await f.settled("web1", status="DOWN")
        await declare("h1", 60, *f.request("web1"), *web1_l3)  # declared again: a lease of its own
        await f.server.registry.expire(time.monotonic() + 30)
        assert set(f.registry()) == {web1.uri, web1_l3[0].uri}
        await f.server.registry.expire(time.monotonic() + 61)
        assert f.registry() == {}

    fabric(tmp_path, test)


def test_a_resolve_answered_in_parts_does_not_undo_what_was_pushed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bridge domain too large for one frame is answered in parts: updates first, then the reply.
    A declaration withdrawn while the first parts drain is pushed as a delete ahead of the reply,
    which the agent applies after it: the reply must say what holds by then, not what held when
    the resolve began (it would put the withdrawn endpoint back into the agent's flows)."""
    monkeypatch.setattr(chunks, "BUDGET", 64)  # every object its own part

    async def test(f: Fabric) -> None:
        _, web1_l3 = f.of("web1", "h1")
        app2, app2_l3 = f.of("app2", "h1")
        assert await f.declare("h1", *f.request("web1"), *web1_l3) == {}
        assert await f.declare("h1", *f.request("app2"), *app2_l3) == {}
        peer = f.server.peers[f.sessions["h2"]]
        drained = peer.send_all

        async def overtaken(method: str, messages: Any) -> None:
            await drained(method, messages)
            await f.undeclare("h1", app2.uri)  # withdrawn (and pushed) before the reply goes

        peer.send_all = overtaken  # type: ignore[method-assign]
        members = [{"subject": Cls.EPR_L2_EP, "endpoint_uri": bd_members_prefix(BD), "prr": 60}]
        reply = await f.server._handle(f.sessions["h2"], "endpoint_resolve", members)
        assert f.pushed("h2")[-1][1] == [app2.uri]  # the delete went first
        answered = {m["uri"] for m in reply["endpoint"]}
        assert not any(u.startswith(app2.uri) for u in answered)  # and the reply does not undo it
        assert all(u in f.server.registry.declarations or "/EprL3Net/" in u or "/PfEpTunnel/" in u
                   for u in answered)  # fmt: skip

    fabric(tmp_path, test)


def test_the_refusal_counter_is_per_agent_in_the_agents_view(tmp_path: Path) -> None:
    async def test(f: Fabric) -> None:
        await refused(f, "evil", _props(f.of("web1", "h1")[0], uuid="acme/nobody"))
        await refused(f, "h2", f.of("web1", "h2")[0])
        assert {a["name"]: a["refused_declarations"] for a in f.server.agents_json()} == {
            "evil": 1,
            "h1": 0,
            "h2": 1,
        }

    fabric(tmp_path, test)


def test_a_reference_agent_is_heard_its_endpoint_active_its_faults_and_counters_reported(
    tmp_path: Path,
) -> None:
    """libopflex's agent reports no endpoint status: it declares an endpoint once it is attached,
    so the declaration makes it ACTIVE. Its ``FaultInstance`` is a fault (cleared by severity
    ``cleared``), its ``GbpeEpCounter`` sums into its counters."""

    async def test(f: Fabric) -> None:
        f.sessions["h1"].closed.set()  # h1 comes back as a reference agent (the demo pins web1 to h1)
        f.sessions["ref"], _ = attach(f.server, "h1", data=REFERENCE)
        l2, _ = f.of("web1", "h1")
        assert await f.declare("ref", l2) == {}
        await f.settled("web1", host="h1", interface="pf-web1", status="ACTIVE")

        def observable(subject: str, uri: str, **props: Any) -> dict[str, Any]:
            return MO(subject, uri, props).to_wire()

        fault = observable(
            Cls.FAULT_INSTANCE,
            "/FaultUniverse/FaultInstance/8encapmismatchconfig/",
            faultCode=5,
            severity="critical",
            description="encapType from fabric doesn't match agent config",
            affectedObject="/PolicyUniverse/PlatformConfig/policyfabric/",
        )
        counters = [
            observable(
                Cls.GBPE_EP_COUNTER,
                f"/ObserverEpStatUniverse/GbpeEpCounter/{u}/",
                uuid=u,
                rxPackets=n,
                txPackets=2 * n,
            )
            for u, n in (("a", 10), ("b", 5))
        ]
        report = [{"observable": [fault, *counters]}]
        assert await f.server._handle(f.sessions["ref"], "state_report", report) == {}
        [seen] = f.server.observer.faults_json()
        assert (seen["agent"], seen["code"], seen["severity"]) == ("h1", "5", "critical")
        assert seen["uri"] == "/PolicyUniverse/PlatformConfig/policyfabric/"
        agent = f.server.observer.agents["h1"]
        assert agent.counters["endpoints.rxPackets"] == 15 and agent.counters["endpoints.txPackets"] == 30
        again = observable(Cls.GBPE_EP_COUNTER, "/x/", uuid="a", rxPackets=11, txPackets=20)
        cleared = {**fault, "properties": [*fault["properties"][:1], {"name": "severity", "data": "cleared"}]}
        cleared["properties"] = [p for p in fault["properties"] if p["name"] != "severity"] + [
            {"name": "severity", "data": "cleared"}
        ]
        assert (
            await f.server._handle(f.sessions["ref"], "state_report", [{"observable": [again, cleared]}])
            == {}
        )
        assert agent.counters["endpoints.rxPackets"] == 16 and agent.counters["endpoints.txPackets"] == 30
        assert f.server.observer.faults_json() == []

    fabric(tmp_path, test)


def test_a_host_tunnel_address_is_its_own(tmp_path: Path) -> None:
    """Other hosts send an endpoint's traffic to the tunnel address its declaration gives: a peer
    may not give another live agent's (it would send traffic there); once that agent is gone, the
    address is free again (a host re-addressed, a new agent on it)."""

    async def test(f: Fabric) -> None:
        free = {"name": "free", "tenant": "acme", "epg": "web", "ip": ["10.1.0.40"]}
        f.authority.create(K["endpoint"], parse_spec(K["endpoint"], free))
        await f.rebuild()
        assert await f.declare("h1", *f.request("web1", tunnel="192.0.2.1")) == {}
        await refused(
            f,
            "evil",
            *f.request("free", tunnel="192.0.2.1"),
            why="tunnelIp '192.0.2.1' is declared by agent 'h1'",
        )
        assert await f.declare("evil", *f.request("free", tunnel="192.0.2.66")) == {}  # its own: fine
        f.server._closed(f.sessions["h1"])
        assert await f.declare("h2", *f.request("app1", tunnel="192.0.2.1")) == {}

    fabric(tmp_path, test)
