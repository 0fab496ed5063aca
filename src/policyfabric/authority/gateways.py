"""Gateway HA: which host is the active SNAT gateway of each router.

The authority arbitrates. Every gateway agent tells it (in a state report)
its tunnel address and the external networks it has a port on; the
authority's OpFlex sessions say which agents are alive. For each router with
an external gateway, the active host is kept while it stays alive and
attached (no preemption: a recovered host does not take the role back and
cause a second interruption); otherwise it is the first host of
``external_gateway.hosts`` that is. The result goes to every agent inside
the router's ``PfExternalGateway`` (``activeHost``, ``activeTunnelIp``), so
compute hosts tunnel SNAT traffic there and only that host answers for the
router's external address. docs/architecture.md discusses split brain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

RouterKey = tuple[str, str]  # (tenant, router name)


@dataclass(frozen=True)
class Candidate:
    router: RouterKey
    network: str  # the external network's URI
    hosts: tuple[str, ...]  # in the operator's order of preference


@dataclass(frozen=True)
class GatewayHost:
    """A live agent that can serve as a gateway."""

    name: str
    tunnel_ip: str
    networks: frozenset[str]  # URIs of the external networks it has a port on


def elect(
    candidates: Iterable[Candidate],
    alive: Mapping[str, GatewayHost],
    current: Mapping[RouterKey, tuple[str, str]],
) -> dict[RouterKey, tuple[str, str]]:
    """The active (host, tunnel address) of every router that has one; pure."""
    out: dict[RouterKey, tuple[str, str]] = {}
    for c in candidates:
        able = [alive[h] for h in c.hosts if h in alive and c.network in alive[h].networks]
        held = current.get(c.router)
        keep = next((h for h in able if held is not None and h.name == held[0]), None)
        chosen = keep or (able[0] if able else None)
        if chosen is not None:
            out[c.router] = (chosen.name, chosen.tunnel_ip)
    return out
