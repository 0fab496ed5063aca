"""The agent when a flood of answers is coming: a reconcile held while the authority answers the
agent's own resolutions (rendered once, not after every few answers), a reconcile that stops
before the view when declaring just asked for more, ACTIVE reported only once the registry holds
the declarations, and the declarer's pass over only what changed when OVSDB did not."""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field, replace

import pytest

from policyfabric.agent.declarer import Declarer
from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent
from policyfabric.agent.renderers.ovs import applier as applier_module
from policyfabric.agent.renderers.ovs.flowmods import Command, Mirror
from policyfabric.agent.renderers.ovs.ovsdb import Plugged
from policyfabric.agent.renderers.ovs.pipeline import SectionCompiler, compile_pipeline
from policyfabric.agent.renderers.ovs.sections import Sections
from policyfabric.agent.renderers.ovs.simulate import FakeSwitch
from policyfabric.agent.view import IpAddress, Mac
from policyfabric.opflex.mo import MO
from tests.fabric import TUNNEL
from tests.test_agent_unit import EPG, WEB1_PORT, FakeClient, policy
from tests.test_external_unit import APP1, host
from tests.test_flowmods_unit import Ofctl
from tests.test_routing_unit import WEB1


@dataclass
class Asking:
    """What the agent reads of its OpFlex client to know what is in flight."""

    in_flight: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: int = 0  # answers received
    answered: collections.Counter[str] = field(default_factory=collections.Counter)  # ... by method
    session: object | None = None
    reported: list[set[str]] = field(default_factory=list)

    def answer(self, method: str) -> None:
        self.in_flight[method] -= 1
        self.requests += 1
        self.answered[method] += 1


def agent_with(
    client: Asking, settle_max: float = 1.0, settle_cap: float = 8.0, per_request: float = 0.0
) -> OvsAgent:
    config = AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock")
    config.settle_max, config.settle_cap = settle_max, settle_cap
    config.settle_per_request = per_request
    agent = OvsAgent(config)
    agent.client = client  # type: ignore[assignment]
    return agent


def held_while_answered(
    agent: OvsAgent, client: Asking, method: str, answers: int | None
) -> tuple[float, int]:
    """How long ``agent._settle`` holds while the authority answers ``method`` every 10 ms,
    ``answers`` times (None: for ever), and how many of ``method`` were still in flight when it
    let go."""

    async def main() -> tuple[float, int]:
        async def authority() -> None:
            count = 0
            while answers is None or count < answers:
                await asyncio.sleep(0.01)
                client.answer(method)
                count += 1

        answering = asyncio.create_task(authority())
        start = time.monotonic()
        await agent._settle()
        took, left = time.monotonic() - start, client.in_flight[method]
        answering.cancel()
        return took, left

    return asyncio.run(main())


def test_a_reconcile_is_held_while_resolutions_are_answered_then_runs_once() -> None:
    """Twenty resolutions answered one every 10 ms: the hold ends with the last answer, not the first."""
    client = Asking()
    client.in_flight["policy_resolve"] = 20
    agent = agent_with(client)
    took, left = held_while_answered(agent, client, "policy_resolve", 20)
    assert left == 0 and took >= 0.19


def test_nothing_asked_is_no_wait_and_status_reports_do_not_hold() -> None:
    client = Asking()
    client.in_flight["state_report"] = 3  # reports follow rendering: never waited for
    client.in_flight["endpoint_declare"] = 3  # nor declarations and the members they bring
    client.in_flight["endpoint_resolve"] = 3
    agent = agent_with(client)
    start = time.monotonic()
    asyncio.run(agent._settle())
    assert time.monotonic() - start < 0.05


def test_an_authority_that_stops_answering_holds_no_longer_than_settle_max() -> None:
    client = Asking()
    client.in_flight["policy_resolve"] = 1
    agent = agent_with(client, settle_max=0.1)
    start = time.monotonic()
    asyncio.run(agent._settle())
    took = time.monotonic() - start
    assert 0.1 <= took < 0.5 and client.in_flight["policy_resolve"] == 1


def test_answers_that_never_end_hold_no_longer_than_settle_cap() -> None:
    client = Asking()
    client.in_flight["policy_resolve"] = 10**6
    agent = agent_with(client, settle_max=0.1, settle_cap=0.3)
    took, _ = held_while_answered(agent, client, "policy_resolve", None)
    assert 0.3 <= took < 0.6


def test_a_flood_may_be_held_longer_than_settle_cap() -> None:
    """The cap grows with what is in flight (the answers to 10,000 endpoints' policy take seconds):
    answers coming steadily hold the reconcile past ``settle_cap`` until the last."""
    client = Asking()
    client.in_flight["policy_resolve"] = 40
    agent = agent_with(client, settle_max=0.1, settle_cap=0.1, per_request=0.02)  # 0.8 s for 40
    took, left = held_while_answered(agent, client, "policy_resolve", 40)
    assert left == 0 and took >= 0.35


def test_a_reconcile_that_just_asked_for_more_stops_before_the_view_and_keeps_its_changes() -> None:
    client = Asking()
    agent = agent_with(client, settle_cap=0.2)

    async def main() -> list[bool]:
        agent._changed = {"/later/"}  # arrived meanwhile
        client.in_flight["policy_resolve"] = 2  # what declaring just asked for
        first = await agent._asked_more({"/seen/"})
        kept = agent._changed == {"/later/", "/seen/"} and agent._wake.is_set()
        await asyncio.sleep(0.25)  # still not answered past settle_cap: rendered anyway
        late = await agent._asked_more(set())
        client.in_flight["policy_resolve"] = 0
        none = await agent._asked_more(set())
        return [first, kept, late, none]

    assert asyncio.run(main()) == [True, True, False, False]


@dataclass
class Reports:
    sent: list[set[str]] = field(default_factory=list)

    def endpoints_active(self, keys: set[str], counters: dict[str, int]) -> None:
        self.sent.append(set(keys))


def test_active_is_reported_only_once_no_declaration_is_in_flight() -> None:
    client = Asking()
    agent = agent_with(client)
    reports = Reports()
    agent.reports = reports  # type: ignore[assignment]

    async def main() -> bool:
        client.in_flight["endpoint_declare"] = 1
        agent._report_active({"acme/web1"}, {})
        held = reports.sent == []
        await asyncio.sleep(0.1)
        woken = agent._wake.is_set()  # looked at again shortly
        client.answer("endpoint_declare")
        agent._report_active({"acme/web1"}, {})
        return held and woken

    assert asyncio.run(main()) and reports.sent == [{"acme/web1"}]


def test_the_declarer_with_the_same_interfaces_looks_only_at_what_changed() -> None:
    """The very list of the last sync (OVSDB unchanged): an endpoint whose inputs changed is
    declared again, the others are not looked at; a new list (OVSDB changed) is walked whole."""
    client = FakeClient(policy())
    declarer = Declarer(client, "h1", "192.0.2.1")
    other = Plugged("acme/web2", "tap-web2", 6)
    plugged = [WEB1_PORT, other]
    declarer.sync(plugged, None)
    assert client.declarations == 1  # web2's policy is not resolved
    client.resolved.clear()
    declarer.sync(plugged, {"/PolicyUniverse/PolicySpace/acme/GbpContract/c/"})
    assert client.resolved == set() and client.declarations == 1  # nobody looked at
    ctx = EPG + "GbpeInstContext/"
    client.policy[ctx] = MO("GbpeInstContext", ctx, {"classid": 0x4002})
    declarer.sync(plugged, {ctx})
    [(_, *rest)] = client.registry.values()
    tunnel = next(m for m in rest if m.subject == "PfEpTunnel")
    assert client.declarations == 2 and tunnel.properties["classid"] == 0x4002
    assert declarer.sync([other], set()) == ["acme/web1"] and client.registry == {}


def test_a_full_sync_written_in_chunks_installs_every_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replace-flows file is written a few flows at a time: every flow lands, once."""
    monkeypatch.setattr(applier_module, "REPLACE_CHUNK", 7)
    ofctl = Ofctl(FakeSwitch())
    applier = applier_module.FlowApplier("unix:/nowhere", run=ofctl)
    wanted = compile_pipeline(host("h1", (WEB1, APP1)), TUNNEL)
    assert len(wanted) > 7 * 3
    assert applier.sync(wanted).full and ofctl.calls[-1] == "replace-flows"
    assert ofctl.switch.flows() == set(wanted)


@dataclass
class Ordered(FakeClient):
    """A fake client that also keeps the order of what was asked and told."""

    said: list[str] = field(default_factory=list)

    def resolve(self, subject: str, uri: str) -> None:
        self.said.append(f"resolve {subject}")
        super().resolve(subject, uri)

    def declare(self, mos: list[MO]) -> None:
        self.said.append("declare")
        super().declare(mos)

    def resolve_endpoints(self, subject: str, uri: str) -> None:
        self.said.append("members")
        super().resolve_endpoints(subject, uri)


def test_what_the_endpoints_need_is_asked_for_before_they_are_declared() -> None:
    """The authority answers a session's requests in order: the group (and its contracts) asked
    for first are not answered behind the host's declarations."""
    client = Ordered(policy())
    Declarer(client, "h1", "192.0.2.1").sync([WEB1_PORT], None)
    assert "resolve GbpEpGroup" in client.said and "declare" in client.said
    assert client.said.index("resolve GbpEpGroup") < client.said.index("declare")
    assert client.said.index("declare") < client.said.index("members")


def test_the_agents_declarer_sends_its_declarations_when_told() -> None:
    client = Ordered(policy())
    declarer = Declarer(client, "h1", "192.0.2.1", send_later=True)
    declarer.sync([WEB1_PORT], None)
    assert client.registry == {} and declarer.unsent and "resolve GbpEpGroup" in client.said
    declarer.send()
    assert len(client.registry) == 1 and not declarer.unsent and client.said[-2:] == ["declare", "members"]


def test_a_first_install_much_larger_than_the_bridge_goes_whole_without_a_delta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the base flows to a host's endpoints: one replace-flows of exactly what is wanted, with
    no flow-by-flow diff worked out first; the mirror it leaves then plans the next sync."""
    ofctl = Ofctl(FakeSwitch())
    applier = applier_module.FlowApplier("unix:/nowhere", run=ofctl, channel_max=5)
    compiler = SectionCompiler(enforce_policy=True)  # the renderer's: sections, each section's own
    base = compiler.compile(host("h1", ()), TUNNEL)
    applier.sync(base)
    many = tuple(
        replace(
            WEB1,
            key=f"acme/w{i}",
            mac=Mac(f"02:50:46:00:01:{i:02x}"),
            ips=(IpAddress(f"10.1.0.{100 + i}"),),
            ofport=10 + i,
        )
        for i in range(8)
    )
    wanted = compiler.compile(host("h1", (*many, APP1)), TUNNEL)
    assert len(wanted) >= 2 * len(base)
    diffs: list[int] = []
    update = Mirror.update

    def counted(self: Mirror, desired: Sections) -> list[Command]:
        diffs.append(1)
        return update(self, desired)

    monkeypatch.setattr(Mirror, "update", counted)
    result = applier.sync(wanted)
    assert result.full and ofctl.calls[-1] == "replace-flows" and diffs == []
    assert ofctl.switch.flows() == set(wanted) and applier.installed is not None
    assert set(applier.installed.values()) == set(wanted)
    again = applier.sync(wanted)
    assert (again.added, again.removed, again.full) == (0, 0, False) and diffs == [1]


def test_an_interface_unplugged_before_its_declaration_is_sent_is_never_declared() -> None:
    """The declaration waits in the outbox (``send_later``); the port goes before it is sent: its
    undeclaration follows it through the outbox, so the registry ends with nothing (sent at once,
    the undeclaration found nothing declared, and the declaration then went out for good)."""
    client = FakeClient(policy())
    declarer = Declarer(client, "h1", "192.0.2.1", send_later=True)
    declarer.sync([WEB1_PORT], None)
    assert declarer.unsent
    assert declarer.sync([], None) == ["acme/web1"]
    declarer.send()
    assert client.registry == {} and declarer.declared == {}


def test_a_resolution_just_wanted_counts_as_awaited_before_it_is_on_the_wire() -> None:
    """The real client batches what is wanted in one turn of the loop and sends it from a task: a
    reconcile that has just asked for a group must see it as awaited at once, or it renders a view
    without it."""

    class Silent:
        ready = True

        async def call(self, method: str, params: object, timeout: float = 30.0) -> object:
            await asyncio.sleep(10)  # never answered within the test
            return None

    async def go() -> tuple[bool, int]:
        agent = OvsAgent(AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock"))
        agent.client.session = Silent()  # type: ignore[assignment]
        agent.client.resolve("GbpEpGroup", "/PolicyUniverse/PolicySpace/t/GbpEpGroup/g/")
        waiting = agent.awaiting()
        return await agent._asked_more(set()), waiting

    deferred, waiting = asyncio.run(go())
    assert waiting == 1 and deferred


def test_declarations_answered_meanwhile_do_not_keep_a_stuck_resolution_held() -> None:
    """A resolution the authority does not answer, while declarations are answered every 10 ms (a
    host's start): the hold ends ``settle_max`` after the last answer to what it waits for, not at
    ``settle_cap``."""
    client = Asking()
    client.in_flight["policy_resolve"] = 1
    client.in_flight["endpoint_declare"] = 1000
    agent = agent_with(client, settle_max=0.1, settle_cap=5.0)
    held, _ = held_while_answered(agent, client, "endpoint_declare", 300)
    assert 0.1 <= held < 0.5
