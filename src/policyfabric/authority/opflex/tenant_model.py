"""A tenant's policy tree kept up to date by the object: a flush costs what changed, not the tenant.

Why: the repository brings a tenant's tree up to date after every write to it, and a tenant may
hold 100,000 endpoints. Rebuilding the whole tree (reading every object, building every MO,
diffing every MO) made a one-endpoint write cost the tenant's size. Here each object
of the tenant is a *unit* whose MOs (its *fragment*) are built by the same ``add_*`` builders
``tenant_tree`` uses; a write re-builds the fragments of the objects it changed and of those that
read them, and the tree is patched with the difference.

What reads what (``_build`` returns each unit's reads; ``uses`` is the reverse index):

- an endpoint reads its group's bridge domain (``epg-bd``), its subnet's (``subnet-bd``) and, for
  each of its security groups, whether some rule names that group as its remote side (``remote``:
  its addresses are then members, one GbpSubnet each, in the group's member set);
- an EPG and a subnet read their bridge domain (``bd``: its existence and VNI);
- a router reads its legs' subnets' bridge domains and the gateway election's result for it;
- the containers other objects hang their MOs in: the PolicySpace, a bridge domain's GbpSubnets
  (exists with the bridge domain) and a group's member set (exists while a rule names it). A
  container's children are linked and unlinked by the units that own them (``slots``: each
  child's index, so a child leaves a container of 100,000 in constant time, the last child taking
  its place: the order of a container's children is not meaningful, OpFlex lists them as a set).

A write is turned into *touches*: its own unit, and the keys above when what they name changed
(a group moving to another bridge domain touches ``epg-bd``, a rule naming a group for the first
time touches ``remote``...); the units to build again are those touched and those that read a
touched key. The endpoints whose intent entry may have changed are those rebuilt and those that
sit in a bridge domain or group whose MOs changed (``intent-bd``, ``intent-epg``).

``update`` (off the event loop) reads nothing but the records it is given and returns a
``Patch``: each changed unit's old and new fragment; ``apply`` (on the event loop, where
resolves read the tree) puts it into the tree in time proportional to it, and returns what to
push, as ``repository.diff`` would have found it comparing whole trees. ``load`` builds the model
of a whole tenant: the repository's fallback (first build, tenant created or gone, too many
changes at once) and the reference the tests compare the patched trees against, with
``tenant_tree``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyfabric.authority.opflex.policy_tree import (
    Fragment,
    Reverse,
    add_actions,
    add_bridge_domain,
    add_contract,
    add_endpoint_group,
    add_floating_ip,
    add_l3_context,
    add_members,
    add_router,
    add_security_group,
    add_space,
    add_subnet,
    add_subnets,
    endpoint_bd,
    endpoint_mo,
    member_hosts,
    remote_groups_of,
    router_bds,
)
from policyfabric.model import kinds as k
from policyfabric.model.types import SLAAC
from policyfabric.opflex.mo import MO, Tree
from policyfabric.opflex.uri import space, unescape
from policyfabric.store.base import Change, Record

Unit = tuple[
    str, str
]  # (kind, name): an object of the tenant, or a container ("space", "subnets", "members")
Key = tuple[str, str | None]  # what a unit reads: (what, name)
Frag = tuple[MO, ...]  # a unit's MOs, parents before children
SpecOf = Callable[[Record], Any]  # a record's parsed spec (the authority's cache)

KINDS = tuple(kind.name for kind in k.ORDER if kind.scoped)  # a tenant's kinds, in dependency order
CONTAINERS = ("space", "subnets", "members")
COUNTED = ("vni", "classid")  # server-allocated numbers a record carries


@dataclass
class Patch:
    """What one ``update`` changed: each unit's (old, new) fragment, and who to look at again."""

    units: dict[Unit, tuple[Frag, Frag]] = field(default_factory=dict)
    endpoints: set[str] = field(default_factory=set)  # endpoints rebuilt: their intent entries
    bds: set[str] = field(default_factory=set)  # bridge domains whose MOs or subnets changed
    groups: set[str] = field(default_factory=set)  # EPGs whose MOs changed
    routers: bool = False  # a router's MOs changed (the gateway election reads them)


@dataclass
class Pushed:
    """What ``apply`` changed, as ``repository.diff`` reports it."""

    changed: list[MO] = field(default_factory=list)
    merged: list[MO] = field(default_factory=list)
    removed: list[MO] = field(default_factory=list)


def compare(was: MO | None, mo: MO) -> tuple[str, MO] | None:
    """How ``mo`` goes out given the ``was`` a peer has: ("changed", mo), ("merged", mo listing only
    the children it gained), or None (nothing to send)."""
    if was is None:
        return "changed", mo
    if was == mo:
        return None
    if was.properties == mo.properties and was.parent_uri == mo.parent_uri:
        had = set(was.children)
        gained = [c for c in mo.children if c not in had]
        if not gained:
            return None
        return "merged", MO(
            mo.subject, mo.uri, mo.properties, gained, mo.parent_subject, mo.parent_uri, mo.parent_relation
        )
    return "changed", mo


class TenantModel:
    """One tenant's objects, each unit's fragment and the tree they make (``tree``)."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.top = space(tenant)
        self.revision = 0  # the store revision the model holds every change up to
        self.specs: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}  # kind -> name -> spec
        self.ids: dict[str, Unit] = {}  # record id -> (kind, name)
        self.numbers: dict[str, int] = {}  # "kind/name" -> its VNI or class id
        self.remote: dict[str, int] = {}  # group -> the rules naming it as their remote side (> 0)
        # router -> the election's result (active host, its tunnel address) it was built with
        self.gateways: dict[str, tuple[str, str] | None] = {}
        self.reverse = Reverse()  # the reverse relations and an endpoint's floating IPs, by name
        self.legs: dict[str, set[str]] = {}  # router -> the bridge domains it has a leg on
        self.frags: dict[Unit, Frag] = {}
        self.reads: dict[Unit, tuple[Key, ...]] = {}
        self.uses: dict[Key, set[Unit]] = {}  # the reverse of ``reads``
        self.tree = Tree()
        self.slots: dict[str, dict[str, int]] = {}  # container URI -> child URI -> its index

    # ---- the whole tenant
    @classmethod
    def load(
        cls,
        tenant: str,
        revision: int,
        records: Iterable[Record],
        spec_of: SpecOf,
        gateways: Mapping[str, tuple[str, str]],
    ) -> TenantModel:
        """The model of the tenant whose objects are ``records`` (in kind order then name order, as
        the store lists them) at ``revision``; its tree is ``tenant_tree``'s, in the same order."""
        model = cls(tenant)
        model.revision = revision
        for record in records:
            model._learn(record, spec_of(record))
        for spec in model.specs["security_group"].values():
            for group in remote_groups_of(spec):
                model.remote[group] = model.remote.get(group, 0) + 1
        model.gateways = {r: gateways.get(r) for r in model.specs["router"]}
        specs = model.specs
        model.reverse = Reverse.of(
            specs["endpoint_group"].values(),
            specs["subnet"].values(),
            specs["router"].values(),
            specs["floating_ip"].values(),
        )
        subnet_bd = {n: s.bridge_domain for n, s in specs["subnet"].items()}
        model.legs = {r: router_bds(spec, subnet_bd) for r, spec in specs["router"].items()}
        for unit in model._order():
            frag, reads = model._build(unit)
            model._set_reads(unit, reads)
            if frag:
                model.frags[unit] = frag
                model._merge(frag)
        for unit, frag in model.frags.items():
            if unit[0] in CONTAINERS:
                model._slot(frag[0])
        return model

    def _order(self) -> list[Unit]:
        """Every unit, in the order ``tenant_tree`` adds their MOs."""
        specs = self.specs
        out: list[Unit] = [("space", "")]
        out += [("l3_context", n) for n in specs["l3_context"]]
        for bd in specs["bridge_domain"]:
            out += [("bridge_domain", bd), ("subnets", bd)]
            out += [("subnet", n) for n, s in specs["subnet"].items() if s.bridge_domain == bd]
        out += [
            ("subnet", n) for n, s in specs["subnet"].items() if s.bridge_domain not in specs["bridge_domain"]
        ]
        out.append(("actions", ""))
        out += [("contract", n) for n in specs["contract"]]
        out += [("security_group", n) for n in specs["security_group"]]
        out += [("members", g) for g in sorted(self.remote)]
        for kind in ("endpoint_group", "endpoint", "router", "floating_ip"):
            out += [(kind, n) for n in specs[kind]]
        return out

    def _merge(self, frag: Frag, own: set[str] | None = None) -> list[MO]:
        """Put ``frag``'s MOs into the tree, each whose parent is not among ``own`` (the URIs of
        its fragment; default: ``frag``'s) listed by that parent, a container; those it linked."""
        mos = self.tree.mos
        if own is None:
            own = {mo.uri for mo in frag} if len(frag) > 1 else {frag[0].uri}
        linked = []
        for mo in frag:
            mos[mo.uri] = mo
            if mo.parent_uri is not None and mo.parent_uri not in own and mo.parent_uri in mos:
                parent = mos[mo.parent_uri]
                slots = self.slots.get(parent.uri)
                if slots is not None:
                    slots[mo.uri] = len(parent.children)
                parent.children.append(mo.uri)
                linked.append(mo)
        return linked

    def _slot(self, container: MO) -> None:
        self.slots[container.uri] = {c: i for i, c in enumerate(container.children)}

    def _unlink(self, mo: MO) -> None:
        """Take ``mo`` out of its container's children (the last child takes its place)."""
        slots = self.slots.get(mo.parent_uri or "")
        if slots is None:
            return
        children = self.tree.mos[mo.parent_uri or ""].children
        index = slots.pop(mo.uri, None)
        if index is None:
            return
        last = children.pop()
        if last != mo.uri:
            children[index] = last
            slots[last] = index

    # ---- one unit
    def _build(self, unit: Unit) -> tuple[Frag, tuple[Key, ...]]:
        """The unit's fragment as the model now says it (empty: it has none), and what it read."""
        kind, name = unit
        tenant, specs = self.tenant, self.specs
        if kind == "space":
            tree = Tree()
            add_space(tree, tenant)
            return tuple(tree.mos.values()), ()
        frag = Fragment(tenant)
        if kind == "actions":
            add_actions(frag, tenant)
            return tuple(frag.mos.values()), ()
        if kind == "subnets":
            if name in specs["bridge_domain"]:
                add_subnets(frag, tenant, name)
            return tuple(frag.mos.values()), (("bd", name),)
        if kind == "members":
            if name in self.remote:
                add_members(frag, tenant, name)
            return tuple(frag.mos.values()), (("remote", name),)
        spec = specs[kind].get(name)
        if spec is None:
            return (), ()
        reads: tuple[Key, ...] = ()
        if kind == "endpoint":
            epg = specs["endpoint_group"].get(spec.epg or "")
            subnet = specs["subnet"].get(spec.subnet or "")
            bd = (
                epg.bridge_domain if epg is not None else subnet.bridge_domain if subnet is not None else None
            )
            fips = tuple(sorted(self.reverse.fips.get(name, ())))
            mo = endpoint_mo(tenant, self.top, spec, endpoint_bd(tenant, spec, epg, subnet), fips)
            reads = (
                ("epg-bd", spec.epg),
                ("subnet-bd", spec.subnet),
                ("intent-bd", bd),
                ("intent-epg", spec.epg),
                ("fips-of", name),
            )
            reads += tuple(("remote", g) for g in spec.security_groups)
            mine: list[Any] = []
            if SLAAC in spec.ip:  # its SLAAC addresses (member sets) follow its bridge domain's subnets
                mine = [s for s in specs["subnet"].values() if s.bridge_domain == bd]
                reads += (("bd-subnets", bd),)
            return (mo, *member_hosts(tenant, spec, self.remote, mine)), reads
        if kind == "l3_context":
            add_l3_context(frag, tenant, spec, self.numbers.get(f"l3_context/{name}", 0))
        elif kind == "bridge_domain":
            reads = (("bd-routers", name),)
            routers = tuple(self.reverse.routers.get(name, ()))
            add_bridge_domain(frag, tenant, spec, self.numbers.get(f"bridge_domain/{name}", 0), routers)
        elif kind == "subnet":
            reads = (("bd", spec.bridge_domain),)
            if spec.bridge_domain in specs["bridge_domain"]:
                add_subnet(frag, tenant, spec)
        elif kind == "contract":
            reads = (("contract-users", name),)
            add_contract(frag, tenant, spec, *self.reverse.contract_users(name))
        elif kind == "security_group":
            add_security_group(frag, tenant, spec)
        elif kind == "endpoint_group":
            reads = (("bd", spec.bridge_domain),)
            vni = self.numbers.get(f"bridge_domain/{spec.bridge_domain}", 0)
            add_endpoint_group(frag, tenant, spec, vni, self.numbers.get(f"endpoint_group/{name}", 0))
        elif kind == "router":
            subnets = specs["subnet"]
            legs = {s: subnets[s].bridge_domain for s in spec.interfaces if s in subnets}
            reads = (("gateway", name), *(("subnet-bd", s) for s in spec.interfaces))
            add_router(frag, tenant, spec, legs, self.gateways.get(name))
        elif kind == "floating_ip":
            add_floating_ip(frag, tenant, spec)
        return tuple(frag.mos.values()), reads

    def _set_reads(self, unit: Unit, reads: tuple[Key, ...]) -> None:
        old = self.reads.get(unit, ())
        if old == reads:
            return
        for key in old:
            users = self.uses.get(key)
            if users is not None:
                users.discard(unit)
                if not users:
                    del self.uses[key]
        uses = self.uses
        for key in reads:
            if key[1] is not None:
                users = uses.get(key)
                if users is None:
                    uses[key] = {unit}
                else:
                    users.add(unit)
        if reads:
            self.reads[unit] = reads
        else:
            self.reads.pop(unit, None)

    # ---- a write
    def _learn(self, record: Record, spec: Any) -> None:
        self.specs[record.kind][record.name] = spec
        self.ids[record.id] = (record.kind, record.name)
        for counter in COUNTED:
            if counter in record.data:
                self.numbers[f"{record.kind}/{record.name}"] = int(record.data[counter])

    def update(
        self,
        revision: int,
        records: Mapping[str, Record | None],
        spec_of: SpecOf,
        gateways: Mapping[str, tuple[str, str]],
    ) -> Patch:
        """Take in the records changed since ``self.revision`` (by id; None: deleted) and the
        election's current result; the fragments that changed. Reads only what it is given."""
        before: dict[Unit, tuple[Any, int | None]] = {}  # (kind, name) -> (spec, number) before
        for id in records:
            unit = self.ids.pop(id, None)
            if unit is not None:
                kind, name = unit
                before.setdefault(unit, (self.specs[kind].get(name), self.numbers.get(f"{kind}/{name}")))
                self.specs[kind].pop(name, None)
                self.numbers.pop(f"{kind}/{name}", None)
        for record in records.values():
            if record is None or record.kind not in self.specs:
                continue
            unit = (record.kind, record.name)
            before.setdefault(
                unit, (self.specs[record.kind].get(record.name), self.numbers.get(f"{unit[0]}/{unit[1]}"))
            )
            self._learn(record, spec_of(record))
        self.revision = revision
        touched: set[Key] = set()
        for (kind, name), (old, old_number) in before.items():
            new, number = self.specs[kind].get(name), self.numbers.get(f"{kind}/{name}")
            if old is new or (old == new and old_number == number):
                continue
            touched.add((kind, name))
            self._touches(kind, name, old, new, old_number != number, touched)
        for router in self.specs["router"]:
            active = gateways.get(router)
            if self.gateways.get(router) != active:
                touched.add(("gateway", router))
            self.gateways[router] = active
        for router in [r for r in self.gateways if r not in self.specs["router"]]:
            del self.gateways[router]
        return self._rebuild(touched)

    def _touches(self, kind: str, name: str, old: Any, new: Any, renumbered: bool, touched: set[Key]) -> None:
        """The keys a change of the object ``kind/name`` from ``old`` to ``new`` touches, beyond its
        own unit."""

        def field_of(spec: Any, attr: str) -> Any:
            return getattr(spec, attr) if spec is not None else None

        if kind == "bridge_domain" and ((old is None) != (new is None) or renumbered):
            touched.add(("bd", name))
        elif kind == "subnet":
            for bd in {field_of(old, "bridge_domain"), field_of(new, "bridge_domain")} - {None}:
                touched.add(("bd-subnets", bd))  # the SLAAC addresses of its endpoints
            if field_of(old, "bridge_domain") != field_of(new, "bridge_domain"):
                touched.add(("subnet-bd", name))
        elif kind == "endpoint_group":
            if field_of(old, "bridge_domain") != field_of(new, "bridge_domain"):
                touched.add(("epg-bd", name))
            # the contracts whose reverse relations name it
            was = {*old.provides, *old.consumes} if old is not None else set()
            now = {*new.provides, *new.consumes} if new is not None else set()
            if old is not None:
                self.reverse.drop_group(name, old)
            if new is not None:
                self.reverse.add_group(name, new)
            same = old is not None and new is not None and set(old.provides) == set(new.provides)
            same = same and set(old.consumes) == set(new.consumes)
            if not same:
                touched.update(("contract-users", c) for c in was | now)
        elif kind == "floating_ip":
            before, after = field_of(old, "endpoint"), field_of(new, "endpoint")
            if before is not None:
                fips = self.reverse.fips.get(before, set())
                fips.discard(name)
                if not fips:
                    self.reverse.fips.pop(before, None)
            if after is not None:
                self.reverse.fips.setdefault(after, set()).add(name)
            if (before is None) != (after is None) or before != after:
                touched.update(("fips-of", e) for e in (before, after) if e is not None)
        elif kind == "security_group":
            was = remote_groups_of(old) if old is not None else set()
            now = remote_groups_of(new) if new is not None else set()
            for group in was - now:
                self.remote[group] -= 1
                if not self.remote[group]:
                    del self.remote[group]
                    touched.add(("remote", group))
            for group in now - was:
                self.remote[group] = self.remote.get(group, 0) + 1
                if self.remote[group] == 1:
                    touched.add(("remote", group))

    def _rebuild(self, touched: set[Key]) -> Patch:
        units: set[Unit] = set()
        for key in touched:
            what, name = key
            assert name is not None
            if what in self.specs:
                units.add((what, name))
            elif what == "bd":
                units.add(("subnets", name))
            elif what == "remote":
                units.add(("members", name))
            units |= self.uses.get(key, set())
        for _, router in [u for u in units if u[0] == "router"]:  # its bridge domains' reverse relations
            units.update(("bridge_domain", bd) for bd in self._relegs(router))
        patch = Patch()
        for unit in units:
            old = self.frags.get(unit, ())
            new, reads = self._build(unit)
            self._set_reads(unit, reads)
            if unit[0] in CONTAINERS and old and new:
                continue  # a container's own MOs never change; its children are its users' links
            if old == new:
                continue  # the tree keeps the MOs it has (the same as these)
            if new:
                self.frags[unit] = new
            else:
                self.frags.pop(unit, None)
            patch.units[unit] = (old, new)
            kind, name = unit
            if kind == "endpoint":
                patch.endpoints.add(name)
            elif kind in ("bridge_domain", "subnets"):
                patch.bds.add(name)
            elif kind == "subnet":  # its container is named after its bridge domain
                patch.bds.update(
                    unescape(mo.parent_uri.rsplit("/", 2)[1]) for mo in (*old, *new) if mo.parent_uri
                )
            elif kind == "endpoint_group":
                patch.groups.add(name)
            elif kind == "router":
                patch.routers = True
        return patch

    def _relegs(self, router: str) -> set[str]:
        """Bring ``reverse.routers`` up to date with where ``router`` now has legs; the bridge
        domains it joined or left."""
        spec, subnets = self.specs["router"].get(router), self.specs["subnet"]
        now = (
            router_bds(spec, {s: subnets[s].bridge_domain for s in spec.interfaces if s in subnets})
            if spec
            else set()
        )
        was = self.legs.pop(router, set())
        if now:
            self.legs[router] = now
        for bd in was - now:
            routers = self.reverse.routers.get(bd, set())
            routers.discard(router)
            if not routers:
                self.reverse.routers.pop(bd, None)
        for bd in now - was:
            self.reverse.routers.setdefault(bd, set()).add(router)
        return was ^ now

    def users(self, what: str, name: str) -> builtins.list[str]:
        """The endpoints whose intent entry reads the bridge domain (``what``: "bd") or group
        ("epg") ``name``."""
        return [unit[1] for unit in self.uses.get((f"intent-{what}", name), ())]

    # ---- on the event loop
    def apply(self, patch: Patch) -> Pushed:
        """Put ``patch`` into the tree (in place: resolves read it on the same loop, so they see it
        before or after, never half done); what to push."""
        mos = self.tree.mos
        out = Pushed()
        ordered = sorted(patch.units.items(), key=lambda item: item[0][0] not in CONTAINERS)
        for _, (old, new) in ordered:
            keep = {mo.uri for mo in new}
            own = {mo.uri for mo in old}
            for mo in old:
                if mo.uri in keep:
                    continue
                out.removed.append(mo)
                if mos.get(mo.uri) is mo:
                    del mos[mo.uri]
                if mo.parent_uri not in own:
                    self._unlink(mo)
                self.slots.pop(mo.uri, None)
        created: set[str] = set()  # containers new in this patch: they go out whole
        gained: dict[str, list[str]] = {}  # container URI -> children it gained
        for unit, (old, new) in ordered:
            had = {mo.uri: mo for mo in old}
            for mo in new:
                found = compare(had.get(mo.uri), mo)
                if found is not None:
                    (out.changed if found[0] == "changed" else out.merged).append(found[1])
                if mo.uri in had:
                    mos[mo.uri] = mo
            fresh = tuple(mo for mo in new if mo.uri not in had)
            if fresh:
                for mo in self._merge(fresh, {mo.uri for mo in new}):
                    gained.setdefault(mo.parent_uri or "", []).append(mo.uri)
            if unit[0] in CONTAINERS and new:
                self._slot(new[0])
                created.add(new[0].uri)
        for uri, children in gained.items():
            if uri in created or uri not in mos:
                continue
            parent = mos[uri]
            out.merged.append(
                MO(
                    parent.subject,
                    parent.uri,
                    parent.properties,
                    children,
                    parent.parent_subject,
                    parent.parent_uri,
                    parent.parent_relation,
                )
            )
        return out

    def routers(self) -> Tree:
        """The tenant's routers' MOs alone (what the gateway election reads candidates from)."""
        tree = Tree()
        for unit, frag in self.frags.items():
            if unit[0] == "router":
                tree.mos.update((mo.uri, mo) for mo in frag)
        return tree


# ---- the store side: run off the event loop


def read_tenant(store_read: Callable[[], Any], tenant: str) -> tuple[int, builtins.list[Record]]:
    """Every record of ``tenant``, kind by kind in dependency order and by name, and the revision
    they are at (one read transaction)."""
    with store_read() as txn:
        return txn.revision(), [r for kind in KINDS for r in txn.list(kind, tenant)]


@dataclass
class Changed:
    """What the store changed after some revision, up to ``revision``."""

    revision: int
    records: dict[str | None, dict[str, Record | None]]  # tenant -> id -> the record now (None: deleted)
    tenants: set[str]  # tenants created or deleted: their trees are built whole


def read_changes(
    store_read: Callable[[], Any], since: int, limit: int, skip: frozenset[int] = frozenset()
) -> Changed | None:
    """The records changed after revision ``since``, as of the revision the read is at (one read
    transaction), but for the changes of the revisions in ``skip`` (endpoints' statuses, which no
    tree holds); None when there are ``limit`` changes or more to read (reading the tenants whole
    costs less)."""
    with store_read() as txn:
        now = txn.revision()
        skipped = sum(1 for r in skip if r > since)
        every: builtins.list[Change] = txn.changes(since, limit + skipped)
        changes = [c for c in every if c.revision not in skip]
        if len(changes) >= limit or len(every) >= limit + skipped:
            return None
        out = Changed(now, {}, set())
        for change in changes:
            if change.kind == k.TENANT.name:
                out.tenants.add(change.name)
            elif change.kind in KINDS:
                out.records.setdefault(change.tenant, {})[change.id] = None
        for by_id in out.records.values():
            for id in by_id:
                by_id[id] = txn.get(id)
        return out


__all__ = ["Changed", "Patch", "Pushed", "TenantModel", "compare", "read_changes", "read_tenant"]
