"""What the validator sees of a store transaction: ``model.rules`` reads other objects through a
``View`` (``find``, ``list``); the authority gives it one over its write transaction, so a rule
checks against exactly what the commit will hold. ``policyfabric check`` gives it a view of the
scenario file instead (``model.scenario``): one validator, two views."""

from __future__ import annotations

from collections.abc import Sequence

from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.model.kinds import Kind
from policyfabric.model.rules import Obj
from policyfabric.store.base import ReadTxn, Record


class SpecCache:
    """Parsed specs by (id, revision): a committed record at a revision never
    changes. Only writers use it, and a rolled-back write may have cached a
    spec under a revision the next write reuses: :meth:`Authority._writing`
    clears the cache when a write transaction fails."""

    def __init__(self, limit: int = 200_000) -> None:
        self._items: dict[tuple[str, int], o.Spec] = {}
        self._limit = limit

    def clear(self) -> None:
        self._items.clear()

    def spec(self, record: Record) -> o.Spec:
        key = (record.id, record.revision)
        spec = self._items.get(key)
        if spec is None:
            if len(self._items) >= self._limit:
                self._items.clear()
            spec = k.BY_NAME[record.kind].spec.model_validate(record.data)
            self._items[key] = spec
        return spec


class TxnView:
    """The rules' View over a store transaction, memoising lookups until the
    transaction writes (validation asks for the same few objects repeatedly)."""

    def __init__(self, txn: ReadTxn, cache: SpecCache) -> None:
        self.txn = txn
        self.cache = cache
        self._found: dict[tuple[str, str | None, str], Obj | None] = {}
        self._listed: dict[tuple[str, str | None], list[Obj]] = {}

    def forget(self, kind: str | None = None) -> None:
        """Call after writing a record of ``kind`` (None: of any) through the transaction: only
        lookups of that kind can have changed (a batch of 10,000 endpoints then reads its group,
        subnet and bridge domain once, not once per endpoint)."""
        if kind is None:
            self._found.clear()
            self._listed.clear()
            return
        for key in [key for key in self._found if key[0] == kind]:
            del self._found[key]
        for listed in [listed for listed in self._listed if listed[0] == kind]:
            del self._listed[listed]

    def obj(self, record: Record) -> Obj:
        return Obj(k.BY_NAME[record.kind], record.id, self.cache.spec(record))

    def find(self, kind: Kind, tenant: str | None, name: str) -> Obj | None:
        key = (kind.name, tenant, name)
        if key not in self._found:
            record = self.txn.find(kind.name, tenant, name)
            self._found[key] = self.obj(record) if record else None
        return self._found[key]

    def list(self, kind: Kind, tenant: str | None) -> Sequence[Obj]:
        key = (kind.name, tenant)
        if key not in self._listed:
            self._listed[key] = [self.obj(r) for r in self.txn.list(kind.name, tenant)]
        return self._listed[key]
