"""The bridge's desired flows in sections: one section per object the flows come from.

A section is keyed by what it comes from, ``(kind, id...)``: ``("ep", "acme/web1")`` for a
local endpoint, ``("contract", URI)`` for a contract, ``("addrset", GROUP, ADDRESS)`` for one
member of a remote group, ``("base",)`` for the fixed flows (``KINDS`` lists them all).
``pipeline.SectionCompiler`` builds the sections with memoised builders, so a section whose inputs
did not change is the *same* tuple object as before; the applier keeps its mirror per section
(``flowmods.Mirror``) and diffs only the sections that are not, which is what makes a
one-endpoint change cost one endpoint's flows rather than the bridge's.

**Cookies.** Every flow of a section carries the section's cookie (``section_cookie``: the
policyfabric tag, the kind, 40 bits of a hash of the key; layout in ``flows.py``), stamped when
the section is built. ``cookie_section(cookie, keys)`` finds the key again among known keys.

**Shared flows.** Two sections may want a flow with one key (table, priority, match): an
identical flow (two endpoints' ARP answers for one address), or conjunction clauses of several
rules in several contracts or security groups (a flow matching ``reg0=0x4001`` carries a
``conjunction`` action for every rule that has that group as a source). ``resolve`` makes one
flow of them, a pure function of the contributions, whatever their order:

- the *winning* section is the last by (``KINDS`` rank, key): the rank is the order in which the
  compiler emitted its parts before sections (endpoints, remote endpoints, flooding, routing,
  external, group policy, security groups, fixed flows), where the last flow of a key won;
- if every contribution is a conjunction clause (only ``conjunction(...)`` actions), the flow
  carries all of their actions, sorted and deduplicated, as the compiler merged them before;
- otherwise the winner's flow is the one (identical flows: the winner's cookie; different flows
  with one key, which valid input never gives, e.g. two endpoints claiming one address: the
  winner's flow, as before, when the one compiled last won).

The bridge holds a flow while any section wants it (``flowmods.Mirror`` counts them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from functools import cached_property, lru_cache

from policyfabric.agent.renderers.ovs.flows import Flow, section_cookie

SectionKey = tuple[str, ...]  # (kind, id...): ("ep", "acme/web1"), ("base",)
FlowKey = tuple[int, int, tuple[tuple[str, str], ...]]

# kind → its number in cookies and its rank when two sections want different flows with one key
KINDS: Mapping[str, int] = {
    "ep": 1,  # a local endpoint: classification, port security, ARP, L2, output, routes to it
    "remote": 2,  # a remote endpoint: L2 through the tunnel, ARP answers, routes to it
    "bd": 3,  # a bridge domain with local endpoints: tunnel classification, ARP/ND flooding
    "router": 4,  # a router: gateway ARP, L2 → routing, its external gateway (SNAT) and prefixes
    "extnet": 5,  # this host's port on an external network: classify, learn next hops
    "fip": 6,  # a floating IP of a local endpoint
    "group": 7,  # an EPG with local endpoints: intra-group policy
    "contract": 8,  # a contract's rules between the groups that provide and consume it
    "sg": 9,  # a security group of local ports: its rules (their ports' clauses: in the "ep"s)
    "addrset": 10,  # one member address of a remote group: its clause flows
    "base": 11,  # the fixed flows: table misses, conntrack, the tunnel's output
    "flows": 12,  # a flat list of flows given to the applier as they are (tests, tools)
}
# a change to this many sections makes the next ``Sections`` a root (see ``Sections.changed``)
REROOT = 1024


@lru_cache(maxsize=1 << 18)
def section_id(key: SectionKey) -> int:
    """40 bits of a hash of ``key``: stable across runs and hosts (not Python's ``hash``)."""
    digest = hashlib.blake2b("\x1f".join(key).encode(), digest_size=5).digest()
    return int.from_bytes(digest, "big") or 1


def cookie_of(key: SectionKey, learned: bool = False) -> int:
    """The cookie of the flows of section ``key`` (``learned``: of those its learn actions add)."""
    return section_cookie(KINDS[key[0]], section_id(key), learned)


def cookie_section(cookie: int, keys: Iterable[SectionKey]) -> list[SectionKey]:
    """The keys among ``keys`` whose flows (or learned flows) carry ``cookie``: one, unless two
    keys of one kind hash alike (40 bits: a chance of about 3 in 10,000 among 25,000 sections)."""
    return [k for k in keys if cookie in (cookie_of(k), cookie_of(k, learned=True))]


def stamp(key: SectionKey, flows: Iterable[Flow], cookie: int | None = None) -> tuple[Flow, ...]:
    """A section's flows as the bridge gets them: its cookie (``cookie_of(key)``) on each, one flow
    per key (of two with one key, the last, as a flow mod after another would leave it). Builders
    make their flows with the cookie already: then this only checks."""
    if cookie is None:
        cookie = cookie_of(key)
    out = tuple(flows)
    if len(out) > 1:
        unique = {f.key: f for f in out}
        if len(unique) < len(out):
            out = tuple(unique.values())
    if any(f.cookie != cookie for f in out):
        out = tuple(f if f.cookie == cookie else f.with_cookie(cookie) for f in out)
    return out


def rank(key: SectionKey) -> tuple[int, SectionKey]:
    return KINDS[key[0]], key


def is_clause(f: Flow) -> bool:
    """A conjunction clause: only ``conjunction(...)`` actions (its verdict is elsewhere)."""
    return bool(f.actions) and all(a.startswith("conjunction(") for a in f.actions)


@lru_cache(maxsize=1 << 16)
def _merged(winner: Flow, actions: tuple[str, ...]) -> Flow:
    return Flow(winner.table, winner.priority, winner.match, actions, winner.cookie)


def resolve(contributions: Mapping[SectionKey, Flow]) -> Flow:
    """The one flow of a key that several sections want (the rules are in the module docstring)."""
    winner = contributions[max(contributions, key=rank)]
    flows = contributions.values()
    if all(f.actions == winner.actions for f in flows):
        return winner
    if all(is_clause(f) for f in flows):
        return _merged(winner, tuple(sorted({a for f in flows for a in f.actions})))
    return winner


Owners = tuple[SectionKey, Flow] | dict[SectionKey, Flow]  # one section's flow, or several's


def index(parts: Mapping[SectionKey, tuple[Flow, ...]]) -> tuple[dict[FlowKey, Owners], dict[FlowKey, Flow]]:
    """Who wants each flow key (one section and its flow, or several), and the flow each key
    resolves to: in one pass, with the shared keys resolved at the end (a full sync's mirror)."""
    owners: dict[FlowKey, Owners] = {}
    flows: dict[FlowKey, Flow] = {}
    shared = []
    for skey, section in parts.items():
        for f in section:
            k = f.key
            o = owners.get(k)
            if o is None:
                owners[k] = (skey, f)
                flows[k] = f
            elif isinstance(o, tuple):
                owners[k] = {o[0]: o[1], skey: f}
                shared.append(k)
            else:
                o[skey] = f
    for k in shared:
        o = owners[k]
        assert isinstance(o, dict)
        flows[k] = resolve(o)
    return owners, flows


Section = tuple[Flow, ...]


class _Overlay(Mapping[SectionKey, Section]):
    """A root's sections with changes on top (``()``: a section that went)."""

    def __init__(self, under: Mapping[SectionKey, Section], over: Mapping[SectionKey, Section]) -> None:
        self._under, self._over = under, over

    def __getitem__(self, key: SectionKey) -> Section:
        section = self._over.get(key)
        if section is None:
            return self._under[key]
        if not section:
            raise KeyError(key)
        return section

    def __iter__(self) -> Iterator[SectionKey]:
        over = self._over
        yield from (k for k in self._under if k not in over)
        yield from (k for k, v in over.items() if v)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Sections:
    """The desired flows of a bridge by section: ``parts`` maps a section's key to its flows (one
    per flow key). Iterating gives the flows the bridge should hold, shared ones resolved.

    Made from another by a few changed sections (``derive``), it holds them on top of a common
    root (``base``) rather than a copy of every section, and ``changed`` says which they are: two
    with one root differ at most in the sections either changed, which is what makes comparing
    them (``==``, the applier's plan) cost the changes, not the bridge. A root is made again
    every ``REROOT`` changes (one full copy, one full comparison), so no chain of old sections is
    kept alive."""

    def __init__(
        self,
        parts: Mapping[SectionKey, Section],
        base: Sections | None = None,
        changes: Mapping[SectionKey, Section] | None = None,
    ) -> None:
        if base is None:
            self.base: Sections | None = None
            self._changes: Mapping[SectionKey, Section] = {}
            self.parts: Mapping[SectionKey, Section] = parts
        else:
            self.base, self._changes = base, changes or {}
            self.parts = _Overlay(parts, self._changes)

    @property
    def changed(self) -> AbstractSet[SectionKey]:
        """The sections that may differ from the root's (none for a root)."""
        return self._changes.keys()

    @classmethod
    def of(cls, flows: Iterable[Flow]) -> Sections:
        """A flat list of flows as one section (of two flows with one key, the last)."""
        return cls({("flows",): tuple({f.key: f for f in flows}.values())})

    def get(self, key: SectionKey) -> Section:
        """Section ``key``'s flows (``()``: none)."""
        section = self._changes.get(key)
        if section is not None:
            return section
        root = self.base if self.base is not None else self
        return root.parts.get(key, ())

    def derive(self, updates: Mapping[SectionKey, Section]) -> Sections:
        """These sections with ``updates`` (a section's new flows; ``()`` when it goes)."""
        root = self.base if self.base is not None else self
        changes = {**self._changes, **updates}
        if len(changes) <= REROOT:
            return Sections(root.parts, root, changes)
        parts = dict(root.parts)
        for key, section in changes.items():
            if section:
                parts[key] = section
            else:
                parts.pop(key, None)
        return Sections(parts)

    def changed_since(self, other: Sections) -> Collection[SectionKey] | None:
        """The sections in which these may differ from ``other``; None if unknown (no common root:
        compare them all)."""
        if other is self:
            return ()
        mine = self.base if self.base is not None else self  # not ``or``: len() resolves every flow
        theirs = other.base if other.base is not None else other
        if mine is theirs:
            return self.changed | other.changed
        return None

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Sections):
            return NotImplemented
        keys = self.changed_since(other)
        if keys is None:
            return dict(self.parts) == dict(other.parts)
        return all(self.get(k) == other.get(k) for k in keys)

    __hash__ = None  # type: ignore[assignment]

    @cached_property
    def flows(self) -> tuple[Flow, ...]:
        """Every flow, one per key, shared ones resolved; in section order, then each section's."""
        return tuple(index(self.parts)[1].values())

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def __len__(self) -> int:
        """How many flows (resolving them all, once: not a test for emptiness)."""
        return len(self.flows)

    def __bool__(self) -> bool:
        return any(True for _ in self.parts)

    def __repr__(self) -> str:
        return f"<Sections: {sum(1 for _ in self.parts)} sections>"
