"""The agent's view of the network: what its cache says, in plain typed records.

Renderers never read OpFlex MOs. This module turns the resolved policy (the
tenant subtrees) and the endpoint registry into small frozen records, so the
compilers that follow are pure functions of data that is easy to build in a
unit test.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyfabric.agent.endpoints import target
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO, REFERENCE_URI
from policyfabric.opflex.uri import child


@dataclass(frozen=True)
class Rule:
    """One classifier + action of a contract, consumer → provider unless ``direction`` says otherwise."""

    key: str  # contract.rule
    order: int
    allow: bool
    direction: str  # in | out | bidirectional
    ethertype: int | None = None  # 0x0800, 0x86DD or None for both
    protocol: int | None = None
    ports: tuple[int, int] | None = None

    @property
    def priority(self) -> int:
        """Evaluation order for every renderer: drop rules before allow rules, each by ``order``."""
        return (2000 if not self.allow else 1000) - min(self.order, 900)


@dataclass(frozen=True)
class SgRule(Rule):
    """A security group rule (always allow): ``direction`` is in (ingress) or out (egress); the
    remote side is a prefix, the members of a group (``remote_group``, a GbpSecGroup URI), or any."""

    remote_prefix: str | None = None
    remote_group: str | None = None


@dataclass(frozen=True)
class SecurityGroup:
    uri: str
    rules: tuple[SgRule, ...]


@dataclass(frozen=True)
class Contract:
    uri: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Group:
    """An endpoint group: its class id is what the pipeline carries in registers and tunnels."""

    uri: str
    classid: int
    bd: str  # bridge domain URI
    intra_allow: bool
    provides: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()


@dataclass(frozen=True)
class BridgeDomain:
    uri: str
    vni: int
    vrf: int  # the routing domain's number: the conntrack zone, so tenants' addresses never collide

    @property
    def zone(self) -> int:
        """The routing domain's conntrack zone (16 bits)."""
        return self.vrf & 0xFFFF


@dataclass(frozen=True)
class Endpoint:
    """An endpoint this host serves (``ofport``) or a remote one (``vtep``)."""

    key: str  # TENANT/NAME
    mac: str
    ips: tuple[str, ...]
    bd: str
    classid: int  # 0: no group (security groups only)
    ofport: int | None = None
    vtep: str | None = None
    security_groups: tuple[str, ...] = ()  # GbpSecGroup URIs (local endpoints)
    interface: str | None = None  # its port on the integration bridge (local endpoints)

    @property
    def sg_governed(self) -> bool:
        """Security groups judge its traffic: it has some, or it has no EPG (plain Neutron mode)."""
        return bool(self.security_groups) or self.classid == 0


def opens(src: Group, dst: Group, contract: str, rule: Rule) -> bool:
    """Whether ``rule`` of ``contract`` lets group ``src`` open connections to group ``dst``:
    consumer → provider for ``in``, provider → consumer for ``out``, both for ``bidirectional``."""
    if contract in src.consumes and contract in dst.provides and rule.direction in ("in", "bidirectional"):
        return True
    return (
        contract in src.provides and contract in dst.consumes and rule.direction in ("out", "bidirectional")
    )


@dataclass(frozen=True)
class RouterInterface:
    """A router's leg on a bridge domain: its subnet's gateway address (answered on every host)."""

    bd: str  # bridge domain URI
    gateway_ip: str
    prefix: str  # the subnet, e.g. 10.1.0.0/24


@dataclass(frozen=True)
class RouterGateway:
    """A router's leg on an external network: SNAT to ``ip`` on the active gateway host."""

    network: str  # PfExternalNetwork URI
    ip: str  # the router's external address
    snat: bool
    active_host: str  # elected by the authority ("" while no gateway host is alive)
    active_vtep: str


@dataclass(frozen=True)
class Router:
    """A distributed router: every host with endpoints on its subnets routes between them."""

    uri: str
    number: int  # small and stable: what reg6 carries between L2 and L3
    mac: str  # the gateway MAC, the same on every host (an overlay never learns it from two places)
    interfaces: tuple[RouterInterface, ...]
    gateway: RouterGateway | None = None

    @property
    def bds(self) -> frozenset[str]:
        return frozenset(i.bd for i in self.interfaces)


def router_identity(uri: str) -> tuple[int, str]:
    """(number, MAC) of a router, derived from its URI so every host agrees without asking."""
    h = zlib.crc32(uri.encode())
    number = (h & 0xFFFF) or 1
    return number, f"02:50:46:fe:{number >> 8:02x}:{number & 0xFF:02x}"


@dataclass(frozen=True)
class ExternalNet:
    """An external network; ``ofport`` is this host's port on it (None: not attached here)."""

    uri: str
    name: str
    cidr: str
    gateway_ip: str
    ofport: int | None = None


@dataclass(frozen=True)
class FloatingIp:
    """1:1 NAT of ``endpoint`` (TENANT/NAME) to ``ip``, done on the endpoint's host."""

    ip: str
    network: str  # PfExternalNetwork URI
    endpoint: str

    @property
    def mac(self) -> str:
        """The floating IP's MAC on the external network: derived, so it survives a restart."""
        h = zlib.crc32(self.ip.encode()) & 0xFFFFFF
        return f"02:50:47:{h >> 16:02x}:{(h >> 8) & 0xFF:02x}:{h & 0xFF:02x}"


@dataclass(frozen=True)
class Network:
    local: tuple[Endpoint, ...] = ()
    remote: tuple[Endpoint, ...] = ()
    groups: Mapping[str, Group] = field(default_factory=dict)
    contracts: Mapping[str, Contract] = field(default_factory=dict)
    bds: Mapping[str, BridgeDomain] = field(default_factory=dict)
    security_groups: Mapping[str, SecurityGroup] = field(default_factory=dict)
    address_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group → member IPs
    routers: Mapping[str, Router] = field(default_factory=dict)
    external: Mapping[str, ExternalNet] = field(default_factory=dict)  # by URI
    floating_ips: tuple[FloatingIp, ...] = ()
    host: str = ""  # this host's name (is it a router's active gateway?)
    tunnel_port: int | None = None  # this host's Geneve port on the bridge (None: no tunnel)


def _children(policy: Mapping[str, MO], mo: MO, subject: str) -> list[MO]:
    return [policy[c] for c in mo.children if c in policy and policy[c].subject == subject]


def _encap(policy: Mapping[str, MO], mo: MO, prop: str) -> int:
    for ctx in _children(policy, mo, Cls.GBPE_INST_CONTEXT):
        value = ctx.properties.get(prop)
        if isinstance(value, int):
            return value
    return 0


def _targets(policy: Mapping[str, MO], mo: MO, subject: str) -> tuple[str, ...]:
    out = []
    for rel in _children(policy, mo, subject):
        value = rel.properties.get(Prop.TARGET)
        if isinstance(value, dict):
            out.append(value[REFERENCE_URI])
    return tuple(sorted(out))


def _classified(
    policy: Mapping[str, MO], container: MO, subject: str, rule_subject: str
) -> Iterator[tuple[MO, dict[str, Any]]]:
    """Each (rule, fields common to every Rule) under ``container``'s subjects, once per classifier."""
    for subj in _children(policy, container, subject):
        for rule in _children(policy, subj, rule_subject):
            props = rule.properties
            common = {
                "order": int(props.get(Prop.ORDER, 0)),
                "direction": str(props.get(Prop.DIRECTION, "in")),
            }
            for clf in _related(policy, rule, Cls.GBP_RULE_TO_CLASSIFIER_RSRC):
                yield rule, {**common, **_classifier(clf.properties)}


def _rules(policy: Mapping[str, MO], contract: MO) -> tuple[Rule, ...]:
    rules = []
    name = contract.properties.get(Prop.NAME, "")
    for rule, fields in _classified(policy, contract, Cls.GBP_SUBJECT, Cls.GBP_RULE):
        actions = _related(policy, rule, Cls.GBP_RULE_TO_ACTION_RSRC)
        allow = all(
            a.properties.get(Prop.ALLOW, 1) == 1 for a in actions if a.subject == Cls.GBP_ALLOW_DENY_ACTION
        )
        rules.append(Rule(key=f"{name}.{rule.properties.get(Prop.NAME, '')}", allow=allow, **fields))
    return tuple(rules)


def _related(policy: Mapping[str, MO], mo: MO, relation: str) -> list[MO]:
    """The cached objects ``mo``'s ``relation`` children point to."""
    return [policy[u] for u in _targets(policy, mo, relation) if u in policy]


def _classifier(c: Mapping[str, Any]) -> dict[str, Any]:
    ports = None
    if isinstance(c.get(Prop.D_FROM_PORT), int):
        ports = (int(c[Prop.D_FROM_PORT]), int(c.get(Prop.D_TO_PORT, c[Prop.D_FROM_PORT])))
    return {"ethertype": c.get(Prop.ETHER_T), "protocol": c.get(Prop.PROT), "ports": ports}


def _sg_rules(policy: Mapping[str, MO], sg: MO) -> tuple[SgRule, ...]:
    rules = []
    for rule, fields in _classified(policy, sg, Cls.GBP_SEC_GROUP_SUBJECT, Cls.GBP_SEC_GROUP_RULE):
        prefixes: list[str | None] = [
            _prefix(n)
            for subnets in _related(policy, rule, Cls.GBP_SEC_GROUP_RULE_TO_REMOTE_ADDRESS_RSRC)
            for n in _children(policy, subnets, Cls.GBP_SUBNET)
        ]
        group = target(policy, child(rule.uri, Cls.PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC))
        for prefix in prefixes or [None]:
            key = f"{sg.uri}#{rule.properties.get(Prop.ORDER, 0)}"
            rules.append(SgRule(key=key, allow=True, remote_prefix=prefix, remote_group=group, **fields))
    return tuple(rules)


def _members(policy: Mapping[str, MO], sg: MO) -> tuple[str, ...]:
    """The addresses of a security group's members (its address set)."""
    out: set[str] = set()
    for member in _children(policy, sg, Cls.PF_SEC_GROUP_MEMBER):
        out.update(str(ip) for ip in member.properties.get(Prop.IP, []))
    return tuple(sorted(out))


def _routers(
    policy: Mapping[str, MO], routers: list[MO], bd_of_subnets: Mapping[str, str]
) -> dict[str, Router]:
    out = {}
    for mo in routers:
        legs = []
        for leg in _children(policy, mo, Cls.PF_ROUTER_INTERFACE):
            subnet = policy.get(_ref(leg.properties.get(Prop.SUBNET)) or "")
            gw = subnet.properties.get(Prop.VIRTUAL_ROUTER_IP) if subnet else None
            bd = bd_of_subnets.get(subnet.parent_uri or "") if subnet else None
            if subnet is None or bd is None or not isinstance(gw, str) or gw == "None":
                continue  # not resolved yet, or a subnet without a gateway: nothing to route
            legs.append(RouterInterface(bd, gw, _prefix(subnet)))
        number, mac = router_identity(mo.uri)
        gateway = None
        for gw in _children(policy, mo, Cls.PF_EXTERNAL_GATEWAY):
            p = gw.properties
            network, ip = _ref(p.get(Prop.NETWORK)), p.get(Prop.IP)
            if network is not None and isinstance(ip, str) and ip:
                active, vtep = p.get(Prop.ACTIVE_HOST), p.get(Prop.ACTIVE_TUNNEL_IP)
                gateway = RouterGateway(
                    network,
                    ip,
                    bool(p.get(Prop.SNAT, 1)),
                    active if isinstance(active, str) else "",
                    vtep if isinstance(vtep, str) else "",
                )
        legs.sort(key=lambda i: (i.bd, i.gateway_ip))
        out[mo.uri] = Router(mo.uri, number, mac, tuple(legs), gateway)
    return out


def _external(mo: MO) -> ExternalNet:
    p = mo.properties
    return ExternalNet(
        mo.uri, str(p.get(Prop.NAME, "")), str(p.get(Prop.CIDR, "")), str(p.get(Prop.GATEWAY_IP, ""))
    )


def _floating_ip(mo: MO) -> FloatingIp | None:
    p = mo.properties
    ip, network, key = p.get(Prop.IP), _ref(p.get(Prop.NETWORK)), p.get(Prop.ENDPOINT_KEY)
    if not isinstance(ip, str) or network is None or not isinstance(key, str):
        return None  # not bound to an endpoint: nothing to render
    return FloatingIp(ip, network, key)


def policy_view(policy: Mapping[str, MO]) -> Network:
    """Groups, contracts, bridge domains, security groups and routers of every tenant in the cache."""
    groups, contracts, bds, sgs, sets, external = {}, {}, {}, {}, {}, {}
    routers: list[MO] = []
    fips: list[FloatingIp] = []
    bd_of_subnets: dict[str, str] = {}  # GbpSubnets container → its bridge domain
    for uri, mo in policy.items():
        if mo.subject == Cls.PF_ROUTER:
            routers.append(mo)
        elif mo.subject == Cls.PF_EXTERNAL_NETWORK:
            external[uri] = _external(mo)
        elif mo.subject == Cls.PF_FLOATING_IP:
            fip = _floating_ip(mo)
            if fip is not None:
                fips.append(fip)
        elif mo.subject == Cls.GBP_BRIDGE_DOMAIN:
            container = target(policy, child(uri, Cls.GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC))
            if container:
                bd_of_subnets[container] = uri
            vrf_uri = target(policy, child(uri, Cls.GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC))
            vrf = policy.get(vrf_uri) if vrf_uri else None
            bds[uri] = BridgeDomain(
                uri, _encap(policy, mo, Prop.ENCAP_ID), _encap(policy, vrf, Prop.ENCAP_ID) if vrf else 0
            )
        elif mo.subject == Cls.GBP_EP_GROUP:
            bd = target(policy, child(uri, Cls.GBP_EP_GROUP_TO_NETWORK_RSRC)) or ""
            groups[uri] = Group(
                uri,
                _encap(policy, mo, Prop.CLASSID),
                bd,
                mo.properties.get(Prop.INTRA_GROUP_POLICY, "allow") == "allow",
                _targets(policy, mo, Cls.GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC),
                _targets(policy, mo, Cls.GBP_EP_GROUP_TO_CONS_CONTRACT_RSRC),
            )
        elif mo.subject == Cls.GBP_CONTRACT:
            contracts[uri] = Contract(uri, _rules(policy, mo))
        elif mo.subject == Cls.GBP_SEC_GROUP:
            sgs[uri] = SecurityGroup(uri, _sg_rules(policy, mo))
            sets[uri] = _members(policy, mo)
    return Network(
        groups=groups,
        contracts=contracts,
        bds=bds,
        security_groups=sgs,
        address_sets=sets,
        routers=_routers(policy, routers, bd_of_subnets),
        external=external,
        floating_ips=tuple(sorted(fips, key=lambda f: f.ip)),
    )


def _ref(value: Any) -> str | None:
    return value[REFERENCE_URI] if isinstance(value, dict) else None


def _prefix(subnet: MO) -> str:
    """A GbpSubnet's prefix, e.g. 10.1.0.0/24."""
    return f"{subnet.properties.get(Prop.ADDRESS)}/{subnet.properties.get(Prop.PREFIX_LEN)}"


def local_endpoint(
    policy: Mapping[str, MO],
    groups: Mapping[str, Group],
    key: str,
    uri: str,
    ofport: int,
    interface: str | None = None,
) -> Endpoint | None:
    """A local endpoint from its ``PfEndpoint``; None until that and its bridge domain are resolved."""
    mo = policy.get(uri)
    if mo is None:
        return None
    props = mo.properties
    bd = _ref(props.get(Prop.BRIDGE_DOMAIN))
    mac = props.get(Prop.MAC)
    if bd is None or not isinstance(mac, str):
        return None
    group = groups.get(_ref(props.get(Prop.EPG)) or "")
    ips = tuple(ip for ip in props.get(Prop.IP, []) if ip != "slaac")
    sgs = tuple(sorted(u for u in map(_ref, props.get(Prop.SECURITY_GROUP, [])) if u is not None))
    classid = group.classid if group else 0
    return Endpoint(key, mac, ips, bd, classid, ofport=ofport, security_groups=sgs, interface=interface)


def remote_endpoints(registry: Iterable[MO], own_vtep: str, local_keys: set[str]) -> tuple[Endpoint, ...]:
    """Other hosts' L2 endpoints, from the bridge-domain membership the agent resolved."""
    out = []
    for mo in registry:
        if mo.subject != Cls.EPR_L2_EP:
            continue
        p = mo.properties
        vtep, bd, key = p.get(Prop.TUNNEL_IP), _ref(p.get(Prop.CONTEXT)), str(p.get(Prop.UUID, ""))
        if not isinstance(vtep, str) or vtep == own_vtep or bd is None or key in local_keys:
            continue
        out.append(
            Endpoint(
                key,
                str(p.get(Prop.MAC, "")),
                tuple(str(ip) for ip in p.get(Prop.IP, []) if ip != "slaac"),
                bd,
                int(p.get(Prop.CLASSID, 0)),
                vtep=vtep,
            )
        )
    return tuple(sorted(out, key=lambda e: (e.bd, e.mac)))
