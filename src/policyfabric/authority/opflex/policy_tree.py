"""The stored policy model as a GBP managed-object tree (pure): the writer.

Only the authority writes policy, so the translation lives here, next to the
repository that serves and diffs its output (``repository.py``). Agents read
the same objects through ``agent/reader.py``; both sides spell classes and
properties through ``opflex/gbp.py``. The layout is tabled in docs/opflex.md
("The model as managed objects"). Property order is the order on the wire:
keep it when editing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from policyfabric.model import objects as o
from policyfabric.model.addressing import endpoint_addresses
from policyfabric.model.types import SLAAC, port_bounds
from policyfabric.opflex.gbp import (
    ETHER_T_NAMES,
    NO_MEMBER,
    PROTOCOLS,
    Cls,
    Prop,
    endpoint_uri,
    external_network_uri,
    members_uri,
    uri_of,
)
from policyfabric.opflex.mo import MO, Tree, ref
from policyfabric.opflex.uri import UNIVERSE, child, space


def _icmp_props(props: dict[str, Any], rule: o.SecurityGroupRule) -> dict[str, Any]:
    """A security group rule's ICMP type and code on its classifier: the model's ``icmpType`` and
    ``icmpCode``, sent only when set (a reference peer reads an absent one as "any")."""
    if rule.icmp_type is not None:
        props[Prop.ICMP_TYPE] = rule.icmp_type
    if rule.icmp_code is not None:
        props[Prop.ICMP_CODE] = rule.icmp_code
    return props


def pair_values(ep: Any) -> list[str]:
    """An endpoint's allowed address pairs as ``PfEndpoint`` carries them: "PREFIX MAC", the MAC
    its own when the pair names none (so an agent need not know the default)."""
    return [f"{p.ip} {p.mac or ep.mac or ''}".strip() for p in getattr(ep, "allowed_address_pairs", ())]


def _classifier_props(
    name: str, protocol: str, port: int | str | None, ethertype: str | None
) -> dict[str, Any]:
    props: dict[str, Any] = {Prop.NAME: name, Prop.CONNECTION_TRACKING: "reflexive"}
    if ethertype in ETHER_T_NAMES:
        props[Prop.ETHER_T] = ethertype  # the model's enum constant, by name
    if protocol in PROTOCOLS:
        props[Prop.PROT] = PROTOCOLS[protocol]
    if port is not None:
        props[Prop.D_FROM_PORT], props[Prop.D_TO_PORT] = port_bounds(port)
    return props


def _relation(tree: Tree, parent: str, cls: str, subject: str, target: str, many: bool = False) -> None:
    """A ``cls`` relation under ``parent`` pointing at the ``subject`` at ``target``; ``many`` names
    it by its target's class and URI (one of several: the reference model's naming), otherwise it
    is a singleton."""
    if many:
        tree.add(parent, cls, subject, target, **{Prop.TARGET: ref(subject, target)})
    else:
        tree.add(parent, cls, **{Prop.TARGET: ref(subject, target)})


def _host_mo(container: str, name: str, address: str) -> MO:
    """A one-address GbpSubnet (a /32 or /128) in the GbpSubnets ``container``."""
    length = 128 if ":" in address else 32
    uri = child(container, Cls.GBP_SUBNET, name)
    props = {Prop.NAME: name, Prop.ADDRESS: address, Prop.PREFIX_LEN: length}
    return MO(Cls.GBP_SUBNET, uri, props, [], Cls.GBP_SUBNETS, container, Cls.GBP_SUBNET)


def _host(tree: Tree, container: str, name: str, address: str) -> None:
    mo = _host_mo(container, name, address)
    tree.mos[mo.uri] = mo
    tree.mos[container].children.append(mo.uri)


# The URIs endpoints point to (their group, bridge domain, security groups, member sets): a few,
# shared by thousands of endpoints, built once
_shared_uri = lru_cache(maxsize=1 << 14)(uri_of)
_members_uri = lru_cache(maxsize=1 << 14)(members_uri)


def endpoint_mo(tenant: str, top: str, ep: Any, bd_name: str | None, fips: Sequence[str] = ()) -> MO:
    """An endpoint's ``PfEndpoint`` (its intent), as its agent resolves it; ``fips``: the names of
    the floating IPs bound to it (referenced, so that its agent resolves them: the reverse of the
    floating IP's reference to the endpoint)."""
    props: dict[str, Any] = {Prop.NAME: ep.name, Prop.MAC: ep.mac, Prop.IP: list(ep.ip)}
    if ep.epg is not None:
        props[Prop.EPG] = ref(Cls.GBP_EP_GROUP, _shared_uri(tenant, Cls.GBP_EP_GROUP, ep.epg))
    if bd_name:
        props[Prop.BRIDGE_DOMAIN] = ref(Cls.GBP_BRIDGE_DOMAIN, bd_name)
    props[Prop.SECURITY_GROUP] = [
        ref(Cls.GBP_SEC_GROUP, _shared_uri(tenant, Cls.GBP_SEC_GROUP, g)) for g in ep.security_groups
    ]
    if ep.host is not None:
        props[Prop.HOST] = ep.host
    if pairs := pair_values(ep):
        props[Prop.ALLOWED_ADDRESS_PAIRS] = pairs
    if fips:
        props[Prop.FLOATING_IP] = [
            ref(Cls.PF_FLOATING_IP, _shared_uri(tenant, Cls.PF_FLOATING_IP, f)) for f in fips
        ]
    uri = child(top, Cls.PF_ENDPOINT, ep.name)
    return MO(Cls.PF_ENDPOINT, uri, props, [], Cls.POLICY_SPACE, top, Cls.PF_ENDPOINT)


def member_hosts(
    tenant: str, ep: Any, remote_groups: Collection[str], subnets: Sequence[o.Subnet] = ()
) -> list[MO]:
    """The endpoint's addresses in the member set of each of its groups that a rule names as its
    remote side: one GbpSubnet per address, so a member joining or leaving is a few objects in a
    policy_update, never the whole membership. A ``slaac`` entry is its EUI-64 address in each
    SLAAC subnet among ``subnets`` (its bridge domain's: ``model.addressing``)."""
    ips = [str(ip) for ip in ep.ip if ip != SLAAC]
    if SLAAC in ep.ip and ep.mac:
        ips += [str(r.address) for r in endpoint_addresses([SLAAC], ep.mac, subnets)]
    # its allowed pairs' addresses are members too, as Neutron puts them in the group's address set
    # (a prefix pair is not: a member is one address, and agents read it as one)
    for pair in getattr(ep, "allowed_address_pairs", ()):
        host = str(pair.ip.network_address)
        if pair.ip.prefixlen == pair.ip.max_prefixlen and host not in ips:
            ips.append(host)
    return [
        _host_mo(_members_uri(tenant, g), f"{ep.name}.{ip}", ip)
        for g in ep.security_groups
        if g in remote_groups
        for ip in ips
    ]


def endpoint_bd(tenant: str, ep: Any, epg: Any | None, subnet: Any | None) -> str | None:
    """The URI of the bridge domain of ``ep``: its group's (``epg``: its spec, None if it has none
    or it does not exist), else its subnet's, else None."""
    if epg is not None:
        return _shared_uri(tenant, Cls.GBP_BRIDGE_DOMAIN, epg.bridge_domain)
    if subnet is not None:
        return _shared_uri(tenant, Cls.GBP_BRIDGE_DOMAIN, subnet.bridge_domain)
    return None


# Each object's MOs, as ``add_*`` functions writing into a Tree: ``tenant_tree`` calls them for every
# object into one tree; the repository's incremental model (``tenant_model.py``) calls them for one
# object into a ``Fragment``, to patch a built tree with what one write changed. One builder per
# object kind, so both assemble the same objects.


def add_space(tree: Tree, tenant: str) -> str:
    top = space(tenant)
    tree.root(Cls.POLICY_SPACE, top, **{Prop.NAME: tenant})
    tree.mos[top].parent_subject, tree.mos[top].parent_uri = Cls.POLICY_UNIVERSE, UNIVERSE
    tree.mos[top].parent_relation = Cls.POLICY_SPACE
    return top


def add_l3_context(tree: Tree, tenant: str, vrf: o.L3Context, vni: int) -> None:
    rd = tree.add(space(tenant), Cls.GBP_ROUTING_DOMAIN, vrf.name, **{Prop.NAME: vrf.name})
    tree.add(rd, Cls.GBPE_INST_CONTEXT, **{Prop.ENCAP_ID: vni})


def _reverse(tree: Tree, parent: str, cls: str, subject: str, sources: Sequence[str]) -> None:
    """A ``cls`` reverse relation under ``parent`` for each of ``sources`` (the URIs of the
    ``subject`` objects whose relation points at ``parent``), named by the source's class and URI,
    in the order given."""
    for source in sources:
        tree.add(parent, cls, subject, source, **{Prop.SOURCE: ref(subject, source)})


def add_bridge_domain(
    tree: Tree, tenant: str, bd: o.BridgeDomain, vni: int, routers: Collection[str] = ()
) -> None:
    """The bridge domain (its subnets' container is ``add_subnets``); ``routers``: the names of the
    routers with a leg on it (reverse relations, sorted)."""
    uri = tree.add(
        space(tenant), Cls.GBP_BRIDGE_DOMAIN, bd.name, **{Prop.NAME: bd.name, Prop.ROUTING_MODE: "enabled"}
    )
    _relation(
        tree,
        uri,
        Cls.GBP_BRIDGE_DOMAIN_TO_NETWORK_RSRC,
        Cls.GBP_ROUTING_DOMAIN,
        uri_of(tenant, Cls.GBP_ROUTING_DOMAIN, bd.l3_context),
    )
    _relation(
        tree,
        uri,
        Cls.GBP_FORWARDING_BEHAVIORAL_GROUP_TO_SUBNETS_RSRC,
        Cls.GBP_SUBNETS,
        uri_of(tenant, Cls.GBP_SUBNETS, bd.name),
    )
    tree.add(uri, Cls.GBPE_INST_CONTEXT, **{Prop.ENCAP_ID: vni})
    tree.add(uri, Cls.PF_BRIDGE_DOMAIN_MTU, **{Prop.MTU: bd.mtu})  # what DHCP tells its endpoints
    sources = [uri_of(tenant, Cls.PF_ROUTER, r) for r in sorted(routers)]
    _reverse(tree, uri, Cls.PF_ROUTER_TO_BRIDGE_DOMAIN_RTGT, Cls.PF_ROUTER, sources)


def add_subnets(tree: Tree, tenant: str, bd: str) -> str:
    """The GbpSubnets container of bridge domain ``bd``: its subnets are its children."""
    return tree.add(space(tenant), Cls.GBP_SUBNETS, bd, **{Prop.NAME: bd})


def add_subnet(tree: Tree, tenant: str, subnet: o.Subnet) -> None:
    props: dict[str, Any] = {
        Prop.NAME: subnet.name,
        Prop.ADDRESS: str(subnet.cidr.network_address),
        Prop.PREFIX_LEN: subnet.cidr.prefixlen,
        Prop.VIRTUAL_ROUTER_IP: str(subnet.gateway_ip),
    }
    if subnet.auto_address:  # hosts make their own addresses from the prefix (the RA's A flag)
        props[Prop.IPV6_ADV_AUTONOMOUS_FLAG] = 1
    uri = tree.add(
        uri_of(tenant, Cls.GBP_SUBNETS, subnet.bridge_domain), Cls.GBP_SUBNET, subnet.name, **props
    )
    dhcp = {  # what the hosts' DHCP responders answer with (agent/dhcp)
        Prop.ENABLE_DHCP: int(subnet.enable_dhcp),
        Prop.DNS_NAMESERVERS: [str(a) for a in subnet.dns_nameservers],
        Prop.HOST_ROUTES: [f"{r.destination} {r.nexthop}" for r in subnet.host_routes],
    }
    modes = ((Prop.IPV6_RA_MODE, subnet.ipv6_ra_mode), (Prop.IPV6_ADDRESS_MODE, subnet.ipv6_address_mode))
    for prop, mode in modes:
        if mode is not None:  # what the hosts' router advertisements and DHCPv6 answers say
            dhcp[prop] = mode
    tree.add(uri, Cls.PF_SUBNET_DHCP, **dhcp)


def action_uris(tenant: str) -> dict[str, str]:
    """The URIs of the tenant's actions, by rule action (``add_actions`` makes them)."""
    top = space(tenant)
    return {
        "allow": child(top, Cls.GBP_ALLOW_DENY_ACTION, "allow"),
        "drop": child(top, Cls.GBP_ALLOW_DENY_ACTION, "deny"),
        "log": child(top, Cls.GBP_LOG_ACTION, "log"),
    }


def add_actions(tree: Tree, tenant: str) -> None:
    top = space(tenant)
    tree.add(top, Cls.GBP_ALLOW_DENY_ACTION, "allow", **{Prop.NAME: "allow", Prop.ALLOW: 1})
    tree.add(top, Cls.GBP_ALLOW_DENY_ACTION, "deny", **{Prop.NAME: "deny", Prop.ALLOW: 0})
    tree.add(top, Cls.GBP_LOG_ACTION, "log", **{Prop.NAME: "log"})


def add_contract(
    tree: Tree,
    tenant: str,
    contract: o.Contract,
    providers: Collection[str] = (),
    consumers: Collection[str] = (),
) -> None:
    """The contract, its rules and their classifiers; ``providers`` and ``consumers``: the names of
    the groups providing and consuming it (reverse relations, sorted)."""
    top, actions = space(tenant), action_uris(tenant)
    uri = tree.add(top, Cls.GBP_CONTRACT, contract.name, **{Prop.NAME: contract.name})
    for cls, names in (
        (Cls.PF_EP_GROUP_TO_PROV_CONTRACT_RTGT, providers),
        (Cls.PF_EP_GROUP_TO_CONS_CONTRACT_RTGT, consumers),
    ):
        _reverse(
            tree, uri, cls, Cls.GBP_EP_GROUP, [uri_of(tenant, Cls.GBP_EP_GROUP, g) for g in sorted(names)]
        )
    subject = tree.add(uri, Cls.GBP_SUBJECT, "default", **{Prop.NAME: "default"})
    for order, rule in enumerate(contract.rules):
        r = tree.add(
            subject,
            Cls.GBP_RULE,
            rule.name,
            **{Prop.NAME: rule.name, Prop.ORDER: order, Prop.DIRECTION: rule.classifier.direction},
        )
        clf_name = f"{contract.name}.{rule.name}"
        c = rule.classifier
        clf = tree.add(
            top,
            Cls.GBPE_L24_CLASSIFIER,
            clf_name,
            **_classifier_props(clf_name, c.protocol, c.port, c.ethertype),
        )
        _relation(tree, r, Cls.GBP_RULE_TO_CLASSIFIER_RSRC, Cls.GBPE_L24_CLASSIFIER, clf, many=True)
        action = actions["drop" if rule.action == "drop" else "allow"]
        _relation(tree, r, Cls.GBP_RULE_TO_ACTION_RSRC, Cls.GBP_ALLOW_DENY_ACTION, action, many=True)
        if rule.action == "log" or rule.log:
            _relation(tree, r, Cls.GBP_RULE_TO_ACTION_RSRC, Cls.GBP_LOG_ACTION, actions["log"], many=True)


def remote_groups_of(sg: o.SecurityGroup) -> set[str]:
    """The groups the rules of ``sg`` name as their remote side."""
    return {r.remote_group for r in sg.rules if r.remote_group is not None}


def add_security_group(tree: Tree, tenant: str, sg: o.SecurityGroup) -> None:
    """The group and its rules (a rule's remote group's member set is ``add_members``)."""
    top, allow = space(tenant), action_uris(tenant)["allow"]
    uri = tree.add(top, Cls.GBP_SEC_GROUP, sg.name, **{Prop.NAME: sg.name})
    subject = tree.add(uri, Cls.GBP_SEC_GROUP_SUBJECT, "default", **{Prop.NAME: "default"})
    for order, rule in enumerate(sg.rules):
        direction = "in" if rule.direction == "ingress" else "out"
        r = tree.add(
            subject,
            Cls.GBP_SEC_GROUP_RULE,
            str(order),
            **{Prop.NAME: str(order), Prop.ORDER: order, Prop.DIRECTION: direction},
        )
        clf_name = f"sg.{sg.name}.{order}"
        clf = tree.add(
            top,
            Cls.GBPE_L24_CLASSIFIER,
            clf_name,
            **_icmp_props(_classifier_props(clf_name, rule.protocol, rule.port, rule.ethertype), rule),
        )
        _relation(tree, r, Cls.GBP_RULE_TO_CLASSIFIER_RSRC, Cls.GBPE_L24_CLASSIFIER, clf, many=True)
        _relation(tree, r, Cls.GBP_RULE_TO_ACTION_RSRC, Cls.GBP_ALLOW_DENY_ACTION, allow, many=True)
        if sg.log:  # Neutron's logging resource, as a flag: every rule's verdicts, and the default deny
            logs = action_uris(tenant)["log"]
            _relation(tree, r, Cls.GBP_RULE_TO_ACTION_RSRC, Cls.GBP_LOG_ACTION, logs, many=True)
        if rule.remote_ip_prefix is not None:
            remote = tree.add(top, Cls.GBP_SUBNETS, clf_name, **{Prop.NAME: clf_name})
            net = rule.remote_ip_prefix
            tree.add(
                remote,
                Cls.GBP_SUBNET,
                "remote",
                **{
                    Prop.NAME: "remote",
                    Prop.ADDRESS: str(net.network_address),
                    Prop.PREFIX_LEN: net.prefixlen,
                },
            )
            _relation(
                tree, r, Cls.GBP_SEC_GROUP_RULE_TO_REMOTE_ADDRESS_RSRC, Cls.GBP_SUBNETS, remote, many=True
            )
        if rule.remote_group is not None:  # the model's restriction, and our agents' hint
            remote = members_uri(tenant, rule.remote_group)
            _relation(
                tree, r, Cls.GBP_SEC_GROUP_RULE_TO_REMOTE_ADDRESS_RSRC, Cls.GBP_SUBNETS, remote, many=True
            )
            _relation(
                tree,
                r,
                Cls.PF_SEC_GROUP_RULE_TO_REMOTE_GROUP_RSRC,
                Cls.GBP_SEC_GROUP,
                uri_of(tenant, Cls.GBP_SEC_GROUP, rule.remote_group),
            )


def add_members(tree: Tree, tenant: str, group: str) -> None:
    """The member set of ``group`` (a GbpSubnets container), for the rules naming it as their remote
    side: a placeholder address, so that a set with no member still matches nothing rather than
    being absent; the members' addresses are its other children (``member_hosts``)."""
    name = f"sg.{group}.members"
    container = tree.add(space(tenant), Cls.GBP_SUBNETS, name, **{Prop.NAME: name})
    assert container == members_uri(tenant, group)
    _host(tree, container, "none", NO_MEMBER)


def add_endpoint_group(tree: Tree, tenant: str, epg: o.EndpointGroup, vni: int, classid: int) -> str:
    uri = tree.add(
        space(tenant),
        Cls.GBP_EP_GROUP,
        epg.name,
        **{Prop.NAME: epg.name, Prop.INTRA_GROUP_POLICY: epg.intra_group},
    )
    bd = uri_of(tenant, Cls.GBP_BRIDGE_DOMAIN, epg.bridge_domain)
    _relation(tree, uri, Cls.GBP_EP_GROUP_TO_NETWORK_RSRC, Cls.GBP_BRIDGE_DOMAIN, bd)
    for relation, contracts in (
        (Cls.GBP_EP_GROUP_TO_PROV_CONTRACT_RSRC, epg.provides),
        (Cls.GBP_EP_GROUP_TO_CONS_CONTRACT_RSRC, epg.consumes),
    ):
        for contract in contracts:
            target = uri_of(tenant, Cls.GBP_CONTRACT, contract)
            _relation(tree, uri, relation, Cls.GBP_CONTRACT, target, many=True)
    tree.add(uri, Cls.GBPE_INST_CONTEXT, **{Prop.ENCAP_ID: vni, Prop.CLASSID: classid})
    return bd


def add_router(
    tree: Tree,
    tenant: str,
    router: o.Router,
    subnet_bd: Mapping[str, str],
    gateway: tuple[str, str] | None,
) -> None:
    """The router, its legs (``subnet_bd``: each subnet's bridge domain) and its external gateway
    (``gateway``: the election's active host and its tunnel address)."""
    uri = tree.add(space(tenant), Cls.PF_ROUTER, router.name, **{Prop.NAME: router.name})
    _relation(
        tree,
        uri,
        Cls.PF_ROUTER_TO_ROUTING_DOMAIN_RSRC,
        Cls.GBP_ROUTING_DOMAIN,
        uri_of(tenant, Cls.GBP_ROUTING_DOMAIN, router.l3_context),
    )
    for name in router.interfaces:
        bd = subnet_bd.get(name, "")
        target = child(uri_of(tenant, Cls.GBP_SUBNETS, bd), Cls.GBP_SUBNET, name)
        leg: dict[str, Any] = {Prop.NAME: name, Prop.SUBNET: ref(Cls.GBP_SUBNET, target)}
        if bd:  # the leg's bridge domain: an agent resolving the router learns where it routes to
            leg[Prop.BRIDGE_DOMAIN] = ref(Cls.GBP_BRIDGE_DOMAIN, uri_of(tenant, Cls.GBP_BRIDGE_DOMAIN, bd))
        tree.add(uri, Cls.PF_ROUTER_INTERFACE, name, **leg)
    gw = router.external_gateway
    if gw is not None:
        active, vtep = gateway or ("", "")
        tree.add(
            uri,
            Cls.PF_EXTERNAL_GATEWAY,
            **{
                Prop.NETWORK: ref(Cls.PF_EXTERNAL_NETWORK, external_network_uri(gw.network)),
                Prop.SNAT: int(gw.snat),
                Prop.HOSTS: list(gw.hosts),
                Prop.IP: str(gw.ip or ""),
                Prop.ACTIVE_HOST: active,
                Prop.ACTIVE_TUNNEL_IP: vtep,
            },
        )


def add_floating_ip(tree: Tree, tenant: str, fip: o.FloatingIp) -> None:
    props = {
        Prop.NAME: fip.name,
        Prop.IP: str(fip.ip),
        Prop.NETWORK: ref(Cls.PF_EXTERNAL_NETWORK, external_network_uri(fip.network)),
    }
    if fip.endpoint is not None:
        props[Prop.ENDPOINT] = ref(Cls.PF_ENDPOINT, endpoint_uri(tenant, fip.endpoint))
        props[Prop.ENDPOINT_KEY] = f"{tenant}/{fip.endpoint}"
    tree.add(space(tenant), Cls.PF_FLOATING_IP, fip.name, **props)


class Fragment(Tree):
    """The MOs one object contributes to its tenant's tree, built by the ``add_*`` functions: a Tree
    whose top MOs hang under parents outside it (the PolicySpace, a GbpSubnets container), which
    list them as children once the fragment is merged into a tree."""

    def __init__(self, tenant: str) -> None:
        super().__init__()
        self.top = space(tenant)

    def add(self, parent: str, subject: str, *names: str, **props: Any) -> str:
        if parent in self.mos:
            return super().add(parent, subject, *names, **props)
        uri = child(parent, subject, *names)
        up = Cls.POLICY_SPACE if parent == self.top else Cls.GBP_SUBNETS
        self.mos[uri] = MO(subject, uri, dict(props), [], up, parent, subject)
        return uri


# name -> (its spec, its bridge domain's URI, its PfEndpoint): what the last build made of each
# endpoint, so the next one reuses the object when neither changed (a tenant's endpoints are most
# of its objects)
EndpointMemo = dict[str, tuple[Any, tuple[str | None, tuple[str, ...]], MO]]


@dataclass
class Reverse:
    """Who points at what, by name: the reverse relations a tenant's tree carries (a contract's
    providing and consuming groups, a bridge domain's routers) and the floating IPs an endpoint's
    ``PfEndpoint`` references. ``tenant_tree`` computes it whole (``of``); the incremental model
    keeps the same maps up to date by the object."""

    providers: dict[str, set[str]] = field(default_factory=dict)  # contract -> groups providing it
    consumers: dict[str, set[str]] = field(default_factory=dict)  # contract -> groups consuming it
    routers: dict[str, set[str]] = field(default_factory=dict)  # bridge domain -> routers with a leg on it
    fips: dict[str, set[str]] = field(default_factory=dict)  # endpoint -> floating IPs bound to it

    @classmethod
    def of(
        cls, epgs: Iterable[Any], subnets: Iterable[Any], routers: Iterable[Any], fips: Iterable[Any]
    ) -> Reverse:
        out = cls()
        for epg in epgs:
            out.add_group(epg.name, epg)
        subnet_bd = {s.name: s.bridge_domain for s in subnets}
        for router in routers:
            for bd in router_bds(router, subnet_bd):
                out.routers.setdefault(bd, set()).add(router.name)
        for fip in fips:
            if fip.endpoint is not None:
                out.fips.setdefault(fip.endpoint, set()).add(fip.name)
        return out

    def add_group(self, name: str, epg: Any) -> None:
        for table, contracts in ((self.providers, epg.provides), (self.consumers, epg.consumes)):
            for contract in contracts:
                table.setdefault(contract, set()).add(name)

    def drop_group(self, name: str, epg: Any) -> None:
        for table, contracts in ((self.providers, epg.provides), (self.consumers, epg.consumes)):
            for contract in contracts:
                users = table.get(contract)
                if users is not None:
                    users.discard(name)
                    if not users:
                        del table[contract]

    def contract_users(self, contract: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (
            tuple(sorted(self.providers.get(contract, ()))),
            tuple(sorted(self.consumers.get(contract, ()))),
        )


def router_bds(router: Any, subnet_bd: Mapping[str, str]) -> set[str]:
    """The bridge domains ``router`` has a leg on (``subnet_bd``: each subnet's bridge domain)."""
    return {subnet_bd[s] for s in router.interfaces if s in subnet_bd}


def tenant_tree(
    tenant: str,
    objects: Mapping[str, Sequence[o.Spec]],
    ids: Mapping[str, Mapping[str, int]],
    gateways: Mapping[str, tuple[str, str]] | None = None,
    memo: EndpointMemo | None = None,
) -> Tree:
    """The PolicySpace of ``tenant``, built whole. ``objects`` maps a kind name to its specs;
    ``ids`` gives server-allocated numbers by ``kind/name``: ``ids["vni"]["bridge_domain/bd1"]``,
    ``ids["classid"]["endpoint_group/web"]`` (0 when unknown). ``gateways`` maps a router name
    to its active gateway host and that host's tunnel address (the authority's election).
    ``memo`` (the caller's, one per tenant) lets unchanged endpoints keep their objects: the tree
    is the same, it is built faster, and the diff against the last one finds them identical.

    The repository keeps its trees up to date by the object (``tenant_model.py``); this is the
    whole-tenant reference its tests compare against, and the same ``add_*`` builders in the
    same order."""
    tree = Tree()
    top = add_space(tree, tenant)
    vni, classid = ids.get("vni", {}), ids.get("classid", {})

    def of(kind: str) -> list[Any]:
        return list(objects.get(kind, ()))

    reverse = Reverse.of(of("endpoint_group"), of("subnet"), of("router"), of("floating_ip"))
    for vrf in of("l3_context"):
        add_l3_context(tree, tenant, vrf, vni.get(f"l3_context/{vrf.name}", 0))
    for bd in of("bridge_domain"):
        routers = reverse.routers.get(bd.name, ())
        add_bridge_domain(tree, tenant, bd, vni.get(f"bridge_domain/{bd.name}", 0), routers)
        add_subnets(tree, tenant, bd.name)
        for subnet in of("subnet"):
            if subnet.bridge_domain == bd.name:
                add_subnet(tree, tenant, subnet)
    add_actions(tree, tenant)
    for contract in of("contract"):
        providers, consumers = reverse.contract_users(contract.name)
        add_contract(tree, tenant, contract, providers, consumers)
    remote_groups: set[str] = set()  # the groups some rule names as its remote side
    for sg in of("security_group"):
        add_security_group(tree, tenant, sg)
        remote_groups |= remote_groups_of(sg)
    for group in sorted(remote_groups):
        add_members(tree, tenant, group)
    epgs = {epg.name: epg for epg in of("endpoint_group")}
    for epg in epgs.values():
        add_endpoint_group(
            tree,
            tenant,
            epg,
            vni.get(f"bridge_domain/{epg.bridge_domain}", 0),
            classid.get(f"endpoint_group/{epg.name}", 0),
        )
    subnets = {s.name: s for s in of("subnet")}
    fresh: EndpointMemo = {}
    for ep in of("endpoint"):
        bd_name = endpoint_bd(tenant, ep, epgs.get(ep.epg or ""), subnets.get(ep.subnet or ""))
        fips = tuple(sorted(reverse.fips.get(ep.name, ())))
        hit = memo.get(ep.name) if memo is not None else None
        if hit is not None and hit[0] is ep and hit[1] == (bd_name, fips):
            mo = hit[2]  # the same spec in the same place: the same object as last time
        else:
            mo = endpoint_mo(tenant, top, ep, bd_name, fips)
        fresh[ep.name] = (ep, (bd_name, fips), mo)
        tree.mos[mo.uri] = mo
        tree.mos[top].children.append(mo.uri)
        bd = (
            epgs[ep.epg].bridge_domain
            if ep.epg in epgs
            else getattr(subnets.get(ep.subnet or ""), "bridge_domain", None)
        )
        mine = [s for s in subnets.values() if s.bridge_domain == bd] if SLAAC in ep.ip else []
        for host in member_hosts(tenant, ep, remote_groups, mine):
            tree.mos[host.uri] = host
            tree.mos[host.parent_uri or ""].children.append(host.uri)
    if memo is not None:  # what is gone is forgotten
        memo.clear()
        memo.update(fresh)
    subnet_bd = {s.name: s.bridge_domain for s in subnets.values()}
    for router in of("router"):
        add_router(tree, tenant, router, subnet_bd, (gateways or {}).get(router.name))
    for fip in of("floating_ip"):
        add_floating_ip(tree, tenant, fip)
    return tree


def global_tree(
    tenants: Sequence[str], networks: Sequence[o.ExternalNetwork], domain: str = "policyfabric"
) -> Tree:
    """The universe root (listing every PolicySpace), the platform's configuration and the
    external networks.

    ``PlatformConfig/<domain>/`` is what a reference agent resolves first, by the domain it is
    configured with. It carries only its name: ``encapType`` is left out because the model's enum
    has no constant for Geneve (the overlay here; a reference agent raises a fault for a type other
    than its own, and would for any constant we could send), and ``multicastGroupIP`` because
    flooding here is head-end replication to the bridge domain's hosts, never multicast."""
    tree = Tree()
    tree.root(Cls.POLICY_UNIVERSE, UNIVERSE)
    tree.mos[UNIVERSE].children.extend(space(t) for t in sorted(tenants))
    tree.add(UNIVERSE, Cls.PLATFORM_CONFIG, domain, **{Prop.NAME: domain})
    for net in networks:
        tree.add(
            UNIVERSE,
            Cls.PF_EXTERNAL_NETWORK,
            net.name,
            **{
                Prop.NAME: net.name,
                Prop.CIDR: str(net.cidr),
                Prop.GATEWAY_IP: str(net.gateway_ip),
                Prop.PHYSICAL_NETWORK: net.physical_network or "",
            },
        )
    return tree


__all__ = [
    "EndpointMemo",
    "Fragment",
    "Reverse",
    "action_uris",
    "add_actions",
    "add_bridge_domain",
    "add_contract",
    "add_endpoint_group",
    "add_floating_ip",
    "add_l3_context",
    "add_members",
    "add_router",
    "add_security_group",
    "add_space",
    "add_subnet",
    "add_subnets",
    "endpoint_bd",
    "endpoint_mo",
    "global_tree",
    "member_hosts",
    "remote_groups_of",
    "router_bds",
    "tenant_tree",
]
