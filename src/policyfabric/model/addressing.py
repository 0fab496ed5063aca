"""An endpoint's real addresses: what it declares, with each ``slaac`` entry resolved.

``slaac`` in an endpoint's ``ip`` list means "the address this endpoint makes itself from router
advertisements": RFC 4862 stateless autoconfiguration with the modified EUI-64 interface
identifier of its MAC (RFC 4291 appendix A), in every auto-address subnet of its bridge domain
(``ipv6_ra_mode`` or ``ipv6_address_mode`` slaac or dhcpv6-stateless, always a /64). That address
is a pure function of the MAC and the prefix, so it is computed here, once, and every consumer
(the address checks and claims of ``rules``, the policy tree's address sets, the endpoint
registry, the lab's probes) gets the same answer instead of treating ``slaac`` as "unknown".
Neutron does the same: its IPAM writes the EUI-64 address into the port's ``fixed_ips``
(``neutron/common/ipv6_utils.py``, ``is_auto_address_subnet``; ``netutils.get_ipv6_addr_by_EUI64``).

Pure functions, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from policyfabric.model.types import SLAAC, IPAddress

if TYPE_CHECKING:  # annotations only: the agent imports this module, not the pydantic models
    from policyfabric.model.objects import Subnet

EUI64_PREFIXLEN = 64  # RFC 4862 5.5.3: the prefix and a 64-bit interface identifier make 128 bits


def interface_id(mac: str) -> int:
    """The modified EUI-64 interface identifier of ``mac`` (RFC 4291 appendix A): ``ff:fe`` in the
    middle of the MAC and its universal/local bit (0x02 of the first octet) inverted.
    ``02:00:00:00:00:01`` -> ``0000:00ff:fe00:0001``."""
    octets = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(octets) != 6:
        raise ValueError(f"{mac!r} is not a 48-bit MAC address")
    return int.from_bytes(bytes([octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]]), "big")


def eui64_address(mac: str, prefix: ipaddress.IPv6Network) -> ipaddress.IPv6Address:
    """The SLAAC address of ``mac`` in the /64 ``prefix``."""
    if prefix.version != 6 or prefix.prefixlen != EUI64_PREFIXLEN:
        raise ValueError(f"an EUI-64 address needs an IPv6 /64 prefix, and {prefix} is not one")
    return ipaddress.IPv6Address(int(prefix.network_address) | interface_id(mac))


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The link-local address (fe80::/64) every IPv6 interface makes from its MAC."""
    return eui64_address(mac, ipaddress.IPv6Network("fe80::/64"))


def router_link_local(mac: str) -> str:
    """A router's IPv6 link-local address (EUI-64 of its gateway MAC, fe80::/64), as text: what
    every host answers neighbour solicitations for on the router's IPv6 legs, and the source of
    its router advertisements, so an endpoint that learnt its default route from an RA (via this
    address) reaches the same distributed router as one configured with the gateway address."""
    return str(link_local(mac))


@dataclass(frozen=True)
class Resolved:
    """One address an endpoint holds: the ``ip`` entry it comes from and the subnet it is in
    (None for a declared address outside every subnet given)."""

    field: str  # "ip[1]"
    address: IPAddress
    subnet: Subnet | None
    learnt: bool  # from router advertisements (``slaac``), not declared as such


def endpoint_addresses(ip: Iterable[str], mac: str | None, subnets: Iterable[Subnet]) -> list[Resolved]:
    """Every address of an endpoint with these ``ip`` entries and ``mac`` on a bridge domain with
    these ``subnets``: declared ones as they are, each ``slaac`` entry as the EUI-64 address in
    every auto-address subnet (none when the MAC is not known yet: the authority fills it in
    before it checks, an offline check of a file may not have it)."""
    subnets = list(subnets)
    out = []
    for i, text in enumerate(ip):
        field = f"ip[{i}]"
        if text == SLAAC:
            if mac is None:
                continue
            for subnet in subnets:
                if subnet.auto_address and isinstance(subnet.cidr, ipaddress.IPv6Network):
                    out.append(Resolved(field, eui64_address(mac, subnet.cidr), subnet, True))
            continue
        addr = ipaddress.ip_address(text)
        home = next((s for s in subnets if addr.version == s.cidr.version and addr in s.cidr), None)
        out.append(Resolved(field, addr, home, False))
    return out
