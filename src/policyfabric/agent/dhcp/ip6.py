"""Ethernet + IPv6 for the host's RA and DHCPv6 answers: one packet parsed out of a frame (checked
against its own lengths and its upper-layer checksum), one built into a frame. Pure, no socket.

Only what a router advertiser and a DHCPv6 server on the client's own link need: no extension
headers (a router solicitation and a DHCPv6 client message carry none; a frame that has one is
refused rather than walked), no fragments, no VLAN tag (the packet-in is the port's own frame).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from policyfabric.agent.dhcp.packet import ETH, Malformed

ETH_IPV6 = 0x86DD
IPV6 = struct.Struct("!IHBB16s16s")  # version/class/flow, payload length, next header, hop limit, addresses
ICMPV6, UDP = 58, 17
UDP_HEADER = struct.Struct("!HHHH")
ALL_NODES = "ff02::1"


@dataclass(frozen=True)
class Packet6:
    """One IPv6 packet off the wire: its Ethernet and IPv6 addresses and its upper-layer bytes."""

    eth_src: str
    eth_dst: str
    src: str
    dst: str
    next_header: int
    hop_limit: int
    payload: bytes  # the upper-layer header and data (checksum verified)


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def multicast_mac(ip: str) -> str:
    """The Ethernet address of IPv6 multicast group ``ip``: 33:33 and its last 32 bits (RFC 2464)."""
    low = ipaddress.IPv6Address(ip).packed[12:]
    return mac_text(b"\x33\x33" + low)


def checksum(src: bytes, dst: bytes, next_header: int, upper: bytes) -> int:
    """The ICMPv6/UDP checksum over the IPv6 pseudo-header and ``upper`` (RFC 8200 8.1)."""
    data = src + dst + struct.pack("!IxxxB", len(upper), next_header) + upper
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def parse(frame: bytes) -> Packet6:
    """The IPv6 packet in an Ethernet frame; ``Malformed`` for anything else, for a payload length
    that does not fit, for an extension header, and for a wrong ICMPv6 or UDP checksum."""
    if len(frame) < ETH.size + IPV6.size:
        raise Malformed(f"{len(frame)} bytes: too short for IPv6")
    dst_mac, src_mac, ethertype = ETH.unpack_from(frame)
    if ethertype != ETH_IPV6:
        raise Malformed(f"ethertype {ethertype:#06x}, not IPv6")
    first, length, next_header, hop_limit, src, dst = IPV6.unpack_from(frame, ETH.size)
    if first >> 28 != 6:
        raise Malformed("not an IPv6 header")
    start = ETH.size + IPV6.size
    if start + length > len(frame):
        raise Malformed(f"payload length {length} runs past the frame")
    if next_header not in (ICMPV6, UDP):
        raise Malformed(f"next header {next_header}: neither ICMPv6 nor UDP (extension headers are refused)")
    upper = frame[start : start + length]
    if next_header == UDP:
        if length < UDP_HEADER.size or UDP_HEADER.unpack_from(upper)[2] != length:
            raise Malformed("UDP length does not match the IPv6 payload length")
        if UDP_HEADER.unpack_from(upper)[3] == 0:
            raise Malformed("UDP over IPv6 without a checksum")
    elif length < 4:
        raise Malformed("ICMPv6 message shorter than its header")
    if checksum(src, dst, next_header, upper) != 0:
        raise Malformed("bad checksum")
    return Packet6(
        mac_text(src_mac),
        mac_text(dst_mac),
        str(ipaddress.IPv6Address(src)),
        str(ipaddress.IPv6Address(dst)),
        next_header,
        hop_limit,
        upper,
    )


def build(
    eth_src: str, eth_dst: str, src: str, dst: str, next_header: int, hop_limit: int, upper: bytes, at: int
) -> bytes:
    """A frame carrying ``upper`` (its checksum field, at offset ``at``, zero) with the checksum
    filled in."""
    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    value = checksum(s, d, next_header, upper)
    if next_header == UDP and value == 0:
        value = 0xFFFF  # zero means "no checksum", which IPv6 forbids for UDP
    upper = upper[:at] + struct.pack("!H", value) + upper[at + 2 :]
    header = IPV6.pack(6 << 28, len(upper), next_header, hop_limit, s, d)
    return ETH.pack(mac_bytes(eth_dst), mac_bytes(eth_src), ETH_IPV6) + header + upper
