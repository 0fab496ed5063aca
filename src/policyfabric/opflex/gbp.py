"""The stored policy model as a GBP managed-object tree (pure).

Class names and URIs follow the GBP model that the open-source OpFlex agent
uses (``GbpEpGroup``, ``GbpBridgeDomain``, ``GbpContract`` ...). Objects GBP
has no class for get a ``Pf`` prefix, listed in docs/opflex.md:
``PfEndpoint`` (an endpoint's intent, which its agent resolves),
``PfRouter``/``PfRouterInterface``/``PfExternalGateway``, ``PfFloatingIp``,
``PfExternalNetwork``, ``PfSecGroupRuleToRemoteGroupRSrc`` and ``PfSecGroupMember``
(a security group's address set, one child per member endpoint).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from policyfabric.model import objects as o
from policyfabric.model.types import port_bounds
from policyfabric.opflex.mo import Tree, ref
from policyfabric.opflex.uri import UNIVERSE, child, space

ETHERTYPES = {"ipv4": 0x0800, "ipv6": 0x86DD}
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}


def uri_of(tenant: str, cls: str, name: str) -> str:
    return child(space(tenant), cls, name)


def external_network_uri(name: str) -> str:
    return child(UNIVERSE, "PfExternalNetwork", name)


def endpoint_uri(tenant: str, name: str) -> str:
    return uri_of(tenant, "PfEndpoint", name)


def _classifier_props(
    name: str, protocol: str, port: int | str | None, ethertype: str | None
) -> dict[str, Any]:
    props: dict[str, Any] = {"name": name, "connectionTracking": "reflexive"}
    if ethertype in ETHERTYPES:
        props["etherT"] = ETHERTYPES[ethertype]
    if protocol in PROTOCOLS:
        props["prot"] = PROTOCOLS[protocol]
    if port is not None:
        props["dFromPort"], props["dToPort"] = port_bounds(port)
    return props


def _relation(tree: Tree, parent: str, cls: str, subject: str, target: str, many: bool = False) -> None:
    if many:
        tree.add(parent, cls, target, target=ref(subject, target))
    else:
        tree.add(parent, cls, target=ref(subject, target))


def tenant_tree(
    tenant: str,
    objects: Mapping[str, Sequence[o.Spec]],
    ids: Mapping[str, Mapping[str, int]],
    gateways: Mapping[str, tuple[str, str]] | None = None,
) -> Tree:
    """The PolicySpace of ``tenant``. ``objects`` maps a kind name to its specs;
    ``ids`` gives server-allocated numbers by ``kind/name``: ``ids["vni"]["bridge_domain/bd1"]``,
    ``ids["classid"]["endpoint_group/web"]`` (0 when unknown). ``gateways`` maps a router name
    to its active gateway host and that host's tunnel address (the authority's election)."""
    tree = Tree()
    top = space(tenant)
    tree.root("PolicySpace", top, name=tenant)
    tree.mos[top].parent_subject, tree.mos[top].parent_uri = "PolicyUniverse", UNIVERSE
    tree.mos[top].parent_relation = "PolicySpace"
    vni, classid = ids.get("vni", {}), ids.get("classid", {})

    def of(kind: str) -> list[Any]:
        return list(objects.get(kind, ()))

    for vrf in of("l3_context"):
        rd = tree.add(top, "GbpRoutingDomain", vrf.name, name=vrf.name)
        tree.add(rd, "GbpeInstContext", encapId=vni.get(f"l3_context/{vrf.name}", 0))
    for bd in of("bridge_domain"):
        uri = tree.add(top, "GbpBridgeDomain", bd.name, name=bd.name, routingMode="enabled", mtu=bd.mtu)
        _relation(
            tree,
            uri,
            "GbpBridgeDomainToNetworkRSrc",
            "GbpRoutingDomain",
            uri_of(tenant, "GbpRoutingDomain", bd.l3_context),
        )
        _relation(
            tree,
            uri,
            "GbpForwardingBehavioralGroupToSubnetsRSrc",
            "GbpSubnets",
            uri_of(tenant, "GbpSubnets", bd.name),
        )
        tree.add(uri, "GbpeInstContext", encapId=vni.get(f"bridge_domain/{bd.name}", 0))
        container = tree.add(top, "GbpSubnets", bd.name, name=bd.name)
        for subnet in of("subnet"):
            if subnet.bridge_domain == bd.name:
                props: dict[str, Any] = {
                    "name": subnet.name,
                    "address": str(subnet.cidr.network_address),
                    "prefixLen": subnet.cidr.prefixlen,
                    "virtualRouterIp": str(subnet.gateway_ip),
                }
                if subnet.ipv6_ra_mode == "slaac":
                    props.update(ipv6AdvAutonomousFlag=1, ipv6AdvOnLinkFlag=1)
                tree.add(container, "GbpSubnet", subnet.name, **props)
    actions = {
        "allow": tree.add(top, "GbpAllowDenyAction", "allow", name="allow", allow=1),
        "drop": tree.add(top, "GbpAllowDenyAction", "deny", name="deny", allow=0),
        "log": tree.add(top, "GbpLogAction", "log", name="log"),
    }
    for contract in of("contract"):
        uri = tree.add(top, "GbpContract", contract.name, name=contract.name)
        subject = tree.add(uri, "GbpSubject", "default", name="default")
        for order, rule in enumerate(contract.rules):
            r = tree.add(
                subject,
                "GbpRule",
                rule.name,
                name=rule.name,
                order=order,
                direction=rule.classifier.direction,
            )
            clf_name = f"{contract.name}.{rule.name}"
            c = rule.classifier
            clf = tree.add(
                top,
                "GbpeL24Classifier",
                clf_name,
                **_classifier_props(clf_name, c.protocol, c.port, c.ethertype),
            )
            _relation(tree, r, "GbpRuleToClassifierRSrc", "GbpeL24Classifier", clf, many=True)
            action = actions["drop" if rule.action == "drop" else "allow"]
            action_cls = "GbpAllowDenyAction"
            _relation(tree, r, "GbpRuleToActionRSrc", action_cls, action, many=True)
            if rule.action == "log":
                _relation(tree, r, "GbpRuleToActionRSrc", "GbpLogAction", actions["log"], many=True)
    for sg in of("security_group"):
        uri = tree.add(top, "GbpSecGroup", sg.name, name=sg.name)
        subject = tree.add(uri, "GbpSecGroupSubject", "default", name="default")
        for order, rule in enumerate(sg.rules):
            direction = "in" if rule.direction == "ingress" else "out"
            r = tree.add(
                subject, "GbpSecGroupRule", str(order), name=str(order), order=order, direction=direction
            )
            clf_name = f"sg.{sg.name}.{order}"
            clf = tree.add(
                top,
                "GbpeL24Classifier",
                clf_name,
                **_classifier_props(clf_name, rule.protocol, rule.port, rule.ethertype),
            )
            _relation(tree, r, "GbpRuleToClassifierRSrc", "GbpeL24Classifier", clf, many=True)
            _relation(tree, r, "GbpRuleToActionRSrc", "GbpAllowDenyAction", actions["allow"], many=True)
            if rule.remote_ip_prefix is not None:
                remote = tree.add(top, "GbpSubnets", clf_name, name=clf_name)
                net = rule.remote_ip_prefix
                tree.add(
                    remote,
                    "GbpSubnet",
                    "remote",
                    name="remote",
                    address=str(net.network_address),
                    prefixLen=net.prefixlen,
                )
                _relation(tree, r, "GbpSecGroupRuleToRemoteAddressRSrc", "GbpSubnets", remote, many=True)
            if rule.remote_group is not None:
                _relation(
                    tree,
                    r,
                    "PfSecGroupRuleToRemoteGroupRSrc",
                    "GbpSecGroup",
                    uri_of(tenant, "GbpSecGroup", rule.remote_group),
                )
    bd_of_epg = {}
    for epg in of("endpoint_group"):
        uri = tree.add(top, "GbpEpGroup", epg.name, name=epg.name, intraGroupPolicy=epg.intra_group)
        bd = uri_of(tenant, "GbpBridgeDomain", epg.bridge_domain)
        bd_of_epg[epg.name] = bd
        _relation(tree, uri, "GbpEpGroupToNetworkRSrc", "GbpBridgeDomain", bd)
        for contract in epg.provides:
            _relation(
                tree,
                uri,
                "GbpEpGroupToProvContractRSrc",
                "GbpContract",
                uri_of(tenant, "GbpContract", contract),
                many=True,
            )
        for contract in epg.consumes:
            _relation(
                tree,
                uri,
                "GbpEpGroupToConsContractRSrc",
                "GbpContract",
                uri_of(tenant, "GbpContract", contract),
                many=True,
            )
        tree.add(
            uri,
            "GbpeInstContext",
            encapId=vni.get(f"bridge_domain/{epg.bridge_domain}", 0),
            classid=classid.get(f"endpoint_group/{epg.name}", 0),
        )
    subnet_bd = {s.name: s.bridge_domain for s in of("subnet")}
    for ep in of("endpoint"):
        props = {"name": ep.name, "mac": ep.mac, "ip": list(ep.ip)}
        if ep.epg is not None:
            props["epg"] = ref("GbpEpGroup", uri_of(tenant, "GbpEpGroup", ep.epg))
        bd_name = bd_of_epg.get(ep.epg or "") or (
            uri_of(tenant, "GbpBridgeDomain", subnet_bd[ep.subnet]) if ep.subnet in subnet_bd else None
        )
        if bd_name:
            props["bridgeDomain"] = ref("GbpBridgeDomain", bd_name)
        props["securityGroup"] = [
            ref("GbpSecGroup", uri_of(tenant, "GbpSecGroup", g)) for g in ep.security_groups
        ]
        if ep.host is not None:
            props["host"] = ep.host
        tree.add(top, "PfEndpoint", ep.name, **props)
        # the address set of each of its groups: one small child per member, so a member joining
        # or leaving is one object in a policy_update, never the whole membership
        for g in ep.security_groups:
            sg = uri_of(tenant, "GbpSecGroup", g)
            if sg in tree.mos:
                addresses = [str(ip) for ip in ep.ip if ip != "slaac"]
                tree.add(sg, "PfSecGroupMember", ep.name, endpoint=f"{tenant}/{ep.name}", ip=addresses)
    for router in of("router"):
        uri = tree.add(top, "PfRouter", router.name, name=router.name)
        _relation(
            tree,
            uri,
            "PfRouterToRoutingDomainRSrc",
            "GbpRoutingDomain",
            uri_of(tenant, "GbpRoutingDomain", router.l3_context),
        )
        for name in router.interfaces:
            bd = subnet_bd.get(name, "")
            target = child(uri_of(tenant, "GbpSubnets", bd), "GbpSubnet", name)
            tree.add(uri, "PfRouterInterface", name, name=name, subnet=ref("GbpSubnet", target))
        gw = router.external_gateway
        if gw is not None:
            active, vtep = (gateways or {}).get(router.name, ("", ""))
            tree.add(
                uri,
                "PfExternalGateway",
                network=ref("PfExternalNetwork", external_network_uri(gw.network)),
                snat=int(gw.snat),
                hosts=list(gw.hosts),
                ip=str(gw.ip or ""),
                activeHost=active,
                activeTunnelIp=vtep,
            )
    for fip in of("floating_ip"):
        props = {
            "name": fip.name,
            "ip": str(fip.ip),
            "network": ref("PfExternalNetwork", external_network_uri(fip.network)),
        }
        if fip.endpoint is not None:
            props["endpoint"] = ref("PfEndpoint", endpoint_uri(tenant, fip.endpoint))
            props["endpointKey"] = f"{tenant}/{fip.endpoint}"
        tree.add(top, "PfFloatingIp", fip.name, **props)
    return tree


def global_tree(tenants: Sequence[str], networks: Sequence[o.ExternalNetwork]) -> Tree:
    """The universe root (listing every PolicySpace) and the external networks."""
    tree = Tree()
    tree.root("PolicyUniverse", UNIVERSE)
    tree.mos[UNIVERSE].children.extend(space(t) for t in sorted(tenants))
    for net in networks:
        tree.add(
            UNIVERSE,
            "PfExternalNetwork",
            net.name,
            name=net.name,
            cidr=str(net.cidr),
            gatewayIp=str(net.gateway_ip),
            physicalNetwork=net.physical_network or "",
        )
    return tree


__all__ = ["endpoint_uri", "external_network_uri", "global_tree", "tenant_tree", "uri_of"]
