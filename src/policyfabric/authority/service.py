"""The authority's write path: validate against the store inside the write
transaction, then commit, all or nothing.

HTTP-free on purpose: the REST layer, tests and (later) the OpFlex server
call these methods and get plain dicts or PolicyErrors back. Writes are
logged by their caller (the REST API's audit line says who asked).

``scope`` (a tenant) limits a call to what a token of that tenant may see
(``auth.visible``): another tenant's object is "not found", and a conflict
with one does not name it. ``expect`` (a revision) refuses a replace or delete
of an object changed since the caller read it (optimistic concurrency): the
check runs inside the write transaction, so no other write slips in between.

``batch`` runs many creates, updates and deletes (by kind and name) in one transaction, all or
nothing, optionally as a dry run (everything is checked and the answer says what would change,
then the transaction is rolled back). It is what ``policyfabric apply`` sends.
"""

from __future__ import annotations

import builtins
import ipaddress
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from policyfabric.authority import changelog
from policyfabric.authority.auth import visible
from policyfabric.authority.txn_view import SpecCache, TxnView
from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.model.errors import Conflict, InUse, Invalid, NotFound, PolicyError, Problem
from policyfabric.model.kinds import Kind
from policyfabric.model.objects import SERVER_FIELDS, keep_omitted
from policyfabric.model.rules import Claim, Obj, dependents, dependents_closure, describe, validate
from policyfabric.model.types import generate_mac
from policyfabric.store.base import (
    Change,
    ClaimTaken,
    Op,
    ReadTxn,
    Record,
    Store,
    Transition,
    WriteTxn,
    retry_conflicts,
)

log = logging.getLogger(__name__)

INITIAL_STATUS = {k.ENDPOINT.name: "DOWN"}
ENDPOINT_STATUSES = ("DOWN", "BUILD", "ACTIVE", "ERROR")
# Server-allocated numbers: overlay ids for bridge domains and l3_contexts
# (one space: they share the VXLAN VNI space), policy class ids for EPGs.
VNI_BASE, CLASSID_BASE = 0x10000, 0x4000
MIRROR_CATCH_UP = 5000  # changes beyond this since a mirror was read: read the tenant again
ALLOCATED = {
    k.BRIDGE_DOMAIN.name: ("vni", VNI_BASE),
    k.L3_CONTEXT.name: ("vni", VNI_BASE),
    k.ENDPOINT_GROUP.name: ("classid", CLASSID_BASE),
}

Listener = Callable[[list[Change]], None]
STATUS_ONLY = frozenset({"status", "interface"})  # endpoint fields no policy tree carries


@dataclass(frozen=True)
class EndpointState:
    """What an agent reported about one endpoint (None: leave the field as it is)."""

    tenant: str
    name: str
    host: str | None = None
    interface: str | None = None
    status: str | None = None
    unless: tuple[str, ...] = ()  # leave the status alone while it is one of these
    # A binding: write only while the stored host is still this one (what the declaration was
    # checked against). An operator's move that lands first wins; the registry then withdraws it.
    if_host: tuple[str | None] | None = None


# The record field naming the owner (a batch's ``owner``: the file ``apply`` read) of an object
# that batch created. Set once, at creation; updates keep it; ``prune`` deletes by it.
OWNER_FIELD = "applied_by"
BatchAction = Literal["create", "update", "delete", "keep"]


@dataclass(frozen=True)
class BatchOp:
    """One item of a batch: create or update ``spec``, delete the object ``tenant/name``, or keep
    it (``keep``: it must exist, at ``revision`` if given; nothing is written, and prune spares it).
    ``revision``: the revision the caller read; the item is refused (409) if the object is not
    at it any more. ``where`` names the item in errors (``items[3]``)."""

    op: BatchAction
    kind: Kind
    tenant: str | None
    name: str
    spec: o.Spec | None = None
    revision: int | None = None
    where: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind} {self.tenant}/{self.name}" if self.tenant else f"{self.kind} {self.name}"


@dataclass
class BatchResult:
    """What a batch did (or, dry run, would do): one entry per object it touched, in the order
    it touched them (deletes first), and the revision it wrote (or, if it wrote nothing or was
    a dry run, the revision it read)."""

    items: list[dict[str, Any]]
    revision: int
    written: bool
    read_at: int = 0


class _Rollback(Exception):
    """Raised inside a dry run's write transaction to roll it back, carrying the answer."""

    def __init__(self, result: BatchResult) -> None:
        super().__init__("dry run")
        self.result = result


@contextmanager
def _naming(op: BatchOp) -> Iterator[None]:
    """An error of an item names the item and its object: ``items[3] (endpoint acme/web1): ...``
    with the field ``items[3].ip[0]``."""
    try:
        yield
    except PolicyError as err:
        prefix = f"{op.where} ({op.label}): "
        err.message = prefix + err.message
        err.field = f"{op.where}.{err.field}" if err.field else op.where
        err.problems = [
            Problem(f"{op.where}.{p.field}" if p.field else op.where, prefix + p.message)
            for p in err.problems
        ]
        raise


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    """What an operator declares of a stored object (not the server's fields, not its key)."""
    return {f: v for f, v in data.items() if f not in SERVER_FIELDS and f not in ("name", "tenant")}


def diff(old: dict[str, Any] | None, new: dict[str, Any]) -> builtins.list[dict[str, Any]]:
    """Each top-level field whose value differs, as ``{field, from, to}``; for a creation
    (``old`` None) every field with a value."""
    before, after = _fields(old or {}), _fields(new)
    names = list(after) + [f for f in before if f not in after]
    return [
        {"field": f, "from": before.get(f), "to": after.get(f)}
        for f in names
        if before.get(f) != after.get(f) and not (old is None and after.get(f) in (None, [], {}))
    ]


def render(record: Record) -> dict[str, Any]:
    """The REST representation of a stored object."""
    return {"id": record.id, **record.data, "revision": record.revision}


class Authority:
    """Create, replace, delete and read policy objects with every rule enforced."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cache = SpecCache()
        # per-tenant mirrors for snapshot(): (revision read at, records by id)
        self._mirrors: dict[str | None, tuple[int, dict[str, Record]]] = {}
        self._mirror_lock = threading.Lock()
        # Called after every commit with what it changed (from the writing thread).
        self.listeners: list[Listener] = []
        # revisions of endpoint writes that changed only what no policy tree holds (status,
        # interface): listeners may skip them (``status_only``); filled before the commit's
        # listeners run, emptied by them
        self._status_only: set[int] = set()

    # ---- reads
    def revision(self) -> int:
        with self.store.read() as txn:
            return txn.revision()

    def get(self, kind: Kind, id: str, scope: str | None = None) -> dict[str, Any]:
        with self.store.read() as txn:
            return render(self._existing(txn, kind, id, scope))

    def list(
        self, kind: Kind, tenant: str | None = None, name: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], int]:
        with self.store.read() as txn:
            items = [render(r) for r in txn.list(kind.name, tenant, name)]
            return items, txn.revision()

    def changes(self, since: int, limit: int = 1000, scope: str | None = None) -> changelog.Page:
        """Changes after ``since`` in whole revisions, and where to continue (``changelog``)."""
        with self.store.read() as txn:
            return changelog.read_page(txn, since, limit, scope)

    # ---- writes
    @contextmanager
    def _writing(self) -> Iterator[WriteTxn]:
        try:
            with self.store.write() as txn:
                yield txn
        except BaseException:
            self.cache.clear()
            self._status_only.clear()
            raise
        if txn.logged:
            for listener in self.listeners:
                try:
                    listener(list(txn.logged))
                except Exception:
                    log.exception("change listener failed")
            self._status_only.difference_update(c.revision for c in txn.logged)  # asked or not

    @retry_conflicts  # a store whose writers may lose (etcd) runs the write again
    def create(self, kind: Kind, spec: o.Spec, scope: str | None = None) -> dict[str, Any]:
        with self._writing() as txn:
            record = self._create(txn, TxnView(txn, self.cache), kind, spec, scope)
        return render(record)

    @retry_conflicts
    def create_many(
        self, items: Sequence[tuple[Kind, o.Spec]], scope: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Create all of ``items`` in one transaction, in order (later items may refer to earlier
        ones): all or nothing. An error names the item at fault (``create[3].ip``)."""
        records = []
        with self._writing() as txn:
            view = TxnView(txn, self.cache)
            for i, (kind, spec) in enumerate(items):
                try:
                    records.append(self._create(txn, view, kind, spec, scope))
                except PolicyError as err:
                    err.message = f"create[{i}] ({kind} {spec.name!r}): {err.message}"
                    err.field = f"create[{i}].{err.field}" if err.field else f"create[{i}]"
                    err.problems = [Problem(err.field, err.message)]
                    raise
        return [render(r) for r in records]

    @retry_conflicts
    def batch(
        self,
        ops: Sequence[BatchOp],
        *,
        scope: str | None = None,
        owner: str | None = None,
        prune: bool = False,
        dry_run: bool = False,
        may_delete: Callable[[Kind, str | None, str], None] | None = None,
    ) -> BatchResult:
        """Run ``ops`` in one transaction, all or nothing.

        Deletes run first, then creates and updates in the order given (a later item may refer
        to an earlier one). A deleted object's users are checked at the end, against what the
        transaction leaves: a batch may delete an object and, in the same batch, move its users
        elsewhere. ``owner`` is recorded (``applied_by``) on every object the batch creates;
        ``prune`` (with ``owner``) also deletes each object ``owner`` created that no item names.
        ``may_delete(kind, tenant, name)`` is asked before a pruned object is deleted (the
        caller's authorization). ``dry_run``: every check runs, nothing is committed."""
        try:
            with self._writing() as txn:
                result = self._batch(txn, ops, scope, owner, prune, may_delete)
                if dry_run:
                    raise _Rollback(BatchResult(result.items, result.read_at, False, result.read_at))
        except _Rollback as done:
            return done.result
        return result

    def _batch(
        self,
        txn: WriteTxn,
        ops: Sequence[BatchOp],
        scope: str | None,
        owner: str | None,
        prune: bool,
        may_delete: Callable[[Kind, str | None, str], None] | None,
    ) -> BatchResult:
        start = txn.revision()
        view = TxnView(txn, self.cache)
        results: builtins.list[dict[str, Any]] = []

        def note(op: BatchOp, action: str, record: Record, changes: builtins.list[dict[str, Any]]) -> None:
            results.append(
                {
                    "op": op.op,
                    "action": action,
                    "kind": op.kind.collection,
                    "tenant": op.tenant,
                    "name": op.name,
                    "id": record.id,
                    "revision": record.revision if action != "deleted" else None,
                    "changes": changes,
                    **({"item": op.where} if op.where != "prune" else {"pruned": True}),
                }
            )

        deletes = [op for op in ops if op.op == "delete"]
        if prune and owner is not None:
            named = {(op.kind.name, op.tenant, op.name) for op in ops}
            deletes += self._prunable(txn, owner, named, scope)
        deleted: builtins.list[tuple[BatchOp, Obj]] = []
        for op in deletes:
            with _naming(op):
                record = self._named(txn, op, scope)
                if op.where == "prune" and may_delete is not None:
                    may_delete(op.kind, op.tenant, op.name)
                obj = view.obj(record)
                txn.delete(record)
                view.forget(record.kind)
                deleted.append((op, obj))
                note(op, "deleted", record, [])
        for op in ops:
            if op.op == "delete":
                continue
            with _naming(op):
                if op.op == "keep":
                    note(op, "unchanged", self._named(txn, op, scope), [])
                    continue
                assert op.spec is not None, "a create or update carries its spec"
                if op.op == "create":
                    extra = {OWNER_FIELD: owner} if owner is not None else {}
                    made = self._create(txn, view, op.kind, op.spec, scope, extra)
                    note(op, "created", made, diff(None, made.data))
                else:
                    current = self._named(txn, op, scope)
                    record = self._update(txn, view, current, op.spec, scope)
                    action = "unchanged" if record is current else "updated"
                    note(op, action, record, diff(current.data, record.data) if record is not current else [])
        for op, obj in deleted:
            if view.find(obj.kind, obj.spec.scope, obj.spec.name) is not None:
                continue  # deleted and created again by this batch: its users refer to the new one
            users = [d for d in dependents(obj, view) if d.id != obj.id]
            if users:
                with _naming(op):
                    raise InUse(f"{obj.label} is in use by {describe(users)}: delete or change those too")
        written = bool(txn.logged)
        return BatchResult(results, txn.logged[-1].revision if written else start, written, start)

    @staticmethod
    def _named(txn: ReadTxn, op: BatchOp, scope: str | None) -> Record:
        """The object a batch item names (by kind, tenant and name), at the revision it expects."""
        record = txn.find(op.kind.name, op.tenant, op.name)
        if record is None or not visible(scope, op.kind.name, record.tenant, record.name):
            if op.revision is not None:
                raise Conflict(
                    f"it no longer exists: deleted since you read it at revision {op.revision}", "revision"
                )
            raise NotFound(
                f"no {op.kind} named {op.name!r}" + (f" in tenant {op.tenant!r}" if op.tenant else "")
            )
        if op.revision is not None and op.revision != record.revision:
            raise Conflict(
                f"it is at revision {record.revision}, not {op.revision} as this batch expects: it changed "
                "since you read it; read it again and retry",
                "revision",
            )
        return record

    @staticmethod
    def _prunable(
        txn: ReadTxn, owner: str, named: set[tuple[str, str | None, str]], scope: str | None
    ) -> builtins.list[BatchOp]:
        """Deletes of the objects ``owner`` created that the batch does not name (dependents first)."""
        found = []
        for kind in reversed(k.ORDER):
            for r in txn.list(kind.name):
                if (
                    r.data.get(OWNER_FIELD) == owner
                    and (kind.name, r.tenant, r.name) not in named
                    and visible(scope, kind.name, r.tenant, r.name)
                ):
                    found.append(BatchOp("delete", kind, r.tenant, r.name, where="prune"))
        return found

    def _create(
        self,
        txn: WriteTxn,
        view: TxnView,
        kind: Kind,
        spec: o.Spec,
        scope: str | None,
        extra: dict[str, Any] | None = None,
    ) -> Record:
        if view.find(kind, spec.scope, spec.name) is not None:
            where = f" in tenant {spec.scope!r}" if spec.scope else ""
            raise Conflict(f"a {kind} named {spec.name!r} already exists{where}", "name")
        spec = self._fill_generated(txn, spec)
        obj = Obj(kind, str(uuid.uuid4()), spec)
        claims = validate(obj, view)
        data = spec.model_dump(mode="json")
        if kind.name in INITIAL_STATUS:
            data["status"] = INITIAL_STATUS[kind.name]
        if kind.name in ALLOCATED:
            counter, base = ALLOCATED[kind.name]
            data[counter] = base + txn.next_sequence(counter)
        data.update(extra or {})
        return self._put(txn, view, obj, data, claims, "create", scope)

    @retry_conflicts
    def replace(
        self, kind: Kind, id: str, spec: o.Spec, *, scope: str | None = None, expect: int | None = None
    ) -> dict[str, Any]:
        with self._writing() as txn:
            current = self._existing(txn, kind, id, scope, expect)
            record = self._update(txn, TxnView(txn, self.cache), current, spec, scope)
        return render(record)

    def _update(
        self, txn: WriteTxn, view: TxnView, current: Record, spec: o.Spec, scope: str | None
    ) -> Record:
        """Replace ``current`` by ``spec`` (omitted server-filled fields kept); ``current`` itself
        when nothing changes (no new revision)."""
        kind = k.BY_NAME[current.kind]
        old = view.obj(current)
        spec = keep_omitted(spec, old.spec)
        if spec.scope != old.spec.scope:
            raise Invalid(
                f"an object cannot move between tenants ({old.spec.scope!r} -> {spec.scope!r}): "
                "create it in the new tenant instead",
                "tenant",
            )
        if spec.model_dump() == old.spec.model_dump():
            return current  # nothing changes: no new revision
        if spec.name != old.spec.name:
            self._check_rename(view, old, spec)
        spec = self._fill_generated(txn, spec)
        new = Obj(kind, current.id, spec)
        claims = validate(new, view)
        structural = any(getattr(spec, f) != getattr(old.spec, f) for f in spec.STRUCTURAL)
        affected = dependents_closure(old, view) if structural else []
        data = {**current.data, **spec.model_dump(mode="json")}
        record = self._put(txn, view, new, data, claims, "update", scope, current)
        if structural:
            self._recheck(txn, view, new, affected + dependents_closure(new, view), scope)
        return record

    @retry_conflicts
    def delete(
        self, kind: Kind, id: str, *, scope: str | None = None, expect: int | None = None
    ) -> tuple[dict[str, Any], int]:
        with self._writing() as txn:
            view = TxnView(txn, self.cache)
            current = self._existing(txn, kind, id, scope, expect)
            obj = view.obj(current)
            users = dependents(obj, view)
            if users:
                raise InUse(f"{obj.label} is in use by {describe(users)}: delete or change those first")
            txn.delete(current)
            revision = txn.next_revision()
        return render(current), revision

    def tenants(self) -> builtins.list[str]:
        with self.store.read() as txn:
            return [r.name for r in txn.list(k.TENANT.name)]

    def snapshot(
        self, tenant: str | None
    ) -> tuple[dict[str, builtins.list[o.Spec]], dict[str, dict[str, int]]]:
        """Every object of ``tenant`` (None: the global kinds) by kind name, and the
        allocated numbers by kind (``{"vni": {name: n}}`` keyed ``kind/name``).

        Incremental: a mirror of the tenant's records is kept with the revision it was
        read at, and brought up to date from the change log (one read per changed
        object), so a push after one write does not re-read and re-parse the tenant."""
        kinds = {
            kind.name for kind in k.ORDER if kind.scoped == (tenant is not None) and kind is not k.TENANT
        }
        with self._mirror_lock, self.store.read() as txn:
            now = txn.revision()
            mirror = self._mirrors.get(tenant)
            changes = txn.changes(mirror[0], MIRROR_CATCH_UP) if mirror is not None else None
            if mirror is None or changes is None or len(changes) >= MIRROR_CATCH_UP:
                records = {r.id: r for kind in kinds for r in txn.list(kind, tenant)}
            else:
                records = dict(mirror[1])
                for change in changes:
                    if change.kind not in kinds or change.tenant != tenant:
                        continue
                    record = txn.get(change.id) if change.op != "delete" else None
                    if record is None:
                        records.pop(change.id, None)
                    else:
                        records[change.id] = record
            self._mirrors[tenant] = (now, records)
        objects: dict[str, builtins.list[o.Spec]] = {}
        numbers: dict[str, dict[str, int]] = {"vni": {}, "classid": {}}
        rank = {kind.name: i for i, kind in enumerate(k.ORDER)}
        for record in sorted(records.values(), key=lambda r: (rank[r.kind], r.name)):
            objects.setdefault(record.kind, []).append(self.cache.spec(record))
            for counter in ("vni", "classid"):
                if counter in record.data:
                    numbers[counter][f"{record.kind}/{record.name}"] = int(record.data[counter])
        return objects, numbers

    def set_endpoint_state(
        self,
        tenant: str,
        name: str,
        *,
        host: str | None = None,
        interface: str | None = None,
        status: str | None = None,
        unless: tuple[str, ...] = (),
    ) -> bool:
        """Record what an agent reported about an endpoint; False if there is no such endpoint.
        ``status`` is not applied while the current status is one of ``unless``. Writes (and
        bumps the revision) only when something changes; the endpoint's claims stay as they are."""
        return self.set_endpoint_states([EndpointState(tenant, name, host, interface, status, unless)])[0]

    @retry_conflicts
    def set_endpoint_states(self, updates: Sequence[EndpointState]) -> builtins.list[bool]:
        """Several agents' reports in one transaction (one commit, one fsync), each change with
        its own revision. Agents report endpoints by the thousand when a host starts."""
        found: builtins.list[bool] = []
        logged = []
        with self._writing() as txn:
            for u in updates:
                record = txn.find(k.ENDPOINT.name, u.tenant, u.name)
                if record is None:
                    found.append(False)
                    continue
                found.append(True)
                if u.if_host is not None and record.data.get("host") != u.if_host[0]:
                    log.info(
                        "endpoint %s/%s: agent %s's binding not recorded: the intent moved it to host %s",
                        u.tenant,
                        u.name,
                        u.host,
                        record.data.get("host"),
                    )
                    continue
                status = None if record.data.get("status") in u.unless else u.status
                data = dict(record.data)
                for field, value in (("host", u.host), ("interface", u.interface), ("status", status)):
                    if value is not None:
                        data[field] = value
                if data == record.data:
                    continue
                try:  # what an agent reported must read back (the OpFlex server checks it first)
                    k.ENDPOINT.spec.model_validate(data)
                except ValueError as exc:
                    log.error("endpoint %s/%s: agent report not recorded: %s", u.tenant, u.name, exc)
                    continue
                revision = txn.next_revision()
                updated = Record(record.kind, record.id, record.tenant, record.name, revision, data)
                txn.put(updated, None, "update", Transition.between(record.data, data))
                logged.append((u, data))
                if {f for f in data if data.get(f) != record.data.get(f)} <= STATUS_ONLY:
                    self._status_only.add(revision)
        for u, data in logged:
            log.info(
                "endpoint %s/%s: host=%s interface=%s status=%s",
                u.tenant,
                u.name,
                data.get("host"),
                data.get("interface"),
                data.get("status"),
            )
        return found

    def status_only(self, change: Change) -> bool:
        """Whether ``change`` (just committed) changed only an endpoint's status or interface,
        which no policy tree holds: a status report does not make the tenant's tree rebuild.
        Answered while the commit's listeners run."""
        return change.revision in self._status_only

    # ---- helpers
    @staticmethod
    def _existing(
        txn: ReadTxn, kind: Kind, id: str, scope: str | None = None, expect: int | None = None
    ) -> Record:
        """The object, if ``scope`` sees it (else the same 404 as a missing one) and, when the caller
        ``expect``s a revision, it is still at that revision."""
        record = txn.get(id)
        if (
            record is None
            or record.kind != kind.name
            or not visible(scope, kind.name, record.tenant, record.name)
        ):
            raise NotFound(f"no {kind} with id {id!r}")
        if expect is not None and expect != record.revision:
            raise Conflict(
                f"{kind} {record.name!r} is at revision {record.revision}, not {expect} as this request "
                "expects: it changed since you read it; read it again and retry",
                "revision",
            )
        return record

    @staticmethod
    def _check_rename(view: TxnView, old: Obj, spec: o.Spec) -> None:
        if view.find(old.kind, spec.scope, spec.name) is not None:
            raise Conflict(f"a {old.kind} named {spec.name!r} already exists", "name")
        users = [d for d in dependents(old, view) if d.id != old.id]
        if users:
            raise InUse(f"cannot rename {old.label}: {describe(users)} refer to it by name", "name")

    def _put(
        self,
        txn: WriteTxn,
        view: TxnView,
        obj: Obj,
        data: dict[str, Any],
        claims: builtins.list[Claim],
        op: Op,
        scope: str | None,
        was: Record | None = None,
    ) -> Record:
        """Write ``obj``; ``was``: what it replaces (an endpoint's status or host change is logged
        with the change, for ``GET /v1/events``)."""
        record = Record(obj.kind.name, obj.id, obj.spec.scope, obj.spec.name, txn.next_revision(), data)
        moved = (
            Transition.between(was.data, data) if was is not None and was.kind == k.ENDPOINT.name else None
        )
        try:
            txn.put(record, claims, op, moved)
        except ClaimTaken as taken:
            raise self._claim_conflict(txn, taken, scope) from None
        view.forget(record.kind)
        return record

    def _recheck(
        self, txn: WriteTxn, view: TxnView, changed: Obj, affected: builtins.list[Obj], scope: str | None
    ) -> None:
        """Re-validate what depends on a structural change; refuse the change if any breaks."""
        seen: set[str] = set()
        for dep in affected:
            if dep.id in seen or dep.id == changed.id:
                continue
            seen.add(dep.id)
            try:
                txn.set_claims(dep.id, validate(dep, view))
            except ClaimTaken as taken:
                raise self._broken(changed, dep, self._claim_conflict(txn, taken, scope)) from None
            except PolicyError as err:
                raise self._broken(changed, dep, err) from None

    @staticmethod
    def _broken(changed: Obj, dep: Obj, err: PolicyError) -> Conflict:
        field = f" {err.field}:" if err.field else ""
        return Conflict(f"this change to {changed.label} would break {dep.label}:{field} {err.message}")

    def _claim_conflict(self, txn: ReadTxn, taken: ClaimTaken, scope: str | None) -> Conflict:
        holder = txn.get(taken.holder)
        who = f"{k.BY_NAME[holder.kind]} {holder.name!r}" if holder else "another object"
        if holder is not None and not visible(scope, holder.kind, holder.tenant, holder.name):
            who = "an object of another tenant"  # a scoped caller learns no other tenant's names
        elif holder is not None and holder.tenant:
            who += f" (tenant {holder.tenant!r})"
        return Conflict(f"{taken.claim.conflict} is already taken by {who}", taken.claim.field)

    def _fill_generated(self, txn: ReadTxn, spec: o.Spec) -> o.Spec:
        """Values the server picks when the operator leaves them out."""
        if isinstance(spec, o.Endpoint) and spec.mac is None:
            mac = generate_mac()
            while txn.claim_holder(f"mac/{mac}") is not None:
                mac = generate_mac()
            return spec.model_copy(update={"mac": mac})
        if isinstance(spec, o.FloatingIp) and spec.ip is None:
            return spec.model_copy(update={"ip": self._allocate_external_ip(txn, spec.network, "network")})
        gw = spec.external_gateway if isinstance(spec, o.Router) else None
        if gw is not None and gw.ip is None:
            ip = self._allocate_external_ip(txn, gw.network, "external_gateway.network")
            return spec.model_copy(update={"external_gateway": gw.model_copy(update={"ip": ip})})
        return spec

    @staticmethod
    def _allocate_external_ip(
        txn: ReadTxn, network: str, field: str
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The first free address of an external network (floating IPs and router gateways)."""
        record = txn.find(k.EXTERNAL_NETWORK.name, None, network)
        if record is None:
            raise Invalid(f"no external network named {network!r}", field)
        net = o.ExternalNetwork.model_validate(record.data)
        for addr in net.cidr.hosts():
            if addr != net.gateway_ip and txn.claim_holder(f"floating-ip/{addr}") is None:
                return addr
        raise Conflict(f"external network {net.name!r} has no free address left", field)
