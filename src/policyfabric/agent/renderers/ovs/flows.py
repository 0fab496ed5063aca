"""OpenFlow flows as values: what the compiler produces and the applier installs.

A flow is a frozen record with its match as ordered ``(field, value)`` pairs,
its actions as strings in ``ovs-ofctl`` syntax and its cookie. ``text()`` is
the canonical line the applier sends; the fake table in ``simulate.py``
evaluates the same records.

Cookies say whose a flow is (64 bits: ``0x5046_O_K_IIIIIIIIII`` in hex, origin, kind, id)::

    63..48  0x5046   the policyfabric tag: the agent installed it (or a learn action of its flows)
    47..44  origin   0: a compiled flow; 1: a flow a ``learn`` action added (LEARNED)
    43..40  kind     the kind of section the flow comes from (``sections.KINDS``: 1 endpoint, ...)
    39..0   id       40 bits of a hash of the section's key (``sections.section_id``)

A section is the object the flow comes from (an endpoint, a contract, a security group...,
``sections.py``), so a dumped flow's cookie names "which intent object decided this" (the
applier's ``section_of`` gives the key back). A compiled flow outside any section (a test's,
a tool's) has kind and id 0: ``AGENT_COOKIE``. The tag alone (``COOKIE_MASK``) selects
everything the agent owns, learned flows included; the origin tells learned flows apart, which
the drift monitor does not count as drift and which need a cookie of their own anyway (OVS's
``delete_learned`` flushes the learned table's flows with the learn's cookie).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

COOKIE_TAG = 0x5046 << 48  # "PF": every flow the agent owns carries it in its top 16 bits
COOKIE_MASK = 0xFFFF << 48  # the tag's bits: dump-flows cookie=0x5046000000000000/0xffff000000000000
LEARNED = 1 << 44  # origin bits 47..44 = 1: added by a learn action, not by the agent
KIND_SHIFT, ID_BITS = 40, 40
AGENT_COOKIE = COOKIE_TAG  # a compiled flow outside any section
_T = TypeVar("_T")


def section_cookie(kind: int, section_id: int, learned: bool = False) -> int:
    """The cookie of a section's flows (``learned``: of the flows its learn actions add)."""
    if not 0 < kind < 16 or section_id >> ID_BITS:
        raise ValueError(f"no cookie for section kind {kind} id {section_id:#x}")
    return COOKIE_TAG | (LEARNED if learned else 0) | kind << KIND_SHIFT | section_id


def is_agents(cookie: int) -> bool:
    """The agent installed a flow with this cookie (not a learn action, not anyone else)."""
    return cookie & COOKIE_MASK == COOKIE_TAG and not cookie & LEARNED


def is_learned(cookie: int) -> bool:
    """A learn action of the agent's flows added a flow with this cookie."""
    return cookie & COOKIE_MASK == COOKIE_TAG and bool(cookie & LEARNED)


def cookie_kind(cookie: int) -> int:
    """The section kind a cookie names (0: none)."""
    return (cookie >> KIND_SHIFT) & 0xF


def cookie_id(cookie: int) -> int:
    """The section id a cookie names (0: none)."""
    return cookie & ((1 << ID_BITS) - 1)


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
    "NXM_NX_IPV6_SRC": "ipv6_src",
    "NXM_NX_IPV6_DST": "ipv6_dst",
    "NXM_NX_TUN_ID": "tun_id",
    "NXM_NX_TUN_IPV4_DST": "tun_dst",
    "NXM_NX_TUN_METADATA0": "tun_metadata0",
}


# Flows share their parts: the same match pair (``("in_port", "7")``), action string and action
# tuple recur in many flows (every endpoint of a group loads its class id; an endpoint's port and MAC
# are in a dozen of its flows), and at 10,000 endpoints a copy each was a third of the agent's flow
# memory. Each part is taken from a table of those seen; the table is emptied when it grows past
# ``SHARED_MAX`` (after that, parts are shared again as they recur), so it cannot grow without end
# in a long-lived agent whose endpoints come and go.
SHARED_MAX = 1 << 19  # 220,000 parts at 10,000 endpoints (bench/compile.py's world): room for twice that
_shared: dict[object, object] = {}


def _share(part: _T) -> _T:
    found = _shared.get(part)
    if found is None:
        if len(_shared) >= SHARED_MAX:
            _shared.clear()
        _shared[part] = found = part
    return found  # type: ignore[return-value]


def shared_match(match: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``match`` with each pair the one already seen (an equal value)."""
    return tuple([_share(pair) for pair in match])


SHARED_ACTIONS = 16  # longer action lists (a bridge domain's flooding, one output per port) are one
# of a kind and rebuilt whenever a port comes or goes: looking up each of their strings cost more
# than it saved (bench/compile.py, a port plugged at 10,000 endpoints: 10 -> 30 ms)


def shared_actions(actions: tuple[str, ...]) -> tuple[str, ...]:
    """``actions`` as the tuple already seen, its strings too (an equal value); a long list as it is."""
    if len(actions) > SHARED_ACTIONS:
        return actions
    found = _shared.get(actions)
    if found is None:
        found = _share(tuple([_share(a) for a in actions]))
    return found  # type: ignore[return-value]


_set = object.__setattr__


@dataclass(frozen=True, order=True, slots=True)
class Flow:
    """One flow. The cookie is part of its value (equality, hash): OVS's ``replace-flows`` rewrites
    a flow whose cookie alone changed, and the encoder's memo (``ofwire.add_body``) must not hand
    one flow's bytes to an equal-looking flow of another section. Slotted, its match pairs and
    actions shared with equal flows' (``_share``): there are a hundred thousand of them."""

    table: int
    priority: int
    match: tuple[tuple[str, str], ...]
    actions: tuple[str, ...]
    cookie: int = AGENT_COOKIE
    # What OpenFlow identifies a flow by (strict match): two flows with one key cannot coexist.
    # Set once at creation, a plain attribute: every sync and every section indexes flows by it
    # (a cached_property took a lock on each first read, ~1 µs a flow at 90,000 flows).
    key: tuple[int, int, tuple[tuple[str, str], ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        match = shared_match(self.match)
        _set(self, "match", match)
        _set(self, "actions", shared_actions(self.actions))
        _set(self, "key", (self.table, self.priority, match))

    def with_cookie(self, cookie: int) -> Flow:
        """This flow with ``cookie``. A copy of the instance's fields (its key and shared parts
        too), not a call of the dataclass's ``__init__``: the compiler stamps every flow of a
        section so, and that halves what stamping costs (the flow has nothing to check or derive)."""
        f = object.__new__(Flow)
        _set(f, "table", self.table)
        _set(f, "priority", self.priority)
        _set(f, "match", self.match)
        _set(f, "actions", self.actions)
        _set(f, "cookie", cookie)
        _set(f, "key", self.key)
        return f

    def same_rule(self, other: Flow) -> bool:
        """The same table, priority, match and actions, whatever the cookies."""
        return self.key == other.key and self.actions == other.actions

    def match_text(self) -> str:
        parts = [f"table={self.table}", f"priority={self.priority}"]
        parts += [k if v == "" else f"{k}={v}" for k, v in self.match]
        return ",".join(parts)

    def text(self) -> str:
        """``ovs-ofctl add-flow`` syntax, cookie included."""
        return f"cookie={self.cookie:#x},{self.match_text()} actions={','.join(self.actions) or 'drop'}"


def flow(
    table: int,
    priority: int,
    match: Mapping[str, str | int] | None,
    *actions: str,
    cookie: int = AGENT_COOKIE,
) -> Flow:
    """Build a flow; ``match`` values of "" are bare keywords such as ``ip`` or ``arp``."""
    pairs = tuple([(k, v if isinstance(v, str) else str(v)) for k, v in match.items()]) if match else ()
    return Flow(table, priority, pairs, actions, cookie)


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
