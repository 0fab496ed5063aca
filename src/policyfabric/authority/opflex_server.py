"""The authority's OpFlex server: policy repository, endpoint registry, observer.

- Policy: the stored model as GBP MO trees (one per tenant, rebuilt when the
  tenant changes). ``policy_resolve`` returns a subtree and subscribes the
  session to it for ``prr`` seconds; a REST change is diffed against the
  previous tree and pushed as one ``policy_update`` per session, only to the
  sessions subscribed to a changed URI (or an ancestor of it), in revision
  order: a lone change at once, a burst coalesced into one push per ``coalesce`` seconds.
- Endpoint registry: declarations with leases; ``endpoint_resolve`` accepts
  a full endpoint URI or a prefix of one (an extension: all endpoints of a
  bridge domain) and subscribes to it; changes go out as ``endpoint_update``.
  Declaring an endpoint binds it in the REST API (host, interface, status).
- Observer: ``state_report`` feeds endpoint status, faults and counters,
  visible at ``GET /v1/agents`` and ``GET /v1/faults``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from policyfabric.authority import gateways as gw
from policyfabric.authority.opflex.policy_tree import global_tree, tenant_tree
from policyfabric.authority.service import ENDPOINT_STATUSES, Authority, EndpointState
from policyfabric.model.objects import ExternalNetwork
from policyfabric.opflex.mo import MO, Tree
from policyfabric.opflex.rpc import RpcError, Session
from policyfabric.opflex.uri import UNIVERSE, under, unescape
from policyfabric.opflex.wire import DEFAULT_MAX_FRAME, Code
from policyfabric.store.base import Change

log = logging.getLogger(__name__)

ROLES = ["policy_repository", "endpoint_registry", "observer"]
EPR_CLASSES = frozenset({"EprL2Universe", "EprL2Ep", "EprL3Universe", "EprL3Ep"})


class _Params(BaseModel):
    model_config = ConfigDict(extra="allow")


class Identity(_Params):
    proto_version: str = "1.0"
    name: str
    domain: str
    my_role: list[str]


class Resolve(_Params):
    subject: str
    policy_uri: str
    prr: int


class Unresolve(_Params):
    subject: str
    policy_uri: str


class Declare(_Params):
    endpoint: list[dict[str, Any]]
    prr: int


class EndpointRef(_Params):
    subject: str
    endpoint_uri: str


class EndpointResolve(EndpointRef):
    prr: int


class Report(_Params):
    observable: list[dict[str, Any]]


def parse(model: type[_Params], params: list[Any]) -> list[Any]:
    """Each entry of ``params`` as ``model``; a wrong shape is libopflex's ERROR 'Malformed message'."""
    if not params:
        raise RpcError(Code.ERROR, "Malformed message: params must hold at least one object")
    out = []
    for entry in params:
        try:
            out.append(model.model_validate(entry))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "params"
            raise RpcError(Code.ERROR, f"Malformed message: {where}: {first['msg']}") from None
    return out


@dataclass
class Peer:
    """What the server keeps about one session."""

    dialed: str  # the address the agent dialed: listed first in the handshake's peers
    agent: str | None = None  # its name, once identified
    current: bool = True  # False once a newer session of the same agent replaced it
    subs: dict[str, float] = field(default_factory=dict)  # policy URI -> lease expiry (monotonic)
    ep_subs: dict[str, float] = field(default_factory=dict)  # registry URI or prefix -> expiry

    def expire(self, now: float) -> None:
        for table in (self.subs, self.ep_subs):
            for uri in [u for u, exp in table.items() if exp <= now]:
                del table[uri]


@dataclass
class Declaration:
    mos: list[dict[str, Any]]  # the declared MO and its children, as sent
    agent: str
    expires: float
    endpoint: tuple[str, str] | None  # (tenant, name) when it names a stored endpoint

    @property
    def is_l2(self) -> bool:
        """An EprL2Ep (the endpoint's interface), rather than an EprL3Ep (an address binding)."""
        return bool(self.mos[0]["subject"] == "EprL2Ep")


@dataclass
class AgentInfo:
    name: str
    domain: str
    address: str
    connected: bool = True
    connected_since: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    counters: dict[str, Any] = field(default_factory=dict)
    reports: int = 0
    tunnel_ip: str = ""
    external: frozenset[str] = frozenset()  # URIs of the external networks it has a port on

    def to_json(self, subscriptions: int, endpoints: list[str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "domain": self.domain,
            "address": self.address,
            "connected": self.connected,
            "connected_since": self.connected_since,
            "last_seen": self.last_seen,
            "subscriptions": subscriptions,
            "endpoints": sorted(endpoints),
            "counters": self.counters,
            "reports": self.reports,
            "tunnel_ip": self.tunnel_ip,
        }


@dataclass
class Fault:
    agent: str
    code: str
    severity: str
    message: str
    uri: str | None
    time: float


def tenant_of(uri: str) -> str | None:
    """The tenant whose PolicySpace holds ``uri`` (None for global URIs)."""
    prefix = UNIVERSE + "PolicySpace/"
    if not uri.startswith(prefix):
        return None
    return unescape(uri[len(prefix) :].split("/", 1)[0])


def diff(old: Tree | None, new: Tree) -> tuple[list[MO], list[MO], list[MO]]:
    """(new or changed MOs, MOs whose only change is in their children, removed MOs) between two
    versions of a tree. An MO whose properties stayed goes out as ``merge_children`` listing only
    the children it gained (a lost child's URI is under the parent's, so its deletion says it),
    or not at all: adding or removing one member of a large set is a small update."""
    before = old.mos if old else {}
    changed, merged = [], []
    for uri, mo in new.mos.items():
        was = before.get(uri)
        if was == mo:
            continue
        if was is not None and was.properties == mo.properties and was.parent_uri == mo.parent_uri:
            had = set(was.children)
            gained = [c for c in mo.children if c not in had]
            if gained:
                merged.append(MO(mo.subject, mo.uri, mo.properties, gained, mo.parent_subject, mo.parent_uri))
            continue
        changed.append(mo)
    removed = [mo for uri, mo in before.items() if uri not in new.mos]
    return changed, merged, removed


def _gateway_candidates(tenant: str, tree: Tree) -> list[gw.Candidate]:
    """The tenant's routers with an SNAT gateway, as election candidates."""
    out = []
    for mo in tree.mos.values():
        if mo.subject != "PfExternalGateway":
            continue
        router = tree.mos.get(mo.parent_uri or "")
        net = mo.properties.get("network")
        if router is None or not isinstance(net, dict) or not int(mo.properties.get("snat", 1)):
            continue
        hosts = tuple(h for h in mo.properties.get("hosts", []) if isinstance(h, str))
        out.append(gw.Candidate((tenant, str(router.properties.get("name"))), net["reference_uri"], hosts))
    return out


def _wire(mos: list[MO]) -> list[tuple[str, dict[str, Any]]]:
    """(uri, wire form): serialised once, not once per session."""
    return [(mo.uri, mo.to_wire()) for mo in mos]


def _refs(mos: list[MO]) -> list[tuple[str, dict[str, Any]]]:
    return [(mo.uri, {"subject": mo.subject, "uri": mo.uri}) for mo in mos]


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
    ) -> None:
        self.authority = authority
        self.name, self.domain = name, domain
        self.advertise = advertise or []
        self.keepalive, self.max_frame, self.tls = keepalive, max_frame, tls
        self.coalesce, self.lease_tick = coalesce, lease_tick
        self._last_flush = float("-inf")
        self.peers: dict[Session, Peer] = {}
        self.agents: dict[str, AgentInfo] = {}
        self.faults: dict[tuple[str, str, str], Fault] = {}
        self.trees: dict[str | None, Tree] = {}
        self.declarations: dict[str, Declaration] = {}
        self.gateways: dict[gw.RouterKey, tuple[str, str]] = {}  # router -> active (host, tunnel IP)
        self._candidates: dict[str, list[gw.Candidate]] = {}  # tenant -> its routers with SNAT gateways
        self._dirty: set[str | None] = set()
        self._epr_changed: dict[str, tuple[MO, bool]] = {}  # uri -> (MO, deleted)
        self._flush: asyncio.TimerHandle | None = None
        self._flushing = asyncio.Lock()
        self._states: list[tuple[EndpointState, asyncio.Future[bool]]] = []
        self._state_writer: asyncio.Task[None] | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle
    async def start(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        await self._rebuild({None, *self.authority.tenants()}, push=False)
        self.authority.listeners.append(self._on_commit)
        self._server = await asyncio.start_server(
            self._accept, host, port, ssl=self.tls, limit=1 << 20, backlog=4096
        )
        if not self.advertise:
            self.advertise = [f"{host}:{port}"]
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
        for session in list(self.peers):
            await session.close("authority stopping")
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        label = f"{peer[0]}:{peer[1]}" if peer else "?"
        # A peer that cannot take our data within two keepalive periods is as good as dead.
        session = Session(
            reader,
            writer,
            self._handle,
            label=label,
            max_frame=self.max_frame,
            keepalive=self.keepalive,
            write_timeout=max(2 * self.keepalive, 1.0),
        )
        peer = self.peers[session] = Peer(self._dialed(writer))
        try:
            await session.run()
        finally:
            del self.peers[session]
            agent = self.agents.get(peer.agent or "")
            if agent is not None and agent.connected and peer.current:
                agent.connected, agent.last_seen = False, time.time()
                log.info("opflex: agent %s disconnected", agent.name)
                self._elect()

    @staticmethod
    def _dialed(writer: asyncio.StreamWriter) -> str:
        sock = writer.get_extra_info("sockname")
        return f"{sock[0]}:{sock[1]}" if sock else ""

    # ---- dispatch
    async def _handle(self, session: Session, method: str, params: list[Any]) -> Any:
        if method == "send_identity":
            return self._identity(session, parse(Identity, params)[0])
        if not session.ready:
            raise RpcError(Code.ESTATE, f"Unexpected request of type {method}")

        handler = {
            "policy_resolve": self._policy_resolve,
            "policy_unresolve": self._policy_unresolve,
            "endpoint_declare": self._endpoint_declare,
            "endpoint_undeclare": self._endpoint_undeclare,
            "endpoint_resolve": self._endpoint_resolve,
            "endpoint_unresolve": self._endpoint_unresolve,
            "state_report": self._state_report,
        }.get(method)
        if handler is None:
            raise RpcError(Code.EUNSUPPORTED, f"Unsupported request: {method}")
        return await handler(self.peers[session], params)

    def _identity(self, session: Session, ident: Identity) -> dict[str, Any]:
        if ident.domain != self.domain:
            raise RpcError(Code.EDOMAIN, f"Domain mismatch: this authority serves {self.domain!r}")
        if "policy_element" not in ident.my_role:
            raise RpcError(Code.EUNSUPPORTED, "only policy_element peers are served")
        for other, other_peer in list(self.peers.items()):  # a reconnecting agent replaces its old session
            if other is not session and other_peer.agent == ident.name:
                other_peer.current = False
                self._spawn(other.close("replaced by a new session of the same agent"))
        peer = self.peers[session]
        self.agents[ident.name] = AgentInfo(ident.name, ident.domain, session.label)
        session.ready = True
        peer.agent = ident.name
        session.label = f"{ident.name}@{session.label}"
        dialed = peer.dialed
        peers = [dialed] + [a for a in self.advertise if a != dialed]
        log.info("opflex: agent %s connected from %s", ident.name, session.label)
        return {
            "name": self.name,
            "domain": self.domain,
            "my_role": ROLES,
            "peers": [{"role": ROLES, "connectivity_info": p} for p in peers],
        }

    # ---- policy
    def _tree_for(self, uri: str) -> Tree | None:
        return self.trees.get(tenant_of(uri))

    async def _policy_resolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        if any(isinstance(p, dict) and "policy_ident" in p for p in params):
            raise RpcError(Code.EUNSUPPORTED, "Policy resolution by ident is not supported")
        policy: list[dict[str, Any]] = []
        for entry in parse(Resolve, params):
            tree = self._tree_for(entry.policy_uri)
            mos = tree.subtree(entry.policy_uri) if tree else []
            if mos and mos[0].subject != entry.subject:
                raise RpcError(
                    Code.ERROR,
                    f"Unknown subject: {entry.subject} (the object at that URI is a {mos[0].subject})",
                )
            peer.subs[entry.policy_uri] = time.monotonic() + max(entry.prr, 1)
            policy += [mo.to_wire() for mo in mos]
        return {"policy": policy}

    async def _policy_unresolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(Unresolve, params):
            peer.subs.pop(entry.policy_uri, None)
        return {}

    def _on_commit(self, changes: list[Change]) -> None:
        """Called from the REST worker thread after each commit."""
        tenants: set[str | None] = set()
        for change in changes:
            if change.kind == "tenant":
                tenants.update((None, change.name))
            else:
                tenants.add(change.tenant)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._mark_dirty, tenants)

    def _mark_dirty(self, tenants: Iterable[str | None]) -> None:
        self._dirty.update(tenants)
        self._schedule()

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
            dirty, self._dirty = self._dirty, set()
            epr, self._epr_changed = self._epr_changed, {}
            if dirty:
                await self._rebuild(dirty, push=True)
            if epr:
                await self._push_epr(epr)

    async def _rebuild(self, tenants: set[str | None], push: bool) -> None:
        gateways = dict(self.gateways)

        def build() -> dict[str | None, Tree]:
            out: dict[str | None, Tree] = {}
            names = self.authority.tenants()
            for tenant in tenants:
                objects, numbers = self.authority.snapshot(tenant)
                if tenant is None:
                    nets = [n for n in objects.get("external_network", []) if isinstance(n, ExternalNetwork)]
                    out[None] = global_tree(names, nets)
                elif tenant in names:
                    active = {r: v for (t, r), v in gateways.items() if t == tenant}
                    out[tenant] = tenant_tree(tenant, objects, numbers, active)
                else:
                    out[tenant] = Tree()  # the tenant is gone
            return out

        fresh = await asyncio.to_thread(build)
        changed: list[MO] = []
        merged: list[MO] = []
        removed: list[MO] = []
        for tenant, tree in fresh.items():
            c, m, r = diff(self.trees.get(tenant), tree)
            changed += c
            merged += m
            removed += r
            if tree.mos:
                self.trees[tenant] = tree
            else:
                self.trees.pop(tenant, None)
            if tenant is not None:  # read once per rebuild of the tenant, not on every election
                self._candidates[tenant] = _gateway_candidates(tenant, tree)
        self._elect()  # routers may have gained or lost an external gateway
        if push and (changed or merged or removed):
            await self._fan_out(
                "policy_update",
                lambda peer: peer.subs,
                {"replace": _wire(changed), "merge_children": _wire(merged), "delete": _refs(removed)},
            )

    async def _fan_out(
        self,
        method: str,
        table: Callable[[Peer], dict[str, float]],
        parts: dict[str, list[tuple[str, dict[str, Any]]]],
    ) -> None:
        """Send each session, in one message, the (uri, wire form) entries of ``parts`` that fall
        under its live subscriptions in ``table``; ``parts`` maps a payload field to its entries."""
        now = time.monotonic()
        sends = []
        for session, peer in list(self.peers.items()):
            subs = [u for u, exp in table(peer).items() if exp > now]
            if not session.ready or not subs:
                continue
            payload = {
                name: [wire for uri, wire in entries if any(under(uri, s) for s in subs)]
                for name, entries in parts.items()
            }
            if any(payload.values()):
                sends.append(self._send_quietly(session, method, payload))
        await asyncio.gather(*sends)

    @staticmethod
    async def _send_quietly(session: Session, method: str, params: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            await session.push(method, params)

    # ---- endpoint registry
    async def _endpoint_declare(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        agent = str(peer.agent)
        for entry in parse(Declare, params):
            try:
                mos = [MO.from_wire(m) for m in entry.endpoint]
            except ValueError as exc:
                raise RpcError(Code.ERROR, f"Malformed message: endpoint: {exc}") from None
            tops = [m for m in mos if m.subject in ("EprL2Ep", "EprL3Ep")]
            if not tops:
                raise RpcError(Code.ERROR, "Malformed message: endpoint holds no EprL2Ep or EprL3Ep")
            for top in tops:
                subtree = [m.to_wire() for m in mos if m is top or (m.parent_uri or "").startswith(top.uri)]
                key = top.properties.get("uuid")
                endpoint = None
                if isinstance(key, str) and "/" in key:
                    tenant, name = key.split("/", 1)
                    endpoint = (tenant, name)
                self.declarations[top.uri] = Declaration(
                    subtree, agent, time.monotonic() + max(entry.prr, 1), endpoint
                )
                self._epr_changed[top.uri] = (top, False)
                if endpoint is not None and top.subject == "EprL2Ep":
                    self._bind(endpoint, agent, top.properties.get("interfaceName"))
        self._schedule()
        return {}

    def _queue_state(self, state: EndpointState, unknown: str | None = None) -> asyncio.Future[bool]:
        """Queue an endpoint's reported state for the batch writer; the future says whether the
        endpoint exists. Reports that arrive while a write is in flight go into the next write,
        in order, so a host declaring thousands of endpoints costs a few commits, not thousands.
        ``unknown`` is logged (a warning) if the authority has no such endpoint."""
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
        if self._state_writer is None or self._state_writer.done():
            self._state_writer = asyncio.create_task(self._write_states())
        return done

    async def _write_states(self) -> None:
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

    def _bind(self, endpoint: tuple[str, str], agent: str, interface: Any) -> None:
        """The endpoint now lives on ``agent``'s host; BUILD unless it is already up (written by
        the batch writer: the declaration itself is already in the registry)."""
        tenant, name = endpoint
        self._queue_state(
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

    async def _endpoint_undeclare(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(EndpointRef, params):
            decl = self.declarations.get(entry.endpoint_uri)
            if decl is not None and decl.agent == peer.agent:
                await self._undeclare(entry.endpoint_uri, "undeclared")
        self._schedule()
        return {}

    async def _undeclare(self, uri: str, why: str) -> None:
        decl = self.declarations.pop(uri, None)
        if decl is None:
            return
        self._epr_changed[uri] = (MO.from_wire(decl.mos[0]), True)
        # The endpoint's status follows its L2 declaration (its interface); L3 ones are address bindings.
        if (
            decl.is_l2
            and decl.endpoint is not None
            and not any(d.endpoint == decl.endpoint and d.is_l2 for d in self.declarations.values())
        ):
            tenant, name = decl.endpoint
            log.info("opflex: endpoint %s/%s %s by %s", tenant, name, why, decl.agent)
            self._queue_state(EndpointState(tenant, name, status="DOWN"))

    async def _endpoint_resolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        if any(isinstance(p, dict) and "endpoint_ident" in p for p in params):
            raise RpcError(Code.EUNSUPPORTED, "Endpoint resolution by ident is not supported")
        found: list[dict[str, Any]] = []
        for entry in parse(EndpointResolve, params):
            peer.ep_subs[entry.endpoint_uri] = time.monotonic() + max(entry.prr, 1)
            for uri, decl in self.declarations.items():
                if under(uri, entry.endpoint_uri):
                    found += decl.mos
        return {"endpoint": found}

    async def _endpoint_unresolve(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        for entry in parse(EndpointRef, params):
            peer.ep_subs.pop(entry.endpoint_uri, None)
        return {}

    async def _push_epr(self, changes: dict[str, tuple[MO, bool]]) -> None:
        changed = [mo for mo, deleted in changes.values() if not deleted]
        removed = [mo for mo, deleted in changes.values() if deleted]
        parts = {"replace": _wire(changed), "delete": _refs(removed)}
        await self._fan_out("endpoint_update", lambda peer: peer.ep_subs, parts)

    # ---- observer
    async def _state_report(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
        agent_name = str(peer.agent)
        agent = self.agents[agent_name]
        agent.last_seen, agent.reports = time.time(), agent.reports + 1
        mos = []
        for entry in parse(Report, params):
            for raw in entry.observable:
                try:
                    mos.append(MO.from_wire(raw))
                except ValueError as exc:
                    raise RpcError(Code.ERROR, f"Malformed message: observable: {exc}") from None
        # all of a report's endpoint states go into one write; the reply means they are stored
        await asyncio.gather(*(self._observe(agent_name, agent, mo) for mo in mos))
        return {}

    async def _observe(self, agent_name: str, agent: AgentInfo, mo: MO) -> None:
        props = mo.properties
        if mo.subject == "PfEndpointStatus":
            key, status = props.get("endpoint"), props.get("status")
            if isinstance(key, str) and "/" in key and status in ENDPOINT_STATUSES:
                tenant, name = key.split("/", 1)
                await self._queue_state(EndpointState(tenant, name, status=status))
        elif mo.subject == "PfFault":
            code = str(props.get("code", "fault"))
            fkey = (agent_name, code, str(props.get("uri", "")))
            if props.get("severity") == "cleared":
                self.faults.pop(fkey, None)
            else:
                self.faults[fkey] = Fault(
                    agent_name,
                    code,
                    str(props.get("severity", "major")),
                    str(props.get("description", "")),
                    props.get("uri"),
                    time.time(),
                )
        elif mo.subject == "PfAgentCounters":
            agent.counters.update({k: v for k, v in props.items() if isinstance(v, int | float | str)})
        elif mo.subject == "PfGatewayPorts":
            tunnel, nets = props.get("tunnelIp"), props.get("externalNetworks")
            agent.tunnel_ip = tunnel if isinstance(tunnel, str) else ""
            agent.external = (
                frozenset(n for n in nets if isinstance(n, str)) if isinstance(nets, list) else frozenset()
            )
            self._elect()

    # ---- gateway HA
    def _elect(self) -> None:
        """Re-run the gateway election; a change rebuilds the router's tenant (pushed at once)."""
        candidates = [c for found in self._candidates.values() for c in found]
        alive = {
            a.name: gw.GatewayHost(a.name, a.tunnel_ip, a.external)
            for a in self.agents.values()
            if a.connected and a.tunnel_ip and a.external
        }
        fresh = gw.elect(candidates, alive, self.gateways)
        if fresh == self.gateways:
            return
        for key in sorted(set(fresh) | set(self.gateways)):
            old, new = self.gateways.get(key, ("", ""))[0], fresh.get(key, ("", ""))[0]
            if old != new:
                log.warning(
                    "opflex: router %s/%s: active gateway %s -> %s", *key, old or "none", new or "none"
                )
        changed: set[str | None] = {key[0] for key, _ in set(fresh.items()) ^ set(self.gateways.items())}
        self.gateways = fresh
        self._mark_dirty(changed)

    # ---- leases
    async def _leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_tick)
            now = time.monotonic()
            for peer in list(self.peers.values()):
                peer.expire(now)
            expired = [u for u, d in self.declarations.items() if d.expires <= now]
            for uri in expired:
                await self._undeclare(uri, "lease expired")
            if expired:
                self._schedule()

    # ---- REST views
    def agents_json(self) -> list[dict[str, Any]]:
        out = []
        for agent in self.agents.values():
            subs = sum(len(p.subs) + len(p.ep_subs) for p in self.peers.values() if p.agent == agent.name)
            eps = [
                f"{d.endpoint[0]}/{d.endpoint[1]}"
                for d in self.declarations.values()
                if d.agent == agent.name and d.endpoint is not None and d.is_l2
            ]
            item = agent.to_json(subs, eps)
            item["gateway_for"] = sorted(
                f"{t}/{r}" for (t, r), (h, _) in self.gateways.items() if h == agent.name
            )
            out.append(item)
        return sorted(out, key=lambda a: a["name"])

    def faults_json(self) -> list[dict[str, Any]]:
        return [f.__dict__ for f in sorted(self.faults.values(), key=lambda f: f.time)]


__all__ = ["OpflexServer"]
