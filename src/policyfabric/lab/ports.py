"""What the lab writes into an endpoint's namespace, from the intent (pure: no I/O).

A statically configured endpoint gets its declared addresses with their subnets' prefixes, an
IPv4 default route via its subnet's gateway (the distributed router; IPv6's come from router
advertisements, which it accepts), and its bridge
domain's MTU: the MTU that fits the overlay (``model.mtu``), so that a full-size packet sent to
another host fits the underlay once encapsulated. Its ``slaac`` addresses are not written: it
learns them from router advertisements, as a VM does.

A ``dhcp: true`` endpoint gets nothing written: it boots like a VM, a DHCP client in its
namespace (DHCPv6 as well where one of its IPv6 subnets gives addresses or options by DHCPv6) and
router advertisements accepted; the lab only checks, afterwards, that it came up with its intent
addresses.

Either way the lab knows every address the endpoint should hold (``addresses``: declared ones
and its SLAAC addresses, EUI-64 of its MAC, as ``model.addressing`` computes them for the
authority), which is where probes aim.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policyfabric.lab.plumbing import addressing
from policyfabric.model import objects as o
from policyfabric.model.addressing import Resolved, endpoint_addresses
from policyfabric.model.types import SLAAC


@dataclass(frozen=True)
class PortConfig:
    """One endpoint's namespace as the lab builds it."""

    mac: str
    addresses: tuple[str, ...]  # every address it should hold (probe targets)
    learnt: tuple[str, ...]  # those of them it makes itself from router advertisements (SLAAC)
    configured: tuple[str, ...]  # ADDRESS/PREFIX the lab writes (none for a DHCP endpoint)
    # the IPv4 default route and the MTU it should have: the lab writes them on a static endpoint, a
    # DHCP one should learn them (IPv6 default routes come from router advertisements)
    gateway: str | None
    mtu: int | None
    autoconf: bool  # makes its own IPv6 addresses from router advertisements (SLAAC)
    dhcp: bool
    dhcpv6: str | None = None  # "stateful" (addresses) or "stateless" (options only), for a DHCP endpoint
    # a static endpoint's IPv6 fallback default route: its first declared IPv6 address's subnet gateway
    # (a route from router advertisements, of a lower metric, wins where they are sent)
    gateway6: str | None = None


def bridge_domain_name(
    endpoint: Mapping[str, Any], subnets: Sequence[o.Subnet], groups: Mapping[str, o.EndpointGroup]
) -> str | None:
    """The endpoint's bridge domain: its EPG's, or (security groups only) its subnet's."""
    if endpoint.get("epg") in groups:
        return groups[endpoint["epg"]].bridge_domain
    return next((s.bridge_domain for s in subnets if s.name == endpoint.get("subnet")), None)


def port_config(
    endpoint: Mapping[str, Any],
    subnets: Sequence[o.Subnet],
    bridge_domains: Mapping[str, o.BridgeDomain],
    groups: Mapping[str, o.EndpointGroup],
    dhcp: bool = False,
) -> PortConfig:
    """The namespace of ``endpoint`` (as the authority returns it: its MAC filled in) whose
    tenant has these subnets, bridge domains and groups."""
    bd_name = bridge_domain_name(endpoint, subnets, groups)
    bd = bridge_domains.get(bd_name or "")
    mine = [s for s in subnets if s.bridge_domain == bd_name]
    ips: list[str] = list(endpoint.get("ip", []))
    resolved = endpoint_addresses(ips, endpoint["mac"], mine)
    addresses = tuple(str(r.address) for r in resolved)
    learnt = tuple(str(r.address) for r in resolved if r.learnt)
    declared = [str(r.address) for r in resolved if not r.learnt]
    raw = [s.model_dump(mode="json") for s in mine]
    configured, gateway = addressing(declared, raw)  # IPv6 default routes come from router advertisements
    mtu = bd.mtu if bd else None
    if dhcp:
        return PortConfig(
            endpoint["mac"], addresses, learnt, configured=(), gateway=gateway, mtu=mtu, autoconf=True,
            dhcp=True, dhcpv6=_dhcpv6_mode(resolved),
        )  # fmt: skip
    gateway6 = next(
        (str(r.subnet.gateway_ip) for r in resolved if r.address.version == 6 and not r.learnt
         and r.subnet is not None and r.subnet.gateway_ip is not None),
        None,
    )  # fmt: skip
    return PortConfig(
        endpoint["mac"], addresses, learnt, configured=tuple(configured), gateway=gateway, mtu=mtu,
        autoconf=SLAAC in ips, dhcp=False, gateway6=gateway6,
    )  # fmt: skip


def _dhcpv6_mode(resolved: Sequence[Resolved]) -> str | None:
    """DHCPv6 as a booting host would run it from what the router advertisements of its subnets
    say: for addresses where a subnet's address mode is dhcpv6-stateful, for options only where it
    is dhcpv6-stateless (its address then comes from SLAAC)."""
    modes = {
        r.subnet.ipv6_address_mode or r.subnet.ipv6_ra_mode
        for r in resolved
        if r.subnet is not None and isinstance(r.address, ipaddress.IPv6Address)
    }
    if "dhcpv6-stateful" in modes:
        return "stateful"
    if "dhcpv6-stateless" in modes:
        return "stateless"
    return None
