"""What the authority keeps of an agent's subscriptions once they end (in process, no sockets).

An agent subscribes object by object (resolution by need: one ``PfEndpoint`` per endpoint, its
groups, contracts...), so a host of 10,000 endpoints holds some 10,000 subscriptions. The
repository finds the sessions a change goes to through an index by subscribed URI
(``repository.Subscribers``). When a session closes (the agent restarted, and subscribes again in
its new session) or a subscription's lease runs out, its entries must leave that index: an entry
whose URI no push meets again would otherwise stay, with the closed session's tables behind it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.service import Authority
from policyfabric.model import scenario as sc
from policyfabric.opflex.gbp import Cls, endpoint_uri
from policyfabric.opflex.rpc import Session
from policyfabric.opflex.uri import space
from policyfabric.store.sqlite import SqliteStore
from tests.opflex_harness import attach

DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"
NAMES = ("web1", "web2", "app1", "app2", "app3", "web3", "api1")


def _authority(tmp_path: Path) -> Authority:
    scenario = sc.load(DEMO)
    authority = Authority(SqliteStore(tmp_path / "db", sync="normal"))
    authority.create_many([(e.kind, e.spec) for e in scenario.in_order() if e.spec is not None])
    return authority


async def _server(authority: Authority) -> OpflexServer:
    server = OpflexServer(authority)
    server.loop = asyncio.get_running_loop()
    await server.policy.rebuild({None, "acme"}, push=False)
    return server


def _asks(prr: int) -> list[dict[str, object]]:
    """What an agent of the demo's endpoints resolves: each ``PfEndpoint``, and the tenant."""
    asks = [{"subject": Cls.PF_ENDPOINT, "policy_uri": endpoint_uri("acme", n), "prr": prr} for n in NAMES]
    asks.append({"subject": Cls.POLICY_SPACE, "policy_uri": space("acme"), "prr": prr})
    return asks


async def _subscribe(server: OpflexServer, session: Session, prr: int = 60) -> None:
    await server._handle(session, "policy_resolve", _asks(prr))


def test_a_closed_session_leaves_nothing_in_the_subscription_index(tmp_path: Path) -> None:
    """The agent reconnects with a new session (the same name): the old session's subscriptions
    leave the index when it closes, the new session's are the only ones there."""

    async def go() -> None:
        server = await _server(_authority(tmp_path))
        old, _ = attach(server, "h1")
        await _subscribe(server, old)
        assert len(server.policy.subscribers) == len(NAMES) + 1
        old.closed.set()  # the agent restarted: its old session is gone
        new, _ = attach(server, "h1")
        server._closed(old)  # what the accept loop does once the session has ended
        assert len(server.policy.subscribers) == 0
        await _subscribe(server, new)
        assert len(server.policy.subscribers) == len(NAMES) + 1
        assert [p.agent for p in server.peers.values()] == ["h1"]

    asyncio.run(go())


def test_expired_subscriptions_leave_the_index_at_the_lease_tick(tmp_path: Path) -> None:
    """Leases that ran out (the agent stopped renewing) leave the index at the next tick, whether
    or not a change to their objects ever comes."""

    async def go() -> None:
        server = await _server(_authority(tmp_path))
        session, _ = attach(server, "h1")
        await _subscribe(server, session, prr=30)
        later = time.monotonic() + 31
        server.tick(later)
        assert len(server.policy.subscribers) == 0
        assert server.peers[session].subs == {}

    asyncio.run(go())


def test_a_resolve_that_outlives_its_session_leaves_nothing_behind(tmp_path: Path) -> None:
    """A resolve waits for the rebuild of a tenant written to just before; its session closes
    meanwhile. What it subscribed once the rebuild let it go on is forgotten with the session."""

    async def go() -> None:
        server = await _server(_authority(tmp_path))
        session, _ = attach(server, "h1")
        await server._flushing.acquire()  # the flush (and its rebuild) waits until released
        server.policy.mark_dirty({"acme"})  # a write: the resolve waits for the rebuild
        asking = asyncio.create_task(server._handle(session, "policy_resolve", _asks(60)))
        await asyncio.sleep(0.05)
        assert not asking.done()
        session.closed.set()
        server._closed(session)
        server._flushing.release()  # the rebuild: the resolve goes on, and subscribes
        await asyncio.wait_for(asking, 10)
        assert len(server.policy.subscribers) == 0

    asyncio.run(go())
