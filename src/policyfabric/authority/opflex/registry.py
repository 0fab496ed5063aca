"""The endpoint registry role: where each endpoint lives, as its agent declared it.

Declarations (an ``EprL2Ep`` for an endpoint's interface, an ``EprL3Ep`` per
address binding) are held in memory with a lease (``prr``); one that expires
counts as undeclared. ``endpoint_resolve`` accepts a full endpoint URI or a
prefix of one (an extension: all endpoints of a bridge domain) and
subscribes to it; changes go out as ``endpoint_update`` at the server's next
flush. Declaring an L2 endpoint that names a stored endpoint binds it in the
REST API (host, interface, status ``BUILD``); its last L2 declaration going
away sets it ``DOWN``. Those writes, and the statuses the observer receives,
go through one ``EndpointStateWriter`` that batches them into few commits.

Trust: an agent's declarations are filed under its (checked) name, and only
that agent may undeclare them or report its endpoints' status (``declares``:
the observer asks before it records a ``PfEndpointStatus``). What a
declaration would write into the store (the ``interfaceName``) is checked
with the model's own type first, so no agent can write a record the store
cannot read back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policyfabric.authority.opflex.params import Declare, EndpointRef, EndpointResolve, parse
from policyfabric.authority.opflex.peers import FanOut, Peer, refs, wire
from policyfabric.authority.service import Authority, EndpointState
from policyfabric.model.types import check_interface
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.uri import under
from policyfabric.opflex.wire import Code

log = logging.getLogger(__name__)

Changes = dict[str, tuple[MO, bool]]  # registry URI -> (its top MO, deleted)


class EndpointStateWriter:
    """Endpoint states for the store, written in batches: reports that arrive while a write is in
    flight go into the next write, in order, so a host declaring thousands of endpoints costs a
    few commits, not thousands."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self._states: list[tuple[EndpointState, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    def queue(self, state: EndpointState, unknown: str | None = None) -> asyncio.Future[bool]:
        """Queue an endpoint's state; the future says whether the endpoint exists. ``unknown`` is
        logged (a warning) if the authority has no such endpoint."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        def check(f: asyncio.Future[bool]) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                log.error("opflex: recording %s/%s failed: %s", state.tenant, state.name, f.exception())
            elif not f.result() and unknown:
                log.warning("%s", unknown)

        done.add_done_callback(check)
        self._states.append((state, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return done

    async def _write(self) -> None:
        while self._states:
            batch, self._states = self._states, []
            try:
                found = await asyncio.to_thread(self.authority.set_endpoint_states, [s for s, _ in batch])
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), ok in zip(batch, found, strict=True):
                if not done.done():
                    done.set_result(ok)


@dataclass
class Declaration:
    mos: list[dict[str, Any]]  # the declared MO and its children, as sent
    agent: str
    expires: float
    endpoint: tuple[str, str] | None  # (tenant, name) when it names a stored endpoint

    @property
    def is_l2(self) -> bool:
        """An EprL2Ep (the endpoint's interface), rather than an EprL3Ep (an address binding)."""
        return bool(self.mos[0]["subject"] == Cls.EPR_L2_EP)


# ---- trust and bounds: who declared what ---------------------------------------------------
class Declarations(dict[str, Declaration]):
    """The declarations by registry URI, indexing which agents declared an interface (an L2
    declaration) for each stored endpoint: what ``declares`` and ``endpoints_of`` read once per
    status report and per agent, which a scan of every declaration would make quadratic. Written
    only with ``d[uri] = decl``, ``d.pop(uri, None)`` and ``del d[uri]``, which keep the index."""

    def __init__(self) -> None:
        super().__init__()
        self.by_agent: dict[str, dict[tuple[str, str], int]] = {}  # agent -> endpoint -> L2 count

    def _index(self, decl: Declaration, step: int) -> None:
        if decl.endpoint is None or not decl.is_l2:
            return
        mine = self.by_agent.setdefault(decl.agent, {})
        count = mine.get(decl.endpoint, 0) + step
        if count > 0:
            mine[decl.endpoint] = count
        else:
            mine.pop(decl.endpoint, None)
            if not mine:
                del self.by_agent[decl.agent]

    def __setitem__(self, uri: str, decl: Declaration) -> None:
        old = self.get(uri)
        if old is not None:
            self._index(old, -1)
        super().__setitem__(uri, decl)
        self._index(decl, 1)

    def __delitem__(self, uri: str) -> None:
        self._index(self[uri], -1)
        super().__delitem__(uri)

    def pop(self, uri: str, default: Any = None) -> Any:
        if uri not in self:
            return default
        decl = self[uri]
        del self[uri]
        return decl


def check_bounds(mo: MO) -> None:
    """Refuse a declared MO whose fields would be written into the store unreadable."""
    interface = mo.properties.get(Prop.INTERFACE_NAME)
    if interface is not None:
        try:
            check_interface(interface)
        except ValueError as exc:
            raise RpcError(Code.ERROR, f"Malformed message: interfaceName: {exc}") from None


# ---- the role ---------------------------------------------------------------------------------
class EndpointRegistry:
    def __init__(self, states: EndpointStateWriter, *, fan_out: FanOut, schedule: Callable[[], None]) -> None:
        self._states = states
        self._fan_out, self._schedule = fan_out, schedule
        self.declarations = Declarations()
        self._changed: Changes = {}

    # ---- requests
    async def declare(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        agent = str(peer.agent)
        for entry in parse(Declare, params):
            try:
                mos = [MO.from_wire(m) for m in entry.endpoint]
            except ValueError as exc:
                raise RpcError(Code.ERROR, f"Malformed message: endpoint: {exc}") from None
            tops = [m for m in mos if m.subject in (Cls.EPR_L2_EP, Cls.EPR_L3_EP)]
            if not tops:
                raise RpcError(Code.ERROR, "Malformed message: endpoint holds no EprL2Ep or EprL3Ep")
            for top in tops:  # bounds: before anything of this entry is held or written
                check_bounds(top)
            for top in tops:
                subtree = [m.to_wire() for m in mos if m is top or (m.parent_uri or "").startswith(top.uri)]
                key = top.properties.get(Prop.UUID)
                endpoint = None
                if isinstance(key, str) and "/" in key:
                    tenant, name = key.split("/", 1)
                    endpoint = (tenant, name)
                self.declarations[top.uri] = Declaration(
                    subtree, agent, time.monotonic() + max(entry.prr, 1), endpoint
                )
                self._changed[top.uri] = (top, False)
                if endpoint is not None and top.subject == Cls.EPR_L2_EP:
                    self._bind(endpoint, agent, top.properties.get(Prop.INTERFACE_NAME))
        self._schedule()
        return {}

    async def undeclare(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(EndpointRef, params):
            decl = self.declarations.get(entry.endpoint_uri)
            if decl is not None and decl.agent == peer.agent:
                await self._undeclare(entry.endpoint_uri, "undeclared")
        self._schedule()
        return {}

    async def resolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        if any(isinstance(p, dict) and "endpoint_ident" in p for p in params):
            raise RpcError(Code.EUNSUPPORTED, "Endpoint resolution by ident is not supported")
        found: list[dict[str, Any]] = []
        for entry in parse(EndpointResolve, params):
            peer.subscribe(peer.ep_subs, entry.endpoint_uri, entry.prr)
            for uri, decl in self.declarations.items():
                if under(uri, entry.endpoint_uri):
                    found += decl.mos
        return {"endpoint": found}

    async def unresolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(EndpointRef, params):
            peer.ep_subs.pop(entry.endpoint_uri, None)
        return {}

    # ---- bindings in the REST API
    def _bind(self, endpoint: tuple[str, str], agent: str, interface: Any) -> None:
        """The endpoint now lives on ``agent``'s host; BUILD unless it is already up (written by
        the batch writer: the declaration itself is already in the registry)."""
        tenant, name = endpoint
        self._states.queue(
            EndpointState(
                tenant,
                name,
                host=agent,
                interface=interface if isinstance(interface, str) else None,
                status="BUILD",
                unless=("ACTIVE", "BUILD"),
            ),
            unknown=f"opflex: agent {agent} declared endpoint {tenant}/{name}, unknown to the authority",
        )

    async def _undeclare(self, uri: str, why: str) -> None:
        decl = self.declarations.pop(uri, None)
        if decl is None:
            return
        self._changed[uri] = (MO.from_wire(decl.mos[0]), True)
        # The endpoint's status follows its L2 declaration (its interface); L3 ones are address bindings.
        if (
            decl.is_l2
            and decl.endpoint is not None
            and not any(d.endpoint == decl.endpoint and d.is_l2 for d in self.declarations.values())
        ):
            tenant, name = decl.endpoint
            log.info("opflex: endpoint %s/%s %s by %s", tenant, name, why, decl.agent)
            self._states.queue(EndpointState(tenant, name, status="DOWN"))

    # ---- leases and pushes
    async def expire(self, now: float) -> None:
        """Undeclare what its agent stopped renewing (``now``: monotonic)."""
        expired = [u for u, d in self.declarations.items() if d.expires <= now]
        for uri in expired:
            await self._undeclare(uri, "lease expired")
        if expired:
            self._schedule()

    def take_changes(self) -> Changes:
        changes, self._changed = self._changed, {}
        return changes

    async def push(self, changes: Changes) -> None:
        """``endpoint_update`` to the sessions that resolved a URI or prefix of the changed ones."""
        changed = [mo for mo, deleted in changes.values() if not deleted]
        removed = [mo for mo, deleted in changes.values() if deleted]
        parts = {"replace": wire(changed), "delete": refs(removed)}
        self._fan_out("endpoint_update", lambda peer: peer.ep_subs, parts)

    # ---- views
    def endpoints_of(self, agent: str) -> list[str]:
        """``TENANT/NAME`` of the stored endpoints ``agent`` declared an interface for."""
        return [f"{t}/{n}" for t, n in list(self.declarations.by_agent.get(agent, {}))]  # REST thread: a copy

    def declares(self, agent: str, endpoint: tuple[str, str]) -> bool:
        """Whether ``agent`` holds a live declaration of ``endpoint``'s interface: then, and only
        then, it may report the endpoint's status."""
        return endpoint in self.declarations.by_agent.get(agent, {})


__all__ = ["Declaration", "EndpointRegistry", "EndpointStateWriter"]
