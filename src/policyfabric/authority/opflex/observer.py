"""The observer role: what agents report about themselves, for operators and the election.

Each identified agent gets an ``AgentInfo`` (connection state, counters,
its gateway ports). ``state_report`` observables:

- ``PfEndpointStatus`` sets an endpoint's REST ``status`` (through the
  registry's batched writer, handed in as ``record``; the reply to the
  report means its statuses are stored), but only for an endpoint the
  reporting agent has declared (``owns``, the registry's): a host speaks for
  its own endpoints. Others are ignored and counted (``reports_refused``);
- ``PfFault`` raises or clears a fault, listed at ``GET /v1/faults``;
- ``PfAgentCounters`` shows up at ``GET /v1/agents``;
- ``PfRenderedRevision``: the highest authority revision the agent's installed flows reflect
  (``rendered_revision`` in ``GET /v1/agents``; ``apply --wait`` waits for it); each change is
  told to ``watchers`` (``GET /v1/events``), as are connections and disconnections;
- ``PfGatewayPorts`` (from a gateway agent) says which external networks it
  can serve; ``gateway_ports`` is called so the server re-runs the election.

The reference agent's observables are heard the same way: ``FaultInstance``
(``faultCode``, ``severity``, ``description``, ``affectedObject``) as a fault,
and ``GbpeEpCounter`` (one per endpoint, by its uuid) summed into the agent's
counters as ``endpoints.<name>`` (at most ``MAX_ENDPOINT_COUNTERS`` endpoints
kept per agent). Its endpoints' status follows their declarations (the
registry), since it reports none.

Everything is filed under the session's agent, never under a name in the
payload, and bounded: at most ``MAX_FAULTS`` faults per agent (the oldest
go, counted in ``faults_dropped``), ``MAX_COUNTERS`` counters (new keys
beyond go, counted in ``counters_dropped``), text fields cut to a few
hundred characters. An agent that disconnected shows ``connected: false``
and is forgotten, with its faults, ``forget_after`` seconds later, so names
that come and go do not pile up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from policyfabric.authority.gateways import GatewayHost
from policyfabric.authority.opflex.params import Report, parse
from policyfabric.authority.opflex.peers import Peer
from policyfabric.authority.service import ENDPOINT_STATUSES, EndpointState
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError
from policyfabric.opflex.wire import Code

log = logging.getLogger(__name__)

MAX_FAULTS = 100  # per agent
MAX_COUNTERS = 64  # keys per agent
MAX_ENDPOINT_COUNTERS = 4096  # endpoints per agent whose GbpeEpCounter is kept
EP_COUNTERS = ("rxPackets", "txPackets", "rxDrop", "txDrop", "rxBytes", "txBytes")  # what is summed
MAX_NETWORKS = 1024  # external networks a gateway may report a port on
MAX_KEY, MAX_TEXT, MAX_DESCRIPTION = 64, 256, 1024  # characters
INT64 = 1 << 63


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
    faults_dropped: int = 0  # faults pushed out by newer ones past MAX_FAULTS
    counters_dropped: int = 0  # counter values not kept (past MAX_COUNTERS, or not a bounded value)
    reports_refused: int = 0  # endpoint statuses for endpoints it has not declared
    endpoint_counters: dict[str, dict[str, int]] = field(default_factory=dict)  # uuid -> GbpeEpCounter
    # the highest authority revision its installed flows reflect (PfRenderedRevision; None: not told)
    rendered_revision: int | None = None
    # when it last reported a new rendered revision: its last reconcile that changed its flows
    rendered_at: float | None = None
    # whether it reports what it has rendered at all: ours do; a reference OpFlex agent never does
    reports_rendered: bool = True

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
            "counters": dict(self.counters),
            "reports": self.reports,
            "tunnel_ip": self.tunnel_ip,
            "faults_dropped": self.faults_dropped,
            "counters_dropped": self.counters_dropped,
            "reports_refused": self.reports_refused,
            "rendered_revision": self.rendered_revision,
            "rendered_at": self.rendered_at,
            "reports_rendered": self.reports_rendered,
        }

    def state(self) -> dict[str, Any]:
        """What ``Observer.watchers`` are told: whether it is connected, what it has rendered."""
        return {"name": self.name, "connected": self.connected, "rendered_revision": self.rendered_revision}


@dataclass
class Fault:
    agent: str
    code: str
    severity: str
    message: str
    uri: str | None
    time: float


def text(value: Any, limit: int, default: str = "") -> str:
    """A reported string, cut to ``limit`` characters; other types are not text."""
    return value[:limit] if isinstance(value, str) else default


def counter(value: Any) -> int | float | str | None:
    """A counter value worth keeping (a bounded number or a short string), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, int) and not -INT64 <= value < INT64:
        return None
    return text(value, MAX_TEXT) if isinstance(value, str) else value


class Observer:
    def __init__(
        self,
        record: Callable[[EndpointState], Awaitable[bool]],
        gateway_ports: Callable[[], None],
        owns: Callable[[str, tuple[str, str]], bool] = lambda agent, endpoint: True,
    ) -> None:
        self._record, self._gateway_ports, self._owns = record, gateway_ports, owns
        self.agents: dict[str, AgentInfo] = {}
        # agent -> (code, uri) -> its fault, oldest first
        self.faults: dict[str, dict[tuple[str, str], Fault]] = {}
        self._warned: set[str] = set()  # agents already logged for reporting others' endpoints
        # told (on the loop) each agent's state when it connects, disconnects or renders a revision
        self.watchers: list[Callable[[dict[str, Any]], None]] = []

    def _tell(self, agent: AgentInfo) -> None:
        for watcher in self.watchers:
            watcher(agent.state())

    # ---- sessions
    def connected(self, name: str, domain: str, address: str, reports_rendered: bool = True) -> None:
        """An agent completed its handshake (a fresh record: a reconnecting agent starts over).
        ``reports_rendered``: whether its identity says it is one of ours, which report the
        revision they have rendered (``PfRenderedRevision``); a reference agent never will."""
        self.agents[name] = AgentInfo(name, domain, address, reports_rendered=reports_rendered)
        self._tell(self.agents[name])

    def disconnected(self, name: str) -> bool:
        """The current session of ``name`` closed; whether it was connected until now."""
        agent = self.agents.get(name)
        if agent is None or not agent.connected:
            return False
        agent.connected, agent.last_seen = False, time.time()
        self._tell(agent)
        return True

    def forget(self, before: float) -> list[str]:
        """Drop the agents disconnected since before ``before`` (``time.time()``), and their faults."""
        gone = [a.name for a in self.agents.values() if not a.connected and a.last_seen < before]
        for name in gone:
            del self.agents[name]
            self.faults.pop(name, None)
            self._warned.discard(name)
        return gone

    # ---- requests
    async def state_report(self, peer: Peer, params: list[Any]) -> dict[str, Any]:
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
        await asyncio.gather(*(self._observe(agent, mo) for mo in mos))
        return {}

    async def _observe(self, agent: AgentInfo, mo: MO) -> None:
        props = mo.properties
        if mo.subject == Cls.PF_ENDPOINT_STATUS:
            key, status = props.get(Prop.ENDPOINT), props.get(Prop.STATUS)
            if isinstance(key, str) and "/" in key and status in ENDPOINT_STATUSES:
                tenant, name = key.split("/", 1)
                if not self._owns(agent.name, (tenant, name)):
                    self._refuse(agent, key)
                    return
                await self._record(EndpointState(tenant, name, status=status))
        elif mo.subject == Cls.PF_RENDERED_REVISION:
            revision = props.get(Prop.REVISION)
            if (
                isinstance(revision, int)
                and not isinstance(revision, bool)
                and 0 <= revision < INT64
                and revision != agent.rendered_revision
            ):
                agent.rendered_revision, agent.rendered_at = revision, time.time()
                self._tell(agent)
        elif mo.subject == Cls.PF_FAULT:
            self._fault(agent, props)
        elif mo.subject == Cls.PF_AGENT_COUNTERS:
            for key, value in props.items():
                kept = counter(value)
                if (
                    kept is None
                    or len(key) > MAX_KEY
                    or (key not in agent.counters and len(agent.counters) >= MAX_COUNTERS)
                ):
                    agent.counters_dropped += 1
                else:
                    agent.counters[key] = kept
        elif mo.subject == Cls.FAULT_INSTANCE:
            code = props.get(Prop.FAULT_CODE)
            self._fault(
                agent,
                {
                    Prop.CODE: str(code) if isinstance(code, int) and not isinstance(code, bool) else None,
                    Prop.SEVERITY: props.get(Prop.SEVERITY),
                    Prop.DESCRIPTION: props.get(Prop.DESCRIPTION),
                    Prop.URI: props.get(Prop.AFFECTED_OBJECT),
                },
            )
        elif mo.subject == Cls.GBPE_EP_COUNTER:
            self._endpoint_counters(agent, props)
        elif mo.subject == Cls.PF_GATEWAY_PORTS:
            tunnel, nets = props.get(Prop.TUNNEL_IP), props.get(Prop.EXTERNAL_NETWORKS)
            agent.tunnel_ip = text(tunnel, MAX_KEY)
            agent.external = (
                frozenset(n[:MAX_DESCRIPTION] for n in nets[:MAX_NETWORKS] if isinstance(n, str))
                if isinstance(nets, list)
                else frozenset()
            )
            self._gateway_ports()

    def _endpoint_counters(self, agent: AgentInfo, props: dict[str, Any]) -> None:
        """Keep one endpoint's counters (by its uuid) and show their sums as the agent's (kept as
        running sums: a report costs what it carries, not the agent's number of endpoints)."""
        uuid = text(props.get(Prop.UUID), MAX_KEY)
        known = agent.endpoint_counters
        if not uuid or (uuid not in known and len(known) >= MAX_ENDPOINT_COUNTERS):
            agent.counters_dropped += 1
            return
        old = known.get(uuid, {})
        new = {
            k: v
            for k in EP_COUNTERS
            if (v := counter(props.get(k))) is not None and isinstance(v, int) and v >= 0
        }
        known[uuid] = new
        for k in EP_COUNTERS:
            total = agent.counters.get(f"endpoints.{k}", 0)
            agent.counters[f"endpoints.{k}"] = total - old.get(k, 0) + new.get(k, 0)

    def _refuse(self, agent: AgentInfo, key: str) -> None:
        agent.reports_refused += 1
        if agent.name not in self._warned:  # once per agent: the count says the rest
            self._warned.add(agent.name)
            log.warning(
                "opflex: agent %s reported the status of %s, which it has not declared: ignored",
                agent.name,
                key[:MAX_TEXT],
            )

    def authority_fault(self, agent: str, code: str, message: str, uri: str) -> None:
        """A fault the authority itself raises about what it cannot do for ``agent`` (listed with
        the agent's own, bounded the same way)."""
        info = self.agents.get(agent)
        if info is not None:
            self._fault(
                info, {Prop.CODE: code, Prop.SEVERITY: "major", Prop.DESCRIPTION: message, Prop.URI: uri}
            )

    def _fault(self, agent: AgentInfo, props: dict[str, Any]) -> None:
        code = text(props.get(Prop.CODE), MAX_KEY) or "fault"
        uri = text(props.get(Prop.URI), MAX_DESCRIPTION)
        mine = self.faults.setdefault(agent.name, {})
        previous = mine.pop((code, uri), None)  # raised again: it becomes the newest
        if props.get(Prop.SEVERITY) == "cleared":
            if not mine:
                del self.faults[agent.name]
            return
        if previous is None and len(mine) >= MAX_FAULTS:
            del mine[next(iter(mine))]
            agent.faults_dropped += 1
        mine[(code, uri)] = Fault(
            agent.name,
            code,
            text(props.get(Prop.SEVERITY), MAX_KEY, "major"),
            text(props.get(Prop.DESCRIPTION), MAX_DESCRIPTION),
            uri or None,
            time.time(),
        )

    # ---- views
    def gateway_hosts(self) -> dict[str, GatewayHost]:
        """The connected agents that can serve as gateways: what the election runs over."""
        return {
            a.name: GatewayHost(a.name, a.tunnel_ip, a.external)
            for a in list(self.agents.values())
            if a.connected and a.tunnel_ip and a.external
        }

    def faults_json(self) -> list[dict[str, Any]]:
        """Every agent's faults, oldest first (read from the REST thread: copies, not iterators)."""
        found = [f for mine in list(self.faults.values()) for f in list(mine.values())]
        return [dict(f.__dict__) for f in sorted(found, key=lambda f: f.time)]


__all__ = ["AgentInfo", "Fault", "Observer"]
