"""A fake OpenFlow switch that evaluates compiled flows: packet in, verdict out.

In the spirit of Faucet's fake OFTable: unit tests (and, later, ``explain``)
push a packet through the pipeline ``compile_pipeline`` produced, without
Open vSwitch. It covers exactly the matches and actions the compiler emits,
with OVS's semantics for priorities, conjunctive matches and a small
connection tracker (zones, commit, new/established/reply).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from policyfabric.agent.renderers.ovs.flows import Flow

PROTO_KEYWORDS = {
    "ip": ("ip", None),
    "ipv6": ("ipv6", None),
    "arp": ("arp", None),
    "tcp": ("ip", 6),
    "udp": ("ip", 17),
    "icmp": ("ip", 1),
    "tcp6": ("ipv6", 6),
    "udp6": ("ipv6", 17),
    "icmp6": ("ipv6", 58),
}
FIELD_ALIASES = {
    "NXM_NX_TUN_METADATA0": "tun_metadata0",
    "NXM_NX_TUN_ID": "tun_id",
    "NXM_NX_TUN_IPV4_DST": "tun_dst",
    "NXM_OF_ETH_SRC": "dl_src",
    "NXM_OF_ETH_DST": "dl_dst",
    "NXM_OF_ARP_OP": "arp_op",
    "NXM_NX_ARP_SHA": "arp_sha",
    "NXM_NX_ARP_THA": "arp_tha",
    "NXM_OF_ARP_SPA": "arp_spa",
    "NXM_OF_ARP_TPA": "arp_tpa",
}
SET_FIELD_NAMES = {"eth_src": "dl_src", "eth_dst": "dl_dst"}
MAC_FIELDS = {"dl_src", "dl_dst", "arp_sha", "arp_tha"}
IP_FIELDS = {"arp_spa", "arp_tpa", "nw_src", "nw_dst", "tun_dst"}


@dataclass
class Packet:
    """Header fields by OVS name (``dl_src``, ``nw_dst``, ``tp_dst``...) plus metadata."""

    fields: dict[str, Any]
    regs: dict[str, int] = field(default_factory=dict)
    ct_state: str = ""

    def get(self, name: str) -> Any:
        return self.regs.get(name, 0) if re.fullmatch(r"reg\d", name) else self.fields.get(name)


@dataclass
class Result:
    outputs: list[tuple[int, dict[str, Any]]]  # (port, header fields at output)
    trace: list[Flow]

    @property
    def ports(self) -> list[int]:
        return [p for p, _ in self.outputs]

    @property
    def dropped(self) -> bool:
        return not self.outputs


def _mac(value: str) -> int:
    return int(value.replace(":", ""), 16)


def _ip(value: str) -> int:
    return int(ipaddress.ip_address(value))


def _num(value: str) -> int:
    return int(value, 0)


def _eq(name: str, want: str, have: Any) -> bool:
    if have is None:
        return False
    value, _, mask = want.partition("/")
    if name in MAC_FIELDS:
        m = _mac(mask) if mask else (1 << 48) - 1
        return (_mac(value) & m) == (_mac(have) & m)
    if name in IP_FIELDS or name in ("ipv6_src", "ipv6_dst"):
        if mask:  # a prefix (nw_src=10.2.0.0/24)
            return ipaddress.ip_address(have) in ipaddress.ip_network(want, strict=False)
        return _ip(value) == _ip(have)
    m = _num(mask) if mask else -1
    return (_num(value) & m) == (int(have) & m)


class Conntrack:
    def __init__(self) -> None:
        self.committed: set[tuple[Any, ...]] = set()

    @staticmethod
    def _tuple(p: Packet, zone: int) -> tuple[Any, ...]:
        f = p.fields
        return (zone, f.get("nw_src"), f.get("nw_dst"), f.get("nw_proto"), f.get("tp_src"), f.get("tp_dst"))

    def state(self, p: Packet, zone: int) -> str:
        t = self._tuple(p, zone)
        reverse = (t[0], t[2], t[1], t[3], t[5], t[4])
        if t in self.committed:
            return "+trk+est"
        if reverse in self.committed:
            return "+trk+est+rpl"
        return "+trk+new"

    def commit(self, p: Packet, zone: int) -> None:
        t = self._tuple(p, zone)
        reverse = (t[0], t[2], t[1], t[3], t[5], t[4])
        if reverse not in self.committed:
            self.committed.add(t)


def _ct_matches(want: str, have: str) -> bool:
    flags = set(re.findall(r"[+-][a-z]+", have))
    return all((sign == "+") == (f"+{name}" in flags) for sign, name in re.findall(r"([+-])([a-z]+)", want))


class FakeSwitch:
    """One bridge's flow tables, a conntrack, and ``send(packet) -> Result``."""

    def __init__(self, flows: Iterable[Flow]) -> None:
        self.tables: dict[int, list[Flow]] = {}
        for f in flows:
            self.tables.setdefault(f.table, []).append(f)
        for t in self.tables.values():
            t.sort(key=lambda f: -f.priority)
        self.conntrack = Conntrack()

    def _matches(self, f: Flow, p: Packet, conj: set[int]) -> bool:
        for name, want in f.match:
            if name in PROTO_KEYWORDS:
                eth, proto = PROTO_KEYWORDS[name]
                if p.fields.get("eth_type") != eth:
                    return False
                if proto is not None and p.fields.get("nw_proto") != proto:
                    return False
            elif name == "ct_state":
                if not _ct_matches(want, p.ct_state):
                    return False
            elif name == "conj_id":
                if int(want) not in conj:
                    return False
            elif not _eq(name, want, p.get(name)):
                return False
        return True

    def lookup(self, table: int, p: Packet) -> Flow | None:
        flows = self.tables.get(table, [])
        for priority in sorted({f.priority for f in flows}, reverse=True):
            level = [f for f in flows if f.priority == priority]
            clauses: dict[int, dict[int, set[int]]] = {}
            plain = None
            for f in level:
                if any(k == "conj_id" for k, _ in f.match) or not self._matches(f, p, set()):
                    continue
                conj = [a for a in f.actions if a.startswith("conjunction(")]
                if not conj:
                    plain = plain or f
                for a in conj:
                    cid, part = a[len("conjunction(") : -1].split(",")
                    i, n = part.split("/")
                    clauses.setdefault(int(cid), {}).setdefault(int(n), set()).add(int(i))
            satisfied = {cid for cid, by_n in clauses.items() for n, seen in by_n.items() if len(seen) == n}
            if satisfied:
                for f in level:
                    if any(k == "conj_id" for k, _ in f.match) and self._matches(f, p, satisfied):
                        return f
            if plain is not None:
                return plain
        return None

    def send(self, fields: dict[str, Any]) -> Result:
        p = Packet(dict(fields))
        result = Result([], [])
        self._run(0, p, result, depth=0)
        return result

    def _field_set(self, p: Packet, dst: str, value: int) -> None:
        name, _, bits = dst.partition("[")
        bits = bits.rstrip("]")
        target = FIELD_ALIASES.get(name) or name.replace("NXM_NX_REG", "reg")
        if target.startswith("reg"):
            lo, hi = 0, 31
            if bits:
                first, _, last = bits.partition("..")
                lo, hi = int(first), int(last or first)
            mask = ((1 << (hi - lo + 1)) - 1) << lo
            p.regs[target] = (p.regs.get(target, 0) & ~mask) | ((value << lo) & mask)
        elif target in MAC_FIELDS:
            p.fields[target] = ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))
        elif target in IP_FIELDS:
            p.fields[target] = str(ipaddress.IPv4Address(value))
        else:
            p.fields[target] = value

    def _set_named(self, p: Packet, name: str, text: str) -> None:
        value, _, mask = text.partition("/")
        if name.startswith("reg"):
            m = _num(mask) if mask else 0xFFFFFFFF
            p.regs[name] = (p.regs.get(name, 0) & ~m) | (_num(value) & m)
        elif name in MAC_FIELDS or name in IP_FIELDS:
            p.fields[name] = value
        else:
            p.fields[name] = _num(value)

    def _field_get(self, p: Packet, src: str) -> int:
        name, _, bits = src.partition("[")
        source = FIELD_ALIASES.get(name) or name.replace("NXM_NX_REG", "reg")
        raw = p.get(source)
        if source in MAC_FIELDS:
            value = _mac(raw)
        elif source in IP_FIELDS:
            value = _ip(raw)
        else:
            value = int(raw or 0)
        bits = bits.rstrip("]")
        if bits:
            lo, _, hi = bits.partition("..")
            value = (value >> int(lo)) & ((1 << (int(hi or lo) - int(lo) + 1)) - 1)
        return value

    def _run(self, table: int, p: Packet, result: Result, depth: int) -> None:
        if depth > 32:
            raise RuntimeError("pipeline loop")
        f = self.lookup(table, p)
        if f is None:
            return
        result.trace.append(f)
        for action in f.actions:
            if action == "drop":
                return
            if action.startswith("goto_table:"):
                self._run(int(action.split(":")[1]), p, result, depth + 1)
                return
            if action.startswith("output:"):
                port = int(action.split(":")[1])
                if port != p.fields.get("in_port"):  # OVS never sends a packet back where it came from
                    result.outputs.append((port, dict(p.fields)))
            elif action == "IN_PORT":
                result.outputs.append((p.fields["in_port"], dict(p.fields)))
            elif action.startswith("load:"):
                value, dst = action[5:].split("->")
                self._field_set(p, dst, _num(value))
            elif action.startswith("move:"):
                src, dst = action[5:].split("->")
                self._field_set(p, dst, self._field_get(p, src))
            elif action.startswith("set_field:"):
                value, dst = action[len("set_field:") :].rsplit("->", 1)
                self._set_named(p, SET_FIELD_NAMES.get(dst, dst), value)
            elif action.startswith("ct("):
                args = dict(a.partition("=")[::2] for a in re.split(r",(?![^\[]*\])", action[3:-1]))
                zone = self._field_get(p, args["zone"])
                if "commit" in args:
                    self.conntrack.commit(p, zone)
                if "table" in args:
                    p.ct_state = self.conntrack.state(p, zone)
                    self._run(int(args["table"]), p, result, depth + 1)
                    return
            elif action == "dec_ttl":  # at 1 or 0 OVS sends it to a controller: there is none, so drop
                ttl = int(p.fields.get("nw_ttl", 64))
                if ttl <= 1:
                    return
                p.fields["nw_ttl"] = ttl - 1
            elif action.startswith("conjunction("):
                continue
            else:
                raise NotImplementedError(f"fake switch: action {action!r}")
