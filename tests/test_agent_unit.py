"""The agent's parts beside the compiler, without OVS or an authority: the declarer, the reporter,
the ARP announcer, Open vSwitch as a renderer, and the agent's one render path. Fakes hold state
(what the registry holds, what was reported, which packets left); tests assert on that state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from policyfabric.agent.declarer import Declarer
from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent, Rendering
from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.ovs import external
from policyfabric.agent.renderers.ovs.announce import Announcer, packet_outs
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.renderer import OvsRenderer
from policyfabric.agent.renderers.ovs.tables import POLICY_CT
from policyfabric.agent.reports import Reporter
from policyfabric.agent.view import Network
from policyfabric.opflex.gbp import endpoint_uri
from policyfabric.opflex.mo import MO, ref
from tests.fabric import TUNNEL
from tests.test_external_unit import FIP, host
from tests.test_routing_unit import WEB1

# ---- the declarer

SPACE = "/PolicyUniverse/PolicySpace/acme/"
BD = SPACE + "GbpBridgeDomain/bd1/"
RD = SPACE + "GbpRoutingDomain/vrf1/"
EPG = SPACE + "GbpEpGroup/web/"
EP = endpoint_uri("acme", "web1")
WEB1_PORT = Plugged("acme/web1", "tap-web1", 5)


def endpoint(mac: str = "02:50:46:00:00:01") -> MO:
    props = {
        "mac": mac,
        "ip": ["10.1.0.10"],
        "bridgeDomain": ref("GbpBridgeDomain", BD),
        "epg": ref("GbpEpGroup", EPG),
    }
    return MO("PfEndpoint", EP, props)


def policy() -> dict[str, MO]:
    to_rd = BD + "GbpBridgeDomainToNetworkRSrc/"
    ctx = EPG + "GbpeInstContext/"
    return {
        EP: endpoint(),
        BD: MO("GbpBridgeDomain", BD, {}, [to_rd]),
        to_rd: MO("GbpBridgeDomainToNetworkRSrc", to_rd, {"target": ref("GbpRoutingDomain", RD)}),
        EPG: MO("GbpEpGroup", EPG, {}, [ctx]),
        ctx: MO("GbpeInstContext", ctx, {"classid": 0x4001}),
    }


@dataclass
class FakeClient:
    """The registry side of an OpFlex client: what is declared now, and how often it was told."""

    policy: dict[str, MO] = field(default_factory=dict)
    registry: dict[str, list[MO]] = field(default_factory=dict)  # L2 endpoint URI -> its declaration
    declarations: int = 0
    resolved: set[tuple[str, str]] = field(default_factory=set)
    following: set[tuple[str, str]] = field(default_factory=set)

    def resolve(self, subject: str, uri: str) -> None:
        self.resolved.add((subject, uri))

    def unresolve(self, uri: str) -> None:
        self.resolved = {(s, u) for s, u in self.resolved if u != uri}

    def resolve_endpoints(self, subject: str, uri: str) -> None:
        self.following.add((subject, uri))

    def declare(self, mos: list[MO]) -> None:
        self.registry[mos[0].uri] = mos
        self.declarations += 1

    def undeclare(self, uri: str) -> None:
        self.registry.pop(uri, None)

    def macs(self) -> set[str]:
        return {mos[0].properties["mac"] for mos in self.registry.values()}


def test_an_endpoint_is_declared_once_its_policy_is_resolved() -> None:
    client = FakeClient()
    declarer = Declarer(client, "h1", "192.0.2.1")
    assert declarer.sync([WEB1_PORT]) == []
    assert client.registry == {} and ("PfEndpoint", EP) in client.resolved
    client.policy = policy()
    declarer.sync([WEB1_PORT])
    [(l2, *rest)] = client.registry.values()
    kids = {m.subject: m.properties for m in rest if m.parent_uri == l2.uri}
    l3 = [m for m in rest if m.subject == "EprL3Ep"]
    assert l2.properties["mac"] == "02:50:46:00:00:01" and l2.properties["interfaceName"] == "tap-web1"
    assert kids["PfEpTunnel"] == {"tunnelIp": "192.0.2.1", "classid": 0x4001}
    assert kids["EprL3Net"] == {"ip": "10.1.0.10"}
    assert [m.properties["ip"] for m in l3] == ["10.1.0.10"]
    assert any(
        uri.startswith("/EprL2Universe/") for _, uri in client.following
    )  # its bridge domain's members


def test_the_same_inputs_are_not_declared_again() -> None:
    client = FakeClient(policy())
    declarer = Declarer(client, "h1", None)
    declarer.sync([WEB1_PORT])
    declarer.sync([WEB1_PORT])
    client.policy[BD + "unrelated/"] = MO("Unrelated", BD + "unrelated/")  # not an input
    declarer.sync([WEB1_PORT])
    assert client.declarations == 1 and client.macs() == {"02:50:46:00:00:01"}


def test_a_changed_mac_replaces_the_declaration() -> None:
    client = FakeClient(policy())
    declarer = Declarer(client, "h1", None)
    declarer.sync([WEB1_PORT])
    client.policy[EP] = endpoint("02:50:46:00:00:99")
    declarer.sync([WEB1_PORT])
    assert client.macs() == {"02:50:46:00:00:99"}  # the old L2 endpoint is gone
    assert len(client.registry) == 1


def test_unplugging_undeclares_and_replugging_declares_again() -> None:
    client = FakeClient(policy())
    declarer = Declarer(client, "h1", None)
    declarer.sync([WEB1_PORT])
    assert declarer.sync([]) == ["acme/web1"]
    assert client.registry == {} and declarer.declared == {}
    assert declarer.sync([]) == []
    declarer.sync([WEB1_PORT])
    assert client.macs() == {"02:50:46:00:00:01"}


def test_an_iface_id_that_is_not_tenant_slash_name_is_skipped() -> None:
    client = FakeClient(policy())
    declarer = Declarer(client, "h1", None)
    assert declarer.sync([Plugged("web1", "tap-x", 7), Plugged("/web1", "tap-y", 8)]) == []
    assert client.registry == {} and client.resolved == set()


# ---- the reporter


@dataclass
class Observer:
    """The authority's observer side: what it was told; ``up`` False: reports fail."""

    session: object | None = "session-1"
    up: bool = True
    told: dict[str, MO] = field(default_factory=dict)  # by URI: the latest report of each object

    async def report(self, observables: list[MO]) -> None:
        if not self.up:
            raise ConnectionError("not connected")
        self.told.update((mo.uri, mo) for mo in observables)


def reporting(observer: Observer, body: Any) -> int:
    """Run ``body(reporter)`` on a loop; returns how many times the reporter asked for a wake-up."""
    wakes = 0

    def wake() -> None:
        nonlocal wakes
        wakes += 1

    async def main() -> None:
        reporter = Reporter(observer, "h1", wake, retry_after=0.0)
        await body(reporter)
        await reporter.settled()
        await asyncio.sleep(0.01)  # let the retries fire

    asyncio.run(main())
    return wakes


def statuses(observer: Observer) -> set[str]:
    return {m.properties["endpoint"] for m in observer.told.values() if m.subject == "PfEndpointStatus"}


def test_endpoints_are_reported_active_once_with_the_counters() -> None:
    observer = Observer()

    async def body(r: Reporter) -> None:
        r.endpoints_active({"acme/web1", "acme/app1"}, {"flows": 10, "endpoints": 2, "syncs": 1})
        await r.settled()
        observer.told.clear()
        r.endpoints_active({"acme/web1", "acme/app1"}, {"flows": 10, "endpoints": 2, "syncs": 2})
        await r.settled()
        assert observer.told == {}  # nothing new to say
        r.forget("acme/web1")  # unplugged; plugged again later
        r.endpoints_active({"acme/web1", "acme/app1"}, {"flows": 10, "endpoints": 2, "syncs": 3})

    assert reporting(observer, body) == 0
    assert statuses(observer) == {"acme/web1"}
    assert observer.told["/PfEndpointStatus/acme%2fweb1/"].properties["status"] == "ACTIVE"
    assert observer.told["/PfAgentCounters/"].properties == {"flows": 10, "endpoints": 2, "syncs": 3}


def test_a_new_session_reports_every_endpoint_active_again() -> None:
    """After a reconnect the client declares everything again, and the registry holds those
    endpoints as BUILD until told: the reporter tells them all again, once."""
    observer = Observer()

    async def body(r: Reporter) -> None:
        r.endpoints_active({"acme/web1", "acme/app1"}, {})
        await r.settled()
        observer.told.clear()
        observer.session = "session-2"
        r.endpoints_active({"acme/web1", "acme/app1"}, {})
        await r.settled()
        assert statuses(observer) == {"acme/web1", "acme/app1"}
        observer.told.clear()
        r.endpoints_active({"acme/web1", "acme/app1"}, {})

    reporting(observer, body)
    assert statuses(observer) == set()  # the same session: said once


def test_a_report_in_flight_when_the_session_changes_is_told_again_in_the_new_one() -> None:
    """A reconnect while a status report is in flight, and the new session's reconcile before it
    returns: the new session re-declared everything, which the registry holds as BUILD, so what
    the old one was told counts for nothing there. (Taken as told, a thousand endpoints stayed
    BUILD for good after a reconnect at 10,000.)"""

    release = asyncio.Event()

    class Slow(Observer):
        async def report(self, observables: list[MO]) -> None:
            await release.wait()
            await Observer.report(self, observables)

    observer = Slow()

    async def body(r: Reporter) -> None:
        r.endpoints_active({"acme/web1"}, {})  # in flight in session-1
        await asyncio.sleep(0)
        observer.session = "session-2"
        r.endpoints_active({"acme/web1"}, {})  # the new session's reconcile: web1 is still in flight
        release.set()
        await r.settled()
        assert r.active == set()  # told session-1 only
        observer.told.clear()
        r.endpoints_active({"acme/web1"}, {})  # the reconcile the retry wakes

    assert reporting(observer, body) == 1
    assert statuses(observer) == {"acme/web1"}  # told in session-2


def test_a_report_that_cannot_be_sent_is_retried_by_waking_the_loop() -> None:
    observer = Observer(session=None)

    async def body(r: Reporter) -> None:
        r.endpoints_active({"acme/web1"}, {})  # not connected: not even tried
        observer.session, observer.up = "session-1", False
        r.endpoints_active({"acme/web1"}, {})  # connected, but the send fails
        await r.settled()
        assert r.active == set()
        observer.up = True
        r.endpoints_active({"acme/web1"}, {})

    assert reporting(observer, body) == 2
    assert statuses(observer) == {"acme/web1"}


def test_gateway_ports_are_reported_once_per_session_and_on_change() -> None:
    observer = Observer()
    sent: list[list[str]] = []

    async def body(r: Reporter) -> None:
        for session, nets in [("s1", {"/ext/a/"}), ("s1", {"/ext/a/"}), ("s2", {"/ext/a/"}), ("s2", set())]:
            observer.session = session
            r.gateway_ports("192.0.2.3", frozenset(nets))
            await r.settled()
            told = observer.told.pop("/PfGatewayPorts/", None)
            if told is not None:
                assert told.properties["tunnelIp"] == "192.0.2.3"
                sent.append(told.properties["externalNetworks"])

    reporting(observer, body)
    assert sent == [["/ext/a/"], ["/ext/a/"], []]


def test_faults_are_best_effort() -> None:
    observer = Observer(up=False)

    async def body(r: Reporter) -> None:
        await r.fault("render-failed", "major", "x" * 600)  # does not raise
        observer.up = True
        await r.fault("render-failed", "major", "x" * 600)

    reporting(observer, body)
    assert len(observer.told["/PfFault/render-failed/"].properties["description"]) == 500


# ---- ARP announcements and Open vSwitch as a renderer

ANNOUNCED = external.Announcement(9, FIP.ip, FIP.mac, "203.0.113.1")


def test_new_addresses_are_announced_once_and_refreshed() -> None:
    sent: list[str] = []
    announcer = Announcer(sent.append, "h1")
    announcer.update(frozenset({ANNOUNCED}))
    assert sent == packet_outs([ANNOUNCED])
    gratuitous, to_gateway = sent
    assert external.arp_frame(FIP.mac, FIP.ip, FIP.ip).hex() in gratuitous and gratuitous.endswith("output:9")
    assert external.arp_frame(FIP.mac, FIP.ip, "203.0.113.1").hex() in to_gateway
    announcer.update(frozenset({ANNOUNCED}))
    assert len(sent) == 2  # nothing new
    announcer.refresh()
    assert len(sent) == 4
    announcer.update(frozenset())
    announcer.refresh()
    assert len(sent) == 4  # a gone address is no longer refreshed


def test_a_failed_announcement_is_dropped_not_raised() -> None:
    def broken(spec: str) -> None:
        raise OSError("ovs-ofctl failed")

    announcer = Announcer(broken, "h1")
    announcer.update(frozenset({ANNOUNCED}))
    assert announcer.announced == {ANNOUNCED}


@dataclass
class FakeBridge:
    """A bridge behind the ``FlowApplier`` interface: the flows it holds, the packets it sent."""

    flows: set[Flow] | None = None
    packets: list[str] = field(default_factory=list)

    def sync(self, flows: tuple[Flow, ...]) -> Any:
        old, self.flows = self.flows, set(flows)

        @dataclass
        class Synced:
            added: int
            removed: int
            seconds: float
            full: bool

        if old is None:
            return Synced(len(self.flows), 0, 0.0, True)
        return Synced(len(self.flows - old), len(old - self.flows), 0.0, False)

    def packet_out(self, spec: str) -> None:
        self.packets.append(spec)


def ovs(bridge: FakeBridge, enforce_policy: bool = True) -> OvsRenderer:
    return OvsRenderer(api.RendererContext("h1"), bridge, enforce_policy)  # type: ignore[arg-type]


def test_the_ovs_renderer_compiles_the_pipeline_with_the_views_tunnel_port() -> None:
    net = replace(host("h1", (WEB1,)), tunnel_port=TUNNEL)
    desired = ovs(FakeBridge()).compile(net)
    assert desired.flows == tuple(compile_pipeline(net, TUNNEL))
    assert desired.announcements == {ANNOUNCED}
    without = ovs(FakeBridge()).compile(replace(net, tunnel_port=None))
    assert not any(f"output:{TUNNEL}" in f.actions for f in without.flows)
    forwarding = ovs(FakeBridge(), enforce_policy=False).compile(net)
    assert not any(f.table == POLICY_CT for f in forwarding.flows)  # a plug-in enforces policy


def test_the_ovs_renderer_applies_flows_then_announces_and_says_what_changed() -> None:
    bridge = FakeBridge()
    renderer = ovs(bridge)
    net = replace(host("h1", (WEB1,)), tunnel_port=TUNNEL)
    first = renderer.apply(renderer.compile(net))
    assert bridge.flows == set(compile_pipeline(net, TUNNEL)) and renderer.flows == len(bridge.flows)
    assert first.added == len(bridge.flows) and first.detail.startswith("full sync")
    assert bridge.packets == packet_outs([ANNOUNCED])
    second = renderer.apply(renderer.compile(replace(net, floating_ips=())))
    assert second.removed > 0 and second.detail.startswith("delta sync")
    assert len(bridge.packets) == 2  # nothing new to announce


# ---- the agent's one render path


class Counting(api.Renderer[int]):
    """A plug-in whose desired state is the number of local endpoints."""

    def __init__(self) -> None:
        super().__init__(api.RendererContext("h1"))
        self.applies = 0

    def compile(self, net: Network) -> int:
        return len(net.local)

    def apply(self, desired: int) -> api.Applied:
        self.applies += 1
        return api.Applied(desired, 0, 0.0)


def test_every_renderer_is_applied_only_when_its_desired_state_changed() -> None:
    agent = OvsAgent(AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock"))
    bridge = FakeBridge()
    agent.ovs = ovs(bridge)
    plugin = Counting()
    agent.renderers = [Rendering("openvswitch", agent.ovs), Rendering("counting", plugin)]
    net = replace(host("h1", (WEB1,)), tunnel_port=TUNNEL)

    async def main() -> None:
        for view in (net, net, replace(net, local=())):
            for rendering in agent.renderers:
                await agent._render(rendering, view)

    asyncio.run(main())
    assert plugin.applies == 2 and agent.renderers[1].last == 0
    assert bridge.flows == set(compile_pipeline(replace(net, local=()), TUNNEL))


class Failing(Counting):
    """A plug-in whose device refuses the next ``fail`` applies."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    def apply(self, desired: int) -> api.Applied:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("device refused the change")
        return super().apply(desired)


def test_after_a_failed_apply_the_same_desired_state_is_applied_again() -> None:
    """A applied, B refused, the view back to A: the device may hold part of B, so A goes again."""
    agent = OvsAgent(AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock"))
    plugin = Failing()
    rendering = Rendering("failing", plugin)
    a = replace(host("h1", (WEB1,)), tunnel_port=TUNNEL)
    b = replace(a, local=())

    async def main() -> None:
        await agent._render(rendering, a)
        plugin.fail = 1
        with pytest.raises(RuntimeError):
            await agent._render(rendering, b)
        await agent._render(rendering, a)

    asyncio.run(main())
    assert plugin.applies == 2 and rendering.rendered and rendering.last == 1


def test_the_declarer_looks_again_only_at_endpoints_whose_inputs_changed() -> None:
    """Given the URIs changed since the last sync, an endpoint still on the same interface is
    recomputed only if one of its inputs is among them (its PfEndpoint, its group and bridge domain
    and their children, resolved or not yet); every FULL_EVERY syncs, all are."""
    client = FakeClient()
    declarer = Declarer(client, "h1", "192.0.2.1")
    declarer.sync([WEB1_PORT], None)  # not resolved yet: its inputs are the URIs it waits for
    client.policy = policy()
    unrelated = "/PolicyUniverse/PolicySpace/acme/GbpContract/c/"
    declarer.sync([WEB1_PORT], {unrelated})
    assert client.declarations == 0  # nothing it waits for arrived (as far as it was told)
    declarer.sync([WEB1_PORT], set(client.policy))
    assert client.declarations == 1
    client.resolved.clear()
    declarer.sync([WEB1_PORT], {unrelated})
    assert client.resolved == set() and client.declarations == 1  # not even looked at
    ctx = EPG + "GbpeInstContext/"
    client.policy[ctx] = MO("GbpeInstContext", ctx, {"classid": 0x4002})
    declarer.sync([WEB1_PORT], {ctx})
    [(l2, *rest)] = client.registry.values()
    assert client.declarations == 2
    assert {m.subject: m.properties for m in rest if m.parent_uri == l2.uri}["PfEpTunnel"][
        "classid"
    ] == 0x4002
    renamed = Plugged("acme/web1", "tap-other", 5)  # another interface: looked at, changed or not
    declarer.sync([renamed], set())
    assert client.declarations == 3
    assert declarer.sync([], set()) == ["acme/web1"] and client.registry == {}
