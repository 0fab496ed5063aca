"""``pf_trace``: the authority asks an agent why its installed dataplane passes or drops a packet.

A policyfabric extension of the OpFlex dialect (authority → agent, answered by the agent). The
authority sends either the first packet of a probe from one of the agent's endpoints
(``{"source": "TENANT/NAME", "destination": IP, "probe": "tcp/80"}``) or the packet as it arrives
from the tunnel on the next host (``{"arrival": {field: value}}``, the fields an earlier hop's
answer gave). The agent traces it through what it has installed (Open vSwitch's
``ofproto/trace`` of ``br-int``, and the nftables ruleset on an nftables host) and answers one
hop: ``{"host", "outcome", "drop", "allows", "flows", "next"}`` (``drop``: what dropped it, as an
intent object; ``allows``: what let it on; ``next``: the tunnel address it leaves for and the
packet the host there receives). The authority strings hops together (``judge``).

Both ends parse every value here, at their edge: an agent formats into its trace command only
what this module has checked (an address through ``ipaddress``, a MAC by its pattern, a number
as an int), never a string it was sent. A reference agent does not know the method and answers
``EUNSUPPORTED``: the authority then says the host cannot trace and answers from the intent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policyfabric.model.types import check_label

METHOD = "pf_trace"
PROBES = "icmp, icmpv6, tcp/N, udp/N, tcp6/N, udp6/N, bulk/N or bulk6/N"
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")  # whole (fullmatch: no trailing newline)


class BadTrace(ValueError):
    """A value of a trace request that does not parse; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Probe:
    """The first packet of a probe (LAB.md's grammar): ``kind`` tcp, udp or icmp."""

    kind: str
    port: int | None
    v6: bool

    @classmethod
    def parse(cls, text: Any) -> Probe:
        if not isinstance(text, str):
            raise BadTrace("probe", f"use {PROBES}")
        word, slash, port = text.strip().lower().partition("/")
        if word in ("icmp", "icmpv6") and not slash:
            return cls("icmp", None, word == "icmpv6")
        base = word.removesuffix("6")
        if base in ("tcp", "udp", "bulk") and slash:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise BadTrace("probe", f"{text!r}: the port is 1-65535")
            return cls("udp" if base == "udp" else "tcp", int(port), word.endswith("6"))
        raise BadTrace("probe", f"{text!r}: use {PROBES}")

    def __str__(self) -> str:
        if self.kind == "icmp":
            return "icmpv6" if self.v6 else "icmp"
        return f"{self.kind}{'6' if self.v6 else ''}/{self.port}"


def endpoint_key(value: Any, field: str) -> str:
    """``TENANT/NAME``, each a name as the model allows it."""
    tenant, slash, name = value.partition("/") if isinstance(value, str) else ("", "", "")
    try:
        check_label(tenant), check_label(name)
    except ValueError:
        raise BadTrace(field, f"{value!r} is not TENANT/ENDPOINT") from None
    if not slash:
        raise BadTrace(field, f"{value!r} is not TENANT/ENDPOINT")
    return f"{tenant}/{name}"


def ip_address(value: Any, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise BadTrace(field, f"{value!r} is not an IP address") from None


def _ipv4(value: str, field: str) -> str:
    ip = ip_address(value, field)
    if ip.version != 4:
        raise BadTrace(field, f"{value!r} is not an IPv4 address")
    return str(ip)


def _ipv6(value: str, field: str) -> str:
    ip = ip_address(value, field)
    if ip.version != 6:
        raise BadTrace(field, f"{value!r} is not an IPv6 address")
    return str(ip)


def _mac(value: str, field: str) -> str:
    """The MAC, lower case, checked whole: the normalised value is what is formatted, never ``value``."""
    found = _MAC.fullmatch(value.lower())
    if found is None:
        raise BadTrace(field, f"{value!r} is not a MAC address")
    return found.group(0)


def _number(bits: int) -> Callable[[str, str], str]:
    def check(value: str, field: str) -> str:
        try:
            n = int(value, 0)
        except ValueError:
            raise BadTrace(field, f"{value!r} is not a number") from None
        if not 0 <= n < (1 << bits):
            raise BadTrace(field, f"{value!r} is out of range")
        return hex(n) if bits > 16 else str(n)

    return check


_TCP_FLAGS = frozenset({"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr", "ns"})


def _tcp_flags(value: str, field: str) -> str:
    """A number, or the trace's words (``syn``, ``syn|ack``)."""
    if value and all(w in _TCP_FLAGS for w in value.split("|")):
        return value
    return _number(12)(value, field)


# the fields of a packet arriving from the tunnel (agent/explain.arrival_flow's), each checked
ARRIVAL: Mapping[str, Callable[[str, str], str]] = {
    "tun_id": _number(24), "tun_src": _ipv4, "tun_dst": _ipv4, "tun_metadata0": _number(32),
    "dl_src": _mac, "dl_dst": _mac, "nw_src": _ipv4, "nw_dst": _ipv4, "ipv6_src": _ipv6,
    "ipv6_dst": _ipv6, "nw_ttl": _number(8), "nw_tos": _number(8), "tp_src": _number(16),
    "tp_dst": _number(16), "udp_src": _number(16), "udp_dst": _number(16), "tcp_flags": _tcp_flags,
    "icmp_type": _number(8), "icmp_code": _number(8), "icmpv6_type": _number(8),
    "icmpv6_code": _number(8),
}  # fmt: skip
PROTOCOL_WORDS = ("tcp", "udp", "icmp", "tcp6", "udp6", "icmp6", "ip", "ipv6")


def arrival(value: Any) -> tuple[str, dict[str, str]]:
    """(protocol word, fields) of an arriving packet, every field known and its value checked."""
    if not isinstance(value, Mapping):
        raise BadTrace("arrival", "must be an object")
    proto = value.get("protocol")
    if proto not in PROTOCOL_WORDS:
        raise BadTrace("arrival.protocol", f"{proto!r}: one of {', '.join(PROTOCOL_WORDS)}")
    fields = {}
    for key, raw in value.items():
        if key == "protocol":
            continue
        check = ARRIVAL.get(key)
        if check is None or not isinstance(raw, str):
            raise BadTrace(f"arrival.{key}", "not a field of an arriving packet")
        fields[key] = check(raw, f"arrival.{key}")
    return str(proto), fields


@dataclass(frozen=True)
class Request:
    """One ``pf_trace`` request, parsed: a probe from a local endpoint, or a packet arriving."""

    source: str | None = None
    destination: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    probe: Probe | None = None
    protocol: str = ""  # of the arriving packet
    fields: Mapping[str, str] | None = None  # of the arriving packet

    @classmethod
    def parse(cls, params: Any) -> Request:
        if isinstance(params, list) and len(params) == 1:
            params = params[0]
        if not isinstance(params, Mapping):
            raise BadTrace("params", "must be one object")
        if "arrival" in params:
            proto, fields = arrival(params["arrival"])
            return cls(protocol=proto, fields=fields)
        probe = Probe.parse(params.get("probe"))
        dst = ip_address(params.get("destination"), "destination")
        if (dst.version == 6) != probe.v6:
            raise BadTrace("probe", f"{probe} does not go to the IPv{dst.version} address {dst}")
        return cls(source=endpoint_key(params.get("source"), "source"), destination=dst, probe=probe)

    def to_params(self) -> dict[str, Any]:
        if self.fields is not None:
            return {"arrival": {"protocol": self.protocol, **self.fields}}
        return {"source": self.source, "destination": str(self.destination), "probe": str(self.probe)}


def judge(hops: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The verdict of the hops the agents answered, and what decided it: the first drop; else
    allow if the last host sends the packet out of a port, naming every rule that let it on; else
    (no output, or a tunnel to an address no agent has) no route. agent/explain.judge on one host's
    steps says the same."""
    for hop in hops:
        if hop.get("drop"):
            return "deny", str(hop["drop"])
    if not hops or not str(hops[-1].get("outcome", "")).startswith("output"):
        return "deny", "no route"
    allows = [str(a) for h in hops for a in h.get("allows", ())]
    return "allow", " + ".join(dict.fromkeys(allows)) or "no policy applies"
