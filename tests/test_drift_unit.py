"""Drift detection without a switch: whose a flow update is, the monitor's thread against a fake
OVS on a Unix socket, ``nft monitor``'s transactions, the fault's life, and the agent's one render
path applying a drifted renderer again although its desired state did not change."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from policyfabric.agent.drift import DriftFaults
from policyfabric.agent.ovs_agent import AgentConfig, OvsAgent, Rendering
from policyfabric.agent.renderers.nftables.monitor import Transactions
from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.flowmods import AddFlow, DeleteFlow, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import AGENT_COOKIE, flow
from policyfabric.agent.renderers.ovs.monitor import BULK, Attribution, FlowMonitor, describe
from policyfabric.agent.renderers.ovs.sections import cookie_of
from policyfabric.agent.renderers.ovs.tables import NEIGHBOUR, POLICY_CT
from tests.fabric import TUNNEL
from tests.test_agent_unit import Counting
from tests.test_external_unit import host
from tests.test_routing_unit import WEB1

ADDED, REMOVED, MODIFIED = w.OFPFME_ADDED, w.OFPFME_REMOVED, w.OFPFME_MODIFIED
OURS = cookie_of(("contract", "/PolicyUniverse/PolicySpace/acme/GbpContract/http/"))
EXTNET = ("extnet", "/PolicyUniverse/PolicySpace/acme/PfExternalNetwork/ext/")


def update(
    event: int, table: int = POLICY_CT, priority: int = 10, cookie: int = OURS, reason: int = 2
) -> w.FlowUpdate:
    return w.FlowUpdate(event, table, priority, cookie, reason)


# ---- the wire


def test_flow_updates_decode_as_ovs_sends_them() -> None:
    body = w.flow_update(REMOVED, 61, 100, OURS, w.OFPRR_DELETE) + w.flow_update(ADDED, 0, 5, 0)
    reply = w.flow_monitor_reply(0, body)
    assert w.decode_flow_updates(reply[8:]) == [
        w.FlowUpdate(REMOVED, 61, 100, OURS, w.OFPRR_DELETE),
        w.FlowUpdate(ADDED, 0, 5, 0, 0),
    ]
    assert w.decode_flow_updates(b"\x00\x01" + bytes(6)) is None  # another multipart reply
    with pytest.raises(ValueError):
        w.decode_flow_updates(reply[8:-4])  # cut short
    request = w.flow_monitor_request(7, 1)
    assert len(request) == 8 + 8 + 16 + 8 and request[1] == w.OFPT_MULTIPART_REQUEST


# ---- whose an update is


def test_outside_any_window_every_change_is_drift() -> None:
    a = Attribution()
    assert a.foreign(update(REMOVED)) and a.foreign(update(ADDED)) and a.foreign(update(MODIFIED))
    assert a.foreign(update(ADDED, table=0, cookie=0))  # a flow added by hand, any cookie


def test_a_deltas_window_accounts_for_exactly_its_flow_mods() -> None:
    a = Attribution()
    token = a.open([AddFlow(flow(61, 10, {"ip": ""}, "drop")), DeleteFlow(flow(62, 20, None, "drop"))])
    assert not a.foreign(update(ADDED, 61, 10))  # its add
    assert a.foreign(update(ADDED, 61, 10))  # a second one: not its
    assert a.foreign(update(REMOVED, 61, 10))  # a delete it did not make
    assert not a.foreign(update(REMOVED, 62, 20))
    a.close(token)
    assert a.foreign(update(MODIFIED, 61, 10))


def test_a_full_syncs_window_takes_everything_until_it_closes() -> None:
    a = Attribution()
    token = a.open([ReplaceFlows((flow(0, 0, None, "drop"),))])
    assert not any(a.foreign(update(e, t)) for e in (ADDED, REMOVED, MODIFIED) for t in (0, 61))
    a.close(token)
    assert a.foreign(update(REMOVED, 0))


def test_a_pause_during_a_full_sync_is_the_agents_own_and_any_other_is_unknown(tmp_path: Path) -> None:
    """OVS pauses a monitor it cannot keep up with, re-sends what was added or modified meanwhile,
    then resumes; deletions meanwhile are never told. Inside one of the agent's full syncs that
    is the sync's own doing (what OVS re-sends too, even after the window closed); otherwise what
    changed is unknown: drift."""
    monitor = FlowMonitor(tmp_path / "none.mgmt", lambda what: None)
    paused, resumed = update(w.OFPFME_PAUSED), update(w.OFPFME_RESUMED)
    token = monitor.attribution.open([ReplaceFlows((flow(0, 0, None, "drop"),))])
    foreign, unknown = monitor._foreign([update(ADDED), paused])
    assert (foreign, unknown) == ([], "")
    monitor.attribution.close(token)  # the barrier's reply came before OVS caught up
    foreign, unknown = monitor._foreign([update(MODIFIED), update(ADDED, 0), resumed])
    assert (foreign, unknown) == ([], "")  # re-sent by OVS: the full sync's
    foreign, unknown = monitor._foreign([update(REMOVED)])
    assert foreign == [update(REMOVED)]  # after the pause: seen again
    token = monitor.attribution.open([AddFlow(flow(61, 10, {"ip": ""}, "drop"))])
    foreign, unknown = monitor._foreign([paused, update(ADDED, 61, 10), update(ADDED, 0, 5), resumed])
    assert unknown.startswith("OVS paused the flow monitor")  # a delta's pause: unknown
    assert foreign == [update(ADDED, 0, 5)]


def test_a_bulk_deltas_window_takes_everything_and_its_pause_is_its_own(tmp_path: Path) -> None:
    """A delta of more than ``BULK`` flow mods may overflow the monitor as a full sync does: its
    window takes any update, and a pause during it is not drift; one flow mod fewer is counted."""
    monitor = FlowMonitor(tmp_path / "none.mgmt", lambda what: None)
    adds = [AddFlow(flow(61, 10, {"reg0": str(i)}, "drop")) for i in range(BULK + 1)]
    token = monitor.attribution.open(adds)
    assert not monitor.attribution.foreign(update(REMOVED, 0, 5))  # not one of its kinds, yet its
    assert monitor._foreign([update(ADDED, 61, 10), update(w.OFPFME_PAUSED)]) == ([], "")
    monitor.attribution.close(token)
    assert monitor._foreign([update(w.OFPFME_RESUMED)]) == ([], "")
    token = monitor.attribution.open(adds[:BULK])
    assert monitor.attribution.foreign(update(REMOVED, 0, 5))
    assert monitor._foreign([update(w.OFPFME_PAUSED)])[1].startswith("OVS paused the flow monitor")
    monitor.attribution.close(token)


def test_a_delta_of_half_the_table_or_more_goes_whole() -> None:
    from policyfabric.agent.renderers.ovs.applier import whole_is_cheaper

    assert not whole_is_cheaper(200, 300, channel_max=200)  # the channel's: always a delta
    assert whole_is_cheaper(201, 300, channel_max=200)
    assert not whole_is_cheaper(4_000, 9_000, channel_max=200)
    assert whole_is_cheaper(9_027, 9_060, channel_max=200)


def test_learned_flows_and_timeouts_are_the_switchs_own() -> None:
    a = Attribution()
    assert not a.foreign(update(ADDED, NEIGHBOUR, cookie=cookie_of(EXTNET, learned=True)))  # learn() added it
    assert not a.foreign(update(ADDED, NEIGHBOUR, cookie=0))
    assert not a.foreign(update(REMOVED, NEIGHBOUR, cookie=0, reason=w.OFPRR_IDLE_TIMEOUT))
    assert not a.foreign(update(REMOVED, NEIGHBOUR, cookie=0, reason=w.OFPRR_DELETE))
    assert a.foreign(update(REMOVED, NEIGHBOUR, cookie=cookie_of(EXTNET)))  # one of ours
    assert a.foreign(update(REMOVED, NEIGHBOUR, cookie=AGENT_COOKIE))  # one of ours, in no section
    assert not a.foreign(update(w.OFPFME_ABBREV)) and not a.foreign(update(w.OFPFME_INITIAL))


def test_what_drifted_is_said_by_table() -> None:
    from collections import Counter

    assert describe(Counter({(61, "deleted"): 12, (0, "added"): 1})) == (
        "table 0: 1 flow added; table 61: 12 flows deleted"
    )


# ---- the monitor's thread against a fake OVS


class FakeOvs:
    """A management socket that answers the hello and the monitor request, then pushes what it is told."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.conn: socket.socket | None = None
        self.requests: list[int] = []
        self.ready = threading.Event()
        self.barriers: list[int] = []
        self.hold_barriers = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _recv(self, conn: socket.socket) -> tuple[int, int]:
        head = b""
        while len(head) < 8:
            chunk = conn.recv(8 - len(head))
            if not chunk:
                raise ConnectionError
            head += chunk
        _, msg_type, length, xid = w.HEADER.unpack(head)
        rest = length - 8
        while rest:
            rest -= len(conn.recv(rest))
        return msg_type, xid

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        self.conn = conn
        conn.sendall(w.hello(100))
        try:
            while True:
                msg_type, xid = self._recv(conn)
                self.requests.append(msg_type)
                if msg_type == w.OFPT_MULTIPART_REQUEST:
                    conn.sendall(w.flow_monitor_reply(xid, b""))
                    self.ready.set()
                elif msg_type == w.OFPT_BARRIER_REQUEST:
                    self.barriers.append(xid)
                    self.hold_barriers.wait(5)
                    conn.sendall(w.message(w.OFPT_BARRIER_REPLY, xid))
        except (ConnectionError, OSError):
            pass

    def push(self, *updates: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(w.flow_monitor_reply(0, b"".join(updates)))

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.shutdown(socket.SHUT_RDWR)  # the serving thread's recv holds the fd open
            self.conn.close()
        self.server.close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeOvs]:
    ovs = FakeOvs(tmp_path / "br-int.mgmt")
    yield ovs
    ovs.close()


def wait_for(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def test_the_monitor_reports_others_changes_and_not_its_own(tmp_path: Path, fake: FakeOvs) -> None:
    seen: list[str] = []
    monitor = FlowMonitor(tmp_path / "br-int.mgmt", seen.append)
    try:
        assert monitor.start() and fake.ready.is_set()
        # the agent's delta: its update comes before the barrier's reply, and is not drift
        token = monitor.own([DeleteFlow(flow(61, 10, {"ip": ""}, "drop"))])
        monitor.settle(token)
        wait_for(lambda: fake.barriers)
        fake.push(w.flow_update(REMOVED, 61, 10, OURS, w.OFPRR_DELETE))
        fake.hold_barriers.set()
        wait_for(lambda: monitor.attribution.open_windows == 0)
        assert seen == [] and monitor.updates == 1
        # someone else's: twelve flows of table 61 deleted, in one burst
        fake.push(*(w.flow_update(REMOVED, 61, 10 + i, OURS, w.OFPRR_DELETE) for i in range(12)))
        wait_for(lambda: seen)
        assert seen == ["table 61: 12 flows deleted"]
    finally:
        monitor.stop()
    assert monitor._thread is not None and not monitor._thread.is_alive()


def test_a_lost_monitor_is_drift_once_it_is_back(tmp_path: Path) -> None:
    path = tmp_path / "br-int.mgmt"
    first = FakeOvs(path)
    seen: list[str] = []
    monitor = FlowMonitor(path, seen.append, retry=0.05)
    try:
        assert monitor.start()
        first.close()  # OVS restarted
        path.unlink()
        second = FakeOvs(path)
        wait_for(lambda: seen)
        assert "lost" in seen[0] and second.ready.is_set()
        second.close()
    finally:
        monitor.stop()


def test_without_a_switch_the_monitor_keeps_trying(tmp_path: Path) -> None:
    monitor = FlowMonitor(tmp_path / "none.mgmt", lambda what: None, retry=0.05)
    assert not monitor.start()
    assert monitor.own([]) is None  # not monitoring: nothing to bracket
    monitor.stop()


# ---- nft monitor's transactions


def test_nft_changes_by_others_are_drift_and_the_renderers_own_are_not() -> None:
    t = Transactions()
    t.own(4242)
    lines = [
        "add table inet policyfabric",
        "delete table inet policyfabric",
        "add chain inet policyfabric forward { type filter hook forward priority filter; policy accept; }",
        "# new generation 2 by process 4242 (nft)",
        "delete rule inet policyfabric ep5_in_g handle 7",
        "delete rule inet policyfabric ep5_in_g handle 8",
        "# new generation 3 by process 999 (nft)",
        "add rule inet other forward drop",
        "# new generation 4 by process 998 (nft)",
        "delete rule inet policyfabric2 forward handle 3",
        "# new generation 5 by process 997 (nft)",
        "delete rule inet policyfabric forward handle 3",
        "delete chain inet policyfabric forward",
        "delete table inet policyfabric",
        "# new generation 6 by process 996 (nft)",
    ]
    said = [what for line in lines if (what := t.feed(line)) is not None]
    assert said == [
        "table inet policyfabric: 2 rules deleted (by process 999)",
        "table inet policyfabric deleted (by process 996)",
    ]


# ---- the fault's life


def test_one_fault_per_episode_cleared_once_it_stayed_repaired() -> None:
    d = DriftFaults(quiet=2.0)
    first, second = object(), object()
    raised = (
        "drift-openvswitch",
        "major",
        "openvswitch: changed by someone else, repaired at once: table 61: 3 flows deleted",
    )
    assert d.noted("openvswitch", "table 61: 3 flows deleted", 10.0, first) == raised
    assert d.untold(first) == [] and d.untold(None) == []
    assert d.untold(second) == [raised]  # a new session: said again, once
    assert d.untold(second) == []
    assert d.pending("openvswitch") and not d.pending("nftables")
    assert d.noted("openvswitch", "table 62: 1 flow deleted", 10.1) is None  # same episode
    taken = d.take("openvswitch")
    assert taken == (10.0, ["table 61: 3 flows deleted", "table 62: 1 flow deleted"])
    assert not d.pending("openvswitch")
    d.give_back("openvswitch", taken)  # the repair failed
    assert d.take("openvswitch") == taken
    d.repaired("openvswitch", 10.2)
    assert d.clearable(11.0) == [] and d.next_clear(11.0) == pytest.approx(1.2)
    d.noted("openvswitch", "table 61: 1 flow modified", 11.5)  # again before the quiet end
    assert d.clearable(13.0) == []  # pending again: no clearing
    d.take("openvswitch")
    d.repaired("openvswitch", 11.6)
    assert d.clearable(13.7) == [("drift-openvswitch", "cleared", "openvswitch: repaired (3 drifts)")]
    assert d.next_clear(14.0) is None and d.repairs == 2


# ---- the agent's render path


def test_a_drifted_renderer_is_applied_again_with_the_same_desired_state() -> None:
    agent = OvsAgent(AgentConfig("h1", [("127.0.0.1", 1)], "unix:/nonexistent/db.sock"))
    plugin = Counting()
    rendering = Rendering("counting", plugin)
    net = replace(host("h1", (WEB1,)), tunnel_port=TUNNEL)

    async def main() -> None:
        agent._loop = asyncio.get_running_loop()
        await agent._render(rendering, net)
        await agent._render(rendering, net)  # unchanged: not applied
        agent._drifted_threadsafe("counting", "someone deleted it")
        await asyncio.sleep(0)
        assert agent._wake.is_set() and agent.drift.pending("counting")
        await agent._render(rendering, net)  # the same desired state: applied again
        await agent._render(rendering, net)
        await agent.reports.settled()

    asyncio.run(main())
    assert plugin.applies == 2 and not agent.drift.pending("counting") and agent.drift.repairs == 1
