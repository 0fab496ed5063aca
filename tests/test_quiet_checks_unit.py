"""The periodic safety nets (the view's check of every node's inputs, the declarer's full pass)
wait for a reconcile that carries no change, up to twice their period: on a change they were that
change's latency (the first change after a quiet spell took 0.3-0.8 s at 10,000 endpoints)."""

from __future__ import annotations

from dataclasses import replace

from policyfabric.agent.declarer import FULL_EVERY, Declarer
from policyfabric.agent.viewstate import ViewState
from policyfabric.opflex.gbp import Cls, Prop, uri_of
from tests.test_agent_unit import WEB1_PORT, FakeClient, policy
from tests.test_view_incremental_unit import EXTERNAL, HOST, TUNNEL_PORT, VTEP, T, World, whole


def test_the_views_check_waits_for_a_quiet_update_up_to_twice_its_period() -> None:
    now = [0.0]
    w = World()
    w.push_policy()
    w.push_registry(3)
    view = ViewState(HOST, VTEP, EXTERNAL, check_every=60, clock=lambda: now[0])
    args = (w.client.endpoints, w.plugged, TUNNEL_PORT, w.ofports)
    view.network(w.client.policy, *args, w.take())
    c0, c1 = uri_of(T, Cls.GBP_CONTRACT, "c0"), uri_of(T, Cls.GBP_CONTRACT, "c1")
    w.client.policy[c0] = replace(w.client.policy[c0], properties={Prop.NAME: "renamed"})  # unreported
    reported = replace(w.client.policy[c1], properties={Prop.NAME: "told"})
    w.client.policy[c1] = reported
    now[0] = 61
    view.network(w.client.policy, *args, {c1})  # a change: the check waits
    assert view.stats.checks == 0 and view.stats.missed == 0
    now[0] = 62
    quiet = view.network(w.client.policy, *args, set())  # nothing changed: the check runs here
    assert view.stats.checks == 1 and view.stats.missed == 1 and quiet == whole(w)
    assert not view.check_due(100.0, busy=False) and view.check_due(122.0, busy=False)
    assert not view.check_due(122.0, busy=True) and view.check_due(182.0, busy=True)  # overdue


def test_the_declarers_full_pass_waits_for_a_sync_with_no_change_up_to_twice_its_period() -> None:
    client = FakeClient()
    client.policy = policy()
    declarer = Declarer(client, "h1", "192.0.2.1")
    declarer.sync([WEB1_PORT], None)  # the first: whole
    unrelated = "/PolicyUniverse/PolicySpace/acme/GbpContract/c/"
    client.resolved.clear()
    for _ in range(FULL_EVERY + 5):  # past the period, every sync with a change: not looked at
        declarer.sync([WEB1_PORT], {unrelated})
    assert client.resolved == set()
    declarer.sync([WEB1_PORT], set())  # the first quiet one after the period: every endpoint
    assert client.resolved
    client.resolved.clear()
    for _ in range(2 * FULL_EVERY - 1):
        declarer.sync([WEB1_PORT], {unrelated})
    assert client.resolved == set()
    declarer.sync([WEB1_PORT], {unrelated})  # twice the period: even on a change
    assert client.resolved
