"""What the endpoint registry checks declarations against: each endpoint as the policy tree says it.

Why an index, and why built from the tree: an agent may declare only what the intent gives it
(``registry.py``), and declarations come in bursts of thousands (a host starting, every host
re-declaring after an authority restart). Reading the store per declaration would put a full
tenant read on every one; instead each tenant's endpoints are indexed once per rebuild of the
tenant's tree, which the repository already does (off the event loop) after every commit that
touches the tenant. Built from the tree rather than from the store's specs, the index says exactly
what agents resolve: the bridge domain and routing domain URIs, the group and its class id, the
MAC and the addresses, as the ``PfEndpoint`` and the objects it points to carry them. A check is
then a few dictionary lookups and string comparisons.

Addresses an endpoint may declare: those the intent lists (in canonical form: one the intent holds
in any other form, or with an IPv6 scope, is not declarable), its IPv6 link-local address (EUI-64
of its MAC), and, for a ``slaac`` endpoint, the EUI-64 address in each SLAAC subnet of its bridge
domain.

``IntentIndex.update`` replaces rebuilt tenants and hands the entries that changed to its listeners
(the registry re-checks, and withdraws, the declarations of those endpoints only).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache

from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, uri_of
from policyfabric.opflex.mo import MO, REFERENCE_URI, Tree
from policyfabric.opflex.uri import EPR_L2, EPR_L3, child, space

SLAAC = "slaac"

Changed = list[tuple[str, "EndpointIntent | None", "EndpointIntent | None"]]  # (key, old, new)


@dataclass(frozen=True)
class EndpointIntent:
    """One endpoint of the intent, as a declaration of it must say it."""

    key: str  # TENANT/NAME
    mac: str
    bd: str | None  # GbpBridgeDomain URI (None: the intent gives it none; nothing is declarable)
    rd: str | None  # GbpRoutingDomain URI of that bridge domain
    group: str | None  # GbpEpGroup URI
    classid: int | None  # the group's class id
    host: str | None  # the host the intent pins it to
    addresses: frozenset[str]  # every address it may declare
    slaac: bool  # the intent lists "slaac" (an L2 declaration may list it too)

    @cached_property
    def l2_uri(self) -> str | None:
        """The one URI its ``EprL2Ep`` may have (bridge domain and MAC, libopflex's layout)."""
        return child(EPR_L2, Cls.EPR_L2_EP, self.bd, self.mac) if self.bd else None

    def l3_uri(self, ip: str) -> str | None:
        """The URI of its ``EprL3Ep`` for ``ip`` (routing domain and address)."""
        return child(EPR_L3, Cls.EPR_L3_EP, self.rd, ip) if self.rd else None


@lru_cache(maxsize=1 << 16)
def _interface_id(mac: str) -> int | None:
    """The modified EUI-64 interface identifier of ``mac`` (None if it is not a MAC)."""
    try:
        b = bytes.fromhex(mac.replace(":", ""))
    except ValueError:
        return None
    if len(b) != 6:
        return None
    return int.from_bytes(bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]]), "big")


@lru_cache(maxsize=1 << 16)
def derived_addresses(mac: str, slaac_prefixes: tuple[ipaddress.IPv6Network, ...]) -> frozenset[str]:
    """The link-local address of ``mac`` and its SLAAC address in each of ``slaac_prefixes``.
    Memoised, as ``canonical_ip``: every rebuild of a tenant indexes all its endpoints again."""
    iid = _interface_id(mac)
    if iid is None:
        return frozenset()
    out = {str(ipaddress.IPv6Address((0xFE80 << 112) | iid))}
    out.update(str(ipaddress.IPv6Address(int(p.network_address) | iid)) for p in slaac_prefixes)
    return frozenset(out)


def canonical_ip(value: object) -> str | None:
    """``value`` if it is an IP address written the way ``ipaddress`` writes it, without an IPv6
    scope; else None."""
    return _canonical_ip(value) if isinstance(value, str) else None


@lru_cache(maxsize=1 << 16)
def _canonical_ip(value: str) -> str | None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return None
    return value if str(ip) == value else None


def _ref(value: object) -> str | None:
    target = value.get(REFERENCE_URI) if isinstance(value, dict) else None
    return target if isinstance(target, str) else None


class _Reader:
    """Reads one tenant's tree, caching what endpoints share (their bridge domains and groups)."""

    def __init__(self, tree: Tree) -> None:
        self.mos = tree.mos
        self._rd: dict[str, str | None] = {}
        self._slaac: dict[str, tuple[ipaddress.IPv6Network, ...]] = {}
        self._classid: dict[str, int | None] = {}

    def _target(self, parent: str, relation: str) -> str | None:
        mo = self.mos.get(child(parent, relation))
        return _ref(mo.properties.get(Prop.TARGET)) if mo else None

    def rd(self, bd: str) -> str | None:
        if bd not in self._rd:
            self._rd[bd] = self._target(bd, Cls.GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC)
        return self._rd[bd]

    def slaac_prefixes(self, bd: str) -> tuple[ipaddress.IPv6Network, ...]:
        if bd not in self._slaac:
            subnets = self._target(bd, Cls.GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC)
            container = self.mos.get(subnets or "")
            found = []
            for uri in container.children if container else ():
                p = self.mos[uri].properties if uri in self.mos else {}
                if not p.get(Prop.IPV6_ADV_AUTONOMOUS_FLAG):
                    continue
                try:
                    net = ipaddress.ip_network(f"{p.get(Prop.ADDRESS)}/{p.get(Prop.PREFIX_LEN)}")
                except ValueError:
                    continue
                if isinstance(net, ipaddress.IPv6Network) and net.prefixlen <= 64:
                    found.append(net)
            self._slaac[bd] = tuple(found)
        return self._slaac[bd]

    def classid(self, group: str) -> int | None:
        if group not in self._classid:
            epg = self.mos.get(group)
            value = None
            for uri in epg.children if epg else ():
                ctx = self.mos.get(uri)
                if ctx is not None and ctx.subject == Cls.GBPE_INST_CONTEXT:
                    found = ctx.properties.get(Prop.CLASSID)
                    value = found if isinstance(found, int) and not isinstance(found, bool) else None
            self._classid[group] = value
        return self._classid[group]

    def endpoint(self, tenant: str, mo: MO) -> EndpointIntent | None:
        p = mo.properties
        name, mac = p.get(Prop.NAME), p.get(Prop.MAC)
        if not isinstance(name, str) or not isinstance(mac, str):
            return None
        bd, group = _ref(p.get(Prop.BRIDGE_DOMAIN)), _ref(p.get(Prop.EPG))
        listed = p.get(Prop.IP)
        ips = listed if isinstance(listed, list) else []
        slaac = SLAAC in ips
        addresses = {a for a in map(canonical_ip, ips) if a is not None}
        addresses |= derived_addresses(mac, self.slaac_prefixes(bd) if bd and slaac else ())
        host = p.get(Prop.HOST)
        return EndpointIntent(
            f"{tenant}/{name}",
            mac,
            bd,
            self.rd(bd) if bd else None,
            group,
            self.classid(group) if group else None,
            host if isinstance(host, str) else None,
            frozenset(addresses),
            slaac,
        )


# URI of a PfEndpoint -> (it, what else its entry reads: its bridge domain's routing domain and SLAAC
# prefixes, its group's class id, the entry): the tree builder keeps unchanged endpoints' objects,
# so an entry is read again only when its object or its context changed
IntentMemo = dict[str, tuple[MO, tuple[object, ...], "EndpointIntent | None"]]


def _entry(
    tenant: str, reader: _Reader, mo: MO, memo: IntentMemo | None
) -> tuple[tuple[MO, tuple[object, ...], EndpointIntent | None], EndpointIntent | None]:
    """The entry of the PfEndpoint ``mo`` (from ``memo`` when neither it nor its context changed)."""
    bd, group = _ref(mo.properties.get(Prop.BRIDGE_DOMAIN)), _ref(mo.properties.get(Prop.EPG))
    context = (
        reader.rd(bd) if bd else None,
        reader.slaac_prefixes(bd) if bd else (),
        reader.classid(group) if group else None,
    )
    hit = memo.get(mo.uri) if memo is not None else None
    if hit is not None and hit[0] is mo and hit[1] == context:
        return hit, hit[2]
    entry = reader.endpoint(tenant, mo)
    return (mo, context, entry), entry


def tenant_endpoints(tenant: str, tree: Tree, memo: IntentMemo | None = None) -> dict[str, EndpointIntent]:
    """Every endpoint of ``tenant``'s tree by ``TENANT/NAME`` (pure; run where the tree is built).
    ``memo`` (the caller's, one per tenant) is refilled with what this call read."""
    root = tree.mos.get(space(tenant))
    reader = _Reader(tree)
    out = {}
    fresh: IntentMemo = {}
    for uri in root.children if root else ():
        mo = tree.mos.get(uri)
        if mo is None or mo.subject != Cls.PF_ENDPOINT:
            continue
        fresh[uri], entry = _entry(tenant, reader, mo, memo)
        if entry is not None:
            out[entry.key] = entry
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    return out


class TenantIntent:
    """One tenant's entries kept up to date endpoint by endpoint, as the repository patches the
    tenant's tree (``tenant_model.py``): what an endpoint's entry reads of its bridge domain (routing
    domain, SLAAC prefixes) and of its group (class id) is kept by the bridge domain and group, so
    a change to one re-reads its endpoints only when what they read of it changed."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.memo: IntentMemo = {}
        self._contexts: dict[str, object] = {}  # bridge domain or group URI -> what entries read of it

    def full(self, tree: Tree, bds: Iterable[str], groups: Iterable[str]) -> dict[str, EndpointIntent]:
        """Every entry of ``tree`` (the tenant's, built whole), whose bridge domains and groups
        are ``bds`` and ``groups`` (names)."""
        out = tenant_endpoints(self.tenant, tree, self.memo)
        reader = _Reader(tree)
        self._contexts = {}
        for bd in bds:
            uri = uri_of(self.tenant, Cls.GBP_BRIDGE_DOMAIN, bd)
            self._contexts[uri] = (reader.rd(uri), reader.slaac_prefixes(uri))
        for group in groups:
            uri = uri_of(self.tenant, Cls.GBP_EP_GROUP, group)
            self._contexts[uri] = reader.classid(uri)
        return out

    def patch(
        self,
        tree: Tree,
        endpoints: Iterable[str],
        bds: Iterable[str],
        groups: Iterable[str],
        users: Callable[[str, str], Iterable[str]],
    ) -> dict[str, EndpointIntent | None]:
        """The entries of ``endpoints`` (names; None: gone), and of the endpoints (``users(what,
        name)``, ``what`` "bd" or "epg") of the bridge domains ``bds`` and groups ``groups`` whose
        MOs changed, when what their entries read of them changed too."""
        reader = _Reader(tree)
        names = set(endpoints)
        for what, cls, changed in (("bd", Cls.GBP_BRIDGE_DOMAIN, bds), ("epg", Cls.GBP_EP_GROUP, groups)):
            for name in changed:
                uri = uri_of(self.tenant, cls, name)
                now: object = (
                    (reader.rd(uri), reader.slaac_prefixes(uri)) if what == "bd" else reader.classid(uri)
                )
                if uri not in tree.mos:
                    self._contexts.pop(uri, None)
                elif uri in self._contexts and self._contexts[uri] == now:
                    continue  # its endpoints read nothing new
                else:
                    self._contexts[uri] = now
                names.update(users(what, name))
        out: dict[str, EndpointIntent | None] = {}
        for name in names:
            uri = endpoint_uri(self.tenant, name)
            mo = tree.mos.get(uri)
            entry = None
            if mo is None or mo.subject != Cls.PF_ENDPOINT:
                self.memo.pop(uri, None)
            else:
                self.memo[uri], entry = _entry(self.tenant, reader, mo, self.memo)
            out[f"{self.tenant}/{name}"] = entry
        return out


class IntentIndex:
    """Every tenant's endpoints, replaced tenant by tenant as the repository rebuilds them."""

    def __init__(self) -> None:
        self._tenants: dict[str, dict[str, EndpointIntent]] = {}
        self._by_uri: dict[str, EndpointIntent] = {}  # EprL2Ep / EprL3Ep URI -> its endpoint
        self.listeners: list[Callable[[Changed], None]] = []

    def by_uri(self, uri: str) -> EndpointIntent | None:
        """The endpoint whose ``EprL2Ep`` (bridge domain and MAC) or ``EprL3Ep`` (routing domain
        and address) has this URI: how a reference agent's declaration is matched, since its
        ``uuid`` is whatever its endpoint file says, not ``TENANT/NAME``."""
        return self._by_uri.get(uri)

    @staticmethod
    def _uris(entry: EndpointIntent) -> list[str]:
        out = [entry.l2_uri] if entry.l2_uri else []
        return out + [u for u in map(entry.l3_uri, sorted(entry.addresses)) if u]

    def get(self, key: str) -> EndpointIntent | None:
        """The endpoint ``TENANT/NAME`` of the intent, or None."""
        tenant, _, _ = key.partition("/")
        entries = self._tenants.get(tenant)
        return entries.get(key) if entries is not None else None

    def _reindex(self, was: EndpointIntent | None, now: EndpointIntent | None) -> None:
        for uri in self._uris(was) if was else ():
            if self._by_uri.get(uri) is was:
                del self._by_uri[uri]
        if now is not None:
            for uri in self._uris(now):
                self._by_uri[uri] = now

    def _tell(self, changed: Changed) -> None:
        if changed:
            for listener in self.listeners:
                listener(changed)

    def update(self, tenants: Mapping[str, Mapping[str, EndpointIntent]]) -> None:
        """Replace these tenants' entries (an empty mapping: the tenant is gone or has no
        endpoints) and tell the listeners which endpoints changed or went."""
        changed: Changed = []
        for tenant, fresh in tenants.items():
            old = self._tenants.get(tenant, {})
            gone: Changed = [(k, e, f) for k, e in old.items() if (f := fresh.get(k)) is not e and f != e]
            new: Changed = [(k, None, e) for k, e in fresh.items() if k not in old]
            for _, was, now in gone + new:
                self._reindex(was, now)
            changed += gone + new
            if fresh:
                self._tenants[tenant] = dict(fresh)
            else:
                self._tenants.pop(tenant, None)
        self._tell(changed)

    def patch(self, tenant: str, entries: Mapping[str, EndpointIntent | None]) -> None:
        """Set these entries of ``tenant`` (by ``TENANT/NAME``; None: the endpoint is gone) and
        tell the listeners which changed: the incremental ``update``."""
        changed: Changed = []
        held = self._tenants.setdefault(tenant, {})
        for key, now in entries.items():
            was = held.get(key)
            if was is now or was == now:
                continue
            self._reindex(was, now)
            if now is None:
                del held[key]
            else:
                held[key] = now
            changed.append((key, was, now))
        if not held:
            del self._tenants[tenant]
        self._tell(changed)


__all__ = [
    "EndpointIntent",
    "IntentIndex",
    "IntentMemo",
    "TenantIntent",
    "canonical_ip",
    "derived_addresses",
    "tenant_endpoints",
]
