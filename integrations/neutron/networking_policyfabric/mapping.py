"""Neutron resources -> policyfabric objects, as pure functions (no Neutron, no I/O).

Why pure: the driver calls these inside Neutron's transaction (precommit), where a refusal must
be raised as Neutron's own error before anything commits, and the journal worker calls them again
when it sends; both must agree, and both are tested without Neutron installed.

Inputs are the dicts Neutron's API returns (``network``, ``subnet``, ``port``,
``security_group`` with its ``security_group_rules``, ``router``, ``floatingip``). Outputs are
``Obj``: a policyfabric REST collection, and the body that collection takes (docs/api.md).

Naming: a Neutron project is the tenant named by its project id (32 hex digits: a valid
policyfabric name); every other object is named by its Neutron UUID, so names never collide and
never change when a Neutron name does.

Routing domains: Neutron lets subnets of different networks overlap unless a router joins them
(it refuses two overlapping subnets on one router). policyfabric keeps addresses unique per
l3_context, so the l3_context follows the routers: a router is an l3_context named by the
router's id, a network on a router is in that router's l3_context, and a network on no router is
an l3_context of its own, named by the network's id (``network_objects``). Overlapping subnets of
networks on no router, or on different routers, are then as independent as Neutron has them. What
Neutron allows and this cannot express is refused in precommit: a network on two routers (a
bridge domain is in one l3_context), and a subnet that overlaps a subnet of another network on
the same router (Neutron checks only the subnets the router has interfaces on; policyfabric
routes every subnet of a routed network: ``overlaps``).

``Refused`` is raised for what Neutron allows and policyfabric cannot express; the driver turns
it into Neutron's ``InvalidInput`` (HTTP 400) in precommit. docs/neutron.md lists each case.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Groups the driver keeps in every tenant, for the port-security cases Neutron expresses without a
# group: a port with port security off is filtered by nothing (one group allowing every ingress);
# a port with port security on and no groups lets nothing in or out (one group whose only rule
# allows egress to 0.0.0.0/32, an address no packet is sent to: it turns policyfabric's "egress is
# open until a group has an egress rule" into Neutron's "no rule, no egress").
OPEN_GROUP = "port-security-disabled"
CLOSED_GROUP = "no-security-groups"
NOWHERE_EGRESS = {"direction": "egress", "ethertype": "ipv4", "remote_ip_prefix": "0.0.0.0/32"}

# Ports that are not endpoints: routers' and floating IPs' ports are the L3 plugin's, DHCP's would
# be a DHCP agent's (policyfabric's agents answer DHCP themselves).
NOT_ENDPOINTS = (
    "network:router_interface",
    "network:router_interface_distributed",
    "network:router_gateway",
    "network:router_centralized_snat",
    "network:router_ha_interface",
    "network:ha_router_replicated_interface",
    "network:floatingip",
    "network:dhcp",
    "network:distributed",
)
ROUTER_INTERFACE_OWNERS = ("network:router_interface", "network:router_interface_distributed")
AUTO_ADDRESS_MODES = ("slaac", "dhcpv6-stateless")
MIN_MTU, MAX_MTU = 1280, 9000

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Neutron's protocol names and numbers (neutron_lib.constants.IP_PROTOCOL_MAP) for the four
# protocols policyfabric filters on.
_PROTOCOLS = {
    "tcp": "tcp",
    "6": "tcp",
    "udp": "udp",
    "17": "udp",
    "icmp": "icmp",
    "1": "icmp",
    "icmpv6": "icmpv6",
    "ipv6-icmp": "icmpv6",
    "58": "icmpv6",
}


class Refused(ValueError):
    """Neutron accepts this and policyfabric cannot express it: refused in precommit."""


@dataclass(frozen=True)
class Obj:
    """One policyfabric object: its REST collection and body."""

    collection: str
    body: dict[str, Any]

    @property
    def key(self) -> tuple[str, str | None, str]:
        return (self.collection, self.body.get("tenant"), self.body["name"])


def name(value: str, what: str) -> str:
    """A Neutron id as a policyfabric name (ids Neutron generates always are one)."""
    lowered = value.lower()
    if not _LABEL.fullmatch(lowered):
        raise Refused(f"{what} id {value!r} cannot name a policyfabric object (a DNS label)")
    return lowered


def tenant(project_id: str) -> list[Obj]:
    """A project's tenant and the driver's two port-security groups."""
    t = name(project_id, "project")
    return [
        Obj("tenants", {"name": t}),
        Obj(
            "security-groups",
            {
                "name": OPEN_GROUP,
                "tenant": t,
                "rules": [
                    {"direction": "ingress", "ethertype": "ipv4"},
                    {"direction": "ingress", "ethertype": "ipv6"},
                ],
            },
        ),
        Obj("security-groups", {"name": CLOSED_GROUP, "tenant": t, "rules": [dict(NOWHERE_EGRESS)]}),
    ]


def is_external(network: Mapping[str, Any]) -> bool:
    return bool(network.get("router:external"))


def l3_context(project_id: str, owner_id: str, what: str) -> Obj:
    """The l3_context named by a router's id, or by the id of a network on no router."""
    return Obj("l3-contexts", {"name": name(owner_id, what), "tenant": name(project_id, "project")})


def network_router(net_id: str, interface_ports: Iterable[Mapping[str, Any]]) -> str | None:
    """The router a network is on (``interface_ports``: the network's router interface ports), or
    None. A network on two routers is refused: its bridge domain is in one l3_context."""
    routers = sorted({p["device_id"] for p in interface_ports if p.get("device_id")})
    if len(routers) > 1:
        raise Refused(
            f"network {net_id} is on routers {', '.join(routers)}: policyfabric puts a network on one "
            "router (its bridge domain is in that router's routing domain)"
        )
    return routers[0] if routers else None


def network(net: Mapping[str, Any], router_id: str | None = None) -> Obj | None:
    """A tenant network -> its bridge domain (MTU as Neutron computed it), in the l3_context of
    its router, or its own when it is on none; an external network becomes an external network
    only with its subnet (``subnet``), so None here."""
    if is_external(net):
        return None
    mtu = net.get("mtu")
    body: dict[str, Any] = {
        "name": name(net["id"], "network"),
        "tenant": name(net["project_id"], "project"),
        "l3_context": name(router_id, "router") if router_id else name(net["id"], "network"),
    }
    if mtu:
        if not MIN_MTU <= int(mtu) <= MAX_MTU:
            raise Refused(f"MTU {mtu} is outside what policyfabric carries ({MIN_MTU}-{MAX_MTU})")
        body["mtu"] = int(mtu)
    return Obj("bridge-domains", body)


def network_objects(net: Mapping[str, Any], router_id: str | None) -> list[Obj]:
    """A tenant network's objects in the order they are written: its own l3_context (kept while
    it is on a router, so leaving the router needs no create), its router's, its bridge domain."""
    bd = network(net, router_id)
    if bd is None:
        return []
    found = [l3_context(net["project_id"], net["id"], "network")]
    if router_id:
        found.append(l3_context(net["project_id"], router_id, "router"))
    return [*found, bd]


def subnet(sub: Mapping[str, Any], net: Mapping[str, Any]) -> Obj:
    """A subnet of a tenant network -> subnet; of an external network -> the external network."""
    cidr = ipaddress.ip_network(sub["cidr"], strict=False)
    gateway = sub.get("gateway_ip") or stand_in_gateway(str(cidr))
    if ipaddress.ip_address(gateway) not in cidr:
        raise Refused(f"gateway {gateway} is outside {cidr}: policyfabric's gateway is a host of the subnet")
    if cidr.version == 4 and cidr.prefixlen > 30:
        raise Refused(f"{cidr} is too small: policyfabric needs an IPv4 subnet of /30 or larger")
    if cidr.version == 6 and cidr.prefixlen > 126:
        raise Refused(f"{cidr} is too small: policyfabric needs an IPv6 subnet of /126 or larger")
    if is_external(net):
        return Obj(
            "external-networks",
            {"name": name(net["id"], "network"), "cidr": str(cidr), "gateway_ip": gateway},
        )
    body: dict[str, Any] = {
        "name": name(sub["id"], "subnet"),
        "tenant": name(net["project_id"], "project"),
        "bridge_domain": name(net["id"], "network"),
        "cidr": str(cidr),
        "gateway_ip": gateway,
        "enable_dhcp": bool(sub.get("enable_dhcp", True)),
        "dns_nameservers": list(sub.get("dns_nameservers") or []),
        "host_routes": [
            {"destination": r["destination"], "nexthop": r["nexthop"]} for r in sub.get("host_routes") or []
        ],
    }
    for key in ("ipv6_ra_mode", "ipv6_address_mode"):
        if sub.get(key):
            body[key] = sub[key]
    return Obj("subnets", body)


def stand_in_gateway(cidr: str) -> str:
    """The gateway policyfabric is given for a Neutron subnet without one (policyfabric's subnets
    always have one: the distributed router's address): the subnet's last host address (IPv6: the
    last but one), one a random allocation rarely picks. A port given it is refused (``port``)."""
    return str(ipaddress.ip_network(cidr, strict=False)[-2])


def overlaps(cidr: str, others: Iterable[str]) -> str | None:
    """The first of ``others`` that overlaps ``cidr`` (the subnets of the other networks on the
    same router: one l3_context), or None."""
    mine = ipaddress.ip_network(cidr, strict=False)
    for other in others:
        theirs = ipaddress.ip_network(other, strict=False)
        if theirs.version == mine.version and theirs.overlaps(mine):
            return other
    return None


def is_endpoint(port: Mapping[str, Any], net: Mapping[str, Any]) -> bool:
    """Whether a port is an endpoint: not a router's, floating IP's or DHCP's port, not on an
    external network."""
    return port.get("device_owner", "") not in NOT_ENDPOINTS and not is_external(net)


def hostname(host: str | None) -> str | None:
    """``binding:host_id`` as policyfabric host name (lower-case RFC 1123), None if unset."""
    if not host:
        return None
    value = host.lower()
    if len(value) > 253 or not all(_HOSTNAME_LABEL.fullmatch(p) for p in value.split(".")):
        raise Refused(f"host {host!r} is not an RFC 1123 host name, which policyfabric agents are named by")
    return value


def port(
    p: Mapping[str, Any], net: Mapping[str, Any], subnets: Mapping[str, Mapping[str, Any]]
) -> Obj | None:
    """A port -> endpoint (None: not an endpoint, or no address yet: an endpoint needs a subnet).

    ``subnets``: the port's subnets by id (their IPv6 modes). An address in a subnet where hosts
    make their own (SLAAC, dhcpv6-stateless) is Neutron's EUI-64 of the MAC, which the authority
    computes from the same MAC: it is sent as ``slaac``. The endpoint lives in the network's tenant
    whatever the port's project (an admin's port on a project's network): its bridge domain and
    subnets are there. Its security groups are named as they are; when they are another project's,
    the sender writes copies of them into the network's tenant (``foreign_groups``)."""
    if not is_endpoint(p, net):
        return None
    ips: list[str] = []
    first_subnet: str | None = None
    for fixed in p.get("fixed_ips") or []:
        sub = subnets.get(fixed["subnet_id"], {})
        if sub and not sub.get("gateway_ip") and fixed["ip_address"] == stand_in_gateway(sub["cidr"]):
            raise Refused(
                f"{fixed['ip_address']} is the gateway policyfabric gives subnet {sub['id']} "
                "(a subnet without a gateway in Neutron): choose another address"
            )
        first_subnet = first_subnet or fixed["subnet_id"]
        auto = (
            sub.get("ipv6_ra_mode") in AUTO_ADDRESS_MODES
            or sub.get("ipv6_address_mode") in AUTO_ADDRESS_MODES
        )
        value = "slaac" if auto else fixed["ip_address"]
        if value not in ips:
            ips.append(value)
    if first_subnet is None:
        return None
    if p.get("port_security_enabled", True) is False:
        groups = [OPEN_GROUP]
    else:
        groups = [name(g, "security group") for g in p.get("security_groups") or []] or [CLOSED_GROUP]
    body: dict[str, Any] = {
        "name": name(p["id"], "port"),
        "tenant": name(net["project_id"], "project"),
        "subnet": name(first_subnet, "subnet"),
        "ip": ips,
        "mac": p["mac_address"].lower(),
        "security_groups": groups,
    }
    host = hostname(p.get("binding:host_id"))
    if host is not None:
        body["host"] = host
    pairs = [address_pair(pair, body["mac"]) for pair in p.get("allowed_address_pairs") or []]
    if pairs:
        body["allowed_address_pairs"] = pairs
    return Obj("endpoints", body)


def address_pair(pair: Mapping[str, Any], own_mac: str) -> dict[str, str]:
    """Neutron's allowed address pair (``ip_address``: an address or a prefix; ``mac_address``,
    which Neutron fills with the port's own when none is given) -> ``{ip, mac}``; ``mac`` only
    when it is not the port's own, which is what policyfabric assumes when it is left out."""
    text = str(pair["ip_address"])
    net = ipaddress.ip_network(text, strict=False)
    out = {"ip": str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)}
    mac = str(pair.get("mac_address") or "").lower()
    if mac and mac != own_mac:
        out["mac"] = mac
    return out


def foreign_groups(p: Mapping[str, Any], net: Mapping[str, Any]) -> list[str]:
    """The groups of a port whose project is not its network's: they must also exist in the
    network's tenant, where the endpoint is (references are per tenant). Empty otherwise."""
    if not p.get("project_id") or p["project_id"] == net.get("project_id"):
        return []
    if p.get("port_security_enabled", True) is False:
        return []
    return list(p.get("security_groups") or [])


def group_closure(first: Iterable[str], groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``first`` and every group their rules name as remote group, transitively, in a stable
    order (``groups``: Neutron's groups by id; one not there is left out)."""
    found: list[str] = []
    todo = list(first)
    while todo:
        gid = todo.pop(0)
        if gid in found or gid not in groups:
            continue
        found.append(gid)
        todo += [
            r["remote_group_id"]
            for r in groups[gid].get("security_group_rules") or []
            if r.get("remote_group_id")
        ]
    return found


def _protocol(rule: Mapping[str, Any]) -> str:
    raw = rule.get("protocol")
    if raw in (None, "", "any", "0"):
        return "any"
    proto = _PROTOCOLS.get(str(raw).lower())
    if proto is None:
        raise Refused(f"protocol {raw!r}: policyfabric filters tcp, udp, icmp, icmpv6 or any protocol")
    if proto == "icmp" and rule.get("ethertype") == "IPv6":
        proto = "icmpv6"  # Neutron's IPv6 rule with protocol icmp means ICMPv6
    return proto


def security_group_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """One Neutron rule with Neutron's semantics (ethertype, protocol by name or number, port
    range, remote prefix or remote group)."""
    if rule.get("remote_address_group_id"):
        raise Refused("remote address groups are not supported by policyfabric")
    proto = _protocol(rule)
    out: dict[str, Any] = {
        "direction": rule["direction"],
        "ethertype": "ipv6" if rule.get("ethertype") == "IPv6" else "ipv4",
    }
    if proto != "any":
        out["protocol"] = proto
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    if proto in ("tcp", "udp"):
        if low is not None or high is not None:
            low = int(low if low is not None else 1)
            high = int(high if high is not None else 65535)
            if (low, high) != (1, 65535):
                out["port"] = low if low == high else f"{low}-{high}"
    elif proto in ("icmp", "icmpv6"):
        # Neutron's ICMP rule: port_range_min is the type, port_range_max the code
        if high is not None and low is None:
            raise Refused(f"ICMP code {high} without a type")
        if low is not None:
            out["icmp_type"] = int(low)
        if high is not None:
            out["icmp_code"] = int(high)
    elif low is not None or high is not None:
        raise Refused(f"a port range ({low}, {high}) needs protocol tcp or udp")
    if rule.get("remote_ip_prefix"):
        prefix = ipaddress.ip_network(rule["remote_ip_prefix"], strict=False)
        if prefix.prefixlen != 0:  # 0.0.0.0/0 and ::/0 match what no prefix matches
            out["remote_ip_prefix"] = str(prefix)
    if rule.get("remote_group_id"):
        out["remote_group"] = name(rule["remote_group_id"], "security group")
    return out


def security_group(sg: Mapping[str, Any], project_id: str | None = None) -> Obj:
    """A group and its rules, in its project's tenant or (``project_id``: a copy for a port of
    another project's network) that one. Neutron's group with no egress rule lets nothing out,
    where policyfabric's lets everything out: such a group gets the never-matching egress rule."""
    rules = [security_group_rule(r) for r in sg.get("security_group_rules") or []]
    if sg.get("stateful", True) is False:
        raise Refused("stateless security groups are not supported by policyfabric")
    unique: list[dict[str, Any]] = []
    for r in rules:
        if r not in unique:
            unique.append(r)
    if not any(r["direction"] == "egress" for r in unique):
        unique.append(dict(NOWHERE_EGRESS))
    return Obj(
        "security-groups",
        {
            "name": name(sg["id"], "security group"),
            "tenant": name(project_id or sg["project_id"], "project"),
            "rules": unique,
        },
    )


# The optional fields this mapping writes that an older authority's model may lack, by the name of
# the authority's OpenAPI schema that would list them.
NEWER_FIELDS = {
    "Endpoint": ("allowed_address_pairs",),
    "SecurityGroupRule": ("icmp_type", "icmp_code"),
}


def unsupported(obj: Obj, known: Mapping[str, Iterable[str]]) -> list[str]:
    """The fields ``obj`` uses that the authority's model does not have (``known``: the
    properties of its OpenAPI schemas by name; a schema it does not list is not judged). The
    driver refuses those in precommit, with Neutron's error, rather than have the authority refuse
    the journal's row after Neutron committed."""

    def lacks(schema: str, field: str) -> bool:
        return schema in known and field not in set(known[schema])

    missing: list[str] = []
    if obj.collection == "endpoints":
        missing += [f for f in NEWER_FIELDS["Endpoint"] if f in obj.body and lacks("Endpoint", f)]
    if obj.collection == "security-groups":
        for rule in obj.body.get("rules", []):
            missing += [
                f for f in NEWER_FIELDS["SecurityGroupRule"]
                if f in rule and lacks("SecurityGroupRule", f) and f not in missing
            ]  # fmt: skip
    return missing


def router(
    r: Mapping[str, Any],
    interface_subnets: Sequence[str],
    gateway_ip: str | None,
    gateway_hosts: Sequence[str],
) -> Obj:
    """A router with its interfaces (subnet ids, from its interface ports) and its external
    gateway (network, SNAT, the address Neutron gave its gateway port, the hosts that may be
    elected its SNAT gateway: the driver's ``gateway_hosts`` option)."""
    body: dict[str, Any] = {
        "name": name(r["id"], "router"),
        "tenant": name(r["project_id"], "project"),
        "l3_context": name(r["id"], "router"),
        "interfaces": sorted({name(s, "subnet") for s in interface_subnets}),
    }
    info = r.get("external_gateway_info")
    if info and info.get("network_id"):
        gw: dict[str, Any] = {
            "network": name(info["network_id"], "network"),
            "snat": bool(info.get("enable_snat", True)),
            "hosts": [hostname(h) for h in gateway_hosts],
        }
        if gateway_ip:
            gw["ip"] = gateway_ip
        body["external_gateway"] = gw
    return Obj("routers", body)


def router_objects(
    r: Mapping[str, Any],
    interface_subnets: Sequence[str],
    gateway_ip: str | None,
    gateway_hosts: Sequence[str],
) -> list[Obj]:
    """A router's l3_context, then the router."""
    return [
        l3_context(r["project_id"], r["id"], "router"),
        router(r, interface_subnets, gateway_ip, gateway_hosts),
    ]


def floating_ip(fip: Mapping[str, Any]) -> Obj:
    """A floating IP with the address Neutron allocated, and the port (endpoint) it is NATed to."""
    body: dict[str, Any] = {
        "name": name(fip["id"], "floating IP"),
        "tenant": name(fip["project_id"], "project"),
        "network": name(fip["floating_network_id"], "network"),
        "ip": fip["floating_ip_address"],
    }
    if fip.get("port_id"):
        body["endpoint"] = name(fip["port_id"], "port")
    return Obj("floating-ips", body)


def gateway_address(gw_port: Mapping[str, Any] | None) -> str | None:
    """The IPv4 address of a router's gateway port (policyfabric's SNAT source is IPv4)."""
    for fixed in (gw_port or {}).get("fixed_ips") or []:
        if ipaddress.ip_address(fixed["ip_address"]).version == 4:
            return str(fixed["ip_address"])
    return None
