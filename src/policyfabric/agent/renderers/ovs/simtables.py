"""The flow tables of the fake switch (``simulate.py``): flow mods applied as deltas, overlapping
flows refused, and OVS's lookup, conjunctive matches included.

**Flow mods.** ``apply(commands)`` takes the planner's commands (``flowmods.py``) as one bundle:
all of them or, if any fails (a refused overlap, a flow the ``verify`` hook rejects), none.
A flow is identified as OVS identifies it, by table, priority and match *meaning* (``simmatch``),
so an add replaces a flow with the same match spelled differently, as OVS would.
``delete_learned`` is OVS's: when the last flow with a ``learn(delete_learned)`` for a table and
cookie goes, every flow in that table with that cookie goes, including flows the same bundle
added (OVS inserts a bundle's flows first, then settles the counts in order).

**Overlaps.** Two flows overlap when they sit in one table at one priority and some packet
could match both; OVS then picks either, so the outcome would depend on chance. At the end of
each bundle the fake switch refuses (``OverlapError``, bundle rolled back) any overlap among the
flows it touched, with two exceptions:

- conjunction clause flows (only ``conjunction(...)`` actions) overlap by design, each is one
  dimension of a rule; a conjunction's ``conj_id`` flow takes part as the packets that complete
  it (its match and one clause of each dimension), so two conjunctions at one priority that one
  packet could complete are an overlap, and so is a conjunction shadowed by a plain flow at its
  priority (OVS would silently pick the plain flow);
- flows with identical actions: whichever OVS picks, the packet is treated the same. Two
  contracts' allow rules with one order (one priority) are such a pair, legitimately.

Checking is pairwise within a table and priority, for pairs with a flow the bundle touched:
O(flows at that priority) per added flow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from policyfabric.agent.renderers.ovs.flowmods import AddFlow, Command, DeleteFlow, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.simactions import Learn
from policyfabric.agent.renderers.ovs.simmatch import Match, Packet

Key = tuple[int, int, Match]  # table, priority, match: one flow


class OverlapError(ValueError):
    """Two flows at one priority that a packet could both match, with different actions."""

    def __init__(self, a: Flow, b: Flow) -> None:
        self.flows = (a, b)
        super().__init__(f"overlapping flows at one priority:\n  {a.text()}\n  {b.text()}")


@dataclass(frozen=True)
class Entry:
    flow: Flow
    match: Match
    clauses: tuple[tuple[int, int, int], ...]  # (conjunction id, clause, clauses): a clause flow
    learns: tuple[tuple[int, int], ...]  # (table, cookie) of its learn(delete_learned) actions
    cookie: int
    learned: bool

    @property
    def key(self) -> Key:
        return (self.flow.table, self.flow.priority, self.match)

    @property
    def conj_id(self) -> int | None:
        c = self.match.get("conj_id")
        return c[0] if c else None


@cache
def _learn(action: str) -> Learn:
    return Learn.parse(action)


def entry(flow: Flow, cookie: int | None = None, learned: bool = False) -> Entry:
    """A flow as the tables hold it; raise ValueError for a flow OVS would refuse."""
    clauses = []
    for a in flow.actions:
        if a.startswith("conjunction("):
            cid, part = a[len("conjunction(") : -1].split(",")
            k, n = part.split("/")
            clauses.append((int(cid), int(k), int(n)))
    if clauses and len(clauses) != len(flow.actions):
        raise ValueError(f"conjunction actions mixed with others: {flow.text()}")
    learns = tuple(
        (spec.table, spec.cookie)
        for spec in (_learn(a) for a in flow.actions if a.startswith("learn("))
        if spec.delete_learned
    )
    match = Match.parse(flow.match)
    return Entry(flow, match, tuple(clauses), learns, flow.cookie if cookie is None else cookie, learned)


class FlowTables:
    """Every flow of one bridge, by key; ``verify`` (if given) sees each flow before it goes in."""

    def __init__(self, verify: Callable[[Flow], None] | None = None) -> None:
        self.verify = verify
        self.entries: dict[Key, Entry] = {}
        self._learners: Counter[tuple[int, int]] = Counter()  # (table, cookie) → learn(delete_learned)s
        self._sorted: dict[int, list[Entry]] | None = None

    def _put(
        self, flow: Flow, cookie: int | None = None, learned: bool = False
    ) -> tuple[Entry, Entry | None]:
        """Add (or replace, same key) one flow: the new entry and the one it replaced."""
        if self.verify is not None:
            self.verify(flow)
        e = entry(flow, cookie, learned)
        old = self.entries.get(e.key)
        self.entries[e.key] = e
        self._sorted = None
        return e, old

    def _pop(self, key: Key) -> Entry | None:
        self._sorted = None
        return self.entries.pop(key, None)

    def _count(self, gained: Iterable[tuple[int, int]], lost: Iterable[tuple[int, int]]) -> None:
        """OVS's delete_learned bookkeeping: when the last learning flow for a table and cookie
        goes, every flow in that table with that cookie goes, whoever installed it."""
        self._learners.update(gained)
        for table, cookie in lost:
            self._learners[table, cookie] -= 1
            if self._learners[table, cookie] <= 0:
                del self._learners[table, cookie]
                for k in [k for k, x in self.entries.items() if k[0] == table and x.cookie == cookie]:
                    self._pop(k)

    def learn(self, flow: Flow, cookie: int) -> None:
        """Install a flow a ``learn`` action made (replacing one with its key), checked like any."""
        saved = (dict(self.entries), Counter(self._learners))
        try:
            self.check({self._put(flow, cookie, learned=True)[0].key}, set())
        except Exception:
            self._restore(saved)
            raise

    def _restore(self, saved: tuple[dict[Key, Entry], Counter[tuple[int, int]]]) -> None:
        self.entries, self._learners = saved
        self._sorted = None

    def apply(self, commands: Iterable[Command]) -> None:
        """One bundle, in OVS's two phases: every flow mod changes the tables (start), then each,
        in order, settles its learning flows' counts (finish), flushing what OVS would flush
        against the tables as the whole bundle left them. Then the overlap check. All or nothing."""
        saved = (dict(self.entries), Counter(self._learners))
        dirty: set[Key] = set()
        conjunctions: set[int] = set()  # conjunction ids whose clauses changed
        finish: list[tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]] = []
        try:
            for command in commands:
                mods = self._replacing(command.flows) if isinstance(command, ReplaceFlows) else [command]
                for c in mods:
                    if isinstance(c, AddFlow):
                        e, old = self._put(c.flow)
                        finish.append((e.learns, old.learns if old else ()))
                        dirty.add(e.key)
                        conjunctions.update(cid for cid, _, _ in e.clauses)
                    else:
                        gone = self._pop(entry(c.flow).key)
                        finish.append(((), gone.learns if gone else ()))
                        conjunctions.update(cid for cid, _, _ in (gone.clauses if gone else ()))
            for gained, lost in finish:
                self._count(gained, lost)
            self.check({k for k in dirty if k in self.entries}, conjunctions)
        except Exception:
            self._restore(saved)
            raise

    def _replacing(self, flows: Iterable[Flow]) -> list[AddFlow | DeleteFlow]:
        """What ``ovs-ofctl replace-flows`` sends, in its order: strict deletes of the flows only the
        switch has (learned ones included), then adds of those new or different. Of two flows with
        one key in the file, the last wins."""
        wanted = {entry(f).key: f for f in flows}
        mods: list[AddFlow | DeleteFlow] = [
            DeleteFlow(e.flow) for k, e in self.entries.items() if k not in wanted
        ]
        for k, f in wanted.items():
            have = self.entries.get(k)
            if have is None or have.learned or have.flow != f:
                mods.append(AddFlow(f))
        return mods

    def check(self, dirty: set[Key], conjunctions: set[int]) -> None:
        """Raise OverlapError for an overlap involving a ``dirty`` flow, or a conjunction whose clauses
        changed (``conjunctions``)."""
        levels: dict[tuple[int, int], list[Entry]] = {}
        for e in self.entries.values():
            levels.setdefault((e.flow.table, e.flow.priority), []).append(e)
        for level in levels.values():
            decisive = [e for e in level if not e.clauses]
            touched = {e.key for e in decisive if e.key in dirty or e.conj_id in conjunctions}
            if not touched:
                continue
            dims = _dimensions(level)
            for i, a in enumerate(decisive):
                for b in decisive[i + 1 :]:
                    if (a.key in touched or b.key in touched) and _overlap(a, b, dims):
                        raise OverlapError(a.flow, b.flow)

    def lookup(self, table: int, p: Packet) -> Entry | None:
        """OVS's choice: the highest-priority plain match, unless a conjunction of higher priority
        completes and its ``conj_id`` flow matches (a plain flow wins a tie with clause flows)."""
        entries = self._table(table)
        hard: Entry | None = None
        soft: dict[int, list[Entry]] = {}
        for e in entries:
            if hard is not None and e.flow.priority <= hard.flow.priority:
                break
            if e.match.admits(p):
                if e.clauses:
                    soft.setdefault(e.flow.priority, []).append(e)
                else:
                    hard = e
        for priority in sorted(soft, reverse=True):
            if hard is not None and priority <= hard.flow.priority:
                break  # a plain flow wins a tie with clause flows
            for cid in _completed(soft[priority]):
                p.conj_id = cid
                try:
                    found = next((e for e in entries if not e.clauses and e.match.admits(p)), None)
                finally:
                    p.conj_id = 0
                if found is not None:
                    return found
        return hard

    def _table(self, table: int) -> list[Entry]:
        if self._sorted is None:
            self._sorted = {}
            for e in self.entries.values():
                self._sorted.setdefault(e.flow.table, []).append(e)
            for flows in self._sorted.values():
                flows.sort(key=lambda e: -e.flow.priority)
        return self._sorted.get(table, [])


# conjunction id → (clauses it needs, clause number → the matches of that clause's flows)
Dimensions = dict[int, tuple[int, dict[int, list[Match]]]]


def _dimensions(level: Sequence[Entry]) -> Dimensions:
    dims: Dimensions = {}
    for e in level:
        for cid, k, n in e.clauses:
            dims.setdefault(cid, (n, {}))[1].setdefault(k, []).append(e.match)
    return dims


def _completed(clauses: Sequence[Entry]) -> list[int]:
    seen: dict[int, set[int]] = {}
    need: dict[int, int] = {}
    for e in clauses:
        for cid, k, n in e.clauses:
            seen.setdefault(cid, set()).add(k)
            need[cid] = n
    return sorted(cid for cid, ks in seen.items() if len(ks) == need[cid])


def _overlap(a: Entry, b: Entry, dims: Dimensions) -> bool:
    """Whether some packet reaches both flows' actions (identical actions never count)."""
    if a.flow.actions == b.flow.actions:
        return False
    start = a.match.without("conj_id").meet(b.match.without("conj_id"))
    if start is None:
        return False
    choices: list[list[Match]] = []
    for e in (a, b):
        if e.conj_id is not None:
            n, clauses = dims.get(e.conj_id, (1, {}))
            if any(k not in clauses for k in range(1, n + 1)):
                return False  # the conjunction cannot complete: its flow is never reached
            choices += clauses.values()
    return _satisfiable(start, sorted(choices, key=len))


def _satisfiable(acc: Match, choices: Sequence[list[Match]]) -> bool:
    """Whether one match from each of ``choices`` meets ``acc`` and each other (backtracking)."""
    if not choices:
        return True
    for m in choices[0]:
        met = acc.meet(m)
        if met is not None and _satisfiable(met, choices[1:]):
            return True
    return False
