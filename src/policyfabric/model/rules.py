"""Cross-object rules: the second half of the one validator.

Pure functions over a :class:`View` (any read-only access to the other
objects). The authority passes a view of its store inside the write
transaction; ``policyfabric check`` passes a view of the scenario file. Both
therefore accept and refuse exactly the same things.

Uniqueness that spans objects (an address in a VRF, a MAC, a floating IP, a
subnet on one router) is expressed as :class:`Claim` keys that the caller
enforces atomically, so a store can do it in its own transaction (a SQL
table, or create-if-absent keys in etcd).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.model.addressing import endpoint_addresses
from policyfabric.model.errors import Conflict, Invalid, Problem
from policyfabric.model.kinds import Kind
from policyfabric.model.types import SLAAC, IPAddress

S = TypeVar("S", bound=o.Spec)


@dataclass(frozen=True)
class Obj:
    """A stored (or about to be stored) object: its kind, id and declared spec."""

    kind: Kind
    id: str
    spec: o.Spec

    @property
    def label(self) -> str:
        """How messages name it: ``endpoint 'web1'``."""
        return f"{self.kind} {self.spec.name!r}"


class View(Protocol):
    """Read access to the objects the rules look at."""

    def find(self, kind: Kind, tenant: str | None, name: str) -> Obj | None:
        """The object of ``kind`` named ``name`` in ``tenant`` (None for global kinds)."""
        ...

    def list(self, kind: Kind, tenant: str | None) -> Sequence[Obj]:
        """Objects of ``kind`` in ``tenant``; every one of them when ``tenant`` is None."""
        ...


@dataclass(frozen=True)
class Claim:
    """A value only one object may hold. ``conflict`` names the value; the holder is appended."""

    key: str
    field: str
    conflict: str


@dataclass(frozen=True)
class Ref:
    """A by-name reference from a field to an object of another (or the same) kind."""

    field: str
    kind: Kind
    name: str


def references(spec: o.Spec) -> list[Ref]:
    """Every by-name reference ``spec`` makes (all within its tenant, except
    external networks, which are global)."""
    refs: list[Ref] = []

    def add(field: str, kind: Kind, name: str | None) -> None:
        if name is not None:
            refs.append(Ref(field, kind, name))

    def add_all(field: str, kind: Kind, names: Sequence[str]) -> None:
        for i, name in enumerate(names):
            add(f"{field}[{i}]", kind, name)

    match spec:
        case o.BridgeDomain():
            add("l3_context", k.L3_CONTEXT, spec.l3_context)
        case o.Subnet():
            add("bridge_domain", k.BRIDGE_DOMAIN, spec.bridge_domain)
        case o.EndpointGroup():
            add("bridge_domain", k.BRIDGE_DOMAIN, spec.bridge_domain)
            add_all("provides", k.CONTRACT, spec.provides)
            add_all("consumes", k.CONTRACT, spec.consumes)
        case o.SecurityGroup():
            for i, rule in enumerate(spec.rules):
                add(f"rules[{i}].remote_group", k.SECURITY_GROUP, rule.remote_group)
        case o.Endpoint():
            add("epg", k.ENDPOINT_GROUP, spec.epg)
            add("subnet", k.SUBNET, spec.subnet)
            add_all("security_groups", k.SECURITY_GROUP, spec.security_groups)
        case o.Router():
            add("l3_context", k.L3_CONTEXT, spec.l3_context)
            add_all("interfaces", k.SUBNET, spec.interfaces)
            if spec.external_gateway is not None:
                add("external_gateway.network", k.EXTERNAL_NETWORK, spec.external_gateway.network)
        case o.FloatingIp():
            add("network", k.EXTERNAL_NETWORK, spec.network)
            add("endpoint", k.ENDPOINT, spec.endpoint)
    return refs


# Which kinds can refer to which: lets `dependents` scan only what matters.
REFERRERS: dict[str, tuple[Kind, ...]] = {
    k.L3_CONTEXT.name: (k.BRIDGE_DOMAIN, k.ROUTER),
    k.BRIDGE_DOMAIN.name: (k.SUBNET, k.ENDPOINT_GROUP),
    k.SUBNET.name: (k.ENDPOINT, k.ROUTER),
    k.CONTRACT.name: (k.ENDPOINT_GROUP,),
    k.SECURITY_GROUP.name: (k.SECURITY_GROUP, k.ENDPOINT),
    k.ENDPOINT_GROUP.name: (k.ENDPOINT,),
    k.ENDPOINT.name: (k.FLOATING_IP,),
    k.EXTERNAL_NETWORK.name: (k.ROUTER, k.FLOATING_IP),
}


def _target_scope(ref: Ref, tenant: str | None) -> str | None:
    return None if ref.kind is k.EXTERNAL_NETWORK else tenant


def _resolve(view: View, spec: o.Spec, kind: Kind, name: str) -> o.Spec | None:
    tenant = None if kind is k.EXTERNAL_NETWORK else spec.scope
    found = view.find(kind, tenant, name)
    return found.spec if found else None


def _typed(view: View, spec: o.Spec, kind: Kind, name: str, cls: type[S]) -> S | None:
    found = _resolve(view, spec, kind, name)
    return found if isinstance(found, cls) else None


def check_references(obj: Obj, view: View) -> None:
    """Every reference names an existing object (a security group may name itself)."""
    spec = obj.spec
    missing = []
    if spec.scope is not None and view.find(k.TENANT, None, spec.scope) is None:
        missing.append(Ref("tenant", k.TENANT, spec.scope))
    for ref in references(spec):
        if ref.kind is obj.kind and ref.name == spec.name:
            continue
        if view.find(ref.kind, _target_scope(ref, spec.scope), ref.name) is None:
            missing.append(ref)
    if missing:

        def where(ref: Ref) -> str:
            global_kind = ref.kind in (k.TENANT, k.EXTERNAL_NETWORK)
            return "" if global_kind else f" in tenant {spec.scope!r}"

        raise Invalid.of(Problem(r.field, f"no {r.kind} named {r.name!r}{where(r)}") for r in missing)


def validate(obj: Obj, view: View) -> list[Claim]:
    """All cross-object rules for ``obj``; returns the claims it must hold.

    Raises Invalid (a wrong value) or Conflict (a clash with another object).
    """
    check_references(obj, view)
    check = _CHECKS.get(obj.kind.name)
    return check(obj, view) if check else []


def bridge_domain_of(view: View, spec: o.Endpoint) -> o.BridgeDomain | None:
    """An endpoint sits on its EPG's bridge domain, or on its subnet's."""
    if spec.epg is not None:
        epg = _typed(view, spec, k.ENDPOINT_GROUP, spec.epg, o.EndpointGroup)
        return _typed(view, spec, k.BRIDGE_DOMAIN, epg.bridge_domain, o.BridgeDomain) if epg else None
    if spec.subnet is not None:
        subnet = _typed(view, spec, k.SUBNET, spec.subnet, o.Subnet)
        return _typed(view, spec, k.BRIDGE_DOMAIN, subnet.bridge_domain, o.BridgeDomain) if subnet else None
    return None


def subnets_of(view: View, tenant: str, bridge_domain: str) -> list[Obj]:
    return [
        s
        for s in view.list(k.SUBNET, tenant)
        if isinstance(s.spec, o.Subnet) and s.spec.bridge_domain == bridge_domain
    ]


def _vrf_of_bd(view: View, tenant: str, bd_name: str) -> str | None:
    bd = view.find(k.BRIDGE_DOMAIN, tenant, bd_name)
    return bd.spec.l3_context if bd and isinstance(bd.spec, o.BridgeDomain) else None


def _check_subnet(obj: Obj, view: View) -> list[Claim]:
    spec = obj.spec
    assert isinstance(spec, o.Subnet)
    vrf = _vrf_of_bd(view, spec.tenant, spec.bridge_domain)
    for other in view.list(k.SUBNET, spec.tenant):
        theirs = other.spec
        if other.id == obj.id or not isinstance(theirs, o.Subnet):
            continue
        if theirs.cidr.version != spec.cidr.version or not theirs.cidr.overlaps(spec.cidr):
            continue
        if _vrf_of_bd(view, spec.tenant, theirs.bridge_domain) == vrf:
            raise Conflict(
                f"{spec.cidr} overlaps subnet {theirs.name!r} ({theirs.cidr}) in l3_context {vrf!r}",
                "cidr",
            )
    return []


def _check_epg(obj: Obj, view: View) -> list[Claim]:
    spec = obj.spec
    assert isinstance(spec, o.EndpointGroup)
    both = set(spec.provides) & set(spec.consumes)
    if both:
        name = sorted(both)[0]
        raise Invalid(
            f"contract {name!r} is both provided and consumed: use intra_group for traffic within the group",
            "consumes",
        )
    return []


def _check_endpoint(obj: Obj, view: View) -> list[Claim]:
    spec = obj.spec
    assert isinstance(spec, o.Endpoint)
    bd = bridge_domain_of(view, spec)
    if bd is None:  # references were checked: only a broken chain gets here
        raise Invalid("cannot find the endpoint's bridge domain", "epg")
    if spec.epg is not None and spec.subnet is not None:
        subnet = _typed(view, spec, k.SUBNET, spec.subnet, o.Subnet)
        if subnet is not None and subnet.bridge_domain != bd.name:
            raise Invalid(
                f"subnet {spec.subnet!r} is on bridge domain {subnet.bridge_domain!r}, but epg "
                f"{spec.epg!r} is on {bd.name!r}",
                "subnet",
            )
    subnets = [s.spec for s in subnets_of(view, spec.tenant, bd.name) if isinstance(s.spec, o.Subnet)]
    for i, text in enumerate(spec.ip):
        if text == SLAAC and not any(s.auto_address for s in subnets):
            raise Invalid(
                "'slaac' needs an IPv6 /64 subnet with ipv6_ra_mode or ipv6_address_mode slaac or "
                f"dhcpv6-stateless on bridge domain {bd.name!r}",
                f"ip[{i}]",
            )
    claims = []
    held: dict[IPAddress, str] = {}
    for found in endpoint_addresses(spec.ip, spec.mac, subnets):
        addr, home = found.address, found.subnet
        if addr in held:  # a declared address that is also its SLAAC address
            raise Invalid(f"{addr} is also {held[addr]}: list it once", found.field)
        held[addr] = f"the SLAAC address of {found.field}" if found.learnt else found.field
        if home is None:
            have = ", ".join(str(s.cidr) for s in subnets) or "none"
            raise Invalid(
                f"{addr} is not inside a subnet of bridge domain {bd.name!r} (its subnets: {have})",
                found.field,
            )
        why = home.why_not_host(addr, f"subnet {home.name!r}")
        if why:
            if found.learnt:
                why = f"its SLAAC address (EUI-64 of MAC {spec.mac}) in subnet {home.name!r}: {why}"
            raise Invalid(why, found.field)
        what = f"SLAAC address {addr}" if found.learnt else f"address {addr}"
        claims.append(
            Claim(
                f"ip/{spec.tenant}/{bd.l3_context}/{addr}",
                found.field,
                f"{what} in l3_context {bd.l3_context!r}",
            )
        )
    if spec.mac is not None:
        claims.append(Claim(f"mac/{spec.mac}", "mac", f"MAC {spec.mac}"))
    return claims


def _check_router(obj: Obj, view: View) -> list[Claim]:
    spec = obj.spec
    assert isinstance(spec, o.Router)
    claims = []
    for i, name in enumerate(spec.interfaces):
        field = f"interfaces[{i}]"
        subnet = _typed(view, spec, k.SUBNET, name, o.Subnet)
        vrf = _vrf_of_bd(view, spec.tenant, subnet.bridge_domain) if subnet else None
        if vrf != spec.l3_context:
            raise Invalid(
                f"subnet {name!r} is in l3_context {vrf!r}, not the router's {spec.l3_context!r}",
                field,
            )
        claims.append(Claim(f"router-interface/{spec.tenant}/{name}", field, f"subnet {name!r}"))
    gw = spec.external_gateway
    if gw is not None and gw.ip is not None:
        net = _typed(view, spec, k.EXTERNAL_NETWORK, gw.network, o.ExternalNetwork)
        why = net.why_not_host(gw.ip, f"external network {net.name!r}") if net else None
        if why:
            raise Invalid(why, "external_gateway.ip")
        # one namespace for every address on external networks: floating IPs and router gateways
        claims.append(Claim(f"floating-ip/{gw.ip}", "external_gateway.ip", f"external address {gw.ip}"))
    return claims


def _check_floating_ip(obj: Obj, view: View) -> list[Claim]:
    spec = obj.spec
    assert isinstance(spec, o.FloatingIp)
    net = _typed(view, spec, k.EXTERNAL_NETWORK, spec.network, o.ExternalNetwork)
    assert net is not None
    claims = []
    if spec.ip is not None:
        why = net.why_not_host(spec.ip, f"external network {net.name!r}")
        if why:
            raise Invalid(why, "ip")
        claims.append(Claim(f"floating-ip/{spec.ip}", "ip", f"floating IP {spec.ip}"))
    if spec.endpoint is not None:
        ep = _typed(view, spec, k.ENDPOINT, spec.endpoint, o.Endpoint)
        family = net.cidr.version
        if ep is not None and not any(
            a != SLAAC and ipaddress.ip_address(a).version == family for a in ep.ip
        ):
            raise Invalid(
                f"endpoint {spec.endpoint!r} has no IPv{family} address to map the floating IP to",
                "endpoint",
            )
        claims.append(
            Claim(
                f"floating-ip-endpoint/{spec.tenant}/{spec.endpoint}",
                "endpoint",
                f"endpoint {spec.endpoint!r} (one floating IP per endpoint)",
            )
        )
    return claims


def _check_external_network(obj: Obj, view: View) -> list[Claim]:
    spec = obj.spec
    assert isinstance(spec, o.ExternalNetwork)
    for other in view.list(k.EXTERNAL_NETWORK, None):
        theirs = other.spec
        if (
            other.id != obj.id
            and isinstance(theirs, o.ExternalNetwork)
            and (theirs.cidr.version == spec.cidr.version and theirs.cidr.overlaps(spec.cidr))
        ):
            raise Conflict(f"{spec.cidr} overlaps external network {theirs.name!r} ({theirs.cidr})", "cidr")
    return []


_CHECKS: dict[str, Callable[[Obj, View], list[Claim]]] = {
    k.SUBNET.name: _check_subnet,
    k.ENDPOINT_GROUP.name: _check_epg,
    k.ENDPOINT.name: _check_endpoint,
    k.ROUTER.name: _check_router,
    k.FLOATING_IP.name: _check_floating_ip,
    k.EXTERNAL_NETWORK.name: _check_external_network,
}


def dependents(obj: Obj, view: View) -> list[Obj]:
    """Objects whose validity depends on ``obj``: they refer to it by name, or
    (for a subnet) hold an address inside it. Deleting ``obj`` is refused while
    any exist; changing a structural field re-checks them."""
    spec = obj.spec
    if obj.kind is k.TENANT:
        return [x for kind in k.ORDER if kind.scoped for x in view.list(kind, spec.name)]
    found: dict[str, Obj] = {}
    for kind in REFERRERS.get(obj.kind.name, ()):
        for other in view.list(kind, spec.scope):
            if other.id != obj.id and any(
                r.kind is obj.kind and r.name == spec.name for r in references(other.spec)
            ):
                found[other.id] = other
    if isinstance(spec, o.Subnet):
        for ep in _endpoints_inside(view, spec):
            found.setdefault(ep.id, ep)
    return list(found.values())


def _endpoints_inside(view: View, subnet: o.Subnet) -> Iterator[Obj]:
    for ep in view.list(k.ENDPOINT, subnet.tenant):
        spec = ep.spec
        if not isinstance(spec, o.Endpoint):
            continue
        bd = bridge_domain_of(view, spec)
        if bd is None or bd.name != subnet.bridge_domain:
            continue
        for text in spec.ip:
            if text == SLAAC:
                if subnet.auto_address:
                    yield ep
                    break
            elif ipaddress.ip_address(text) in subnet.cidr:
                yield ep
                break


def dependents_closure(obj: Obj, view: View) -> list[Obj]:
    """Dependents, their dependents, and so on (each once)."""
    seen: dict[str, Obj] = {}
    todo = dependents(obj, view)
    while todo:
        item = todo.pop()
        if item.id in seen or item.id == obj.id:
            continue
        seen[item.id] = item
        todo.extend(dependents(item, view))
    return list(seen.values())


def describe(objs: Sequence[Obj], limit: int = 10) -> str:
    """``endpoint 'web1', endpoint 'web2' and 3 more``."""
    labels = [x.label for x in objs[:limit]]
    more = len(objs) - limit
    return ", ".join(labels) + (f" and {more} more" if more > 0 else "")
