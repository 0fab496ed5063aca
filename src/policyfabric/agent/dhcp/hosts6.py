"""What this host tells a local endpoint about IPv6: the router advertisements its port gets and
the DHCPv6 answers it is given. Pure functions of the view (``Network``), no I/O.

The source of both is the router that serves the subnet on the endpoint's bridge domain: its MAC
(the same on every host) and that MAC's EUI-64 link-local address
(``model.addressing.router_link_local``, the one function the routing pipeline also uses for the
gateway's link-local address), so the default route an endpoint learns from an advertisement is
a neighbour the host answers for. A subnet that no router serves is still advertised (its prefix
and the M/O flags: hosts still make their addresses and ask DHCPv6) but with router lifetime 0:
no default route to nowhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from policyfabric.agent.dhcp.dhcp6 import Config6
from policyfabric.agent.dhcp.packet import DEFAULT_SERVER_MAC
from policyfabric.agent.dhcp.ra import ROUTER_LIFETIME, Advert, PrefixInfo
from policyfabric.agent.view import DHCP6_MODES, BridgeDomain, Endpoint, Ipv6Subnet, Network
from policyfabric.model.addressing import router_link_local

AUTO = ("slaac", "dhcpv6-stateless")


@dataclass(frozen=True)
class Port6:
    """A port's IPv6 configuration: the advertisements it gets (one per router: each has its own
    source) and its DHCPv6 answers (None: DHCPv6 is not answered for it)."""

    adverts: tuple[Advert, ...] = ()
    dhcp6: Config6 | None = None


def _router_mac(net: Network, bd: BridgeDomain, subnet: Ipv6Subnet) -> str | None:
    gateway = ipaddress.ip_address(subnet.gateway)
    return next(
        (
            r.mac
            for r in net.routers.values()
            for i in r.interfaces
            if i.bd == bd.uri and ":" in i.gateway_ip and ipaddress.ip_address(i.gateway_ip) == gateway
        ),
        None,
    )


@dataclass(frozen=True)
class BdConfig:
    """What a bridge domain's IPv6 subnets say to each of its endpoints alike, worked out once per
    bridge domain: per endpoint, the advertisements of 10,000 endpoints on one bridge domain took
    ~560 ms, this way ~3 ms (one run, loaded machine), and the periodic sender works them out
    after every reconcile. ``port6`` adds the endpoint's own addresses."""

    adverts: tuple[Advert, ...] = ()
    dhcp6: Config6 | None = None  # its ``addresses`` empty: the endpoint's are added per port
    stateful: tuple[ipaddress.IPv6Network, ...] = ()


def bd_config(net: Network, bd: BridgeDomain, lease_time: int = 86400) -> BdConfig:
    """The advertisements (one per router: each has its own source) and the DHCPv6 answers of
    ``bd``'s IPv6 subnets."""
    by_router: dict[str, list[Ipv6Subnet]] = {}
    routed: set[str] = set()
    dhcp6: list[tuple[Ipv6Subnet, str]] = []
    for subnet in bd.ipv6:
        mac = _router_mac(net, bd, subnet)
        if mac is not None:
            routed.add(mac)
        source = mac or DEFAULT_SERVER_MAC
        if subnet.ra_mode is not None:
            by_router.setdefault(source, []).append(subnet)
        if subnet.address_mode in DHCP6_MODES:
            dhcp6.append((subnet, source))
    adverts = tuple(
        Advert(
            router_mac=mac,
            router_lla=router_link_local(mac),
            managed=any(s.ra_mode == "dhcpv6-stateful" for s in subnets),
            other=any(s.ra_mode == "dhcpv6-stateless" for s in subnets),
            lifetime=ROUTER_LIFETIME if mac in routed else 0,
            mtu=bd.mtu,
            prefixes=tuple(PrefixInfo(s.prefix, s.ra_mode in AUTO) for s in subnets),
        )
        for mac, subnets in sorted(by_router.items())
    )
    if not dhcp6:
        return BdConfig(adverts)
    stateful = [s for s, _ in dhcp6 if s.address_mode == "dhcpv6-stateful"]
    server = dhcp6[0][1]
    dns = tuple(dict.fromkeys(a for s, _ in dhcp6 for a in s.dns))
    prefixes = tuple(s.prefix for s in stateful)
    config = Config6(server, router_link_local(server), (), prefixes, dns, lease_time)
    return BdConfig(adverts, config, tuple(ipaddress.IPv6Network(s.prefix) for s in stateful))


def port6(config: BdConfig, ep: Endpoint) -> Port6 | None:
    """``ep``'s IPv6 configuration on a bridge domain configured so: DHCPv6 hands it its intent
    addresses in the dhcpv6-stateful subnets (none there: name servers only)."""
    dhcp6 = config.dhcp6
    if dhcp6 is not None and config.stateful:
        held = tuple(
            ip for ip in ep.ips if ":" in ip and any(ipaddress.IPv6Address(ip) in n for n in config.stateful)
        )
        dhcp6 = replace(dhcp6, addresses=held)
    if not config.adverts and dhcp6 is None:
        return None
    return Port6(config.adverts, dhcp6)


def port6_of(net: Network, ep: Endpoint, lease_time: int = 86400) -> Port6 | None:
    """``ep``'s IPv6 configuration from its bridge domain's IPv6 subnets; None: nothing to say."""
    bd = net.bds.get(ep.bd)
    if ep.ofport is None or bd is None or not bd.ipv6:
        return None
    return port6(bd_config(net, bd, lease_time), ep)
