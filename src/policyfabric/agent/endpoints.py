"""Endpoints and the endpoint registry: what an agent declares, and the endpoints it renders.

An agent knows a local endpoint by ``TENANT/NAME`` (OVSDB ``iface-id``). It
resolves the endpoint's intent (``PfEndpoint``: MAC, addresses, EPG, bridge
domain) and then declares it to the endpoint registry as one ``EprL2Ep``
(named by bridge domain and MAC) and one ``EprL3Ep`` per address (named by
routing domain and IP), the libopflex layout.

The same objects come back as records of the view: ``local_endpoint`` reads a
plugged endpoint's ``PfEndpoint``, ``remote_endpoints`` the registry entries
other hosts declared. Both parse every value (``values.py``) and leave out,
naming it in ``problems``, an endpoint with one that does not parse, as the
rest of the reader does (``reader.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    ranged,
    refs,
    refuse,
    uri,
)
from policyfabric.agent.values import ref as read_ref
from policyfabric.agent.view import Endpoint, Group, IpAddress, Mac
from policyfabric.model.types import is_interface
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
    return value[REFERENCE_URI] if isinstance(value, dict) else None


def bd_members_prefix(bd_uri: str) -> str:
    """The registry URI prefix of every L2 endpoint on a bridge domain."""
    return child(EPR_L2, Cls.EPR_L2_EP, bd_uri)


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
    if not isinstance(bd, dict) or not isinstance(mac, str):
        return None
    bd_uri = bd[REFERENCE_URI]
    epg_ref = props.get(Prop.EPG)
    common: dict[str, Any] = {Prop.UUID: f"{tenant}/{name}", Prop.MAC: mac}
    if isinstance(epg_ref, dict):  # group and context are URIs (epr/Context), not references
        common[Prop.GROUP] = epg_ref[REFERENCE_URI]
    l2_props = {**common, Prop.CONTEXT: bd_uri}
    if interface:
        l2_props[Prop.INTERFACE_NAME] = interface
    l2_uri = child(EPR_L2, Cls.EPR_L2_EP, bd_uri, mac)
    ips = [ip for ip in props.get(Prop.IP, []) if ip != "slaac"]
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
        for ip in props.get(Prop.IP, []):
            if ip != "slaac":
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


# PfEndpoint URI -> (the object, the interface, what was parsed from them): the client replaces an
# object when it changes and never mutates one, so a reconcile parses only the endpoints whose
# object changed (at 5,000 endpoints, parsing every one each reconcile was a large share of it)
_parsed: dict[
    str, tuple[MO, str | None, tuple[str, Mac, str | None, tuple[IpAddress, ...], tuple[str, ...]]]
] = {}
MAX_PARSED = 200_000


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
    or if a value does not parse (added to ``problems``), or its group was left out for that."""
    mo = policy.get(uri)
    if mo is None:
        return None
    hit = _parsed.get(uri)
    if hit is not None and hit[0] is mo and hit[1] == interface:
        bd, mac, epg, ips, sgs = hit[2]
    else:
        props = mo.properties
        try:
            found = read_ref(props.get(Prop.BRIDGE_DOMAIN), Prop.BRIDGE_DOMAIN)
            if found is None or Prop.MAC not in props:
                return None
            bd = found
            mac = get(props, Prop.MAC, parse_mac)
            epg = read_ref(props.get(Prop.EPG), Prop.EPG)
            ips = get(props, Prop.IP, addresses)
            sgs = tuple(sorted(get(props, Prop.SECURITY_GROUP, refs)))
            if interface is not None and not is_interface(interface):
                raise Refused("interface", interface, "not an interface name")
        except Refused as bad:
            refuse(problems, uri, bad)  # (not remembered: each view must name it again)
            return None
        if len(_parsed) > MAX_PARSED:
            _parsed.clear()
        _parsed[uri] = (mo, interface, (bd, mac, epg, ips, sgs))
    if epg is not None and problems is not None and any(p.uri.startswith(epg) for p in problems):
        return None  # its group was refused: no policy is better than the wrong one
    group = groups.get(epg or "")
    classid = group.classid if group else 0
    return Endpoint(key, mac, ips, bd, classid, ofport=ofport, security_groups=sgs, interface=interface)


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


# Registry entries read by the last call, by identity: the client replaces an entry when it changes
# and never mutates one, so an entry seen before reads the same (the memo holds the entry itself,
# so its id cannot be reused while remembered). A reconcile reads every entry again: 10,000 remote
# endpoints took ~40 ms a time to parse without this, ~3 ms with it.
_remembered: dict[int, tuple[MO, tuple[MO | None, ...], Endpoint | Refused | None]] = {}


def remote_endpoints(
    registry: Mapping[str, MO], own_vtep: str, local_keys: set[str], problems: Problems = None
) -> tuple[Endpoint, ...]:
    """Other hosts' L2 endpoints, from the bridge-domain membership the agent resolved; one with a
    value that does not parse is left out (added to ``problems``)."""
    global _remembered
    out = []
    seen: dict[int, tuple[MO, tuple[MO | None, ...], Endpoint | Refused | None]] = {}
    for mo in registry.values():
        if mo.subject != Cls.EPR_L2_EP:
            continue
        last = _remembered.get(id(mo))
        # its children may arrive in a later message than the entry itself (a large answer comes
        # in parts): the entry and its children, by identity, are what the memo is keyed on
        kids = tuple(registry.get(c) for c in mo.children)
        same = last is not None and last[0] is mo and len(last[1]) == len(kids)
        if same and last is not None and all(a is b for a, b in zip(last[1], kids, strict=True)):
            read = last[2]
        else:
            read = _remote(mo, registry)
        seen[id(mo)] = (mo, kids, read)
        if isinstance(read, Refused):
            refuse(problems, mo.uri, read)
        elif read is not None and read.vtep != own_vtep and read.key not in local_keys:
            out.append(read)
    _remembered = seen
    return tuple(sorted(out, key=lambda e: (e.bd, e.mac)))
