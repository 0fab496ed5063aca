"""The policy an agent asks for beyond its own endpoints' (which the declarer resolves).

Why this is its own module: what a host subscribes to follows from its role
(which external networks it has a port on, whether it may be elected SNAT
gateway) and from what the pipeline routes, not from how the agent loops or
renders. Each call is idempotent: the client resolves a URI once and keeps
following it, so the agent calls these on every reconcile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from policyfabric.agent.endpoints import bd_members_prefix
from policyfabric.agent.view import Network
from policyfabric.opflex.gbp import Cls, external_network_uri
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import UNIVERSE, child


class SubscribingClient(Protocol):
    """What subscribing needs of the OpFlex client."""

    @property
    def policy(self) -> Mapping[str, MO]: ...

    def resolve(self, subject: str, uri: str) -> None: ...

    def resolve_endpoints(self, subject: str, uri: str) -> None: ...


def subscribe_external(client: SubscribingClient, networks: Iterable[str], gateway: bool) -> None:
    """The external networks this host has a port on; on a gateway, every tenant (their routers
    may name this host)."""
    for name in networks:
        client.resolve(Cls.PF_EXTERNAL_NETWORK, external_network_uri(name))
    if not gateway:
        return
    client.resolve(Cls.POLICY_UNIVERSE, UNIVERSE)
    universe = client.policy.get(UNIVERSE)
    spaces = child(UNIVERSE, Cls.POLICY_SPACE)
    for uri in universe.children if universe else ():
        if uri.startswith(spaces):  # (the universe also holds the PlatformConfig)
            client.resolve(Cls.POLICY_SPACE, uri)


def learn_routed(client: SubscribingClient, net: Network) -> None:
    """To route to a subnet, learn the endpoints of its bridge domain."""
    for bd in net.routed_bds():
        client.resolve_endpoints(Cls.EPR_L2_EP, bd_members_prefix(bd))
