"""The authority's OpFlex server: sessions, the handshake and dispatch to the three roles.

``OpflexServer`` accepts agents' sessions, answers ``send_identity`` and
routes every other request to the role that serves it:

- ``PolicyRepository`` (``repository.py``): ``policy_resolve``/``unresolve``,
  ``policy_update`` pushes;
- ``EndpointRegistry`` (``registry.py``): ``endpoint_declare``/``undeclare``/
  ``resolve``/``unresolve``, ``endpoint_update`` pushes;
- ``Observer`` (``observer.py``): ``state_report``.

It owns what spans the roles: the sessions (``peers``, and ``fan_out`` over
them), the flush that pushes both kinds of change (a lone change at once, a
burst coalesced into one push per ``coalesce`` seconds), the lease clock and
the gateway election (``election.py``), which reads candidates from the
repository's trees and live hosts from the observer and makes the
repository rebuild what changed hands. The roles only know the callbacks it
hands them. It also composes the REST views ``GET /v1/agents`` and
``GET /v1/faults``.

The handshake is where trust is decided (``identity.py``): ``send_identity``
is accepted once per session, for a host name that the client certificate
carries (with a CA), and that no other live session holds. A refused
handshake is an error reply; the session stays open and unidentified, so the
peer may try again, until ``4 x keepalive`` after it connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from policyfabric.authority.edge import Throttled
from policyfabric.authority.gateways import RouterKey
from policyfabric.authority.opflex import peers as pe
from policyfabric.authority.opflex.chunks import Oversized
from policyfabric.authority.opflex.election import GatewayElection
from policyfabric.authority.opflex.identity import check_name, credentials, may_take_over
from policyfabric.authority.opflex.locate import NameIndex
from policyfabric.authority.opflex.observer import Observer
from policyfabric.authority.opflex.params import Identity, parse
from policyfabric.authority.opflex.registry import EndpointRegistry, EndpointStateWriter
from policyfabric.authority.opflex.replicas import Replicas
from policyfabric.authority.opflex.repository import PolicyRepository, Trees, affected_tenants
from policyfabric.authority.service import Authority
from policyfabric.heap import settle_heap
from policyfabric.opflex.locate import METHOD as LOCATE
from policyfabric.opflex.rpc import DEFAULT_SEND_QUEUE, Later, RpcError, Session, SessionClosed
from policyfabric.opflex.wire import DEFAULT_MAX_FRAME, Code
from policyfabric.store.base import Change, LocalShared, Shared

log = logging.getLogger(__name__)
REGISTERED_AFTER = frozenset({"endpoint_declare", "endpoint_undeclare"})  # see ``_registered``
MAX_REGISTERING = 5000  # a session's declarations waiting for their turn, at most

ROLES = ["policy_repository", "endpoint_registry", "observer"]
# Seconds between looks for expired subscriptions: an agent of 10,000 endpoints holds some 10,000,
# and a lease (``prr``, hours) ending a few seconds late only sends a few more pushes.
SUBSCRIPTION_SWEEP = 5.0


class OpflexServer:
    def __init__(
        self,
        authority: Authority,
        *,
        name: str = "policyfabric-authority",
        domain: str = "policyfabric",
        advertise: list[str] | None = None,
        keepalive: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        tls: ssl.SSLContext | None = None,
        coalesce: float = 0.02,
        lease_tick: float = 1.0,
        forget_agents_after: float = 3600.0,
        send_queue: int = DEFAULT_SEND_QUEUE,
        max_sessions: int = 1000,
        shared: Shared | None = None,
    ) -> None:
        """``forget_agents_after``: seconds a disconnected agent stays in ``GET /v1/agents`` (as
        ``connected: false``). ``send_queue``: unsent bytes a session may hold before it is
        dropped as not reading (pushes never wait for a peer). ``max_sessions``: connections
        beyond it are closed at once (logged at most once a second), so a flood of idle
        connections cannot use up the descriptors REST and the store need. ``shared``: what the
        replicas of the store share (``replicas.py``); None: alone (SQLite)."""
        self.authority = authority
        self.name, self.domain = name, domain
        self.advertise = advertise or []
        self.keepalive, self.max_frame, self.tls = keepalive, max_frame, tls
        self.coalesce, self.lease_tick = coalesce, lease_tick
        self.forget_agents_after, self.send_queue = forget_agents_after, send_queue
        self.max_sessions = max_sessions
        self._shed = Throttled(log, "opflex: %d sessions open, the most allowed: refused %s")
        self.peers: dict[Session, pe.Peer] = {}
        self.election = GatewayElection()
        self.policy = PolicyRepository(
            authority,
            fan_out=self._fan_out,
            schedule=self._schedule,
            gateways=self.election.snapshot,
            rebuilt=self._rebuilt,
            domain=domain,
            oversized=self._oversized,
        )
        self.names = NameIndex(self.policy.intent)  # pf_locate: which tenant holds a bare name
        states = EndpointStateWriter(authority)
        self.registry = EndpointRegistry(
            states,
            fan_out=self._fan_out,
            schedule=self._schedule,
            intent=self.policy.intent,
            live=self._live,
            publish=lambda uri, decl: self.replicas.declared(uri, decl),
        )
        self.replicas = Replicas(
            shared or LocalShared(), self.registry, on_gateways=self._adopt, elect=self._elect
        )
        self.observer = Observer(states.queue, gateway_ports=self._elect, owns=self.registry.declares)
        self._probing: set[Session] = set()  # live sessions being asked whether they still are
        # per session: the last of its declarations under way, and how many are (``_registered``)
        self._registering: dict[Session, tuple[asyncio.Future[None], int]] = {}
        self._last_flush = float("-inf")
        self._swept = float("-inf")  # when expired subscriptions were last looked for (monotonic)
        self._flush: asyncio.TimerHandle | None = None
        self._flushing = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle
    async def start(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        await self.policy.rebuild({None, *self.authority.tenants()}, push=False)
        self.authority.listeners.append(self._on_commit)
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=self.tls, limit=1 << 20, backlog=4096
        )
        if not self.advertise:
            self.advertise = [f"{host}:{port}"]
        await self.replicas.start(self.advertise)
        self._spawn(self._leases())
        log.info(
            "opflex: listening on %s:%d%s (domain %s)",
            host,
            port,
            " with TLS" if self.tls else "",
            self.domain,
        )

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.authority.listeners.remove(self._on_commit)
        if self._server is not None:
            self._server.close()
        self.replicas.stop()
        for session in list(self.peers):
            await session.close("authority stopping")
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- sessions
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        label = f"{address[0]}:{address[1]}" if address else "?"
        if len(self.peers) >= self.max_sessions:
            self._shed.note(len(self.peers), label)
            writer.close()
            return
        # A peer that cannot take our data within two keepalive periods is as good as dead.
        session = Session(
            reader,
            writer,
            self._dispatch,
            label=label,
            max_frame=self.max_frame,
            keepalive=self.keepalive,
            write_timeout=max(2 * self.keepalive, 1.0),
            send_queue=self.send_queue,
        )
        self.peers[session] = pe.Peer(
            self._dialed(writer),
            credentials(writer, self.tls),
            post=session.post,
            backlog=session.backlog,
            drained=lambda: self._drained(session),
            close=lambda why: self._spawn(session.close(why, abort=True)),
        )
        try:
            await session.run()
        finally:
            self._closed(session)

    def _closed(self, session: Session) -> None:
        """Forget a session; its agent is disconnected unless a newer session replaced it."""
        peer = self.peers.pop(session)
        self._forget_subscriptions(peer)
        if peer.current and self.observer.disconnected(peer.agent or ""):
            log.info("opflex: agent %s disconnected", peer.agent)
            self.replicas.agent_disconnected(peer.agent or "")
            self._elect()

    def _forget_subscriptions(self, peer: pe.Peer) -> None:
        """A closed session's subscriptions end with it (a reconnecting agent subscribes again in
        its new session): nothing may keep its tables, nor their entries in the repository's
        index (which would hold them, and the ``Peer``, until a push met each URI)."""
        self.policy.forget(peer, list(peer.subs))
        peer.subs.clear()
        peer.ep_subs.clear()

    def _live(self, agent: str) -> bool:
        """The agent's session is up (the registry lets another agent take over its endpoints otherwise)."""
        info = self.observer.agents.get(agent)
        return (info is not None and info.connected) or self.replicas.live_elsewhere(agent)

    @staticmethod
    async def _drained(session: Session) -> bool:
        """Wait until the session's transport has handed what it holds to the socket; a peer that
        does not read for the session's write timeout is closed (False)."""
        try:
            await asyncio.wait_for(session.writer.drain(), session.write_timeout)
        except TimeoutError:
            await session.close(
                f"peer stopped reading (writes stalled for {session.write_timeout:g}s)", abort=True
            )
            return False
        except (ConnectionError, RuntimeError):
            return False
        return True

    @staticmethod
    def _dialed(writer: asyncio.StreamWriter) -> str:
        sock = writer.get_extra_info("sockname")
        return f"{sock[0]}:{sock[1]}" if sock else ""

    def _fan_out(
        self, method: str, table: Callable[[pe.Peer], dict[str, float]], parts: dict[str, pe.Entries]
    ) -> None:
        pe.fan_out(self.peers, method, table, parts, self._oversized)

    def _oversized(self, peer: pe.Peer, found: list[Oversized]) -> None:
        """Objects too large for any frame a peer reads: never sent, logged, and a fault of the
        agent's in ``GET /v1/faults`` (it would otherwise reconnect and meet them again)."""
        for o in found:
            log.error(
                "opflex: %s (%d bytes) is larger than a frame (%d bytes): not sent to %s",
                o.uri,
                o.size,
                self.max_frame,
                peer.agent or "an unidentified peer",
            )
            if peer.agent is not None:
                self.observer.authority_fault(
                    peer.agent,
                    "object-too-large",
                    f"{o.uri} is {o.size} bytes, over the OpFlex frame limit: the agent cannot receive it",
                    o.uri,
                )

    # ---- dispatch
    async def _handle(self, session: Session, method: str, params: list[Any]) -> Any:
        if method == "send_identity":
            return await self._identify(session, params)
        if not session.ready:
            raise RpcError(Code.ESTATE, f"Unexpected request of type {method}")

        handler = {
            "policy_resolve": self.policy.resolve,
            "policy_unresolve": self.policy.unresolve,
            "endpoint_declare": self.registry.declare,
            "endpoint_undeclare": self.registry.undeclare,
            "endpoint_resolve": self.registry.resolve,
            "endpoint_unresolve": self.registry.unresolve,
            "state_report": self.observer.state_report,
            LOCATE: self.names.locate,
        }.get(method)
        if handler is None:
            raise RpcError(Code.EUNSUPPORTED, f"Unsupported request: {method}")
        peer = self.peers[session]
        try:
            return await handler(peer, params)
        finally:
            if session not in self.peers:  # closed while it ran (a resolve waits for a rebuild)
                self._forget_subscriptions(peer)

    async def _dispatch(self, session: Session, method: str, params: list[Any]) -> Any:
        """The session's handler: ``_handle``, declarations through ``_registered``."""
        if method in REGISTERED_AFTER and session.ready:
            return await self._registered(session, lambda: self._handle(session, method, params))
        return await self._handle(session, method, params)

    async def _registered(self, session: Session, work: Callable[[], Awaitable[Any]]) -> Any:
        """A declaration (or its withdrawal) is answered by a task of its own, in order with the
        session's others, while the session reads on: a host declaring its endpoints sends
        thousands (the L2 and the L3 of each), and the policy it resolves meanwhile (a contract's
        new classifier, say) waited behind their checks (1,000 endpoints: ~0.5 s) when every
        request was answered in turn. At most ``MAX_REGISTERING`` wait per session; past that,
        the reader waits too (a peer cannot queue unbounded work)."""
        before, waiting = self._registering.get(session, (None, 0))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._registering[session] = (done, waiting + 1)

        async def in_turn() -> Any:
            try:
                if before is not None:
                    await before
                await asyncio.sleep(0)  # the reader's turn between two declarations
                if session not in self.peers:
                    raise SessionClosed("closed before its turn")  # nothing is kept of a gone session
                return await work()
            finally:
                done.set_result(None)
                last, count = self._registering.get(session, (done, 1))
                if last is done:
                    self._registering.pop(session, None)
                else:
                    self._registering[session] = (last, count - 1)

        if waiting >= MAX_REGISTERING:
            return await in_turn()
        return Later(in_turn())

    async def _identify(self, session: Session, params: list[Any]) -> dict[str, Any]:
        """The handshake over the cluster: this replica's checks, then the name's claim in etcd
        (``Replicas.claim_session``: refused while another replica holds a session of it), then
        ``_identity`` (its checks again: another session may have come during the claim)."""
        name = self._check_identity(session, params)[0].name
        if not await self.replicas.claim_session(name, within=2 * self.keepalive):
            log.warning("opflex %s: identity %s refused: another replica holds it", session.label, name)
            raise RpcError(Code.ERROR, f"agent {name} already has a live session (retry once it is gone)")
        try:
            return self._identity(session, params)
        except RpcError:
            if not any(p.agent == name and p.current for p in self.peers.values()):
                self.replicas.release_session(name)  # claimed for nothing: free it
            raise

    def _check_identity(self, session: Session, params: list[Any]) -> tuple[Identity, list[Session]]:
        """``send_identity``'s checks on this replica (raising the refusal): the identity, and the
        live sessions of its name it replaces (the same certificate)."""
        peer = self.peers[session]
        if peer.agent is not None:  # nothing is re-labelled, nothing grows
            raise RpcError(Code.ESTATE, f"already identified as {peer.agent}: send_identity is accepted once")
        ident = parse(Identity, params)[0]
        if ident.domain != self.domain:
            raise RpcError(Code.EDOMAIN, f"Domain mismatch: this authority serves {self.domain!r}")
        if "policy_element" not in ident.my_role:
            raise RpcError(Code.EUNSUPPORTED, "only policy_element peers are served")
        name = ident.name
        try:
            check_name(name, peer.credentials)
        except RpcError as err:
            log.warning("opflex %s: identity %s refused: %s", session.label, name, err.message)
            raise
        replaced = []
        for other, other_peer in list(self.peers.items()):
            if other is session or other_peer.agent != name or not other_peer.current:
                continue
            if other.closed.is_set():
                continue
            if not may_take_over(peer.credentials, other_peer.credentials):
                self._probe(other)
                log.warning("opflex %s: identity %s refused: a live session holds it", session.label, name)
                raise RpcError(Code.ERROR, f"agent {name} already has a live session (retry once it is gone)")
            replaced.append(other)
        return ident, replaced

    def _identity(self, session: Session, params: list[Any]) -> dict[str, Any]:
        """The handshake: once per session, a host name its certificate carries (with a CA), held
        by no other live session unless that one has the same certificate (``identity.py``)."""
        peer = self.peers[session]
        ident, replaced = self._check_identity(session, params)
        name = ident.name
        for other in replaced:
            self.peers[other].current = False  # the same certificate: the agent reconnected
            self._spawn(other.close("replaced by a new session with the same certificate"))
        self.observer.connected(name, ident.domain, session.label, ident.reports_status)
        self.replicas.agent_connected(name)
        session.ready = True
        peer.agent, peer.reports_status = name, ident.reports_status
        session.label = f"{name}@{session.label}"  # once: a session is identified once
        dialed = peer.dialed
        peers = [dialed] + [a for a in self.replicas.addresses() if a != dialed]  # every live replica
        log.info("opflex: agent %s connected from %s (%s)", name, session.label, peer.credentials.label)
        return {
            "name": self.name,
            "domain": self.domain,
            "my_role": ROLES,
            "peers": [{"role": ROLES, "connectivity_info": p} for p in peers],
        }

    def _probe(self, session: Session) -> None:
        """Ask a live session, claimed by a newcomer, whether it is still there: one that does not
        answer an echo within a keepalive period is closed, so the agent gets its name back."""
        if session in self._probing:
            return
        self._probing.add(session)

        async def probe() -> None:
            try:
                await session.call("echo", [{"ts": int(time.time() * 1000)}], timeout=self.keepalive)
            except TimeoutError:
                await session.close("silent while another session claimed its name", abort=True)
            except (RpcError, SessionClosed):
                pass  # it answered (an error is an answer), or it is gone already
            finally:
                self._probing.discard(session)

        self._spawn(probe())

    # ---- changes and flushes
    def _on_commit(self, changes: list[Change]) -> None:
        """Called from the REST worker thread after each commit. An endpoint's status or interface
        is in no tree: such writes (agents' status reports, by the thousand while a host starts)
        do not rebuild the tenant's."""
        statuses = [c.revision for c in changes if self.authority.status_only(c)]
        if statuses:
            self.policy.status_only(statuses)
        changes = [c for c in changes if not self.authority.status_only(c)]
        if not changes:
            return
        tenants = affected_tenants(changes)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.policy.mark_dirty, tenants)

    def _schedule(self) -> None:
        """A flush at once if none ran within ``coalesce`` (a lone change waits for nothing), else when
        that much has passed since the last one began (a burst is pushed in few, larger updates)."""
        if self._flush is None and self.loop is not None:
            wait = max(0.0, self._last_flush + self.coalesce - self.loop.time())
            self._flush = self.loop.call_later(wait, lambda: asyncio.ensure_future(self.flush()))

    async def flush(self) -> None:
        """Push what changed since the last flush, once per session."""
        self._flush = None
        if self.loop is not None:
            self._last_flush = self.loop.time()
        async with self._flushing:
            started = time.monotonic()
            dirty = self.policy.take_dirty()
            try:
                if dirty:
                    await self.policy.rebuild(dirty, push=True)
                # taken after the rebuild: the declarations it made the registry rewrite or
                # withdraw (an endpoint that moved) go out in this flush, right behind the
                # policy that moved them, not one coalescing period later in the next
                epr = self.registry.take_changes()
                if epr:
                    await self.registry.push(epr)
            except Exception:  # run by a timer: nobody else would see it
                log.exception("opflex: flush failed")
            settle_heap(time.monotonic() - started)  # a whole build: its trees out of the collector's way

    async def _leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_tick)
            self.tick(time.monotonic())
            await self.registry.expire(time.monotonic())
            if not self.replicas.shared.alone:  # what the other replicas show of this one's agents
                self.replicas.publish_agents(self._views())

    def tick(self, now: float) -> None:
        """Expire subscriptions (every ``SUBSCRIPTION_SWEEP`` seconds); close sessions still
        unidentified ``4 x keepalive`` after they connected; forget agents gone for
        ``forget_agents_after`` (``now``: monotonic)."""
        sweep = now - self._swept >= SUBSCRIPTION_SWEEP
        if sweep:
            self._swept = now
        for session, peer in list(self.peers.items()):
            if sweep:
                expired = [uri for uri, until in peer.subs.items() if until <= now]
                peer.expire(now)
                self.policy.forget(peer, expired)
            if peer.agent is None and now - peer.accepted > 4 * self.keepalive:
                self._spawn(session.close("no identity within 4 x keepalive", abort=True))
        for name in self.observer.forget(time.time() - self.forget_agents_after):
            log.info("opflex: agent %s forgotten (disconnected for %gs)", name, self.forget_agents_after)

    # ---- gateway HA
    def _rebuilt(self, trees: Trees) -> None:
        for tenant, tree in trees.items():
            if tenant is not None:  # read once per rebuild of the tenant, not on every election
                self.election.consider(tenant, tree)
        self._elect()

    def _elect(self) -> None:
        """Re-run the gateway election (over every replica's gateway hosts, on the replica that
        leads it); a change rebuilds the router's tenant (pushed at once)."""
        hosts = self.replicas.gateway_hosts(self.observer.gateway_hosts())
        if not self.replicas.leading:
            return  # another replica decides; its result comes through _adopt
        changed = self.election.run(hosts)
        if changed:
            self.replicas.publish_result(self.election.active)
            self.policy.mark_dirty(changed)

    def _adopt(self, active: dict[RouterKey, tuple[str, str]]) -> None:
        """The election's result, decided by the replica that leads it."""
        changed = self.election.adopt(active)
        if changed:
            self.policy.mark_dirty(changed)

    # ---- REST views
    def agents_json(self) -> list[dict[str, Any]]:
        """Read from the REST thread: it works on copies of the loop's tables."""
        subs: dict[str, int] = {}
        current: dict[str, pe.Peer] = {}
        for p in list(self.peers.values()):
            if p.agent is not None:
                subs[p.agent] = subs.get(p.agent, 0) + len(p.subs) + len(p.ep_subs)
                if p.current:
                    current[p.agent] = p
        out = []
        for agent in list(self.observer.agents.values()):
            item = agent.to_json(subs.get(agent.name, 0), self.registry.endpoints_of(agent.name))
            session = current.get(agent.name)
            if session is not None and agent.connected:  # what it reported, and what it did not need
                item["rendered_revision"] = session.rendered(agent.rendered_revision)
            item["gateway_for"] = self.election.routers_of(agent.name)
            item["refused_declarations"] = self.registry.refused[agent.name]
            out.append(item)
        if not self.replicas.shared.alone:  # and the agents of the other replicas (etcd)
            for item in out:
                item["replica"] = self.replicas.me
            elsewhere = self.replicas.agents_elsewhere({a["name"] for a in out if a["connected"]})
            moved = {a["name"] for a in elsewhere}  # gone from here, connected to another replica
            out = [a for a in out if a["name"] not in moved] + elsewhere
        return sorted(out, key=lambda a: a["name"])

    def faults_json(self) -> list[dict[str, Any]]:
        here = self.observer.faults_json()
        if self.replicas.shared.alone:
            return here
        connected = {a.name for a in list(self.observer.agents.values()) if a.connected}
        return sorted(here + self.replicas.faults_elsewhere(connected), key=lambda f: f["time"])

    def _views(self) -> dict[str, dict[str, Any]]:
        """This replica's connected agents as the other replicas list them: their items without
        what changes with every report (counters, last_seen: shown by this replica alone), with
        their faults."""
        faults: dict[str, list[dict[str, Any]]] = {}
        for fault in self.observer.faults_json():
            faults.setdefault(fault["agent"], []).append(fault)
        volatile = ("counters", "last_seen", "reports", "subscriptions", "replica")
        return {
            a["name"]: {k: v for k, v in a.items() if k not in volatile}
            | {"faults": faults.get(a["name"], [])}
            for a in self.agents_json()
            if a["connected"] and "replica" in a and a["replica"] == self.replicas.me
        }

    def watch_agents(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """``callback(agent)`` on the loop whenever an agent connects, disconnects or reports a new
        rendered revision (``GET /v1/events``)."""
        self.observer.watchers.append(callback)


__all__ = ["OpflexServer"]
