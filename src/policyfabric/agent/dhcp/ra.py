"""Router advertisements (RFC 4861 4.1, 4.2, 4.6): a router solicitation parsed out of a frame, an
advertisement built into one. Pure functions over bytes, no socket.

What an advertisement says is Neutron's radvd configuration for a router's subnet
(``neutron/agent/linux/ra.py``), per the subnet's ``ipv6_ra_mode``: a prefix information option
for each advertised subnet with the on-link flag, and the autonomous flag for ``slaac`` and
``dhcpv6-stateless`` (hosts make EUI-64 addresses); the managed flag (M) for
``dhcpv6-stateful`` and the other-configuration flag (O) for ``dhcpv6-stateless``; the bridge
domain's MTU; the router's link-layer address. radvd's default lifetimes are kept.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from policyfabric.agent.dhcp import ip6
from policyfabric.agent.dhcp.packet import Malformed

SOLICITATION, ADVERTISEMENT = 133, 134
SOURCE_LLA, PREFIX_INFO, MTU_OPTION = 1, 3, 5
MANAGED, OTHER = 0x80, 0x40  # RA flags
ON_LINK, AUTONOMOUS = 0x80, 0x40  # prefix information flags
ROUTER_LIFETIME = 1800  # s: radvd's default (3 x MaxRtrAdvInterval)
VALID_LIFETIME, PREFERRED_LIFETIME = 86400, 14400  # s: radvd's defaults
CUR_HOP_LIMIT = 64
ND_HOP_LIMIT = 255  # RFC 4861: neighbour discovery is sent with 255 and accepted only with it

RA_HEADER = struct.Struct("!BBHBBHII")  # type, code, checksum, hop limit, flags, lifetime, reachable, retrans
PREFIX = struct.Struct("!BBBBIII16s")  # type, length, prefix length, flags, lifetimes, prefix


@dataclass(frozen=True)
class Solicitation:
    eth_src: str
    src: str  # "::" before the host has an address: then the answer goes to all nodes
    source_lla: str | None  # the solicitation's source link-layer address option


@dataclass(frozen=True)
class PrefixInfo:
    prefix: str  # fd00:1::/64
    autonomous: bool  # A: hosts make their own address in it (SLAAC)


@dataclass(frozen=True)
class Advert:
    """What the router of some of a port's subnets advertises to it."""

    router_mac: str  # the source link-layer address (and the frame's source)
    router_lla: str  # the source address: the router MAC's EUI-64 link-local address
    managed: bool  # M: addresses from DHCPv6
    other: bool  # O: other configuration (name servers) from DHCPv6
    lifetime: int  # router lifetime, s (0: not a default router)
    mtu: int  # 0: no MTU option
    prefixes: tuple[PrefixInfo, ...]


def _options(data: bytes) -> dict[int, bytes]:
    """Neighbour discovery options (RFC 4861 4.6): each a type, a length in units of 8 bytes (never
    0) and a body; the first of each type is kept (RFC 4861 allows repeats of some)."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise Malformed("an option without its length")
        kind, units = data[i], data[i + 1]
        if units == 0 or i + units * 8 > len(data):
            raise Malformed(f"option {kind} has length {units}")
        out.setdefault(kind, data[i + 2 : i + units * 8])
        i += units * 8
    return out


def parse_solicitation(frame: bytes) -> Solicitation:
    """The router solicitation in an Ethernet frame; ``Malformed`` for anything else (RFC 4861
    6.1.1's checks: hop limit 255, code 0, at least 8 bytes, options of non-zero length, and no
    source link-layer address option from the unspecified address)."""
    pkt = ip6.parse(frame)
    if pkt.next_header != ip6.ICMPV6:
        raise Malformed("not ICMPv6")
    kind, code = pkt.payload[0], pkt.payload[1]
    if kind != SOLICITATION:
        raise Malformed(f"ICMPv6 type {kind}, not a router solicitation")
    if code != 0 or pkt.hop_limit != ND_HOP_LIMIT or len(pkt.payload) < 8:
        raise Malformed("code, hop limit or length not a router solicitation's")
    options = _options(pkt.payload[8:])
    lla = options.get(SOURCE_LLA)
    if lla is not None and (pkt.src == "::" or len(lla) != 6):
        raise Malformed("a source link-layer address option from :: or not 6 bytes long")
    return Solicitation(pkt.eth_src, pkt.src, ip6.mac_text(lla) if lla is not None else None)


def advert_body(adv: Advert) -> bytes:
    """The ICMPv6 message (checksum zero): the header, then source link-layer address, MTU and one
    prefix information option per prefix."""
    flags = (MANAGED if adv.managed else 0) | (OTHER if adv.other else 0)
    out = RA_HEADER.pack(ADVERTISEMENT, 0, 0, CUR_HOP_LIMIT, flags, adv.lifetime, 0, 0)
    out += bytes((SOURCE_LLA, 1)) + ip6.mac_bytes(adv.router_mac)
    if adv.mtu:
        out += struct.pack("!BBHI", MTU_OPTION, 1, 0, adv.mtu)
    for p in adv.prefixes:
        net = ipaddress.IPv6Network(p.prefix)
        pflags = ON_LINK | (AUTONOMOUS if p.autonomous else 0)
        out += PREFIX.pack(
            PREFIX_INFO, 4, net.prefixlen, pflags, VALID_LIFETIME, PREFERRED_LIFETIME, 0,
            net.network_address.packed,
        )  # fmt: skip
    return out


def build_advert(adv: Advert, to: Solicitation | None = None) -> bytes:
    """The frame advertising ``adv``: to the soliciting host's own address when it has one (RFC
    4861 6.2.6 allows the unicast answer), otherwise to all nodes (an unsolicited advertisement,
    or an answer to ``::``). The frame goes out of one port only either way."""
    if to is not None and to.src != "::":
        eth_dst, dst = to.eth_src, to.src  # the port's own MAC (the punt flow checked it)
    else:
        eth_dst, dst = ip6.multicast_mac(ip6.ALL_NODES), ip6.ALL_NODES
    body = advert_body(adv)
    return ip6.build(adv.router_mac, eth_dst, adv.router_lla, dst, ip6.ICMPV6, ND_HOP_LIMIT, body, 2)
