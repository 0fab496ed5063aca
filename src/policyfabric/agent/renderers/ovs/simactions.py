"""Actions for the fake switch (``simulate.py``): reading and writing fields by their NXM names
and bit ranges, and the parts of ``ct(...)`` and ``learn(...)`` that need parsing.

Written for the action strings the compiler emits, in ``ovs-ofctl`` syntax, with OVS's meaning;
anything else is refused (``NotImplementedError``) rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policyfabric.agent.renderers.ovs.flows import NXM_FIELDS, Flow
from policyfabric.agent.renderers.ovs.simconntrack import Nat
from policyfabric.agent.renderers.ovs.simmatch import (
    ALIASES,
    IPV4_FIELDS,
    IPV6_FIELDS,
    MAC_FIELDS,
    Packet,
    from_int,
    to_int,
    width,
)

NXM_NAMES = NXM_FIELDS

OXM_NAMES = {"dl_src": "eth_src", "dl_dst": "eth_dst"}  # how set_field spells them (and OVS dumps them)


@dataclass(frozen=True)
class Ref:
    """A field, or some of its bits: ``NXM_NX_REG0[0..15]``, ``reg4``, ``NXM_OF_ETH_DST[]``."""

    name: str
    lo: int
    hi: int

    @staticmethod
    def parse(text: str) -> Ref:
        raw, _, bits = text.partition("[")
        name = NXM_NAMES.get(raw) or re.sub(r"^NXM_NX_REG(\d+)$", r"reg\1", raw)
        name = ALIASES.get(name, name)
        bits = bits.rstrip("]")
        if not bits:
            return Ref(name, 0, width(name) - 1)
        first, _, last = bits.partition("..")
        return Ref(name, int(first), int(last or first))

    @property
    def full(self) -> bool:
        return self.lo == 0 and self.hi == width(self.name) - 1

    def read(self, p: Packet) -> int:
        value = p.value(self.name) or 0
        return (value >> self.lo) & ((1 << (self.hi - self.lo + 1)) - 1)

    def write(self, p: Packet, value: int, mask: int | None = None) -> None:
        """Set the bits (those of ``mask`` only, if given) to ``value``."""
        bits = ((1 << (self.hi - self.lo + 1)) - 1) if mask is None else mask
        old = p.value(self.name) or 0
        new = (old & ~(bits << self.lo)) | ((value & bits) << self.lo)
        if self.name.startswith("reg"):
            p.regs[self.name] = new
        else:
            p.fields[self.name] = from_int(self.name, new)


def split_top(text: str) -> list[str]:
    """Split at the commas that are not inside parentheses or brackets."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def set_field(p: Packet, text: str) -> None:
    """``set_field:VALUE[/MASK]->FIELD``."""
    value, _, dst = text.rpartition("->")
    ref = Ref.parse(dst)
    v, slash, m = value.partition("/")
    ref.write(p, to_int(ref.name, v), to_int(ref.name, m) if slash else None)


def load(p: Packet, text: str) -> None:
    """``load:VALUE->FIELD[bits]``."""
    value, _, dst = text.partition("->")
    Ref.parse(dst).write(p, int(value, 0))


def move(p: Packet, text: str) -> None:
    """``move:SRC[bits]->DST[bits]``."""
    src, _, dst = text.partition("->")
    Ref.parse(dst).write(p, Ref.parse(src).read(p))


@dataclass(frozen=True)
class Ct:
    """A parsed ``ct(...)``: commit, zone (a number or a field), the table to continue in, NAT."""

    commit: bool
    zone: int | Ref
    table: int | None
    nat: Nat | None

    @staticmethod
    def parse(action: str) -> Ct:
        commit, zone, table, nat = False, 0, None, None
        zone_ref: int | Ref = zone
        for arg in split_top(action[len("ct(") : -1]):
            key, _, value = arg.partition("=")
            if key == "commit":
                commit = True
            elif key == "zone":
                zone_ref = Ref.parse(value) if not value[0].isdigit() else int(value, 0)
            elif key == "table":
                table = int(value)
            elif key == "nat":
                nat = Nat()
            elif key.startswith("nat("):
                kind, _, address = arg[len("nat(") : -1].partition("=")
                nat = Nat(kind, address.split("-")[0].split(":")[0])
            else:
                raise NotImplementedError(f"fake switch: ct argument {arg!r}")
        return Ct(commit, zone_ref, table, nat)

    def zone_of(self, p: Packet) -> int:
        return self.zone.read(p) if isinstance(self.zone, Ref) else self.zone


@dataclass(frozen=True)
class Learned:
    """What one ``learn`` action installs: a flow and the cookie OVS files it under."""

    flow: Flow
    cookie: int


def _spelled(name: str, value: int) -> str:
    if name in MAC_FIELDS or name in IPV4_FIELDS or name in IPV6_FIELDS:
        return str(from_int(name, value))
    return hex(value)


def _immediate(text: str) -> bool:
    return bool(re.fullmatch(r"0x[0-9a-fA-F]+|\d+", text))


@dataclass(frozen=True)
class Learn:
    """A parsed ``learn(...)``: where it installs and, per argument, what it takes from the packet.

    ``FIELD=VALUE`` and ``FIELD=SRC`` match FIELD on a number or on the learning packet's SRC;
    ``load:SRC->DST`` sets DST to SRC's value; ``output:SRC`` outputs to the port SRC held."""

    table: int
    priority: int
    cookie: int
    delete_learned: bool
    specs: tuple[str, ...]

    @staticmethod
    def parse(action: str) -> Learn:
        table, priority, cookie, delete, specs = 0, 0x8000, 0, False, []
        for arg in split_top(action[len("learn(") : -1]):
            key, _, value = arg.partition("=")
            if key == "table":
                table = int(value)
            elif key == "priority":
                priority = int(value)
            elif key == "cookie":
                cookie = int(value, 0)
            elif key == "delete_learned":
                delete = True
            elif key in ("idle_timeout", "hard_timeout"):
                continue  # the fake switch has no clock: learned flows live until deleted
            else:
                specs.append(arg)
        return Learn(table, priority, cookie, delete, tuple(specs))

    def learned(self, p: Packet) -> Learned:
        match: list[tuple[str, str]] = []
        actions: list[str] = []
        for spec in self.specs:
            if spec.startswith("load:"):
                src, _, dst_text = spec[len("load:") :].partition("->")
                dst = Ref.parse(dst_text)
                value = int(src, 0) if _immediate(src) else Ref.parse(src).read(p)
                if dst.full:
                    name = OXM_NAMES.get(dst.name, dst.name)
                    actions.append(f"set_field:{_spelled(dst.name, value)}->{name}")
                else:
                    actions.append(f"load:{value:#x}->{dst_text}")
            elif spec.startswith("output:"):
                actions.append(f"output:{Ref.parse(spec[len('output:') :]).read(p)}")
            else:
                dst_text, _, src = spec.partition("=")
                dst = Ref.parse(dst_text)
                if not dst.full:
                    raise NotImplementedError(f"fake switch: learn of part of a field {spec!r}")
                value = int(src, 0) if _immediate(src) else Ref.parse(src or dst_text).read(p)
                match.append((dst.name, _spelled(dst.name, value)))
        return Learned(Flow(self.table, self.priority, tuple(match), tuple(actions)), self.cookie)
