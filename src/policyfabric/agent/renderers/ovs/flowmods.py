"""Flow mods as command objects, and the planners that diff a mirror against the desired flows.

``plan(installed, desired)`` says what to send, without sending it: ``ReplaceFlows`` when
nothing is known about the bridge (the first sync after start: OVS compares every flow itself
and changes only those that differ), otherwise one ``AddFlow`` per new or changed flow (an add
replaces the flow with the same table, priority and match) and one ``DeleteFlow`` (strict) per
flow no longer wanted. Two interpreters read the same commands: the applier's executor
(``applier.py``) turns them into one ``ovs-ofctl`` bundle, and the fake switch (``simulate.py``)
applies them to its tables. This is ovsdbapp's habit, commands as values inside one transaction,
and it is what lets the tests prove that a plan takes a switch from ``installed`` to exactly
``desired`` and that replaying it changes nothing. Deletes come first, as in ``replace-flows``;
within a bundle the order is invisible to traffic.

``Mirror`` is the same planner by section (``sections.py``): it keeps what was installed per
section and, for each flow key, which sections want it. ``update(desired)`` compares the
sections first by identity (the compiler hands back the very tuple of an unchanged section, and
says which sections it changed since a common root, ``Sections.changed_since``), diffs only the
sections that changed, flow by flow (again by identity first), and re-resolves only the keys
they touched: a flow leaves the bridge when no section wants it any more, and a key several
sections want gets the flow ``sections.resolve`` makes of their contributions. A sync thus
costs the changed sections' flows, not the bridge's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.sections import (
    FlowKey,
    Owners,
    SectionKey,
    Sections,
    cookie_section,
    resolve,
)
from policyfabric.agent.renderers.ovs.sections import index as index_sections


@dataclass(frozen=True)
class AddFlow:
    """``flow add``: install ``flow``, replacing any flow with the same table, priority and match."""

    flow: Flow


@dataclass(frozen=True)
class DeleteFlow:
    """``flow delete_strict``: remove the flow with exactly this table, priority and match."""

    flow: Flow


@dataclass(frozen=True)
class ReplaceFlows:
    """``replace-flows``: make the bridge hold exactly ``flows``, whatever it held before."""

    flows: tuple[Flow, ...]


Command = AddFlow | DeleteFlow | ReplaceFlows

__all__ = ["AddFlow", "Command", "DeleteFlow", "FlowKey", "Mirror", "ReplaceFlows", "index", "plan"]


def index(flows: Iterable[Flow]) -> dict[FlowKey, Flow]:
    """Flows by key, as the mirror keeps them (of two flows with one key, the last wins)."""
    return {f.key: f for f in flows}


def plan(installed: Mapping[FlowKey, Flow] | None, desired: Mapping[FlowKey, Flow]) -> list[Command]:
    """The commands that make a bridge holding ``installed`` (None: unknown) hold ``desired``."""
    if installed is None:
        return [ReplaceFlows(tuple(desired.values()))]
    commands: list[Command] = [DeleteFlow(gone) for key, gone in installed.items() if key not in desired]
    for key, new in desired.items():
        old = installed.get(key)
        if old is not new and old != new:  # compiled flows are memoised: mostly the same object
            commands.append(AddFlow(new))
    return commands


class Mirror:
    """What the agent installed on a bridge, by section, with the sections that want each flow.

    ``flows`` is what the bridge holds (one flow per key, as ``resolve`` made it of the
    sections'); ``sections`` the installed tuple of each section; ``applied`` the ``Sections`` it
    was last brought to (the root its successors are compared against)."""

    def __init__(self) -> None:
        self.sections: dict[SectionKey, tuple[Flow, ...]] = {}
        self.flows: dict[FlowKey, Flow] = {}
        self.applied: Sections | None = None
        self._owners: dict[FlowKey, Owners] = {}

    @classmethod
    def of(cls, desired: Sections) -> Mirror:
        """A mirror of a bridge holding exactly ``desired`` (after a ``ReplaceFlows`` of it)."""
        mirror = cls()
        mirror._owners, mirror.flows = index_sections(desired.parts)
        mirror.sections = dict(desired.parts)
        mirror.applied = desired
        return mirror

    def update(self, desired: Sections) -> list[Command]:
        """The commands that take the bridge from this mirror to ``desired``, and the mirror to
        ``desired`` too. If the commands then fail, the bridge's state is unknown: drop the mirror
        (the next sync is a full one)."""
        keys: Collection[SectionKey] | None = None
        if self.applied is not None:
            keys = desired.changed_since(self.applied)
        if keys is None:  # no common root: compare every section (by identity first)
            keys = self.sections.keys() | desired.parts.keys()
        touched: dict[FlowKey, None] = {}
        for key in keys:
            old, new = self.sections.get(key, ()), desired.get(key)
            if old is new:
                continue
            gone, came = _difference(old, new)
            for f in gone:
                self._drop(key, f, touched)
            for f in came:
                self._give(key, f, touched)
            if new:
                self.sections[key] = new
            else:
                self.sections.pop(key, None)
        self.applied = desired
        deletes: list[Command] = []
        adds: list[Command] = []
        for k in touched:
            before, after = self.flows.get(k), self._resolved(k)
            if after is None:
                if before is not None:
                    deletes.append(DeleteFlow(before))
                    del self.flows[k]
            elif before is not after and before != after:
                adds.append(AddFlow(after))
                self.flows[k] = after
        return deletes + adds

    def owners(self, key: FlowKey) -> list[SectionKey]:
        """The sections that want the flow with ``key`` (what ``explain`` names for a flow)."""
        o = self._owners.get(key)
        return [] if o is None else [o[0]] if isinstance(o, tuple) else sorted(o)

    def section_of(self, cookie: int) -> list[SectionKey]:
        """The installed section(s) whose flows (or learned flows) carry ``cookie`` (one, unless
        two keys hash alike); [] for a cookie that is not one of them. O(sections)."""
        return cookie_section(cookie, self.sections)

    def _give(self, section: SectionKey, f: Flow, touched: dict[FlowKey, None]) -> None:
        k = f.key
        o = self._owners.get(k)
        if o is None:
            self._owners[k] = (section, f)
        elif isinstance(o, tuple):
            self._owners[k] = {o[0]: o[1], section: f}
        else:
            o[section] = f
        touched[k] = None

    def _drop(self, section: SectionKey, f: Flow, touched: dict[FlowKey, None]) -> None:
        k = f.key
        o = self._owners[k]
        if isinstance(o, tuple):
            del self._owners[k]
        else:
            del o[section]
            if len(o) == 1:
                self._owners[k] = next(iter(o.items()))
        touched[k] = None

    def _resolved(self, k: FlowKey) -> Flow | None:
        o = self._owners.get(k)
        if o is None:
            return None
        return o[1] if isinstance(o, tuple) else resolve(o)


def _difference(old: tuple[Flow, ...], new: tuple[Flow, ...]) -> tuple[Iterable[Flow], Iterable[Flow]]:
    """(flows of ``old`` not in ``new``, flows of ``new`` not in ``old``), by identity: memoised
    flows of an unchanged part are the same objects (an equal flow that is not is given back and
    taken again, which changes nothing on the bridge)."""
    if not old or not new:
        return old, new
    old_ids, new_ids = set(map(id, old)), set(map(id, new))
    return [f for f in old if id(f) not in new_ids], [f for f in new if id(f) not in old_ids]
