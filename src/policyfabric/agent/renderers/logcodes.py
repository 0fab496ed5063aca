"""What a logged verdict says decided, as both renderers encode it and the agent's rule log reads it.

Neutral ground between the renderers: the Open vSwitch flows carry it as a controller action's
6-byte userdata (``ovs/logflows.py``), the nftables ruleset as a ``log prefix`` (``pf:KIND:VERDICT:ID``,
``nftables/ruleset.py``); the agent names it (``agent/rulelog.py``). Neither renderer imports the
other nor the agent, so the codes live here, below both.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

RULE = 1  # a contract or security group rule decided (the id is ``rule_id``)
DEFAULT_DENY_IN = 2  # a port's security groups' default deny, ingress (the id is the port; 0: by address)
DEFAULT_DENY_OUT = 3  # the same, egress
KINDS = frozenset({RULE, DEFAULT_DENY_IN, DEFAULT_DENY_OUT})

_USERDATA = struct.Struct("!BBI")  # kind, allowed, id


@dataclass(frozen=True)
class Decided:
    """What decided a logged packet: the kind, the verdict, the rule's id or the port."""

    kind: int
    allowed: bool
    ident: int


# where a renderer hands a logged packet: what decided, and the packet from its IP header
LogSink = Callable[[Decided, bytes], None]


def rule_id(*parts: str) -> int:
    """A rule's 31-bit log id: a stable hash of what names it (a contract's URI and rule key, a
    security group rule's key), computed the same way by both renderers and the agent's namer."""
    return zlib.crc32("|".join(("log", *parts)).encode()) & 0x7FFFFFFF or 1


def encode_userdata(kind: int, allowed: bool, ident: int) -> bytes:
    return _USERDATA.pack(kind, int(allowed), ident)


def decode_userdata(data: bytes) -> Decided | None:
    """The verdict a packet-in's userdata names; None for userdata that is not ours."""
    if len(data) != _USERDATA.size:
        return None
    kind, allowed, ident = _USERDATA.unpack(data)
    if kind not in KINDS or allowed > 1:
        return None
    return Decided(kind, bool(allowed), ident)


def prefix(kind: int, allowed: bool, ident: int) -> str:
    """The netfilter log prefix of a verdict (``parse_prefix`` reads it back)."""
    return f"pf:{kind}:{int(allowed)}:{ident}"


def parse_prefix(raw: bytes) -> Decided | None:
    """``pf:KIND:VERDICT:ID``; None for another prefix or an unknown kind, verdict or id range."""
    parts = raw.rstrip(b"\0").decode(errors="replace").split(":")
    if len(parts) != 4 or parts[0] != "pf" or not all(p.isdigit() for p in parts[1:]):
        return None
    kind, verdict, ident = (int(p) for p in parts[1:])
    if kind not in KINDS or verdict not in (0, 1) or ident >= 1 << 32:
        return None
    return Decided(kind, verdict == 1, ident)
