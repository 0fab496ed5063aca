"""The endpoint registry role: where each endpoint lives, as its agent declared it.

Declarations (an ``EprL2Ep`` for an endpoint's interface, an ``EprL3Ep`` per
address binding) are held in memory with a lease (``prr``); one that expires
counts as undeclared. ``endpoint_resolve`` accepts a full endpoint URI or a
prefix of one (an extension: all endpoints of a bridge domain) and
subscribes to it; changes go out as ``endpoint_update`` at the server's next
flush. Declaring an L2 endpoint binds it in the REST API (host, interface,
status ``BUILD``); its last L2 declaration going away sets it ``DOWN``. Those
writes, and the statuses the observer receives, go through one
``EndpointStateWriter`` that batches them into few commits.

What other agents receive from here becomes their flows, so a declaration is a
claim checked against the intent, never taken as said: its content must be
what the intent says of that endpoint (``declaration_check.py``, against the
``IntentIndex`` the repository rebuilds with its trees), and the agent must be
one that may declare it (``_may_declare``: no other live agent holds it; the
pinned host, unless that host let it go). A refused request gets an ``ERROR``
reply (the session stays), stores nothing, is counted per agent
(``refused``, in ``GET /v1/agents``) and logged once per agent and endpoint.
When the intent changes, the declarations of the endpoints that changed are
checked again and withdrawn (pushed as deletes) if they no longer hold.

Trust: an agent's declarations are filed under its (checked) name, and only
that agent may undeclare them or report its endpoints' status (``declares``:
the observer asks before it records a ``PfEndpointStatus``, answered from an
index by agent). What a declaration would write into the store (the
``interfaceName``) is checked with the model's own type (``declaration_check``),
so no agent can write a record the store cannot read back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policyfabric.authority.opflex.chunks import resolve_parts
from policyfabric.authority.opflex.declaration_check import Checked, Refused, check, conform, show
from policyfabric.authority.opflex.intent_index import Changed as IntentChanges
from policyfabric.authority.opflex.intent_index import EndpointIntent, IntentIndex
from policyfabric.authority.opflex.params import Declare, EndpointRef, EndpointResolve, parse
from policyfabric.authority.opflex.peers import FanOut, Peer, refs, wire
from policyfabric.authority.service import Authority, EndpointState
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.uri import under
from policyfabric.opflex.wire import Code

log = logging.getLogger(__name__)

Changes = dict[str, tuple[list[MO], bool]]  # registry URI -> (its top MO and children, deleted)
Publish = Callable[[str, "Declaration | None"], None]
INF = float("inf")
MAX_LOGGED = 10_000  # refusals logged (once per agent and endpoint), so a flood cannot fill the log


class EndpointStateWriter:
    """Endpoint states for the store, written in batches: reports that arrive while a write is in
    flight go into the next write, in order, so a host declaring thousands of endpoints costs a
    few commits, not thousands."""

    def __init__(self, authority: Authority) -> None:
        self.authority = authority
        self._states: list[tuple[EndpointState, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def idle(self) -> None:
        """Until every state queued so far is written (a binding can then no longer land after a
        later operator change)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

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
            # a store whose transactions are bounded (etcd: --max-txn-ops) takes the queue in parts
            most = self.authority.store.records_per_write or len(self._states)
            batch, self._states = self._states[:most], self._states[most:]
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
    mos: list[dict[str, Any]]  # the stored MO and its children (as checked), in wire form
    agent: str
    expires: float
    endpoint: tuple[str, str]  # (tenant, name) of the endpoint of the intent it declares
    tunnel: str | None = None  # the tunnelIp of its PfEpTunnel (an EprL2Ep's), if any
    replica: str = ""  # the replica it was declared through ("": this one; its lease is etcd's)

    @property
    def is_l2(self) -> bool:
        """An EprL2Ep (the endpoint's interface), rather than an EprL3Ep (an address binding)."""
        return bool(self.mos[0]["subject"] == Cls.EPR_L2_EP)

    @property
    def key(self) -> str:
        return f"{self.endpoint[0]}/{self.endpoint[1]}"


# ---- trust and bounds: who declared what ---------------------------------------------------
class Declarations(dict[str, Declaration]):
    """The declarations by registry URI, and the indexes kept with them: the URIs declared for
    each endpoint of the intent (``by_endpoint``, what taking over, re-checking and releasing an
    endpoint read), which endpoints each agent declared an interface for (``by_agent``, what
    ``declares`` and ``endpoints_of`` read once per status report and per agent), and which agents
    declare each tunnel address (``by_tunnel``: a host's tunnel is its own). A scan of every
    declaration would make each of those quadratic. Written only with ``d[uri] = decl``,
    ``d.pop(uri, None)`` and ``del d[uri]``, which keep both indexes."""

    def __init__(self) -> None:
        super().__init__()
        self.by_endpoint: dict[str, set[str]] = {}  # TENANT/NAME -> URIs of its declarations
        self.by_agent: dict[str, dict[tuple[str, str], int]] = {}  # agent -> endpoint -> L2 count
        self.by_tunnel: dict[str, Counter[str]] = {}  # tunnelIp -> agents declaring it (how often)

    def _index(self, uri: str, decl: Declaration, step: int) -> None:
        uris = self.by_endpoint.setdefault(decl.key, set())
        if step > 0:
            uris.add(uri)
        else:
            uris.discard(uri)
            if not uris:
                del self.by_endpoint[decl.key]
        if decl.tunnel is not None:
            agents = self.by_tunnel.setdefault(decl.tunnel, Counter())
            agents[decl.agent] += step
            if agents[decl.agent] <= 0:
                del agents[decl.agent]
                if not agents:
                    del self.by_tunnel[decl.tunnel]
        if not decl.is_l2:
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
            self._index(uri, old, -1)
        super().__setitem__(uri, decl)
        self._index(uri, decl, 1)

    def __delitem__(self, uri: str) -> None:
        self._index(uri, self[uri], -1)
        super().__delitem__(uri)

    def pop(self, uri: str, default: Any = None) -> Any:
        if uri not in self:
            return default
        decl = self[uri]
        del self[uri]
        return decl


def _tunnel(checked: Checked) -> str | None:
    """The tunnel address a checked declaration gives (its ``PfEpTunnel``'s), if any."""
    for c in checked.children:
        if c.subject == Cls.PF_EP_TUNNEL:
            value = c.properties.get(Prop.TUNNEL_IP)
            return value if isinstance(value, str) else None
    return None


# ---- the role ---------------------------------------------------------------------------------
class EndpointRegistry:
    """Declarations by URI. ``intent`` is what they are checked against (rebuilt with the policy
    trees; its changes re-check the declarations of the endpoints that changed); ``live`` says
    whether an agent's session is up (one whose session is gone may be taken over)."""

    def __init__(
        self,
        states: EndpointStateWriter,
        *,
        fan_out: FanOut,
        schedule: Callable[[], None],
        intent: IntentIndex,
        live: Callable[[str], bool],
        publish: Publish = lambda uri, decl: None,
    ) -> None:
        """``publish`` is told of every change this replica makes to a declaration (None: gone),
        for the other replicas (``replicas.py``); changes learnt from them (``apply_shared``) are
        not told back."""
        self._publish, self._shared = publish, False
        self._states = states
        self._fan_out, self._schedule = fan_out, schedule
        self._intent, self._live = intent, live
        self.declarations = Declarations()
        self._released: dict[str, str] = {}  # TENANT/NAME -> the agent that last let it go
        self.refused: Counter[str] = Counter()  # refused declarations per agent
        self._logged: set[tuple[str, str]] = set()  # (agent, what) refusals already logged
        self._changed: Changes = {}
        self._soonest = INF  # no lease of a declaration held here ends before this (monotonic)
        intent.listeners.append(self._recheck)

    # ---- requests
    async def declare(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        """Check every object of the request (content: ``declaration_check``; who may declare it:
        ``_may_declare``); store them all, or refuse them all with one error."""
        agent = str(peer.agent)
        accepted: list[tuple[Checked, float]] = []
        refused: list[tuple[str, str]] = []  # (what, why)
        holding: set[str] = set()  # endpoints whose EprL2Ep this request declares
        for entry in parse(Declare, params):
            try:
                mos = [MO.from_wire(m) for m in entry.endpoint]
            except ValueError as exc:
                raise RpcError(Code.ERROR, f"Malformed message: endpoint: {exc}") from None
            tops = [m for m in mos if m.subject in (Cls.EPR_L2_EP, Cls.EPR_L3_EP)]
            if not tops:
                raise RpcError(Code.ERROR, "Malformed message: endpoint holds no EprL2Ep or EprL3Ep")
            expires = time.monotonic() + max(entry.prr, 1)
            for top in sorted(tops, key=lambda m: m.subject != Cls.EPR_L2_EP):  # L2 first
                children = [m for m in mos if m is not top and (m.parent_uri or "").startswith(top.uri)]
                try:
                    checked = check(top, children, self._intent)
                    self._may_declare(agent, checked, holding)
                except Refused as why:
                    key = top.properties.get(Prop.UUID)
                    refused.append((key if isinstance(key, str) else top.uri, str(why)))
                    continue
                accepted.append((checked, expires))
                if checked.is_l2:
                    holding.add(checked.intent.key)
        if refused:
            self._refuse(agent, refused)
        for checked, expires in accepted:
            self._store(agent, checked, expires, "BUILD" if peer.reports_status else "ACTIVE")
        self._schedule()
        return {}

    async def undeclare(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(EndpointRef, params):
            decl = self.declarations.get(entry.endpoint_uri)
            if decl is not None and decl.agent == peer.agent:
                self._undeclare(entry.endpoint_uri, "undeclared", release=True, status=True)
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
        # a bridge domain of thousands may not fit one frame: all but the last part go first, as
        # updates, through the peer's outbox (in order with the updates queued before them, and
        # paced by how fast it reads); the reply waits for them
        if peer.post is None:
            return {"endpoint": found}
        first, reply, _ = resolve_parts({"endpoint": found})
        if not first:
            return reply
        await peer.send_all("endpoint_update", ({"replace": m["endpoint"], "delete": []} for m in first))
        return {"endpoint": self._current(reply["endpoint"])}

    def _current(self, mos: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The declarations among ``mos`` (a resolve answer's last part, built before its first
        parts were drained) as they are now: a push sent meanwhile (a newer version of one, or its
        withdrawal) went ahead of the answer, which the agent applies after it and must not undo."""
        tops = {  # (a child whose top went in an earlier part brings its top again: whole)
            m["uri"] if m.get("subject") in (Cls.EPR_L2_EP, Cls.EPR_L3_EP) else m.get("parent_uri")
            for m in mos
        }
        out: list[dict[str, Any]] = []
        for uri in sorted(u for u in tops if isinstance(u, str)):
            decl = self.declarations.get(uri)
            if decl is not None:
                out += decl.mos
        return out

    async def unresolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(EndpointRef, params):
            peer.ep_subs.pop(entry.endpoint_uri, None)
        return {}

    # ---- who may declare what
    def _may_declare(self, agent: str, checked: Checked, holding: set[str]) -> None:
        """Raise ``Refused`` unless ``agent`` may declare this endpoint: no other live agent holds
        it (its EprL2Ep, or this very URI), no other live agent declares the tunnel address it gives
        (traffic to its endpoints would go to that host), and, if the intent pins it to a host,
        ``agent`` is that
        host, or already holds it, or the pinned host let it go (undeclared it, its lease ran out)
        or holds it from a session that is gone. The pin is the endpoint's REST ``host``, which a
        binding rewrites: a host that let an endpoint go hands it to the next that declares it."""
        intent = checked.intent
        l2 = self.declarations.get(intent.l2_uri or "")
        for decl in (l2, self.declarations.get(checked.mo.uri)):
            if decl is not None and decl.agent != agent and self._live(decl.agent):
                raise Refused(f"it is declared by agent {show(decl.agent)}, whose session is live")
        tunnel = _tunnel(checked)
        for other in self.declarations.by_tunnel.get(tunnel or "", ()):
            if other != agent and self._live(other):
                raise Refused(
                    f"tunnelIp {show(tunnel)} is declared by agent {show(other)}, whose session is live"
                )
        pin = intent.host
        holder = l2.agent if l2 is not None else None
        if pin is None or pin == agent or intent.key in holding or holder in (agent, pin):
            return
        if self._released.get(intent.key) == pin:
            return
        raise Refused(f"the intent pins it to host {show(pin)}")

    def _refuse(self, agent: str, refused: list[tuple[str, str]]) -> None:
        """Count and log (once per agent and endpoint) a refused request, and answer it."""
        self.refused[agent] += len(refused)
        for what, why in refused:
            if (agent, what) in self._logged:
                continue
            if len(self._logged) < MAX_LOGGED:
                self._logged.add((agent, what))
                log.warning("opflex: refused agent %s's declaration of %s: %s", show(agent), show(what), why)
            elif len(self._logged) == MAX_LOGGED:
                self._logged.add(("", ""))
                log.warning("opflex: %d refusals logged; further ones are only counted", MAX_LOGGED)
        what, why = refused[0]
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise RpcError(Code.ERROR, f"Declaration refused: {show(what)}: {why}{more}")

    def _store(self, agent: str, checked: Checked, expires: float, status: str) -> None:
        key, uri = checked.intent.key, checked.mo.uri
        tenant, name = key.split("/", 1)
        decl = Declaration(
            [m.to_wire() for m in checked.all], agent, expires, (tenant, name), _tunnel(checked)
        )
        self.declarations[uri] = decl
        self._soonest = min(self._soonest, expires)
        self._publish(uri, decl)
        # pushed even when it says what is stored already: a session's endpoint_resolve answer is
        # built before the parts that go ahead of it are drained, so it may carry an older
        # version than a push that overtook it; the next push puts the newest back
        self._changed[uri] = (checked.all, False)
        if checked.is_l2:
            self._released.pop(key, None)
            held = self.declarations.by_endpoint[key]
            for other in [u for u in held if self.declarations[u].agent != agent]:
                self._undeclare(other, f"taken over by {agent}", release=False, status=False)
            interface = checked.mo.properties.get(Prop.INTERFACE_NAME)
            self._bind((tenant, name), agent, interface, checked.intent.host, status)

    # ---- the intent changed
    def _recheck(self, changed: IntentChanges) -> None:
        """Withdraw the declarations the intent no longer allows: of endpoints it dropped, that
        no longer say what it says (the agent declares again, so their status stays), or of an
        endpoint it moved to another host (DOWN until that host declares it). A declaration that
        differs only in what the intent alone decides (the endpoint moved to another group: its
        group and class id) is rewritten to say what the intent now says instead (``conform``),
        and pushed as such: the endpoint stays in the other hosts' flows, with its new group, and
        its agent's next declaration, which says the same, is stored and pushed again as any
        declaration is (an identical one pushed nothing once, which let a split resolve's older
        answer undo a push). Logged once per
        endpoint, however many of its objects (an ``EprL2Ep``, an ``EprL3Ep`` per address) go."""
        pushed = False
        for key, old, new in changed:
            if new is None:
                self._released.pop(key, None)
            withdrawn: list[tuple[str, Declaration, str]] = []
            followed: list[str] = []
            for uri in sorted(self.declarations.by_endpoint.get(key, ())):
                decl = self.declarations[uri]
                why, status = None, False
                if new is None:
                    why = "its endpoint left the intent"
                elif new.host not in (None, decl.agent, old.host if old else None):
                    why, status = f"the intent moved it to host {new.host}", True
                else:
                    mos = [MO.from_wire(m) for m in decl.mos]
                    try:
                        check(mos[0], mos[1:], self._intent)
                    except Refused as exc:
                        if self._follow(uri, decl, mos, new):
                            followed.append(uri)
                        else:
                            why = f"no longer what the intent says: {exc}"
                if why is not None:
                    withdrawn.append((uri, decl, why))
                    self._undeclare(uri, why, release=False, status=status)
            if followed:
                log.info(
                    "opflex: %s's declaration of %s now says the intent's group %s (%d objects)",
                    self.declarations[followed[0]].agent,
                    key,
                    new.group if new is not None else None,
                    len(followed),
                )
            if withdrawn:
                _, decl, why = withdrawn[0]
                more = f" (and {len(withdrawn) - 1} more of its objects)" if len(withdrawn) > 1 else ""
                log.info("opflex: withdrew %s's declaration of %s%s: %s", decl.agent, key, more, why)
            pushed |= bool(followed or withdrawn)
        if pushed:
            self._schedule()

    def _follow(self, uri: str, decl: Declaration, mos: list[MO], intent: EndpointIntent | None) -> bool:
        """Rewrite a stored declaration to the intent's group and class id (``conform``) if that
        makes it say what the intent says; whether it did. Published to the other replicas only
        by the replica it was declared through (each replica rewrites its own copy alike)."""
        if intent is None:
            return False
        conformed = conform(mos, intent)
        if conformed is None:
            return False
        try:
            checked = check(conformed[0], conformed[1:], self._intent)
        except Refused:
            return False
        restated = Declaration(
            [m.to_wire() for m in checked.all],
            decl.agent,
            decl.expires,
            decl.endpoint,
            decl.tunnel,
            decl.replica,
        )
        self.declarations[uri] = restated
        if not decl.replica and not self._shared:
            self._publish(uri, restated)
        self._changed[uri] = (checked.all, False)
        return True

    # ---- bindings in the REST API
    def _bind(
        self, endpoint: tuple[str, str], agent: str, interface: Any, pinned: str | None, status: str
    ) -> None:
        """The endpoint now lives on ``agent``'s host; ``status`` (BUILD: our agents report ACTIVE
        once its flows are in; ACTIVE from a reference agent, which declares it only once it is
        attached) unless it is already up (written by the batch writer: the declaration itself
        is already in the registry). Written only while
        the stored host is still ``pinned``, the host the declaration was checked against: an
        operator's move that commits while the binding waits is not undone by it."""
        tenant, name = endpoint
        self._states.queue(
            EndpointState(
                tenant,
                name,
                host=agent,
                interface=interface if isinstance(interface, str) else None,
                status=status,
                unless=("ACTIVE", status),
                if_host=(pinned,),
            ),
            unknown=f"opflex: agent {agent} declared endpoint {tenant}/{name}, unknown to the authority",
        )

    def _undeclare(self, uri: str, why: str, *, release: bool, status: bool) -> None:
        """Drop a declaration (pushed as a delete). When it was the endpoint's last EprL2Ep:
        ``release`` records that its agent let the endpoint go (another host may now declare it),
        ``status`` sets it DOWN."""
        decl = self.declarations.pop(uri, None)
        if decl is None:
            return
        if not self._shared:
            self._publish(uri, None)
        self._changed[uri] = ([MO.from_wire(decl.mos[0])], True)  # (its children go with it)
        uris = set(self.declarations.by_endpoint.get(decl.key, ()))
        # The endpoint's status follows its L2 declaration (its interface); L3 ones are address bindings.
        if decl.is_l2 and not any(self.declarations[u].is_l2 for u in uris):
            if release:  # its agent let it go: with its addresses (its next host declares them)
                self._released[decl.key] = decl.agent
                for other in [u for u in uris if self.declarations[u].agent == decl.agent]:
                    self._undeclare(other, why, release=False, status=False)
            if status:
                tenant, name = decl.endpoint
                log.info("opflex: endpoint %s/%s %s by %s", tenant, name, why, decl.agent)
                self._states.queue(EndpointState(tenant, name, status="DOWN"))

    # ---- what other replicas declared (``replicas.py``)
    def apply_shared(
        self,
        uri: str,
        doc: dict[str, Any] | None,
        prev: dict[str, Any] | None,
        me: str,
        orphaned: bool = False,
    ) -> None:
        """Another replica declared ``uri`` (``doc``), or it was deleted (None: undeclared through
        another replica, taken over there, or its lease ended; ``prev`` held it, ``me`` is this
        replica's id; ``orphaned``: the replica it came through is dead, so its lease ending is
        the agent's too, and the endpoint goes DOWN here, as it would have there). Stored and
        pushed like a declaration made here, but neither checked again (the replica that took it
        checked it) nor bound nor expired here (its lease is etcd's).

        Whatever this changes is pushed by a flush scheduled here. (A withdrawal once returned
        before scheduling one: it reached this replica's agents only if another flush happened to
        follow, usually the rebuild after the undeclaring replica's status write, which the
        change-log follower delivers before or after this, as the two watch streams race.)"""
        self._shared = True
        try:
            changed = self._apply_shared(uri, doc, prev, me, orphaned)
        finally:
            self._shared = False
        if changed:
            self._schedule()

    def _apply_shared(
        self, uri: str, doc: dict[str, Any] | None, prev: dict[str, Any] | None, me: str, orphaned: bool
    ) -> bool:
        """``apply_shared``'s change to the declarations; whether it made one (to push)."""
        held = self.declarations.get(uri)
        if doc is None:
            if held is None:
                return False
            if held.replica or (prev is not None and prev.get("replica") == me):
                # theirs, gone; or ours, deleted elsewhere (taken over, withdrawn, expired)
                why = "lease expired" if orphaned else "undeclared through another replica"
                self._undeclare(uri, why, release=orphaned, status=orphaned)
                return True
            return False  # ours, over another replica's older version: ours stands
        decl = Declaration(
            doc["mos"],
            doc["agent"],
            float("inf"),
            tuple(doc["endpoint"]),
            doc.get("tunnel"),
            doc["replica"],
        )
        if decl.is_l2:  # taken over there: the other agents' declarations of it go here too
            for other in [u for u in self.declarations.by_endpoint.get(decl.key, ()) if u != uri]:
                if self.declarations[other].agent != decl.agent:
                    self._undeclare(other, f"taken over by {decl.agent}", release=False, status=False)
        self.declarations[uri] = decl
        self._changed[uri] = ([MO.from_wire(m) for m in decl.mos], False)
        return True

    # ---- leases and pushes
    async def expire(self, now: float) -> None:
        """Undeclare what its agent stopped renewing (``now``: monotonic). Called every lease tick
        (a second): the declarations are looked at only once the soonest lease may have run out
        (leases are ``prr``, hours), not 20,000 of them every second on a host of 10,000."""
        if now < self._soonest:
            return
        expired = [u for u, d in self.declarations.items() if d.expires <= now]
        self._soonest = min((d.expires for d in self.declarations.values() if d.expires > now), default=INF)
        for uri in expired:
            self._undeclare(uri, "lease expired", release=True, status=True)
        if expired:
            self._schedule()

    def take_changes(self) -> Changes:
        changes, self._changed = self._changed, {}
        return changes

    async def push(self, changes: Changes) -> None:
        """``endpoint_update`` to the sessions that resolved a URI or prefix of the changed ones."""
        changed = [mo for mos, deleted in changes.values() if not deleted for mo in mos]
        removed = [mos[0] for mos, deleted in changes.values() if deleted]
        parts = {"replace": wire(changed), "delete": refs(removed)}
        self._fan_out("endpoint_update", lambda peer: peer.ep_subs, parts)

    async def written(self) -> None:
        """Until the bindings and statuses queued so far are in the store."""
        await self._states.idle()

    # ---- views
    def endpoints_of(self, agent: str) -> list[str]:
        """``TENANT/NAME`` of the stored endpoints ``agent`` declared an interface for."""
        return [f"{t}/{n}" for t, n in list(self.declarations.by_agent.get(agent, {}))]  # REST thread: a copy

    def declares(self, agent: str, endpoint: tuple[str, str]) -> bool:
        """Whether ``agent`` holds a live declaration of ``endpoint``'s interface: then, and only
        then, it may report the endpoint's status."""
        return endpoint in self.declarations.by_agent.get(agent, {})


__all__ = ["Declaration", "EndpointRegistry", "EndpointStateWriter"]
