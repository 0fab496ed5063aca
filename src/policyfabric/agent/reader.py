"""The agent's cache read as the view's records: the resolved policy (the tenant subtrees) and
the endpoint registry, turned into the frozen records of ``agent/view.py``.

The one place on the agent's side that reads managed objects: what a class or property means is
decided here, by the names of ``opflex/gbp.py`` that the authority's writer also uses, and
nothing after this (the renderers) sees an MO.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from policyfabric.agent.endpoints import target
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    Endpoint,
    ExternalNet,
    FloatingIp,
    Group,
    Network,
    Router,
    RouterGateway,
    RouterInterface,
    Rule,
    SecurityGroup,
    SgRule,
    router_identity,
)
from policyfabric.opflex.gbp import Cls, Prop
from policyfabric.opflex.mo import MO, REFERENCE_URI
from policyfabric.opflex.uri import child


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
