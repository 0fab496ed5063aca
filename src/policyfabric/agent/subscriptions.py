"""The policy an agent asks for: what its endpoints need, and what its role needs.

Why this is its own module: what a host subscribes to follows from its endpoints (their groups,
bridge domains, contracts), its role (which external networks it has a port on, whether it may be
elected SNAT gateway) and what the pipeline routes, not from how the agent loops or renders. Each
call is idempotent: the client resolves a URI once and keeps following it, so the agent calls
these on every reconcile.

Resolution by need (the reference agent's way): an agent resolves its endpoints' ``PfEndpoint``s
(the declarer), and the client follows the references of what it receives (group → bridge domain
→ routing domain and subnets, security group → rules → classifiers and remote-address sets,
endpoint → floating IPs → external network, router → its legs' subnets and bridge domains). The
relations that lead to what only some readers need (``client.BY_NEED``) are followed here, from
the endpoints' own groups and bridge domains alone (``needs``): a group's contracts, the groups on
the other side of each (the contract's reverse relations), the routers of a bridge domain. What
leaves that set is unresolved. So a change to a contract reaches the agents whose endpoints'
groups provide or consume it, not every agent of the tenant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from policyfabric.agent.endpoints import bd_members_prefix
from policyfabric.agent.view import Network
from policyfabric.opflex.gbp import Cls, Prop, external_network_uri
from policyfabric.opflex.mo import MO, REFERENCE_URI, is_ref
from policyfabric.opflex.uri import UNIVERSE, child


class SubscribingClient(Protocol):
    """What subscribing needs of the OpFlex client."""

    @property
    def policy(self) -> Mapping[str, MO]: ...

    def resolve(self, subject: str, uri: str) -> None: ...

    def resolve_endpoints(self, subject: str, uri: str) -> None: ...


class NeedingClient(SubscribingClient, Protocol):
    """What following the needs of the endpoints takes of the OpFlex client."""

    def unresolve(self, uri: str) -> None: ...


# the other side of a contract: a providing group's is its consumers, and the reverse
_OTHER_SIDE = {
    Cls.GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC: Cls.PF_EP_GROUP_TO_CONS_CONTRACT_RTGT,
    Cls.GBP_EP_GROUP_TO_CONS_CONTRACT_RSRC: Cls.PF_EP_GROUP_TO_PROV_CONTRACT_RTGT,
}


def _pointed(mo: MO | None, prop: str) -> str | None:
    value = mo.properties.get(prop) if mo is not None else None
    return str(value[REFERENCE_URI]) if isinstance(value, dict) and is_ref(value) else None


def _kids(policy: Mapping[str, MO], uri: str) -> list[MO]:
    mo = policy.get(uri)
    return [policy[c] for c in mo.children if c in policy] if mo is not None else []


def needs(policy: Mapping[str, MO], groups: Iterable[str], bds: Iterable[str]) -> dict[str, str]:
    """URI -> class of what endpoints in ``groups`` and ``bds`` (URIs) need beyond what the client
    follows by itself: the groups, the contracts they provide or consume, the groups consuming
    (providing) what they provide (consume), the routers with a leg on the bridge domains. Reads
    what ``policy`` holds so far (a contract not resolved yet brings its groups once it is)."""
    out: dict[str, str] = {}
    for group in groups:
        out[group] = Cls.GBP_EP_GROUP
        for rel in _kids(policy, group):
            other_side = _OTHER_SIDE.get(rel.subject)
            contract = _pointed(rel, Prop.TARGET) if other_side is not None else None
            if contract is None:
                continue
            out[contract] = Cls.GBP_CONTRACT
            for back in _kids(policy, contract):
                source = _pointed(back, Prop.SOURCE) if back.subject == other_side else None
                if source is not None:
                    out.setdefault(source, Cls.GBP_EP_GROUP)
    for bd in bds:
        for back in _kids(policy, bd):
            router = (
                _pointed(back, Prop.SOURCE) if back.subject == Cls.PF_ROUTER_TO_BRIDGE_DOMAIN_RTGT else None
            )
            if router is not None:
                out[router] = Cls.PF_ROUTER
    return out


def follow_needs(
    client: NeedingClient, groups: Iterable[str], bds: Iterable[str], before: Mapping[str, str]
) -> dict[str, str]:
    """Resolve what the endpoints in ``groups`` and ``bds`` need (``needs``), unresolve what they
    needed ``before`` and no longer do; what they need now (the next call's ``before``)."""
    now = needs(client.policy, groups, bds)
    for uri, subject in now.items():
        if uri not in before:  # (the client keeps following what it resolved)
            client.resolve(subject, uri)
    for uri in before:
        if uri not in now:
            client.unresolve(uri)
    return now


def placement(mo: MO | None) -> tuple[str | None, str | None]:
    """The group and bridge domain (URIs) a ``PfEndpoint`` names (None: none, or not resolved)."""
    return _pointed(mo, Prop.EPG), _pointed(mo, Prop.BRIDGE_DOMAIN)


def follow_endpoints(
    client: NeedingClient, endpoints: Iterable[str], before: Mapping[str, str]
) -> dict[str, str]:
    """``follow_needs`` for the endpoints whose ``PfEndpoint`` URIs are ``endpoints`` (an agent
    that does not count its endpoints' places itself, as the declarer does: the dry run)."""
    places = [placement(client.policy.get(uri)) for uri in endpoints]
    groups = {g for g, _ in places if g is not None}
    return follow_needs(client, groups, {b for _, b in places if b is not None}, before)


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
