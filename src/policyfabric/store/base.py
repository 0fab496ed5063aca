"""The store interface the authority needs, small enough for several backends.

A store holds JSON documents keyed by id and by (kind, tenant, name), the
uniqueness claims of :mod:`policyfabric.model.rules`, a global revision that
every write transaction bumps once, and a change log by revision (what a
later OpFlex server pushes to agents). SQLite implements it now; an etcd
backend can implement the same with one key per document and per claim.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from policyfabric.model.rules import Claim

Op = Literal["create", "update", "delete"]


@dataclass(frozen=True)
class Record:
    """One stored object. ``data`` is its REST representation minus ``id`` and ``revision``."""

    kind: str
    id: str
    tenant: str | None
    name: str
    revision: int
    data: dict[str, Any] = field(hash=False, compare=False)


@dataclass(frozen=True)
class Change:
    revision: int
    op: Op
    kind: str
    id: str
    tenant: str | None
    name: str


class ClaimTaken(Exception):
    """``claim`` is already held by the object with id ``holder``."""

    def __init__(self, claim: Claim, holder: str) -> None:
        super().__init__(f"{claim.key} is held by {holder}")
        self.claim = claim
        self.holder = holder


class ReadTxn(Protocol):
    """A consistent snapshot."""

    def get(self, id: str) -> Record | None: ...

    def find(self, kind: str, tenant: str | None, name: str) -> Record | None: ...

    def list(
        self, kind: str, tenant: str | None = None, name: str | None = None
    ) -> builtins.list[Record]: ...

    def revision(self) -> int: ...

    def claim_holder(self, key: str) -> str | None: ...

    def changes(self, since: int, limit: int) -> builtins.list[Change]: ...


class WriteTxn(ReadTxn, Protocol):
    """Writes become visible together at commit; an exception rolls all of them back."""

    logged: builtins.list[Change]  # what this transaction changed, for listeners after commit

    def next_sequence(self, name: str) -> int:
        """The next number of a named counter (VNIs, class ids), starting at 1."""
        ...

    def next_revision(self) -> int:
        """The revision this transaction writes (bumped on first call, then stable)."""
        ...

    def put(self, record: Record, claims: Sequence[Claim] | None, op: Op) -> None:
        """Insert or replace ``record`` and set its claims (None: keep those it holds);
        raises ClaimTaken."""
        ...

    def set_claims(self, id: str, claims: Sequence[Claim]) -> None:
        """Replace the claims held by ``id``; raises ClaimTaken."""
        ...

    def delete(self, record: Record) -> None: ...


class Store(Protocol):
    def read(self) -> AbstractContextManager[ReadTxn]: ...

    def write(self) -> AbstractContextManager[WriteTxn]: ...

    def close(self) -> None: ...
