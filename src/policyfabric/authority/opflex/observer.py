"""The observer role: what agents report about themselves, for operators and the election.

Each identified agent gets an ``AgentInfo`` (connection state, counters,
its gateway ports). ``state_report`` observables:

- ``PfEndpointStatus`` sets an endpoint's REST ``status`` (through the
  registry's batched writer, handed in as ``record``; the reply to the
  report means its statuses are stored);
- ``PfFault`` raises or clears a fault, listed at ``GET /v1/faults``;
- ``PfAgentCounters`` shows up at ``GET /v1/agents``;
- ``PfGatewayPorts`` (from a gateway agent) says which external networks it
  can serve; ``gateway_ports`` is called so the server re-runs the election.
"""

from __future__ import annotations

import asyncio
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


class Observer:
    def __init__(
        self,
        record: Callable[[EndpointState], Awaitable[bool]],
        gateway_ports: Callable[[], None],
    ) -> None:
        self._record, self._gateway_ports = record, gateway_ports
        self.agents: dict[str, AgentInfo] = {}
        self.faults: dict[tuple[str, str, str], Fault] = {}  # (agent, code, uri) -> fault

    # ---- sessions
    def connected(self, name: str, domain: str, address: str) -> None:
        """An agent completed its handshake (a fresh record: a reconnecting agent starts over)."""
        self.agents[name] = AgentInfo(name, domain, address)

    def disconnected(self, name: str) -> bool:
        """The current session of ``name`` closed; whether it was connected until now."""
        agent = self.agents.get(name)
        if agent is None or not agent.connected:
            return False
        agent.connected, agent.last_seen = False, time.time()
        return True

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
        await asyncio.gather(*(self._observe(agent_name, agent, mo) for mo in mos))
        return {}

    async def _observe(self, agent_name: str, agent: AgentInfo, mo: MO) -> None:
        props = mo.properties
        if mo.subject == Cls.PF_ENDPOINT_STATUS:
            key, status = props.get(Prop.ENDPOINT), props.get(Prop.STATUS)
            if isinstance(key, str) and "/" in key and status in ENDPOINT_STATUSES:
                tenant, name = key.split("/", 1)
                await self._record(EndpointState(tenant, name, status=status))
        elif mo.subject == Cls.PF_FAULT:
            code = str(props.get(Prop.CODE, "fault"))
            fkey = (agent_name, code, str(props.get(Prop.URI, "")))
            if props.get(Prop.SEVERITY) == "cleared":
                self.faults.pop(fkey, None)
            else:
                self.faults[fkey] = Fault(
                    agent_name,
                    code,
                    str(props.get(Prop.SEVERITY, "major")),
                    str(props.get(Prop.DESCRIPTION, "")),
                    props.get(Prop.URI),
                    time.time(),
                )
        elif mo.subject == Cls.PF_AGENT_COUNTERS:
            agent.counters.update({k: v for k, v in props.items() if isinstance(v, int | float | str)})
        elif mo.subject == Cls.PF_GATEWAY_PORTS:
            tunnel, nets = props.get(Prop.TUNNEL_IP), props.get(Prop.EXTERNAL_NETWORKS)
            agent.tunnel_ip = tunnel if isinstance(tunnel, str) else ""
            agent.external = (
                frozenset(n for n in nets if isinstance(n, str)) if isinstance(nets, list) else frozenset()
            )
            self._gateway_ports()

    # ---- views
    def gateway_hosts(self) -> dict[str, GatewayHost]:
        """The connected agents that can serve as gateways: what the election runs over."""
        return {
            a.name: GatewayHost(a.name, a.tunnel_ip, a.external)
            for a in self.agents.values()
            if a.connected and a.tunnel_ip and a.external
        }

    def faults_json(self) -> list[dict[str, Any]]:
        return [f.__dict__ for f in sorted(self.faults.values(), key=lambda f: f.time)]


__all__ = ["AgentInfo", "Fault", "Observer"]
