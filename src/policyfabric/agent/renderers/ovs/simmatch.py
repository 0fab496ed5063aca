"""Matches for the fake switch (``simulate.py``): one form for "does this packet match" and "could
some packet match both of these flows".

Every field of a match becomes a ``(value, mask)`` pair over an integer: MACs, IPv4 and IPv6
addresses (prefixes and dotted masks alike), registers, ports, tunnel keys. Testing a packet is
then ``packet & mask == value`` per field, and two matches meet (some packet matches both) unless
a field they both constrain disagrees on a bit both masks cover. Protocol keywords (``tcp``,
``arp``...) are what OVS expands them to: ``eth_type`` and ``nw_proto`` constraints.

``ct_state`` is the one field whose values are not all possible: a packet is untracked, or it
is tracked and exactly one of new, established, related or invalid, with ``rpl`` only on
established or related ones. Two matches meet on ``ct_state`` only if a state that can occur
satisfies both, so ``-new+est+trk`` and ``-new+rel+trk`` never meet.

A match's ``fields`` are sorted, so two matches OVS would store as one flow (the same fields in
another order, ``tcp`` for ``ip,nw_proto=6``, ``reg5=0/1`` for ``reg5=0x0/0x1``) compare equal:
that is how the fake switch identifies flows, as OVS does (table, priority, match).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAC_FIELDS = frozenset({"dl_src", "dl_dst", "arp_sha", "arp_tha", "nd_sll", "nd_tll"})
IPV4_FIELDS = frozenset({"nw_src", "nw_dst", "arp_spa", "arp_tpa", "tun_dst"})
IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "nd_target"})
ETH_TYPES = {"ip": 0x0800, "ipv6": 0x86DD, "arp": 0x0806}
PROTOCOLS: dict[str, tuple[int, int | None]] = {
    "ip": (0x0800, None),
    "ipv6": (0x86DD, None),
    "arp": (0x0806, None),
    "tcp": (0x0800, 6),
    "udp": (0x0800, 17),
    "icmp": (0x0800, 1),
    "tcp6": (0x86DD, 6),
    "udp6": (0x86DD, 17),
    "icmp6": (0x86DD, 58),
}
#: other spellings OVS accepts for the same field
ALIASES = {
    "eth_src": "dl_src",
    "eth_dst": "dl_dst",
    "dl_type": "eth_type",
    "ip_src": "nw_src",
    "ip_dst": "nw_dst",
    "ip_proto": "nw_proto",
    "icmpv6_type": "icmp_type",
}
WIDTHS = {"eth_type": 16, "nw_proto": 8, "nw_ttl": 8, "tp_src": 16, "tp_dst": 16, "arp_op": 16}
WIDTHS |= {"in_port": 32, "tun_id": 64, "tun_metadata0": 32, "icmp_type": 8, "conj_id": 32}
WIDTHS |= {"nd_reserved": 32, "nd_options_type": 8}

# ct_state bits, as OVS numbers them
NEW, EST, REL, RPL, INV, TRK, SNAT, DNAT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
CT_FLAGS = {"new": NEW, "est": EST, "rel": REL, "rpl": RPL, "inv": INV, "trk": TRK}
CT_FLAGS |= {"snat": SNAT, "dnat": DNAT}


def _feasible() -> frozenset[int]:
    states = {0, TRK | INV}
    for kind in (TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | REL, TRK | REL | RPL):
        states |= {kind, kind | SNAT, kind | DNAT, kind | SNAT | DNAT}
    return frozenset(states)


#: every ct_state a packet can have
CT_STATES = _feasible()


def width(name: str) -> int:
    if name in MAC_FIELDS:
        return 48
    if name in IPV4_FIELDS:
        return 32
    if name in IPV6_FIELDS:
        return 128
    if name == "ct_state":
        return 8
    return 32 if re.fullmatch(r"reg\d+", name) else WIDTHS.get(name, 64)


def to_int(name: str, value: Any) -> int:
    """A packet's field value (a MAC or address string, a protocol name, a number) as an integer."""
    if isinstance(value, int):
        return value
    text = str(value)
    if name in MAC_FIELDS:
        return int(text.replace(":", ""), 16)
    if name in IPV4_FIELDS or name in IPV6_FIELDS:
        return int(ipaddress.ip_address(text))
    if name == "eth_type" and text in ETH_TYPES:
        return ETH_TYPES[text]
    return int(text, 0)


def from_int(name: str, value: int) -> Any:
    """The inverse of ``to_int``: how packets spell the field (MACs and addresses as strings)."""
    if name in MAC_FIELDS:
        return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))
    if name in IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if name in IPV6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    return value


def _mask_of(name: str, text: str) -> int:
    bits = width(name)
    if (name in IPV4_FIELDS or name in IPV6_FIELDS) and text.isdigit():  # a prefix length
        return ((1 << bits) - 1) ^ ((1 << (bits - int(text))) - 1)
    return to_int(name, text)


def ct_bits(text: str) -> tuple[int, int]:
    """``+new-est+trk`` (or ``0x21/0x23``) as (value, mask)."""
    if not text.startswith(("+", "-")):
        value, _, mask = text.partition("/")
        m = int(mask, 0) if mask else 0xFF
        return int(value, 0) & m, m
    bits = mask_bits = 0
    for sign, name in re.findall(r"([+-])([a-z]+)", text):
        flag = CT_FLAGS[name]
        mask_bits |= flag
        bits |= flag if sign == "+" else 0
    return bits, mask_bits


Constraint = tuple[str, int, int]  # (field, value, mask)


@dataclass(frozen=True)
class Match:
    """A flow's match as sorted ``(field, value, mask)`` constraints; None from ``meet``: empty."""

    fields: tuple[Constraint, ...] = ()

    @staticmethod
    def parse(pairs: Iterable[tuple[str, str]]) -> Match:
        """A ``Flow.match`` (``(field, text)`` pairs; text "" for keywords such as ``ip``)."""
        found: dict[str, tuple[int, int]] = {}

        def add(name: str, value: int, mask: int) -> None:
            if name in found:
                v, m = found[name]
                if (v ^ value) & m & mask:
                    raise ValueError(f"match contradicts itself on {name}")
                value, mask = v | value, m | mask
            found[name] = (value & mask, mask)

        for raw, text in pairs:
            name = ALIASES.get(raw, raw)
            if name in PROTOCOLS and text == "":
                eth, proto = PROTOCOLS[name]
                add("eth_type", eth, 0xFFFF)
                if proto is not None:
                    add("nw_proto", proto, 0xFF)
            elif name == "ct_state":
                add(name, *ct_bits(text))
            else:
                value, slash, mask = text.partition("/")
                m = _mask_of(name, mask) if slash else (1 << width(name)) - 1
                add(name, to_int(name, value), m)
        return Match(tuple(sorted((k, v, m) for k, (v, m) in found.items())))

    def get(self, name: str) -> tuple[int, int] | None:
        return next(((v, m) for k, v, m in self.fields if k == name), None)

    def without(self, name: str) -> Match:
        return Match(tuple(c for c in self.fields if c[0] != name))

    def meet(self, other: Match) -> Match | None:
        """The packets both match, as a match; None when no packet can match both."""
        merged = dict((k, (v, m)) for k, v, m in self.fields)
        for k, v, m in other.fields:
            if k in merged:
                v0, m0 = merged[k]
                if (v0 ^ v) & m0 & m:
                    return None
                v, m = v0 | v, m0 | m
            merged[k] = (v, m)
        ct = merged.get("ct_state")
        if ct is not None and not any(s & ct[1] == ct[0] for s in CT_STATES):
            return None
        return Match(tuple(sorted((k, v, m) for k, (v, m) in merged.items())))

    def admits(self, packet: Packet) -> bool:
        """Whether ``packet`` matches (a field the packet does not have matches nothing)."""
        for name, value, mask in self.fields:
            have = packet.value(name)
            if have is None or have & mask != value:
                return False
        return True


@dataclass
class Packet:
    """Header fields by OVS name (``dl_src``, ``nw_dst``, ``tp_dst``...), registers and metadata.

    ``eth_type`` may be spelled ``ip``, ``ipv6`` or ``arp``; MACs and addresses are strings.
    Registers read 0 until set; other fields the packet lacks match nothing.
    """

    fields: dict[str, Any]
    regs: dict[str, int] = field(default_factory=dict)
    ct_state: int = 0
    conj_id: int = 0

    def get(self, name: str) -> Any:
        return self.regs.get(name, 0) if re.fullmatch(r"reg\d+", name) else self.fields.get(name)

    def value(self, name: str) -> int | None:
        if name == "ct_state":
            return self.ct_state
        if name == "conj_id":
            return self.conj_id
        raw = self.get(name)
        return None if raw is None else to_int(name, raw)
