"""The policy half of the agent's view, kept up to date from the URIs the client reports changed.

Nodes, each read by the pure readers of ``agent/reader.py`` through a ``Reads`` (what it looks up
is what it depends on, ``agent/incremental.py``):

- one per object of a class in ``reader.OBJECTS`` (groups, contracts, bridge domains, security
  groups, external networks, floating IPs), by its URI: rebuilt when a URI it read changed, made
  for a new object of one of those classes, dropped with its object;
- one per member set container a security group rule names (``MemberSet``): kept per member, so
  one member joining or leaving costs one member's work (its container's children are compared
  as sets, in C), however large the group;
- one per router, rebuilt like the objects, and all of them (they are few) when the map from a
  GbpSubnets container to its bridge domain changed, which the bridge domains make.

What records share is combined from the nodes' outputs, deterministically (a full build of the
same cache gives the same view whatever order the cache holds its objects in): a container
claimed by two bridge domains is the smallest URI's; a group whose address set two rules read
from different containers takes the smallest container's. (The reader used to let the last one
read win, in the cache's order.) A full build is the same code with every node a target
(``update(policy, None)``) in a new state; given the state it replaces (``donor``), it takes over
each object and member whose inputs are the identical objects instead of reading it again. A
record that reads equal to the one it replaces keeps its identity (``incremental.same``).

Why a recording Mapping rather than lists of what each kind of record depends on: the readers are
the trust boundary and change for their own reasons; a list kept beside them would be wrong the
day one of them reads one more object, and the property test (incremental == whole, for random
sequences of changes) would be all that noticed. Recording what was looked up cannot drift from
the reader. Routers are the exception (they also read ``bd_of_subnets``, a combination): they
are few, so all are read again whenever that map changes.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from policyfabric.agent.incremental import DependencyIndex, Inputs, Reads, problem_order, same, unchanged
from policyfabric.agent.reader import OBJECTS, READ, Read, Record, read_member, read_object, read_router
from policyfabric.agent.view import (
    BridgeDomain,
    Contract,
    ExternalNet,
    FloatingIp,
    Group,
    Invalid,
    IpAddress,
    Network,
    Router,
    SecurityGroup,
)
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.mo import MO

SECTIONS: dict[type, str] = {  # a record's type → the Network field it is in
    Group: "groups",
    Contract: "contracts",
    BridgeDomain: "bds",
    SecurityGroup: "security_groups",
    ExternalNet: "external",
    FloatingIp: "floating_ips",
    Router: "routers",
}


class MemberSet:
    """The member addresses in one member set container (a security group's members), sorted, and
    the members refused. Kept per member: ``update`` reads again only the members whose URI
    changed, and the container's list of children (compared as sets) when it changed."""

    def __init__(self, uri: str, donor: MemberSet | None = None) -> None:
        """``donor``: the set this one replaces, whose members' reads are taken over where the
        member is the same object."""
        self.uri, self._donor = uri, donor
        self.addresses: tuple[IpAddress, ...] = ()
        self.problems: tuple[Invalid, ...] = ()
        self._children: set[str] = set()
        self._read: dict[str, IpAddress | Invalid | None] = {}  # member URI → what it reads as
        self._mo: dict[str, MO | None] = {}  # member URI → the object read
        self._container: MO | None = None
        self._count: dict[IpAddress, int] = {}  # address → members that have it
        self._sorted: list[IpAddress] = []
        self._refused: dict[str, Invalid] = {}
        self._dirty = False
        self._bulk = False  # (a full update: ``_sorted`` made after, in one sort)
        self.reads = 0  # members read by the last update (what it cost)

    def update(
        self, policy: Mapping[str, MO], uris: Iterable[str] | None, index: DependencyIndex[str]
    ) -> bool:
        """Read what ``uris`` changed (None: everything); whether the addresses or problems changed."""
        self.reads = 0
        if uris is None:  # every member read again, the addresses sorted once after
            self._bulk = True
            self._relist(policy, index, read=False)
            for uri in self._children:
                self._member(policy, uri)
            self._bulk = False
            self._sorted = sorted(self._count)
        else:
            uris = set(uris)
            if self.uri in uris:
                self._relist(policy, index)
            for uri in uris:
                if uri != self.uri and uri in self._children:
                    self._member(policy, uri)
        self._donor = None
        if not self._dirty:
            return False
        self._dirty = False
        addresses = tuple(self._sorted)
        problems = tuple(sorted(self._refused.values(), key=problem_order))
        if addresses == self.addresses and problems == self.problems:
            return False
        self.addresses, self.problems = same(self.addresses, addresses), problems
        return True

    def release(self, index: DependencyIndex[str]) -> None:
        index.discard(self.uri, self.uri)
        for uri in self._children:
            index.discard(self.uri, uri)

    def stale(self, policy: Mapping[str, MO]) -> Iterator[str]:
        """The URIs of the container and members that are no longer the objects read."""
        get = policy.get
        if get(self.uri) is not self._container:
            yield self.uri
        if not all(map(operator.is_, map(get, self._mo), self._mo.values())):
            yield from (uri for uri, mo in self._mo.items() if get(uri) is not mo)

    def _relist(self, policy: Mapping[str, MO], index: DependencyIndex[str], read: bool = True) -> None:
        container = self._container = policy.get(self.uri)
        index.add(self.uri, self.uri)
        now = set(container.children) if container is not None else set()
        for uri in self._children - now:
            index.discard(self.uri, uri)
            self._set(uri, None)
            del self._read[uri], self._mo[uri]
        for uri in now - self._children:
            index.add(self.uri, uri)
            self._read[uri] = None
            if read:
                self._member(policy, uri)
        self._children = now

    def _member(self, policy: Mapping[str, MO], uri: str) -> None:
        mo = self._mo[uri] = policy.get(uri)
        donor = self._donor
        if donor is not None and uri in donor._mo and donor._mo[uri] is mo:
            self._set(uri, donor._read[uri])
            return
        self.reads += 1
        self._set(uri, read_member(mo) if mo is not None and mo.subject == Cls.GBP_SUBNET else None)

    def _set(self, uri: str, value: IpAddress | Invalid | None) -> None:
        old = self._read.get(uri)
        if old == value:
            return
        self._dirty = True
        if isinstance(old, Invalid):
            del self._refused[uri]
        elif old is not None:
            self._count[old] -= 1
            if not self._count[old]:
                del self._count[old]
                if not self._bulk:
                    del self._sorted[bisect.bisect_left(self._sorted, old)]
        if isinstance(value, Invalid):
            self._refused[uri] = value
        elif value is not None:
            if value not in self._count:
                self._count[value] = 0
                if not self._bulk:
                    bisect.insort(self._sorted, value)
            self._count[value] += 1
        self._read[uri] = value


class PolicyState:
    """The policy records of the view, updated by ``update(policy, changed)``. After each update,
    ``touched`` names the Network fields whose map changed, ``changed_groups`` the groups whose
    record changed (local endpoints read their class id), ``problems_changed`` says whether the
    refusals did."""

    def __init__(self, donor: PolicyState | None = None) -> None:
        """``donor``: the state this one replaces (a full build's), whose records this one's first
        update reuses where they read the same (identity only: the values are read again)."""
        self._donor = donor
        self.groups: dict[str, Group] = {}
        self.contracts: dict[str, Contract] = {}
        self.bds: dict[str, BridgeDomain] = {}
        self.security_groups: dict[str, SecurityGroup] = {}
        self.external: dict[str, ExternalNet] = {}
        self.routers: dict[str, Router] = {}
        self.address_sets: dict[str, tuple[IpAddress, ...]] = {}
        self.floating_ips: tuple[FloatingIp, ...] = ()
        self.bd_of_subnets: dict[str, str] = {}  # GbpSubnets container → its bridge domain
        self._fips: dict[str, FloatingIp] = {}
        self._maps: dict[str, dict[str, Any]] = {
            "groups": self.groups,
            "contracts": self.contracts,
            "bds": self.bds,
            "security_groups": self.security_groups,
            "external": self.external,
            "floating_ips": self._fips,
            "routers": self.routers,
        }
        self._objects: dict[str, Read] = {}
        self._inputs: dict[str, Inputs] = {}  # what each object's read looked up (a donor's are checked)
        self._router_inputs: dict[str, Inputs] = {}
        self._routers: dict[str, Read] = {}
        self._object_reads: DependencyIndex[str] = DependencyIndex()
        self._router_reads: DependencyIndex[str] = DependencyIndex()
        self._member_reads: DependencyIndex[str] = DependencyIndex()
        self._subnet_claims: dict[str, set[str]] = {}  # container → bridge domains naming it
        self._set_claims: dict[str, dict[str, set[str]]] = {}  # group → container → SGs naming it
        self._set_of: dict[str, str] = {}  # group → the container its address set is read from
        self._chosen_by: dict[str, set[str]] = {}  # container → groups reading it
        self._member_sets: dict[str, MemberSet] = {}
        self._problems: dict[tuple[str, str], tuple[Invalid, ...]] = {}
        self._problem_uris: list[str] = []
        self.touched: set[str] = set()
        self.changed_groups: set[str] = set()
        self.problems_changed = False
        self.reads: list[str] = []  # the objects and routers read by the last update (what it cost)
        self.member_reads = 0  # and the members

    # ---- the update
    def update(self, policy: Mapping[str, MO], changed: set[str] | None) -> None:
        """Bring the records up to date with ``policy``, of which ``changed`` URIs changed since the
        last update (None: unknown, every object is read again)."""
        self.touched, self.changed_groups, self.problems_changed = set(), set(), False
        self.reads, self.member_reads = [], 0
        if changed is None:
            objects, routers = set(self._objects), set(self._routers)
            for uri, mo in policy.items():
                if mo.subject in OBJECTS:
                    objects.add(uri)
                elif mo.subject == Cls.PF_ROUTER:
                    routers.add(uri)
        else:
            objects, routers = self._targets(policy, changed)
        subnets: set[str] = set()  # containers whose claims changed
        claimed: set[str] = set()  # groups whose claims changed
        donor = self._donor
        for uri in objects:
            found = policy.get(uri)
            if found is None or found.subject not in OBJECTS:
                self._object_reads.drop(uri)
                self._inputs.pop(uri, None)
                self._put("object", self._objects, uri, None, subnets, claimed)
                continue
            kept = donor._inputs.get(uri) if donor is not None and uri not in self._inputs else None
            if donor is not None and kept is not None and unchanged(kept, policy):
                read, inputs = donor._objects[uri], kept  # the same objects: it reads the same
            else:
                reads = Reads(policy, uri)
                self.reads.append(uri)
                read, inputs = read_object(reads, uri, found), reads.seen
            self._inputs[uri] = inputs
            self._object_reads.set_reads(uri, inputs)
            self._put("object", self._objects, uri, read, subnets, claimed)
        if self._combine_subnets(subnets):
            routers |= set(self._routers)  # few: all read again when a leg's bridge domain may have moved
        self._address_sets(policy, changed, claimed)
        for uri in routers:
            found = policy.get(uri)
            if found is None or found.subject != Cls.PF_ROUTER:
                self._router_reads.drop(uri)
                self._router_inputs.pop(uri, None)
                self._put("router", self._routers, uri, None, subnets, claimed)
                continue
            reads = Reads(policy, uri)
            self.reads.append(uri)
            read = read_router(reads, uri, found, self.bd_of_subnets)
            self._router_reads.set_reads(uri, reads.seen)
            self._router_inputs[uri] = reads.seen
            self._put("router", self._routers, uri, read, subnets, claimed)
        if "floating_ips" in self.touched:
            fips = sorted(self._fips.values(), key=lambda f: (f.ip, f.network, f.endpoint))
            last = self._donor.floating_ips if self._donor is not None else self.floating_ips
            self.floating_ips = same(last, tuple(fips))
        if self.problems_changed:
            self._problem_uris = sorted(i.uri for found in self._problems.values() for i in found)
        self._donor = None  # its records are adopted: it is not needed any more

    def _targets(self, policy: Mapping[str, MO], changed: set[str]) -> tuple[set[str], set[str]]:
        """The objects and routers a change reaches: those that read a changed URI (their own
        included, so a removed one is reached), and new objects of their classes."""
        objects, routers = self._object_reads.users(changed), self._router_reads.users(changed)
        for uri in changed:
            mo = policy.get(uri)
            if mo is not None:
                if mo.subject in OBJECTS:
                    objects.add(uri)
                elif mo.subject == Cls.PF_ROUTER:
                    routers.add(uri)
        return objects, routers

    def _put(
        self,
        kind: str,
        store: dict[str, Read],
        uri: str,
        new: Read | None,
        subnets: set[str],
        claimed: set[str],
    ) -> None:
        """``uri``'s node now reads ``new`` (None: gone): its record, problems and claims replace
        the old ones in the view's maps."""
        old = store.get(uri)
        prior = old if old is not None or self._donor is None else self._donor._stored(kind, uri)
        if new is not None and prior is not None and new.record is not None:
            new = replace(new, record=same(prior.record, new.record))
        if old == new:
            return
        if new is None:
            del store[uri]
        else:
            store[uri] = new
        self._put_record(uri, old.record if old else None, new.record if new else None)
        was, now = (old.subnets if old else None), (new.subnets if new else None)
        if was != now:
            if was is not None:
                self._subnet_claims[was].discard(uri)
            if now is not None:
                self._subnet_claims.setdefault(now, set()).add(uri)
            subnets.update(c for c in (was, now) if c is not None)
        had, has = set(old.claims if old else ()), set(new.claims if new else ())
        for group, container in had - has:
            self._set_claims[group][container].discard(uri)
            claimed.add(group)
        for group, container in has - had:
            self._set_claims.setdefault(group, {}).setdefault(container, set()).add(uri)
            claimed.add(group)
        self._set_problems((kind, uri), new.problems if new else ())

    def _stored(self, kind: str, uri: str) -> Read | None:
        return (self._objects if kind == "object" else self._routers).get(uri)

    def _put_record(self, uri: str, old: Record | None, new: Record | None) -> None:
        if old is new:
            return
        before = SECTIONS[type(old)] if old is not None else None
        after = SECTIONS[type(new)] if new is not None else None
        if before is not None and before != after:
            del self._maps[before][uri]
            self.touched.add(before)
        if after is not None:
            self._maps[after][uri] = new
            self.touched.add(after)
        if isinstance(old, Group) or isinstance(new, Group):
            self.changed_groups.add(uri)

    def _set_problems(self, key: tuple[str, str], problems: tuple[Invalid, ...]) -> None:
        if self._problems.get(key, ()) == problems:
            return
        self.problems_changed = True
        if problems:
            self._problems[key] = problems
        else:
            del self._problems[key]

    def _combine_subnets(self, containers: set[str]) -> bool:
        """``bd_of_subnets`` for the containers whose claims changed; whether it changed."""
        moved = False
        for container in containers:
            claims = self._subnet_claims.get(container)
            if not claims:
                self._subnet_claims.pop(container, None)
            chosen = min(claims) if claims else None
            if self.bd_of_subnets.get(container) != chosen:
                moved = True
                if chosen is None:
                    del self.bd_of_subnets[container]
                else:
                    self.bd_of_subnets[container] = chosen
        return moved

    def _address_sets(self, policy: Mapping[str, MO], changed: set[str] | None, claimed: set[str]) -> None:
        """The groups' address sets: which container each group's is read from (its claims), and
        the member sets, updated by the changes that reach them."""
        fresh: set[str] = set()  # member sets made now: read whole already
        regroup: set[str] = set()  # groups whose address set is to be looked at again
        for group in claimed:
            containers = {c: sgs for c, sgs in self._set_claims.get(group, {}).items() if sgs}
            if containers:
                self._set_claims[group] = containers
            else:
                self._set_claims.pop(group, None)
            chosen = min(containers) if containers else None
            was = self._set_of.get(group)
            if was == chosen:
                continue
            regroup.add(group)
            if was is not None:
                del self._set_of[group]
                self._chosen_by[was].discard(group)
                if not self._chosen_by[was]:
                    del self._chosen_by[was]
                    self._member_sets.pop(was).release(self._member_reads)
                    self._set_problems(("members", was), ())
            if chosen is not None:
                self._set_of[group] = chosen
                self._chosen_by.setdefault(chosen, set()).add(group)
                if chosen not in self._member_sets:
                    donor = self._donor._member_sets.get(chosen) if self._donor is not None else None
                    members = self._member_sets[chosen] = MemberSet(chosen, donor)
                    members.update(policy, None, self._member_reads)
                    if self._donor is not None and chosen in self._donor._member_sets:
                        members.addresses = same(
                            self._donor._member_sets[chosen].addresses, members.addresses
                        )
                    self.member_reads += members.reads
                    self._set_problems(("members", chosen), members.problems)
                    fresh.add(chosen)
        if changed is None:
            hits: dict[str, list[str] | None] = dict.fromkeys(self._member_sets)
        else:
            hits = {}
            for uri in changed:
                for container in self._member_reads.users_of(uri):
                    found = hits.setdefault(container, [])
                    assert found is not None
                    found.append(uri)
        for container, uris in hits.items():
            kept = self._member_sets.get(container)
            if kept is None or container in fresh:
                continue
            updated = kept.update(policy, uris, self._member_reads)
            self.member_reads += kept.reads
            if updated:
                self._set_problems(("members", container), kept.problems)
                regroup |= self._chosen_by[container]
        for group in regroup:
            chosen = self._set_of.get(group)
            addresses = self._member_sets[chosen].addresses if chosen is not None else None
            if self.address_sets.get(group) == addresses:
                continue  # (two containers with the same members: the set did not change)
            self.touched.add("address_sets")
            if addresses is None:
                del self.address_sets[group]
            else:
                self.address_sets[group] = addresses

    # ---- what it holds
    def stale(self, policy: Mapping[str, MO]) -> set[str]:
        """The URIs whose object in ``policy`` is not the one a node read (present or absent), and
        objects of the classes read with no node: what changed since the nodes were read. The
        safety net's check, as the declarer's: by identity, no reading."""
        out = {
            uri
            for inputs in (*self._inputs.values(), *self._router_inputs.values())
            for uri, found in inputs.items()
            if policy.get(uri) is not found
        }
        for members in self._member_sets.values():
            out.update(members.stale(policy))
        known = self._objects.keys() | self._routers.keys()
        out.update(uri for uri, mo in policy.items() if mo.subject in READ and uri not in known)
        return out

    def problems(self) -> list[Invalid]:
        """What the policy's readers refused, in a stable order."""
        found = {i for problems in self._problems.values() for i in problems}
        return sorted(found, key=problem_order)

    def refused_under(self, uri: str) -> bool:
        """Whether something at or under ``uri`` was refused (a group left out, or a part of it)."""
        at = bisect.bisect_left(self._problem_uris, uri)
        return at < len(self._problem_uris) and self._problem_uris[at].startswith(uri)

    def view(self) -> Network:
        """The policy records as a Network (copies of the maps: this state goes on changing)."""
        return Network(
            groups=dict(self.groups),
            contracts=dict(self.contracts),
            bds=dict(self.bds),
            security_groups=dict(self.security_groups),
            address_sets=dict(self.address_sets),
            routers=dict(self.routers),
            external=dict(self.external),
            floating_ips=self.floating_ips,
        )
