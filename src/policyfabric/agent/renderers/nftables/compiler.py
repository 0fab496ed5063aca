"""The view's ruleset put together by part, each part memoised on what it is made from.

Why: a view changes a little at a time (a member joins a security group, an endpoint comes), and
compiling the whole table again costs what the whole view costs: at 10,000 members a join took
~100 ms of compile (of ~105 ms for the whole join, the ``nft`` run included), ~98% of it adding
the group's 10,000 addresses to a Python set once per local endpoint and rule that names the
group. Here every part is computed from its own inputs and kept with them: the next compile gives
the *same object* for a part whose inputs are the same objects (or equal ones: a record that is
merely equal is compared, never trusted), so

- a change that leaves the local endpoints, the security groups and the group policy the same
  objects (a remote member joining) skips the local endpoints altogether; any other is a pass
  over the local endpoints (lookups) plus the parts that changed;
- the rulesets compare, and ``delta.changes`` diffs them, by identity first.

The result never depends on the memo: a compiler that has seen any sequence of views compiles a
view to a ruleset equal to a fresh one's (tests/test_nftables_incremental_unit.py checks it).
``compile`` stays pure: the memo is an optimisation over values, with no I/O.

Set elements are counted (an address may belong to several endpoints: two tenants may use the
same addresses) and followed from the last view by ``changed``: the endpoints (or addresses)
between the longest head and tail that are the same objects as last time, found by a compare of
addresses in C, whatever the number of endpoints; a set's frozenset then changes by difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, count
from operator import is_not
from typing import Generic, TypeVar

from policyfabric.agent.renderers.nftables.ruleset import (
    EVERY,
    FORWARD,
    ZONES,
    Body,
    Chain,
    Ruleset,
    address_set,
    bridge_of,
    endpoint_chains,
    group_rules,
    group_set,
    sg_rules,
)
from policyfabric.agent.view import BridgeDomain, Contract, Endpoint, Group, IpAddress, Network, SecurityGroup

V = TypeVar("V")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
Family = bool  # True: IPv6
EndpointChains = tuple[tuple[str, Chain], ...]
GroupInputs = tuple[Group | None, tuple[tuple[str, Contract], ...], tuple[Group, ...]]
BASE = {"zones": ZONES, "forward": FORWARD}
NONE: frozenset[IpAddress] = frozenset()  # one object: ``frozenset()`` makes a new one each time


def _same(a: object, b: object) -> bool:
    """The same inputs: the same object, or equal (tuples compare their items by identity first)."""
    return a is b or a == b


class _Slots(Generic[V]):
    """Values by slot, each kept with the inputs it was made from; the slots a compile did not use
    are dropped after it (``rotate``), so the memo holds what the current view needs, no more."""

    def __init__(self) -> None:
        self._old: dict[Hashable, tuple[object, V]] = {}
        self._new: dict[Hashable, tuple[object, V]] = {}

    def get(self, slot: Hashable, inputs: object, make: Callable[..., V], *args: object) -> V:
        """The slot's value if it was made from the same inputs, else ``make(*args)``."""
        hit = self._new.get(slot) or self._old.get(slot)
        value = hit[1] if hit is not None and _same(hit[0], inputs) else make(*args)
        self._new[slot] = (inputs, value)
        return value

    def rotate(self) -> None:
        self._old, self._new = self._new, {}


def changed(old: Sequence[T], new: Sequence[T]) -> tuple[Sequence[T], Sequence[T]]:
    """What differs between two sequences, as (items of ``old``, items of ``new``) once the longest
    common head and tail of the *same objects* are cut off: for a view that keeps the records of
    what did not change, a compare by address in C, then the few that changed. Items that are
    merely equal count as changed (gone and back): the result stays right, it is only slower."""
    if old is new:
        return (), ()
    short = min(len(old), len(new))
    head = next(compress(count(), map(is_not, old, new)), short)
    tail = min(next(compress(count(), map(is_not, reversed(old), reversed(new))), short), short - head)
    return old[head : len(old) - tail], new[head : len(new) - tail]


class _Counted(Generic[K]):
    """Addresses counted by key (an address may come from several sources: two endpoints, two
    tenants), each key's addresses kept as a frozenset changed by difference: a frozenset that
    does not change stays the same object."""

    def __init__(self) -> None:
        self._counts: dict[K, Counter[IpAddress]] = {}
        self._sets: dict[K, frozenset[IpAddress]] = {}

    def change(self, gone: Iterable[tuple[K, IpAddress]], came: Iterable[tuple[K, IpAddress]]) -> None:
        net: Counter[tuple[K, IpAddress]] = Counter(came)
        net.subtract(gone)
        appeared: dict[K, set[IpAddress]] = {}
        vanished: dict[K, set[IpAddress]] = {}
        for (key, ip), d in net.items():
            if not d:
                continue
            counts = self._counts.setdefault(key, Counter())
            before = counts[ip]
            after = counts[ip] = before + d
            if after <= 0:
                del counts[ip]
            if before <= 0 < after:
                appeared.setdefault(key, set()).add(ip)
            elif after <= 0 < before:
                vanished.setdefault(key, set()).add(ip)
        for key in appeared.keys() | vanished.keys():
            self._sets[key] = self.of(key) - vanished.get(key, set()) | appeared.get(key, set())

    def of(self, key: K) -> frozenset[IpAddress]:
        return self._sets.get(key, NONE)


def _family(ip: IpAddress) -> Family:
    return ":" in ip


class _AddressSet:
    """A security group's member addresses by family, followed from the last tuple by difference
    (a join is one address, not a pass over the group in Python)."""

    def __init__(self) -> None:
        self.source: Sequence[IpAddress] = ()
        self.counted: _Counted[Family] = _Counted()

    def follow(self, addresses: Sequence[IpAddress]) -> _AddressSet:
        gone, came = changed(self.source, addresses)
        self.counted.change(((_family(a), a) for a in gone), ((_family(a), a) for a in came))
        self.source = addresses
        return self


class _Members:
    """Group members' addresses per (class id, family), and every group's (class id 0), followed
    from the endpoints that changed."""

    def __init__(self) -> None:
        self._sides: list[Sequence[Endpoint]] = [(), ()]
        self.counted: _Counted[tuple[int, Family]] = _Counted()

    def follow(self, local: Sequence[Endpoint], remote: Sequence[Endpoint]) -> None:
        for side, eps in enumerate((local, remote)):
            gone, came = changed(self._sides[side], eps)
            if gone or came:
                self.counted.change(self._pairs(gone), self._pairs(came))
            self._sides[side] = eps

    @staticmethod
    def _pairs(eps: Iterable[Endpoint]) -> Iterator[tuple[tuple[int, Family], IpAddress]]:
        for ep in eps:
            if ep.classid:
                for ip in ep.ips:
                    yield (ep.classid, _family(ip)), ip
                    yield (0, _family(ip)), ip

    def of(self, classid: int, v6: Family) -> frozenset[IpAddress]:
        """The members of group ``classid`` (0: of every group) in one family."""
        return self.counted.of((classid, v6))


def _sg_rules(governed: bool, groups: tuple[SecurityGroup, ...], inbound: bool) -> Body:
    want = "in" if inbound else "out"
    return sg_rules(governed, [r for g in groups for r in g.rules if r.direction == want], inbound)


class _Policy:
    """What group policy is read from, indexed once per change of the groups or contracts: a class
    id's group, and each contract's groups in the order the chains list peers (by class id)."""

    def __init__(self, groups: Mapping[str, Group], contracts: Mapping[str, Contract]) -> None:
        self.groups, self.contracts = groups, contracts
        ordered = sorted(groups.values(), key=lambda g: g.classid)
        self.position = {id(g): i for i, g in enumerate(ordered)}
        self.by_classid: dict[int, Group] = {}
        for g in groups.values():
            self.by_classid.setdefault(g.classid, g)  # the first one, as the view lists them
        self._inputs: dict[int, GroupInputs] = {}
        self.naming: dict[str, list[Group]] = {}
        for g in ordered:
            for uri in dict.fromkeys((*g.provides, *g.consumes)):
                self.naming.setdefault(uri, []).append(g)

    def inputs(self, classid: int) -> GroupInputs:
        """A class id's group, the contracts it names (by URI) and the groups naming them: all that
        its chains are made from."""
        found = self._inputs.get(classid)
        if found is None:
            found = self._inputs[classid] = self._read(classid)
        return found

    def _read(self, classid: int) -> GroupInputs:
        me = self.by_classid.get(classid)
        if me is None:
            return None, (), ()
        uris = sorted({u for u in (*me.provides, *me.consumes) if u in self.contracts})
        peers = {id(g): g for u in uris for g in self.naming.get(u, ())}
        ordered = tuple(sorted(peers.values(), key=lambda g: self.position[id(g)]))
        return me, tuple((u, self.contracts[u]) for u in uris), ordered


@dataclass
class _Local:
    """What the local endpoints make: their bridges (bridge → number), chains (per endpoint, in
    order) and the sets those chains name."""

    bridges: dict[str, int] = field(default_factory=dict)
    parts: list[EndpointChains] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)
    every: bool = False
    address_sets: set[str] = field(default_factory=set)

    def chain_map(self) -> dict[str, Chain]:
        return {name: chain for part in self.parts for name, chain in part}


class RulesetCompiler:
    """``compile`` for the nftables renderer: a view in, its ``Ruleset`` out, the unchanged parts
    reused from the last views."""

    def __init__(self) -> None:
        self._members = _Members()
        self._policy: _Policy | None = None
        self._group_bodies: _Slots[Body] = _Slots()
        self._sg_bodies: _Slots[Body] = _Slots()
        self._endpoints: _Slots[EndpointChains] = _Slots()
        self._chains: _Slots[Chain] = _Slots()
        self._address_sets: dict[str, _AddressSet] = {}
        self._local: tuple[object, _Local] | None = None
        self._last: tuple[_Local, Ruleset] | None = None

    def __call__(self, net: Network) -> Ruleset:
        policy = self._policy
        if policy is None or not _same((policy.groups, policy.contracts), (net.groups, net.contracts)):
            policy = self._policy = _Policy(net.groups, net.contracts)
        inputs = (net.local, net.security_groups, policy, net.bds)
        if self._local is not None and _same(self._local[0], inputs):
            local = self._local[1]  # a change elsewhere (a remote member, say): not a pass over the local
        else:
            local = self._endpoint_chains(net, policy)
        self._local = (inputs, local)
        sets = self._sets(net, local)
        if self._last is None:
            ruleset = Ruleset(sets, local.bridges, {**BASE, **local.chain_map()})
        else:
            was, last = self._last
            ruleset = Ruleset(
                last.sets if _same(sets, last.sets) else sets,
                last.bridges if _same(local.bridges, last.bridges) else local.bridges,
                last.chain_map if local.parts == was.parts else {**BASE, **local.chain_map()},
            )
        self._last = (local, ruleset)
        return ruleset

    def _endpoint_chains(self, net: Network, policy: _Policy) -> _Local:
        """Every local endpoint's chains, each endpoint's reused when its record and its layers'
        rules are the same (a pass over the local endpoints, which a host has some hundreds of)."""
        local = _Local()
        numbers: set[int] = set()
        for ep in sorted(net.local, key=lambda e: e.key):
            bridge = bridge_of(ep.interface)
            n = ep.ofport or 0
            if bridge is None or not ep.ips:
                continue  # not hybrid-plugged: this renderer cannot see its traffic
            if bridge in local.bridges or n in numbers:
                continue  # a second endpoint on one bridge or port: the first (by key) has them
            local.bridges[bridge] = n
            bd = net.bds.get(ep.bd)  # what the agent answers there (DHCP): endpoint_chains
            numbers.add(n)
            layers = [self._group_body(policy, ep.classid, inbound) for inbound in (True, False)]
            layers += [self._sg_body(net.security_groups, ep, inbound) for inbound in (True, False)]
            for body in layers:
                local.groups |= body.groups
                local.address_sets |= body.address_sets
                local.every |= body.every
            local.parts.append(
                self._endpoints.get(ep.key, (ep, n, bd, *layers), self._endpoint, ep, n, bridge, layers, bd)
            )
        for slots in (self._group_bodies, self._sg_bodies, self._endpoints, self._chains):
            slots.rotate()
        return local

    def _group_body(self, policy: _Policy, classid: int, inbound: bool) -> Body:
        inputs = policy.inputs(classid)
        return self._group_bodies.get((classid, inbound), inputs, group_rules, *inputs, inbound)

    def _sg_body(self, groups: Mapping[str, SecurityGroup], ep: Endpoint, inbound: bool) -> Body:
        inputs = tuple(groups[g] for g in ep.security_groups if g in groups)
        slot = (ep.security_groups, ep.sg_governed, inbound)
        return self._sg_bodies.get(slot, inputs, _sg_rules, ep.sg_governed, inputs, inbound)

    def _endpoint(
        self, ep: Endpoint, n: int, bridge: str, layers: list[Body], bd: BridgeDomain | None
    ) -> EndpointChains:
        """The endpoint's seven chains: its own, each direction's, each direction's two layers."""
        g_in, g_out, sg_in, sg_out = (self._chain(body.rules) for body in layers)
        own, chain_in, chain_out = endpoint_chains(ep, n, bridge, bd)
        return (
            *(own, chain_in, (f"ep{n}_in_g", g_in), (f"ep{n}_in_sg", sg_in)),
            *(chain_out, (f"ep{n}_out_g", g_out), (f"ep{n}_out_sg", sg_out)),
        )

    def _chain(self, rules: tuple[str, ...]) -> Chain:
        """Chains of equal rules are one object (the endpoints of a group share their layers')."""
        return self._chains.get(rules, rules, Chain, rules)

    def _sets(self, net: Network, local: _Local) -> dict[str, frozenset[IpAddress]]:
        """The named sets the chains use, with their elements (``_4`` and ``_6`` of each)."""
        self._members.follow(net.local, net.remote)
        sets: dict[str, frozenset[IpAddress]] = {}
        for classid in sorted(local.groups):
            for v6 in (False, True):  # class id 0 names no group: its set stays empty
                members = self._members.of(classid, v6) if classid else NONE
                sets[f"{group_set(classid)}_{6 if v6 else 4}"] = members
        if local.every:
            for v6 in (False, True):
                sets[f"{EVERY}_{6 if v6 else 4}"] = self._members.of(0, v6)
        followed: dict[str, _AddressSet] = {}
        for uri in sorted(local.address_sets):
            addresses = net.address_sets.get(uri, ())
            found = followed[uri] = (self._address_sets.get(uri) or _AddressSet()).follow(addresses)
            name = address_set(uri)
            for fam, v6 in (("4", False), ("6", True)):
                elements = found.counted.of(v6)
                key = f"{name}_{fam}"
                sets[key] = sets[key] | elements if key in sets else elements  # two URIs, one hash: both
        self._address_sets = followed
        return sets
