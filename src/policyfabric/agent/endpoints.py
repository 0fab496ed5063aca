"""Endpoints and the endpoint registry: what an agent declares, and the endpoints it renders.

An agent knows a local endpoint by ``TENANT/NAME`` (OVSDB ``iface-id``). It
resolves the endpoint's intent (``PfEndpoint``: MAC, addresses, EPG, bridge
domain) and then declares it to the endpoint registry as one ``EprL2Ep``
(named by bridge domain and MAC) and one ``EprL3Ep`` per address (named by
routing domain and IP), the libopflex layout.

An endpoint whose intent lists ``slaac`` holds, and declares, the address it
makes itself from router advertisements: the EUI-64 address of its MAC in each
SLAAC subnet of its bridge domain (``slaac_addresses``; the subnets the policy
tree marks ``ipv6AdvAutonomousFlag``, the ones the registry's intent index
accepts that address in). It is a pure function of the MAC and the prefix, so
the agent computes it as the authority does (``model.addressing``) and every
renderer sees it like a declared address: port security, routing, member sets.

The same objects come back as records of the view: ``local_endpoint`` reads a
plugged endpoint's ``PfEndpoint``, ``remote_endpoints`` the registry entries
other hosts declared. Both parse every value (``values.py``) and leave out,
naming it in ``problems``, an endpoint with one that does not parse, as the
rest of the reader does (``reader.py``).
"""

from __future__ import annotations

import bisect
import ipaddress
import operator
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policyfabric.agent.incremental import DependencyIndex, problem_order, same
from policyfabric.agent.values import (
    Problems,
    Refused,
    addresses,
    get,
    optional,
    parse_ip,
    parse_ipv4,
    parse_key,
    parse_mac,
    parse_prefix,
    ranged,
    refs,
    refuse,
    uri,
)
from policyfabric.agent.values import ref as read_ref
from policyfabric.agent.view import Endpoint, Group, Invalid, IpAddress, Mac, Prefix
from policyfabric.model.addressing import EUI64_PREFIXLEN, eui64_address
from policyfabric.model.objects import MAX_ALLOWED_ADDRESS_PAIRS
from policyfabric.model.types import SLAAC, is_interface
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri
from policyfabric.opflex.mo import MO, REFERENCE_URI
from policyfabric.opflex.uri import EPR_L2, EPR_L3, child


@dataclass(frozen=True)
class Declaration:
    l2: MO
    l3: list[MO]
    bridge_domain: str  # URI
    l2_children: tuple[MO, ...] = ()  # its addresses (EprL3Net) and its tunnel (PfEpTunnel)

    @property
    def all(self) -> list[MO]:
        return [self.l2, *self.l2_children, *self.l3]

    @property
    def requests(self) -> list[list[MO]]:
        """The declaration as separate requests: the L2 endpoint with its children, each L3 alone."""
        return [[self.l2, *self.l2_children], *([m] for m in self.l3)]


def target(policy: Mapping[str, MO], uri: str) -> str | None:
    """The target URI of a single-valued relation object."""
    mo = policy.get(uri)
    value = mo.properties.get(Prop.TARGET) if mo else None
    found = value.get(REFERENCE_URI) if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


def bd_members_prefix(bd_uri: str) -> str:
    """The registry URI prefix of every L2 endpoint on a bridge domain."""
    return child(EPR_L2, Cls.EPR_L2_EP, bd_uri)


def slaac_prefixes(subnets: Iterable[MO]) -> tuple[Prefix, ...]:
    """The SLAAC prefixes among a bridge domain's subnets (``GbpSubnet`` objects): the IPv6 /64s
    the policy tree marks autonomous (``ipv6AdvAutonomousFlag``), sorted. A subnet whose address
    does not read is no SLAAC subnet (the reader refuses it elsewhere)."""
    out = set()
    for subnet in subnets:
        p = subnet.properties
        if not p.get(Prop.IPV6_ADV_AUTONOMOUS_FLAG):
            continue
        try:
            net = ipaddress.ip_network(f"{p.get(Prop.ADDRESS)}/{p.get(Prop.PREFIX_LEN)}")
        except ValueError:
            continue
        if net.version == 6 and net.prefixlen == EUI64_PREFIXLEN:
            out.add(Prefix(str(net)))
    return tuple(sorted(out))


def slaac_addresses(mac: str, prefixes: Iterable[str]) -> tuple[IpAddress, ...]:
    """The addresses an endpoint with ``mac`` makes itself in ``prefixes`` (EUI-64)."""
    return tuple(IpAddress(str(eui64_address(mac, ipaddress.IPv6Network(p)))) for p in prefixes)


def subnet_uris(policy: Mapping[str, MO], bd_uri: str) -> list[str]:
    """The URIs of bridge domain ``bd_uri``'s subnets' container (the target of its
    ``GbpForwardingBehavioralGroupToSubnetsRSrc``) and of the subnets in it the cache holds: what
    its SLAAC prefixes are read from (the declarer watches them)."""
    relation = child(bd_uri, Cls.GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC)
    container = target(policy, relation)
    if container is None:
        return []
    held = policy.get(container)
    return [container, *(held.children if held is not None else ())]


def bd_subnets(policy: Mapping[str, MO], bd_uri: str) -> list[MO]:
    """The ``GbpSubnet`` objects of bridge domain ``bd_uri`` the cache holds."""
    found = (policy.get(u) for u in subnet_uris(policy, bd_uri)[1:])
    return [mo for mo in found if mo is not None and mo.subject == Cls.GBP_SUBNET]


def _with_slaac(ips: Iterable[str], mac: str, prefixes: Iterable[str]) -> list[str]:
    """``ips`` (an intent's list) with each ``slaac`` entry replaced by its addresses, no repeats."""
    out: list[str] = []
    for ip in ips:
        for found in slaac_addresses(mac, prefixes) if ip == SLAAC else (ip,):
            if found not in out:
                out.append(found)
    return out


def declaration(
    policy: Mapping[str, MO],
    tenant: str,
    name: str,
    interface: str | None = None,
    tunnel_ip: str | None = None,
) -> Declaration | None:
    """The registry objects for a local endpoint, or None until its policy is resolved.

    The L2 endpoint is libopflex's (``uuid``, ``mac``, ``group``, ``context``, ``interfaceName``),
    its addresses ``EprL3Net`` children as the model lists them, and, ours beyond the model, a
    ``PfEpTunnel`` child with ``tunnelIp`` (where other hosts send its traffic) and ``classid``
    (its group's class id, so a remote host can apply group policy without resolving the group).
    A peer that does not know ``PfEpTunnel`` cannot reach the endpoint: it fails closed."""
    ep = policy.get(endpoint_uri(tenant, name))
    if ep is None:
        return None
    props = ep.properties
    bd = props.get(Prop.BRIDGE_DOMAIN)
    mac = props.get(Prop.MAC)
    epg_ref = props.get(Prop.EPG)
    raw_ips = props.get(Prop.IP, [])
    if (
        not isinstance(bd, dict)
        or not isinstance(bd.get(REFERENCE_URI), str)
        or not isinstance(mac, str)
        or (isinstance(epg_ref, dict) and not isinstance(epg_ref.get(REFERENCE_URI), str))
        or not isinstance(raw_ips, list)
        or not all(isinstance(ip, str) for ip in raw_ips)
    ):
        return None  # not what an authority writes (the reader refuses it: invalid-policy)
    bd_uri = bd[REFERENCE_URI]
    common: dict[str, Any] = {Prop.UUID: f"{tenant}/{name}", Prop.MAC: mac}
    if isinstance(epg_ref, dict):  # group and context are URIs (epr/Context), not references
        common[Prop.GROUP] = epg_ref[REFERENCE_URI]
    l2_props = {**common, Prop.CONTEXT: bd_uri}
    if interface:
        l2_props[Prop.INTERFACE_NAME] = interface
    l2_uri = child(EPR_L2, Cls.EPR_L2_EP, bd_uri, mac)
    prefixes = slaac_prefixes(bd_subnets(policy, bd_uri)) if SLAAC in raw_ips else ()
    ips = _with_slaac(raw_ips, mac, prefixes)
    kids = [
        MO(
            Cls.EPR_L3_NET,
            child(l2_uri, Cls.EPR_L3_NET, ip),
            {Prop.IP: ip},
            [],
            Cls.EPR_L2_EP,
            l2_uri,
            Cls.EPR_L3_NET,
        )
        for ip in ips
    ]
    tunnel: dict[str, Any] = {}
    if tunnel_ip:
        tunnel[Prop.TUNNEL_IP] = tunnel_ip
    epg = policy.get(epg_ref[REFERENCE_URI]) if isinstance(epg_ref, dict) else None
    if epg is not None:
        for uri in epg.children:
            ctx = policy.get(uri)
            if ctx is not None and ctx.subject == Cls.GBPE_INST_CONTEXT:
                tunnel[Prop.CLASSID] = ctx.properties.get(Prop.CLASSID, 0)
    if tunnel:
        kids.append(
            MO(
                Cls.PF_EP_TUNNEL,
                child(l2_uri, Cls.PF_EP_TUNNEL),
                tunnel,
                [],
                Cls.EPR_L2_EP,
                l2_uri,
                Cls.PF_EP_TUNNEL,
            )
        )
    kids.sort(key=lambda m: m.uri)
    l2 = MO(
        Cls.EPR_L2_EP, l2_uri, l2_props, [k.uri for k in kids], Cls.EPR_L2_UNIVERSE, EPR_L2, Cls.EPR_L2_EP
    )
    rd_uri = target(policy, child(bd_uri, Cls.GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC))
    l3 = []
    if rd_uri is not None:
        for ip in ips:
            l3.append(
                MO(
                    Cls.EPR_L3_EP,
                    child(EPR_L3, Cls.EPR_L3_EP, rd_uri, ip),
                    {**common, Prop.IP: ip, Prop.CONTEXT: rd_uri},
                    [],
                    Cls.EPR_L3_UNIVERSE,
                    EPR_L3,
                    Cls.EPR_L3_EP,
                )
            )
    return Declaration(l2, l3, bd_uri, tuple(kids))


@dataclass(frozen=True)
class LocalIntent:
    """What a plugged endpoint's ``PfEndpoint`` says, parsed."""

    bd: str
    mac: Mac
    epg: str | None
    ips: tuple[IpAddress, ...]  # the declared ones
    security_groups: tuple[str, ...]
    slaac: bool = False  # it lists ``slaac``: it also holds its EUI-64 address in each SLAAC subnet
    pairs: tuple[tuple[Prefix, Mac], ...] = ()  # its allowed address pairs


def parse_pairs(value: object, own: Mac) -> tuple[tuple[Prefix, Mac], ...]:
    """``PfEndpoint``'s ``allowedAddressPairs``: a list of "PREFIX MAC" (or "PREFIX": the endpoint's
    own MAC ``own``)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("not a list of 'PREFIX MAC' strings")
    if len(value) > MAX_ALLOWED_ADDRESS_PAIRS:  # a value from the wire: the model's bound holds here too
        raise ValueError(f"{len(value)} pairs, more than {MAX_ALLOWED_ADDRESS_PAIRS}")
    out = []
    for text in value:
        parts = text.split(" ")
        if len(parts) not in (1, 2):
            raise ValueError(f"{text[:80]!r} is not 'PREFIX MAC'")
        out.append((parse_prefix(parts[0]), parse_mac(parts[1]) if len(parts) == 2 else own))
    return tuple(dict.fromkeys(out))


def read_local(mo: MO | None, uri: str, interface: str | None) -> LocalIntent | Invalid | None:
    """A plugged endpoint's ``PfEndpoint`` (``mo``, at ``uri``) on ``interface``: its intent;
    None until it and its bridge domain are resolved; an ``Invalid`` if a value does not parse."""
    if mo is None:
        return None
    props = mo.properties
    try:
        bd = read_ref(props.get(Prop.BRIDGE_DOMAIN), Prop.BRIDGE_DOMAIN)
        if bd is None or Prop.MAC not in props:
            return None
        mac = get(props, Prop.MAC, parse_mac)
        epg = read_ref(props.get(Prop.EPG), Prop.EPG)
        ips = get(props, Prop.IP, addresses)
        slaac = SLAAC in (props.get(Prop.IP) or ())  # (a list, if any: ``addresses`` took it)
        sgs = tuple(sorted(get(props, Prop.SECURITY_GROUP, refs)))
        pairs = get(props, Prop.ALLOWED_ADDRESS_PAIRS, lambda v: parse_pairs(v, mac))
        if interface is not None and not is_interface(interface):
            raise Refused("interface", interface, "not an interface name")
    except Refused as bad:
        found: list[Invalid] = []
        refuse(found, uri, bad)
        return found[0]
    return LocalIntent(bd, mac, epg, ips, sgs, slaac, pairs)


def local_record(
    intent: LocalIntent,
    key: str,
    ofport: int,
    interface: str | None,
    group: Group | None,
    slaac: Iterable[str] = (),
) -> Endpoint:
    """The local endpoint ``key`` on ``ofport``, in ``group`` (its EPG's record; None: none);
    ``slaac``: the SLAAC prefixes of its bridge domain (its record's ``slaac``), where it holds
    its EUI-64 address too if its intent lists ``slaac``."""
    ips = intent.ips
    if intent.slaac:
        ips = tuple(dict.fromkeys((*ips, *slaac_addresses(intent.mac, slaac))))
    return Endpoint(
        key,
        intent.mac,
        ips,
        intent.bd,
        group.classid if group else 0,
        ofport=ofport,
        security_groups=intent.security_groups,
        interface=interface,
        allowed_pairs=intent.pairs,
    )


def local_endpoint(
    policy: Mapping[str, MO],
    groups: Mapping[str, Group],
    key: str,
    uri: str,
    ofport: int,
    interface: str | None = None,
    problems: Problems = None,
) -> Endpoint | None:
    """A local endpoint from its ``PfEndpoint``; None until that and its bridge domain are resolved,
    or if a value does not parse (added to ``problems``), or if something of its group was refused
    (in ``problems``). The agent keeps these up to date with the same two steps, ``read_local``
    and ``local_record`` (``agent/viewstate.py``)."""
    intent = read_local(policy.get(uri), uri, interface)
    if isinstance(intent, Invalid):
        if problems is not None:
            problems.append(intent)
        return None
    if intent is None:
        return None
    epg = intent.epg
    if epg is not None and problems is not None and any(p.uri.startswith(epg) for p in problems):
        return None  # its group was refused: no policy is better than the wrong one
    prefixes = slaac_prefixes(bd_subnets(policy, intent.bd)) if intent.slaac else ()
    return local_record(intent, key, ofport, interface, groups.get(epg or ""), prefixes)


CLASSID = ranged(0, 0xFFFF)  # class ids travel in 16 bits (a register half, a Geneve option)


def _remote(mo: MO, registry: Mapping[str, MO]) -> Endpoint | Refused | None:
    """One registry entry as an endpoint (None: not a reachable L2 endpoint; Refused: refused):
    its addresses from its ``EprL3Net`` children, its host's tunnel and its class id from its
    ``PfEpTunnel``."""
    p = mo.properties
    kids = [registry[c] for c in mo.children if c in registry]
    tunnel = next((k.properties for k in kids if k.subject == Cls.PF_EP_TUNNEL), None)
    if (
        mo.subject != Cls.EPR_L2_EP
        or tunnel is None
        or tunnel.get(Prop.TUNNEL_IP) is None
        or p.get(Prop.CONTEXT) is None
    ):
        return None  # an address binding, or declared by an agent without a tunnel
    try:
        ips = tuple(get(k.properties, Prop.IP, parse_ip) for k in kids if k.subject == Cls.EPR_L3_NET)
        return Endpoint(
            get(p, Prop.UUID, parse_key),
            get(p, Prop.MAC, parse_mac),
            ips,
            get(p, Prop.CONTEXT, lambda v: uri(v, Prop.CONTEXT)),
            optional(tunnel, Prop.CLASSID, CLASSID, 0),
            vtep=get(tunnel, Prop.TUNNEL_IP, parse_ipv4),
        )
    except Refused as bad:
        return bad


def _order(ep: Endpoint, uri: str) -> tuple[str, str, str]:
    return (ep.bd, ep.mac, uri)


class RemoteEndpoints:
    """Other hosts' L2 endpoints in the registry, kept up to date from the URIs that changed: an
    entry is read again when it or one of its children changed (a reverse index from each child's
    URI, present or not yet: children may arrive in a later message than their entry), and looked
    at again when the local endpoints gained or lost its key (a local one is not also remote).
    ``endpoints`` is sorted by bridge domain, MAC (and entry URI), kept so by bisection."""

    def __init__(self, own_vtep: str, donor: RemoteEndpoints | None = None) -> None:
        """``donor``: the state this one replaces (a full build's), whose endpoints this one's first
        update reuses where they read the same."""
        self.own_vtep, self._donor = own_vtep, donor
        self.endpoints: tuple[Endpoint, ...] = ()
        self.problems: tuple[Invalid, ...] = ()
        self.reads = 0  # entries read by the last update (what it cost)
        self._read: dict[str, Endpoint | Refused | None] = {}  # L2 entry URI → what it reads as
        self._inputs: dict[str, tuple[MO, tuple[MO | None, ...]]] = {}  # what each read: it, its children
        self._reads: DependencyIndex[str] = DependencyIndex()
        self._by_key: DependencyIndex[str] = DependencyIndex()  # endpoint key → the entries read as it
        self._included: dict[str, Endpoint] = {}
        self._order: list[tuple[str, str, str]] = []
        self._sorted: list[Endpoint] = []
        self._refused: dict[str, Invalid] = {}

    def update(
        self,
        registry: Mapping[str, MO],
        changed: set[str] | None,
        local_keys: Container[str],
        keys_changed: Iterable[str] = (),
    ) -> bool:
        """Bring ``endpoints`` up to date (``changed`` None: read every entry again); whether it or
        ``problems`` changed. ``local_keys``: the local endpoints' keys, of which ``keys_changed``
        came or went since the last update."""
        donor, self._donor = self._donor, None
        if changed is None:
            targets = set(self._read) | {u for u, mo in registry.items() if mo.subject == Cls.EPR_L2_EP}
        else:
            targets = self._targets(registry, changed)
        moved = problems = False
        self.reads = 0
        bulk = changed is None
        for entry in targets:
            old = self._read.get(entry)
            mo = registry.get(entry)
            if mo is None or mo.subject != Cls.EPR_L2_EP:
                self._reads.drop(entry)
                new: Endpoint | Refused | None = None
                self._read.pop(entry, None)
                self._inputs.pop(entry, None)
            else:
                self._reads.set_reads(entry, (entry, *mo.children))
                kids = tuple(map(registry.get, mo.children))
                kept = donor._inputs.get(entry) if donor is not None and entry not in self._inputs else None
                self._inputs[entry] = (mo, kids)
                if donor is not None and kept is not None and kept[0] is mo and _identical(kept[1], kids):
                    new = donor._read[entry]  # the same objects: it reads the same
                else:
                    self.reads += 1
                    new = _remote(mo, registry)
                    prior = old if old is not None or donor is None else donor._read.get(entry)
                    if isinstance(new, Endpoint) and isinstance(prior, Endpoint):
                        new = same(prior, new)
                self._read[entry] = new
            if new is old or (isinstance(new, Refused) and isinstance(old, Refused) and _same(old, new)):
                continue  # reads as it did
            if isinstance(old, Endpoint):
                self._by_key.discard(entry, old.key)
            if isinstance(new, Endpoint):
                self._by_key.add(entry, new.key)
            problems |= self._set_refused(entry, new)
            moved |= self._include(entry, new, local_keys, bulk)
        for key in keys_changed:
            for entry in self._by_key.users_of(key):
                moved |= self._include(entry, self._read.get(entry), local_keys, bulk)
        if bulk:  # sorted once, not kept sorted one by one
            self._order = sorted(_order(ep, entry) for entry, ep in self._included.items())
            self._sorted = [self._included[entry] for _, _, entry in self._order]
        if moved:
            self.endpoints = same(donor.endpoints if donor else self.endpoints, tuple(self._sorted))
        if problems:
            self.problems = tuple(sorted(self._refused.values(), key=problem_order))
        return moved or problems

    def stale(self, registry: Mapping[str, MO]) -> set[str]:
        """The URIs of entries and children that are no longer the objects read, and L2 entries
        not read at all (the safety net's check: by identity, no reading)."""
        out = set()
        get = registry.get
        for entry, (mo, kids) in self._inputs.items():
            if get(entry) is not mo:
                out.add(entry)
            if not all(map(operator.is_, map(get, mo.children), kids)):
                out.update(c for c, kid in zip(mo.children, kids, strict=True) if get(c) is not kid)
        if len(self._inputs) < len(registry):  # L2 entries not read?
            l2 = Cls.EPR_L2_EP
            out.update(u for u, mo in registry.items() if mo.subject == l2 and u not in self._inputs)
        return out

    def _targets(self, registry: Mapping[str, MO], changed: set[str]) -> set[str]:
        targets = self._reads.users(changed)
        for at in changed:
            mo = registry.get(at)
            if mo is not None and mo.subject == Cls.EPR_L2_EP:
                targets.add(at)
        return targets

    def _set_refused(self, entry: str, read: Endpoint | Refused | None) -> bool:
        if isinstance(read, Refused):
            found: list[Invalid] = []
            refuse(found, entry, read)
            if self._refused.get(entry) == found[0]:
                return False
            self._refused[entry] = found[0]
            return True
        return self._refused.pop(entry, None) is not None

    def _include(
        self, entry: str, read: Endpoint | Refused | None, local_keys: Container[str], bulk: bool
    ) -> bool:
        """Put ``entry`` in or out of ``endpoints`` as ``read`` says; whether that changed them
        (``bulk``: in or out of ``_included`` only, sorted after)."""
        want = (
            read
            if isinstance(read, Endpoint) and read.vtep != self.own_vtep and read.key not in local_keys
            else None
        )
        have = self._included.get(entry)
        if have is want:
            return False
        if have is not None:
            del self._included[entry]
            if not bulk:
                at = bisect.bisect_left(self._order, _order(have, entry))
                del self._order[at], self._sorted[at]
        if want is not None:
            self._included[entry] = want
            if not bulk:
                order = _order(want, entry)
                at = bisect.bisect_left(self._order, order)
                self._order.insert(at, order)
                self._sorted.insert(at, want)
        return True


def _identical(a: tuple[MO | None, ...], b: tuple[MO | None, ...]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))


def _same(a: Refused, b: Refused) -> bool:
    return (a.field, a.value, str(a)) == (b.field, b.value, str(b))


def remote_endpoints(
    registry: Mapping[str, MO], own_vtep: str, local_keys: set[str], problems: Problems = None
) -> tuple[Endpoint, ...]:
    """Other hosts' L2 endpoints, from the bridge-domain membership the agent resolved; one with a
    value that does not parse is left out (added to ``problems``). A full build of what the agent
    keeps up to date (``RemoteEndpoints``)."""
    state = RemoteEndpoints(own_vtep)
    state.update(registry, None, local_keys)
    if problems is not None:
        problems.extend(state.problems)
    return state.endpoints
