"""The fake switch's connection tracker: zones, commit and NAT, as OVS's ``ct`` action does them.

A committed connection is known by two tuples, (source, destination, protocol, source port,
destination port): the original one, as its first packet looked before NAT, and the reply one,
what a reply looks like on the wire (the original reversed, after NAT). A packet that is neither
is ``+new``; one that is the original tuple is ``+est``; the reply tuple is ``+est+rpl``.

NAT is bound when a connection is committed with ``nat(src=...)`` or ``nat(dst=...)``; after
that any ``ct`` with ``nat`` (bare, or with a range, which is then ignored as OVS ignores it for
a known connection) rewrites the connection's packets: the original direction to the translated
addresses, the reply direction back. A bare ``nat`` on a packet of no connection does nothing,
which is what makes SNAT one-way: nothing from outside opens a connection inward. Packets
rewritten here get ``+snat``/``+dnat`` for the address that changed.

Simplifications, none of which the compiled pipeline depends on: established means committed
(OVS's kernel datapath reports ``+new`` until the first reply); a TCP packet is ``+inv`` only
when it carries ``tcp_flags`` and would start a connection without a plain SYN; no timeouts;
related traffic (ICMP errors) is not tracked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policyfabric.agent.renderers.ovs.simmatch import DNAT, EST, INV, NEW, RPL, SNAT, TRK

Tuple = tuple[Any, Any, Any, Any, Any]  # (source, destination, protocol, source port, destination port)
SYN, ACK, RST, FIN = 0x02, 0x10, 0x04, 0x01


@dataclass(frozen=True)
class Nat:
    """``nat(src=ADDR)``, ``nat(dst=ADDR)``, or ``nat`` bare (kind None)."""

    kind: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class Connection:
    zone: int
    original: Tuple
    reply: Tuple


def _tuple(fields: Mapping[str, Any]) -> Tuple:
    v6 = "ipv6_src" in fields
    return (
        fields.get("ipv6_src" if v6 else "nw_src"),
        fields.get("ipv6_dst" if v6 else "nw_dst"),
        fields.get("nw_proto"),
        fields.get("tp_src"),
        fields.get("tp_dst"),
    )


def _reverse(t: Tuple) -> Tuple:
    return (t[1], t[0], t[2], t[4], t[3])


def _rewrite(fields: dict[str, Any], old: Tuple, new: Tuple) -> int:
    """Put ``new`` into the packet's header; the ct_state NAT bits of what changed."""
    v6 = "ipv6_src" in fields
    for i, name in enumerate(("ipv6_src" if v6 else "nw_src", "ipv6_dst" if v6 else "nw_dst")):
        if new[i] is not None:
            fields[name] = new[i]
    for i, name in ((3, "tp_src"), (4, "tp_dst")):
        if new[i] is not None:
            fields[name] = new[i]
    snat = old[0] != new[0] or old[3] != new[3]
    dnat = old[1] != new[1] or old[4] != new[4]
    return (SNAT if snat else 0) | (DNAT if dnat else 0)


class Conntrack:
    """Connections by zone; ``track`` is one ``ct`` action on one packet."""

    def __init__(self) -> None:
        self._by_tuple: dict[tuple[int, Tuple], tuple[Connection, bool]] = {}  # → (conn, is reply)

    @property
    def connections(self) -> list[Connection]:
        return list({id(c): c for c, _ in self._by_tuple.values()}.values())

    def track(
        self, fields: Mapping[str, Any], zone: int, *, commit: bool = False, nat: Nat | None = None
    ) -> tuple[int, dict[str, Any]]:
        """The packet's ct_state and its header after NAT (a new dict: ``fields`` is left alone)."""
        out = dict(fields)
        t = _tuple(fields)
        known = self._by_tuple.get((zone, t))
        if known is not None:
            conn, is_reply = known
            state = TRK | EST | (RPL if is_reply else 0)
            if nat is not None:  # to where the connection's NAT says: reply or original, reversed
                target = _reverse(conn.original if is_reply else conn.reply)
                state |= _rewrite(out, t, target)
            return state, out
        flags = fields.get("tcp_flags")
        if t[2] == 6 and flags is not None and (not flags & SYN or flags & (ACK | RST | FIN)):
            return TRK | INV, out
        translated = self._translate(zone, t, nat)
        if commit:
            conn = Connection(zone, t, _reverse(translated))
            self._by_tuple[(zone, t)] = (conn, False)
            self._by_tuple[(zone, conn.reply)] = (conn, True)
        return TRK | NEW | _rewrite(out, t, translated), out

    def _translate(self, zone: int, t: Tuple, nat: Nat | None) -> Tuple:
        """A new connection's tuple after ``nat``: a source port is kept unless another connection's
        replies already use it (then the lowest free one from 1024, as a NAT picks another)."""
        if nat is None or nat.kind is None or nat.address is None:
            return t
        if nat.kind == "dst":
            return (t[0], nat.address, t[2], t[3], t[4])
        new = (nat.address, t[1], t[2], t[3], t[4])
        port = 1024
        while t[3] is not None and (zone, _reverse(new)) in self._by_tuple:
            new, port = (nat.address, t[1], t[2], port, t[4]), port + 1
        return new
