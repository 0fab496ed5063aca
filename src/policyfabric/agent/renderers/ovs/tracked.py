"""What the section compiler tracks from view to view, by identity and by set difference.

``pipeline.SectionCompiler`` rebuilds only the sections whose inputs changed. These say what
changed without a pass over the view in Python: ``EndpointIndex`` the endpoint records that
left and joined (by position when the view is the last one with a few records replaced, added or
removed at its end, compared with C-level ``map``; else by a count of identities), and
``AddressSet`` the member addresses of a remote group that came and went (a set difference), each
member being a section of its own.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Sequence
from itertools import compress
from operator import is_not
from typing import Any

from policyfabric.agent.renderers.ovs import secgroups
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.sections import SectionKey, cookie_of, stamp
from policyfabric.agent.view import Endpoint

FEW = 64  # a view that differs from the last in this many positions is compared by position
Section = tuple[Flow, ...]


class AddressSet:
    """A remote group's address set: one section per member address (its clause flows), so that a
    member joining or leaving costs its own section, found by a set difference of the addresses
    (in C), not a pass over the members in Python. Counts its IPv4 and IPv6 members (a rule whose
    remote group has none of its family matches nothing)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.view: tuple[str, ...] = ()
        self._members: set[str] = set()
        self._v6 = 0
        self._came: set[str] = set()  # since the sections were last brought up to date
        self._gone: set[str] = set()
        self.signature: secgroups.Signature | None = None

    @property
    def families(self) -> tuple[bool, bool]:
        return len(self._members) > self._v6, self._v6 > 0

    def take(self, view: tuple[str, ...]) -> None:
        """The group's members are now ``view``."""
        if view is self.view or view == self.view:
            self.view = view
            return
        members = set(view)
        came, gone = members - self._members, self._members - members
        self._v6 += sum(":" in a for a in came) - sum(":" in a for a in gone)
        self._came = (self._came - gone) | came
        self._gone = (self._gone - came) | gone
        self.view, self._members = view, members

    def sections(self, signature: secgroups.Signature, out: dict[SectionKey, Section]) -> None:
        """Put in ``out`` the member sections that changed (``()``: gone), for rules of ``signature``."""
        if signature != self.signature:
            came, gone = self._members, self._gone  # every member's flows change
            self.signature = signature
        else:
            came, gone = self._came, self._gone
        for address in gone:
            out["addrset", self.group, address] = ()
        for address in came:
            key = ("addrset", self.group, address)
            cookie = cookie_of(key)
            out[key] = stamp(key, secgroups.member_flows(address, signature, cookie), cookie)
        self._came, self._gone = set(), set()

    def removed(self, out: dict[SectionKey, Section]) -> None:
        """Put in ``out`` the removal of every member section (the group is named no more)."""
        for address in self._members | self._gone:
            out["addrset", self.group, address] = ()


class EndpointIndex:
    """The endpoints of the last view (local or remote) by identity, and what is indexed from them.

    ``update(view)`` says which records left and which joined: by position when the view is the
    last one with a few records replaced, added or removed at the end (compared with C-level
    ``map``), else by a count of identities. A record listed twice counts once."""

    def __init__(self) -> None:
        self.view: tuple[Endpoint, ...] = ()
        self._count: Counter[int] = Counter()
        self._objects: dict[int, Endpoint] = {}
        self.by_key: dict[str, list[Endpoint]] = {}  # an endpoint key → its records (one, in valid input)
        self.in_bd: dict[str, dict[int, Endpoint]] = {}  # a bridge domain URI → its records

    def update(self, view: tuple[Endpoint, ...]) -> tuple[list[Endpoint], list[Endpoint]]:
        old = self.view
        if view is old:
            return [], []
        n = min(len(old), len(view))
        moved = list(compress(range(n), map(is_not, old[:n], view[:n])))
        if len(moved) + abs(len(old) - len(view)) <= FEW:
            gone, came = self._shift(
                [*(old[i] for i in moved), *old[n:]], [*(view[i] for i in moved), *view[n:]]
            )
        else:
            gone, came = self._rescan(view)
        self.view = view
        for ep in gone:
            records = self.by_key[ep.key]
            records[:] = [r for r in records if r is not ep]
            if not records:
                del self.by_key[ep.key]
            in_bd = self.in_bd[ep.bd]
            del in_bd[id(ep)]
            if not in_bd:
                del self.in_bd[ep.bd]
        for ep in came:
            self.by_key.setdefault(ep.key, []).append(ep)
            self.in_bd.setdefault(ep.bd, {})[id(ep)] = ep
        return gone, came

    def _shift(self, out: list[Endpoint], into: list[Endpoint]) -> tuple[list[Endpoint], list[Endpoint]]:
        count = self._count
        touched = {id(e): e for e in (*out, *into)}
        before = {k: count[k] > 0 for k in touched}
        for e in out:
            count[id(e)] -= 1
        for e in into:
            count[id(e)] += 1
        gone = [e for k, e in touched.items() if before[k] and count[k] <= 0]
        came = [e for k, e in touched.items() if not before[k] and count[k] > 0]
        for k in touched:
            if count[k] <= 0:
                del count[k]
        for e in gone:
            del self._objects[id(e)]
        for e in came:
            self._objects[id(e)] = e
        return gone, came

    def _rescan(self, view: tuple[Endpoint, ...]) -> tuple[list[Endpoint], list[Endpoint]]:
        count = Counter(map(id, view))
        left = self._count.keys() - count.keys()
        joined = count.keys() - self._count.keys()
        gone = [self._objects.pop(k) for k in left]
        came = list({id(e): e for e in compress(view, map(joined.__contains__, map(id, view)))}.values())
        for e in came:
            self._objects[id(e)] = e
        self._count = count
        return gone, came


def pick(records: Sequence[Endpoint]) -> Endpoint:
    """Of several records with one key (not in valid input), the one that counts: the last in a
    fixed order, so that the result does not depend on the order of the view."""
    return records[0] if len(records) == 1 else sorted(records, key=repr)[-1]


def sorted_bump(values: list[Any], value: Any, n: int) -> None:
    """Add (``n`` > 0) or remove copies of ``value`` in the sorted list ``values``."""
    for _ in range(n):
        insort(values, value)
    for _ in range(-n):
        del values[bisect_left(values, value)]
