"""The registry of object kinds: one place that names each kind for the REST
API (collection), the scenario file (section) and people (title), in the
order objects must be created."""

from __future__ import annotations

from dataclasses import dataclass

from policyfabric.model import objects as o


@dataclass(frozen=True)
class Kind:
    name: str  # "bridge_domain": internal and OpFlex-facing
    collection: str  # "bridge-domains": REST path segment
    section: str  # "bridge_domains": scenario file key
    title: str  # "bridge domain": for messages
    spec: type[o.Spec]

    @property
    def scoped(self) -> bool:
        """Whether objects of this kind live in a tenant."""
        return issubclass(self.spec, o.TenantScoped)

    def __str__(self) -> str:
        return self.title


def _kind(spec: type[o.Spec], title: str) -> Kind:
    name = spec.KIND
    return Kind(name, name.replace("_", "-") + "s", name + "s", title, spec)


# Dependency order: every kind refers only to kinds before it (security
# groups may also refer to each other; apply handles that).
ORDER: tuple[Kind, ...] = (
    TENANT := _kind(o.Tenant, "tenant"),
    EXTERNAL_NETWORK := _kind(o.ExternalNetwork, "external network"),
    L3_CONTEXT := _kind(o.L3Context, "l3_context"),
    BRIDGE_DOMAIN := _kind(o.BridgeDomain, "bridge domain"),
    SUBNET := _kind(o.Subnet, "subnet"),
    CONTRACT := _kind(o.Contract, "contract"),
    SECURITY_GROUP := _kind(o.SecurityGroup, "security group"),
    ENDPOINT_GROUP := _kind(o.EndpointGroup, "endpoint group"),
    ENDPOINT := _kind(o.Endpoint, "endpoint"),
    ROUTER := _kind(o.Router, "router"),
    FLOATING_IP := _kind(o.FloatingIp, "floating IP"),
)

BY_NAME = {k.name: k for k in ORDER}
BY_COLLECTION = {k.collection: k for k in ORDER}

_ALIASES = {
    "vrf": L3_CONTEXT,
    "vrfs": L3_CONTEXT,
    "bd": BRIDGE_DOMAIN,
    "bds": BRIDGE_DOMAIN,
    "epg": ENDPOINT_GROUP,
    "epgs": ENDPOINT_GROUP,
    "sg": SECURITY_GROUP,
    "sgs": SECURITY_GROUP,
    "fip": FLOATING_IP,
    "fips": FLOATING_IP,
    "ext-net": EXTERNAL_NETWORK,
}


def lookup(text: str) -> Kind | None:
    """A kind from what a person types: ``bridge-domains``, ``bridge_domain``, ``bd``..."""
    key = text.strip().lower().replace("_", "-")
    if key in _ALIASES:
        return _ALIASES[key]
    for kind in ORDER:
        if key in (kind.collection, kind.collection[:-1]):
            return kind
    return None
