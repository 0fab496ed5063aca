"""OpenFlow flows as values: what the compiler produces and the applier installs.

A flow is a frozen record with its match as ordered ``(field, value)`` pairs
and its actions as strings in ``ovs-ofctl`` syntax. ``text()`` is the
canonical line the applier sends and diffs on; the fake table in
``simulate.py`` evaluates the same records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

COOKIE_BASE = 0x50460000  # "PF" + table: every flow the agent owns carries it

# The NXM names the compiler's move/learn actions use, and the ovs-ofctl field each one is: what the
# table-map checker (verify.py) and the fake switch (simactions.py) both read them as.
NXM_FIELDS = {
    "NXM_OF_IN_PORT": "in_port",
    "NXM_OF_ETH_SRC": "dl_src",
    "NXM_OF_ETH_DST": "dl_dst",
    "NXM_OF_IP_SRC": "nw_src",
    "NXM_OF_IP_DST": "nw_dst",
    "NXM_OF_ARP_OP": "arp_op",
    "NXM_OF_ARP_SPA": "arp_spa",
    "NXM_OF_ARP_TPA": "arp_tpa",
    "NXM_NX_ARP_SHA": "arp_sha",
    "NXM_NX_ARP_THA": "arp_tha",
    "NXM_NX_TUN_ID": "tun_id",
    "NXM_NX_TUN_IPV4_DST": "tun_dst",
    "NXM_NX_TUN_METADATA0": "tun_metadata0",
}


@dataclass(frozen=True, order=True)
class Flow:
    table: int
    priority: int
    match: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]

    @property
    def cookie(self) -> int:
        return COOKIE_BASE | self.table

    def match_text(self) -> str:
        parts = [f"table={self.table}", f"priority={self.priority}"]
        parts += [k if v == "" else f"{k}={v}" for k, v in self.match]
        return ",".join(parts)

    def text(self) -> str:
        """``ovs-ofctl add-flow`` syntax, cookie included."""
        return f"cookie={self.cookie:#x},{self.match_text()} actions={','.join(self.actions) or 'drop'}"

    @cached_property
    def key(self) -> tuple[int, int, tuple[tuple[str, str], ...]]:
        """What OpenFlow identifies a flow by (strict match): two flows with one key cannot coexist.
        Cached on the flow (compiled flows are memoised, and every sync indexes all of them: at
        45,000 flows this was 1.85 M calls a run)."""
        return (self.table, self.priority, self.match)


def flow(table: int, priority: int, match: Mapping[str, str | int] | None, *actions: str) -> Flow:
    """Build a flow; ``match`` values of "" are bare keywords such as ``ip`` or ``arp``."""
    pairs = tuple((k, v if isinstance(v, str) else str(v)) for k, v in (match or {}).items())
    return Flow(table, priority, pairs, tuple(actions))


def port_masks(lo: int, hi: int) -> list[str]:
    """The fewest value/mask pairs covering ports lo..hi (OVS's tp_dst=V/M)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append(f"{lo}" if size == 1 else f"{lo:#06x}/{(0xFFFF ^ (size - 1)):#06x}")
        lo += size
    return out


def ip_hex(ip: str) -> str:
    return "0x" + "".join(f"{int(b):02x}" for b in ip.split("."))
