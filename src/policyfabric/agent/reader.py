"""The agent's cache read as the view's records: the resolved policy (the tenant subtrees) and
the endpoint registry, turned into the frozen records of ``agent/view.py``.

The one place on the agent's side that reads managed objects (with ``endpoints.py``, which reads
the endpoints: a plugged one's ``PfEndpoint``, the registry's entries; re-exported here): what a
class or property means is decided here, by the names of ``opflex/gbp.py`` that the authority's
writer also uses, and nothing after this (the renderers) sees an MO.

It is also the agent's trust boundary. Every value a renderer will write into flow or rule text
comes off the wire as JSON: an address, a MAC, a number or a keyword is parsed into its type here
(``values.parse_*``: canonical strings, ranged ints, one of a few keywords), and URIs (the records'
identities, which renderers use as keys and hash) must be well-formed escaped URIs. A value that
does not parse is refused, never passed on or guessed at: the object holding it is left out of the
view (an endpoint, a leg, a network, a floating IP, a security group rule or member; a contract
or a group as a whole, since leaving out one of its rules, possibly a deny, could open what the
intent closes), and an ``Invalid`` names it, for the agent to log once and report as the fault
``invalid-policy`` (``InvalidPolicy``). A property that is absent reads as it always did (not
resolved yet, or a default).

Each object of a ``READ`` class is read on its own (``read_object``, ``read_router``,
``read_member``), from the cache looked up by URI only, never iterated: the URIs a record looked
up are what it depends on, which is how the agent keeps its view up to date from the changes the
client reports without reading the whole cache again (``agent/policystate.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from policyfabric.agent.endpoints import local_endpoint, remote_endpoints, slaac_prefixes
from policyfabric.agent.values import (
    URI,
    Problems,
    Refused,
    choice,
    get,
    optional,
    parse_ip,
    parse_ipv4,
    parse_key,
    parse_prefix,
    ranged,
    ref,
    refuse,
)
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    DhcpSubnet,
    ExternalNet,
    FloatingIp,
    Group,
    Invalid,
    IpAddress,
    Ipv4Address,
    Ipv6Subnet,
    Network,
    Prefix,
    Router,
    RouterGateway,
    RouterInterface,
    Rule,
    SecurityGroup,
    SgRule,
    router_identity,
)
from policyfabric.opflex.gbp import ETHER_T_NAMES, NO_MEMBER, Cls, Prop
from policyfabric.opflex.mo import MO
from policyfabric.opflex.uri import child

T = TypeVar("T")
READ = frozenset(  # the classes whose objects become records, by their URI
    {
        Cls.PF_ROUTER,
        Cls.PF_EXTERNAL_NETWORK,
        Cls.PF_FLOATING_IP,
        Cls.GBP_BRIDGE_DOMAIN,
        Cls.GBP_EP_GROUP,
        Cls.GBP_CONTRACT,
        Cls.GBP_SEC_GROUP,
    }
)
OBJECTS = READ - {Cls.PF_ROUTER}  # read on their own (``read_object``); routers read after them


def _children(policy: Mapping[str, MO], mo: MO, subject: str) -> list[MO]:
    return [policy[c] for c in mo.children if c in policy and policy[c].subject == subject]


class _At(Exception):
    """A ``Refused`` value, and the URI of the object that holds it (a child or a related object of
    the one being read, which is left out with it)."""

    def __init__(self, uri: str, bad: Refused) -> None:
        super().__init__(uri)
        self.uri, self.bad = uri, bad


def _of(mo: MO, read: Callable[[Mapping[str, Any]], T]) -> T:
    """``read(mo.properties)``; a value that does not parse is refused at ``mo``'s URI."""
    try:
        return read(mo.properties)
    except Refused as bad:
        raise _At(mo.uri, bad) from None


def _encap(policy: Mapping[str, MO], mo: MO, prop: str, high: int) -> int:
    for ctx in _children(policy, mo, Cls.GBPE_INST_CONTEXT):
        if prop in ctx.properties:
            return _of(ctx, lambda p: get(p, prop, ranged(0, high)))
    return 0


def _target(policy: Mapping[str, MO], uri: str, relation: str) -> str | None:
    """The target of ``uri``'s single ``relation`` child (None: not resolved)."""
    rel = policy.get(child(uri, relation))
    return _of(rel, lambda p: ref(p.get(Prop.TARGET), Prop.TARGET)) if rel is not None else None


def _targets(policy: Mapping[str, MO], mo: MO, subject: str) -> tuple[str, ...]:
    out = []
    for rel in _children(policy, mo, subject):
        value = _of(rel, lambda p: ref(p.get(Prop.TARGET), Prop.TARGET))
        if value is not None:
            out.append(value)
    return tuple(sorted(out))


def _related(policy: Mapping[str, MO], mo: MO, relation: str) -> list[MO]:
    """The cached objects ``mo``'s ``relation`` children point to."""
    return [policy[u] for u in _targets(policy, mo, relation) if u in policy]


def _classifier(c: Mapping[str, Any]) -> dict[str, Any]:
    ports = None
    if Prop.D_FROM_PORT in c:
        low = get(c, Prop.D_FROM_PORT, ranged(0, 0xFFFF))
        ports = (low, optional(c, Prop.D_TO_PORT, ranged(low, 0xFFFF), low))
    return {
        "ethertype": ETHER_T_NAMES.get(optional(c, Prop.ETHER_T, choice(*ETHER_T_NAMES, "unspecified"), "")),
        "protocol": optional(c, Prop.PROT, ranged(0, 0xFF), None),
        "ports": ports,
    }


def _icmp(c: Mapping[str, Any]) -> dict[str, Any]:
    """A security group rule's ICMP type and code (the classifier's ``icmpType``, ``icmpCode``)."""
    return {
        "icmp_type": optional(c, Prop.ICMP_TYPE, ranged(0, 0xFF), None),
        "icmp_code": optional(c, Prop.ICMP_CODE, ranged(0, 0xFF), None),
    }


def _rule_mos(policy: Mapping[str, MO], container: MO, subject: str, rule_subject: str) -> list[MO]:
    return [r for s in _children(policy, container, subject) for r in _children(policy, s, rule_subject)]


def _rule_fields(policy: Mapping[str, MO], rule: MO, icmp: bool = False) -> list[dict[str, Any]]:
    """The fields of a Rule, once per classifier of ``rule``; raises ``_At`` (the rule's or the
    classifier's URI) on a value that does not parse."""
    try:
        props = rule.properties
        common = {
            "order": optional(props, Prop.ORDER, ranged(0, 0xFFFF), 0),
            "direction": optional(props, Prop.DIRECTION, choice("in", "out", "bidirectional"), "in"),
            "log": any(  # a log action beside its allow/deny: its verdicts are logged
                a.subject == Cls.GBP_LOG_ACTION for a in _related(policy, rule, Cls.GBP_RULE_TO_ACTION_RSRC)
            ),
        }
        classifiers = _related(policy, rule, Cls.GBP_RULE_TO_CLASSIFIER_RSRC)
    except Refused as bad:
        raise _At(rule.uri, bad) from None
    out = []
    for clf in classifiers:
        try:
            out.append({**common, **_classifier(clf.properties), **(_icmp(clf.properties) if icmp else {})})
        except Refused as bad:
            raise _At(clf.uri, bad) from None
    return out


def _rules(policy: Mapping[str, MO], contract: MO) -> tuple[Rule, ...]:
    """A contract's rules; raises ``_At`` if any does not parse (the contract is left out whole:
    without one of its rules, maybe a deny, it could allow what the intent does not)."""
    rules = []
    name = contract.properties.get(Prop.NAME, "")
    for rule in _rule_mos(policy, contract, Cls.GBP_SUBJECT, Cls.GBP_RULE):
        try:
            actions = _related(policy, rule, Cls.GBP_RULE_TO_ACTION_RSRC)
            allow = all(
                _of(a, lambda p: optional(p, Prop.ALLOW, ranged(0, 1), 1)) == 1
                for a in actions
                if a.subject == Cls.GBP_ALLOW_DENY_ACTION
            )
        except Refused as bad:
            raise _At(rule.uri, bad) from None
        for fields in _rule_fields(policy, rule):
            rules.append(Rule(key=f"{name}.{rule.properties.get(Prop.NAME, '')}", allow=allow, **fields))
    return tuple(rules)


def _sg_rules(
    policy: Mapping[str, MO], sg: MO, problems: Problems, claims: list[tuple[str, str]]
) -> tuple[SgRule, ...]:
    """Its rules; one that does not parse is left out (they only allow: fewer is narrower). The
    member sets its rules name go into ``claims`` as (group, member set container)."""
    rules = []
    for rule in _rule_mos(policy, sg, Cls.GBP_SEC_GROUP_SUBJECT, Cls.GBP_SEC_GROUP_RULE):
        try:
            rules += _sg_rule(policy, sg, rule, claims)
        except _At as at:
            refuse(problems, at.uri, at.bad)
    return tuple(rules)


def _sg_rule(policy: Mapping[str, MO], sg: MO, rule: MO, claims: list[tuple[str, str]]) -> list[SgRule]:
    """A rule's remote side is the model's remote-address sets (GbpSubnets): prefixes, or, when
    the rule also names a remote group (``PfSecGroupRuleToRemoteGroupRSrc``, ours), that group's
    member addresses, which the renderers keep as the group's address set (read from the member
    set container the rule names: ``claims``). No remote address: any."""
    try:
        containers = _related(policy, rule, Cls.GBP_SEC_GROUP_RULE_TO_REMOTE_ADDRESS_RSRC)
        group = _target(policy, rule.uri, Cls.PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC)
    except Refused as bad:
        raise _At(rule.uri, bad) from None
    except _At as at:
        raise _At(rule.uri, at.bad) from None
    if group is not None:
        if len(containers) != 1:  # not resolved yet, or not what our authority writes: nothing
            return []
        claims.append((group, containers[0].uri))
        return [
            SgRule(key=f"{sg.uri}#{fields['order']}", allow=True, remote_group=group, **fields)
            for fields in _rule_fields(policy, rule, icmp=True)
        ]
    try:
        prefixes: list[Prefix | None] = [
            _of(n, _prefix) for subnets in containers for n in _children(policy, subnets, Cls.GBP_SUBNET)
        ]
    except Refused as bad:
        raise _At(rule.uri, bad) from None
    if containers and not prefixes:
        return []  # a remote side with no address matches nothing (never "any")
    for fields in _rule_fields(policy, rule, icmp=True):
        family = {0x0800: 4, 0x86DD: 6}.get(fields["ethertype"])
        for prefix in prefixes:  # the model makes a prefix's ethertype its family; flows match by it
            if prefix is not None and family != (6 if ":" in prefix else 4):
                raise _At(rule.uri, Refused(Prop.ETHER_T, fields["ethertype"], f"not the family of {prefix}"))
    return [
        SgRule(key=f"{sg.uri}#{fields['order']}", allow=True, remote_prefix=prefix, **fields)
        for fields in _rule_fields(policy, rule, icmp=True)
        for prefix in prefixes or [None]
    ]


def read_member(member: MO) -> IpAddress | Invalid | None:
    """One member of a group's member set (a one-address GbpSubnet): its address; None for the
    placeholder that keeps an empty set closed for reference peers; an ``Invalid`` for an address
    that does not parse (the member is left out: a smaller set allows less)."""
    try:
        address = get(member.properties, Prop.ADDRESS, parse_ip)
    except Refused as bad:
        found: list[Invalid] = []
        refuse(found, member.uri, bad)
        return found[0]
    return None if address == NO_MEMBER else address


def _prefix(subnet: Mapping[str, Any]) -> Prefix:
    """A GbpSubnet's prefix, e.g. 10.1.0.0/24, from its properties."""
    address = get(subnet, Prop.ADDRESS, parse_ip)
    length = get(subnet, Prop.PREFIX_LEN, ranged(0, 128))
    try:
        return parse_prefix(f"{address}/{length}")
    except ValueError as exc:
        raise Refused(Prop.PREFIX_LEN, length, str(exc)) from None


def _leg(policy: Mapping[str, MO], leg: MO, bd_of_subnets: Mapping[str, str]) -> RouterInterface | None:
    subnet = policy.get(ref(leg.properties.get(Prop.SUBNET), Prop.SUBNET) or "")
    bd = bd_of_subnets.get(subnet.parent_uri or "") if subnet else None
    gw = subnet.properties.get(Prop.VIRTUAL_ROUTER_IP) if subnet else None
    if subnet is None or bd is None or gw in (None, "None"):
        return None  # not resolved yet, or a subnet without a gateway: nothing to route
    try:
        return RouterInterface(
            bd, get(subnet.properties, Prop.VIRTUAL_ROUTER_IP, parse_ip), _prefix(subnet.properties)
        )
    except Refused as bad:
        raise _At(subnet.uri, bad) from None


def _gateway(mo: MO) -> RouterGateway | None:
    p = mo.properties
    network, ip = ref(p.get(Prop.NETWORK), Prop.NETWORK), p.get(Prop.IP)
    if network is None or ip in (None, ""):
        return None
    active, vtep = p.get(Prop.ACTIVE_HOST), p.get(Prop.ACTIVE_TUNNEL_IP, "")
    return RouterGateway(
        network,
        get(p, Prop.IP, parse_ipv4),
        optional(p, Prop.SNAT, ranged(0, 1), 1) == 1,
        active if isinstance(active, str) else "",
        get(p, Prop.ACTIVE_TUNNEL_IP, parse_ipv4) if vtep != "" else None,
    )


def read_router(policy: Mapping[str, MO], uri: str, mo: MO, bd_of_subnets: Mapping[str, str]) -> Read:
    """A router: its legs on the bridge domains (``bd_of_subnets``: a GbpSubnets container's
    bridge domain) and its external gateway; a leg or a gateway that does not parse is left out."""
    problems: list[Invalid] = []
    if not URI.fullmatch(uri):
        refuse(problems, uri, Refused("uri", uri, "not a URI"))
        return Read(None, tuple(problems))
    legs = []
    for leg in _children(policy, mo, Cls.PF_ROUTER_INTERFACE):
        try:
            found = _leg(policy, leg, bd_of_subnets)
        except Refused as bad:
            refuse(problems, leg.uri, bad)
        except _At as at:
            refuse(problems, at.uri, at.bad)
        else:
            if found is not None:
                legs.append(found)
    number, mac = router_identity(mo.uri)
    gateway = None
    for gw in _children(policy, mo, Cls.PF_EXTERNAL_GATEWAY):
        try:
            gateway = _gateway(gw)
        except Refused as bad:
            refuse(problems, gw.uri, bad)  # no way out rather than a wrong one
    legs.sort(key=lambda i: (i.bd, i.gateway_ip))
    return Read(Router(mo.uri, number, mac, tuple(legs), gateway), tuple(problems))


def _external(mo: MO) -> ExternalNet:
    p = mo.properties
    cidr = get(p, Prop.CIDR, lambda v: parse_prefix(v, version=4))
    gateway = get(p, Prop.GATEWAY_IP, parse_ipv4)
    return ExternalNet(mo.uri, str(p.get(Prop.NAME, "")), cidr, gateway)


def _floating_ip(mo: MO) -> FloatingIp | None:
    p = mo.properties
    if p.get(Prop.ENDPOINT_KEY) is None or p.get(Prop.NETWORK) is None:
        return None  # not bound to an endpoint: nothing to render
    network = ref(p.get(Prop.NETWORK), Prop.NETWORK)
    ip, key = get(p, Prop.IP, parse_ipv4), get(p, Prop.ENDPOINT_KEY, parse_key)
    return FloatingIp(ip, network, key) if network is not None else None


def _network(policy: Mapping[str, MO], uri: str) -> str:
    """A group's bridge domain: the target of its network relation, or, when that is a flood
    domain (the reference model allows both), the flood domain's ("": not resolved yet)."""
    target = _target(policy, uri, Cls.GBP_EP_GROUP_TO_NETWORK_RSRC) or ""
    fd = policy.get(target)
    if fd is not None and fd.subject == Cls.GBP_FLOOD_DOMAIN:
        return _target(policy, target, Cls.GBP_FLOOD_DOMAIN_TO_NETWORK_RSRC) or ""
    return target


def _group(policy: Mapping[str, MO], uri: str, mo: MO) -> Group:
    intra = optional(
        mo.properties, Prop.INTRA_GROUP_POLICY, choice("allow", "deny", "require-contract"), "allow"
    )
    return Group(
        uri,
        _encap(policy, mo, Prop.CLASSID, 0xFFFF),
        _network(policy, uri),
        intra == "allow",
        _targets(policy, mo, Cls.GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC),
        _targets(policy, mo, Cls.GBP_EP_GROUP_TO_CONS_CONTRACT_RSRC),
    )


def _bridge_domain(
    policy: Mapping[str, MO], uri: str, mo: MO, subnets: list[str], problems: list[Invalid]
) -> BridgeDomain:
    container = _target(policy, uri, Cls.GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC)
    if container:
        subnets.append(container)  # its subnets are routed on it even if the rest does not parse
    vrf_uri = _target(policy, uri, Cls.GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC)
    vrf = policy.get(vrf_uri) if vrf_uri else None
    vni = _encap(policy, mo, Prop.ENCAP_ID, 0xFFFFFF)
    mtu_mo = policy.get(child(uri, Cls.PF_BRIDGE_DOMAIN_MTU))
    mtu = 0  # unknown: DHCP leaves option 26 out
    try:  # a bad MTU costs the option, not the bridge domain
        mtu = _of(mtu_mo, lambda p: optional(p, Prop.MTU, ranged(576, 65535), 0)) if mtu_mo else 0
    except _At as at:
        refuse(problems, at.uri, at.bad)
    held = policy.get(container) if container else None
    dhcp = _dhcp_subnets(policy, held, problems) if held is not None else ()
    slaac = slaac_prefixes(_children(policy, held, Cls.GBP_SUBNET)) if held is not None else ()
    return BridgeDomain(
        uri, vni, _encap(policy, vrf, Prop.ENCAP_ID, 0xFFFFFF) if vrf else 0, mtu, dhcp, slaac=slaac
    )


def _host_route(value: object) -> tuple[Prefix, Ipv4Address]:
    """``"DESTINATION NEXTHOP"``, both IPv4 (option 121 is IPv4's)."""
    if not isinstance(value, str) or value.count(" ") != 1:
        raise ValueError("not a route (DESTINATION NEXTHOP)")
    dest, hop = value.split(" ")
    return parse_prefix(dest, 4), parse_ipv4(hop)


def _listed(parse: Callable[[object], T]) -> Callable[[object], tuple[T, ...]]:
    def parse_list(value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ValueError("not a list")
        return tuple(parse(v) for v in value)

    return parse_list


NO_DNS: tuple[Ipv4Address, ...] = ()
NO_ROUTES: tuple[tuple[Prefix, Ipv4Address], ...] = ()


def _dhcp_subnets(policy: Mapping[str, MO], container: MO, problems: list[Invalid]) -> tuple[DhcpSubnet, ...]:
    """The IPv4 subnets of a bridge domain that hand out addresses by DHCP. A subnet whose DHCP
    values do not parse is left out (its endpoints get no answer) and refused, never guessed at."""
    out = []
    for subnet in _children(policy, container, Cls.GBP_SUBNET):
        if subnet.properties.get(Prop.VIRTUAL_ROUTER_IP) in (None, "None"):
            continue  # no gateway: no router, no server identifier
        options = _children(policy, subnet, Cls.PF_SUBNET_DHCP)
        if not options:
            continue  # not resolved yet (or an authority that does not say): no answer
        try:
            prefix = _of(subnet, _prefix)
            if ":" in prefix:
                continue  # DHCPv4 only
            gateway = _of(subnet, lambda p: get(p, Prop.VIRTUAL_ROUTER_IP, parse_ipv4))
            p = options[0]
            if not _of(p, lambda q: optional(q, Prop.ENABLE_DHCP, ranged(0, 1), 1)):
                continue
            dns = _of(p, lambda q: optional(q, Prop.DNS_NAMESERVERS, _listed(parse_ipv4), NO_DNS))
            routes = _of(p, lambda q: optional(q, Prop.HOST_ROUTES, _listed(_host_route), NO_ROUTES))
        except _At as at:
            refuse(problems, at.uri, at.bad)
            continue
        out.append(DhcpSubnet(prefix, gateway, dns, routes))
    return tuple(sorted(out, key=lambda d: d.prefix))


IPV6_MODES: Callable[[object], str | None] = choice("slaac", "dhcpv6-stateless", "dhcpv6-stateful")
NO_DNS6: tuple[IpAddress, ...] = ()


def _dns6(value: object) -> tuple[IpAddress, ...]:
    found = _listed(parse_ip)(value)
    if any(":" not in a for a in found):
        raise ValueError("not a list of IPv6 addresses")
    return found


def _with_ipv6(policy: Mapping[str, MO], bd: BridgeDomain, problems: list[Invalid]) -> BridgeDomain:
    """``bd`` with its IPv6 subnets that hosts are told about (``_ipv6_subnets``)."""
    container = _target(policy, bd.uri, Cls.GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC)
    held = policy.get(container) if container else None
    ipv6 = _ipv6_subnets(policy, held, problems) if held is not None else ()
    return replace(bd, ipv6=ipv6) if ipv6 else bd


def _ipv6_subnets(policy: Mapping[str, MO], container: MO, problems: list[Invalid]) -> tuple[Ipv6Subnet, ...]:
    """The IPv6 subnets of a bridge domain whose hosts this agent configures: a gateway and an RA
    or address mode (``PfSubnetDhcp``). One whose values do not parse is left out (its endpoints
    get no RA and no DHCPv6 answer) and refused, never guessed at."""
    out = []
    for subnet in _children(policy, container, Cls.GBP_SUBNET):
        if subnet.properties.get(Prop.VIRTUAL_ROUTER_IP) in (None, "None"):
            continue  # no gateway: nothing to advertise
        options = _children(policy, subnet, Cls.PF_SUBNET_DHCP)
        if not options:
            continue
        try:
            prefix = _of(subnet, _prefix)
            if ":" not in prefix:
                continue
            gateway = _of(subnet, lambda p: get(p, Prop.VIRTUAL_ROUTER_IP, parse_ip))
            p = options[0]
            if not _of(p, lambda q: optional(q, Prop.ENABLE_DHCP, ranged(0, 1), 1)):
                continue
            ra = _of(p, lambda q: optional(q, Prop.IPV6_RA_MODE, IPV6_MODES, None))
            address = _of(p, lambda q: optional(q, Prop.IPV6_ADDRESS_MODE, IPV6_MODES, None))
            if ra is None and address is None:
                continue  # hosts are told nothing here (Neutron: RAs and DHCPv6 from elsewhere)
            dns = _of(p, lambda q: optional(q, Prop.DNS_NAMESERVERS, _dns6, NO_DNS6))
        except _At as at:
            refuse(problems, at.uri, at.bad)
            continue
        out.append(Ipv6Subnet(prefix, gateway, ra, address, dns))
    return tuple(sorted(out, key=lambda d: d.prefix))


Record = Group | Contract | BridgeDomain | SecurityGroup | ExternalNet | FloatingIp | Router


@dataclass(frozen=True)
class Read:
    """What one object of a ``READ`` class reads as: its record (None: left out, or nothing to
    render yet), the values refused on the way, and what it adds to the maps the view shares
    between records (``agent/policystate.py`` combines them): a bridge domain's GbpSubnets
    container (routers find a leg's bridge domain by it), a security group's (remote group,
    member set container) pairs (the address sets)."""

    record: Record | None = None
    problems: tuple[Invalid, ...] = ()
    subnets: str | None = None
    claims: tuple[tuple[str, str], ...] = ()


def read_object(policy: Mapping[str, MO], uri: str, mo: MO) -> Read:
    """The record of ``mo`` (at ``uri``), an object of one of the ``OBJECTS`` classes. Reads
    ``policy`` by URI only (never iterates it): what it looks up is what the record depends on."""
    problems: list[Invalid] = []
    subnets: list[str] = []
    claims: list[tuple[str, str]] = []
    record: Record | None = None
    try:
        if not URI.fullmatch(uri):
            raise Refused("uri", uri, "not a URI")
        if mo.subject == Cls.PF_EXTERNAL_NETWORK:
            record = _external(mo)
        elif mo.subject == Cls.PF_FLOATING_IP:
            record = _floating_ip(mo)
        elif mo.subject == Cls.GBP_BRIDGE_DOMAIN:
            record = _with_ipv6(policy, _bridge_domain(policy, uri, mo, subnets, problems), problems)
        elif mo.subject == Cls.GBP_EP_GROUP:
            record = _group(policy, uri, mo)
        elif mo.subject == Cls.GBP_CONTRACT:
            record = Contract(uri, _rules(policy, mo))
        elif mo.subject == Cls.GBP_SEC_GROUP:
            record = SecurityGroup(uri, _sg_rules(policy, mo, problems, claims))
    except Refused as bad:
        refuse(problems, uri, bad)
    except _At as at:
        refuse(problems, at.uri, at.bad)
    return Read(record, tuple(problems), subnets[0] if subnets else None, tuple(claims))


def policy_view(policy: Mapping[str, MO], problems: Problems = None) -> Network:
    """Groups, contracts, bridge domains, security groups and routers of every tenant in the cache;
    what does not parse is left out and added to ``problems``. The agent keeps the same view up
    to date incrementally (``policystate.PolicyState``); this is that code's full build."""
    from policyfabric.agent.policystate import PolicyState  # it builds on the readers above

    state = PolicyState()
    state.update(policy, None)
    if problems is not None:
        problems.extend(state.problems())
    return state.view()


__all__ = ["local_endpoint", "policy_view", "remote_endpoints"]  # the endpoints' readers live in endpoints.py
