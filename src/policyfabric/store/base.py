"""The store interface the authority needs, small enough for several backends.

A store holds JSON documents keyed by id and by (kind, tenant, name), the
uniqueness claims of :mod:`policyfabric.model.rules`, a global revision that
every write transaction bumps once, and a change log by revision (what a
later OpFlex server pushes to agents). SQLite (``sqlite``) and etcd
(``etcd``: one key per document and per claim) implement it.

A backend whose write transactions are optimistic (etcd: validated at commit,
since several authorities may write at once) raises :class:`WriteConflict`
when another writer committed first; the transaction then changed nothing,
and :func:`retry_conflicts` runs the whole write again, a bounded number of
times. SQLite serialises writers and never raises it.
"""

from __future__ import annotations

import builtins
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, ParamSpec, Protocol, TypeVar

from policyfabric.model.rules import Claim

log = logging.getLogger(__name__)

Op = Literal["create", "update", "delete"]
P = ParamSpec("P")
T = TypeVar("T")


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
class Transition:
    """An endpoint's status and host after one logged change, and before it, written with the
    change (in its transaction): a watcher replaying the log learns every transition exactly, in
    order, where reading the object as it is now would merge two quick ones into one."""

    status: str | None
    host: str | None
    was_status: str | None
    was_host: str | None

    @staticmethod
    def between(old: dict[str, Any], new: dict[str, Any]) -> Transition | None:
        """The transition from ``old`` to ``new`` (an endpoint's data), None if neither its
        status nor its host changed."""
        now, was = (new.get("status"), new.get("host")), (old.get("status"), old.get("host"))
        return None if now == was else Transition(*now, *was)

    def encode(self) -> list[str | None]:
        """As the change log stores it (a JSON array: small, as status writes are many)."""
        return [self.status, self.host, self.was_status, self.was_host]

    @staticmethod
    def decode(value: Sequence[str | None] | None) -> Transition | None:
        return Transition(*value) if value else None


@dataclass(frozen=True)
class Change:
    revision: int
    op: Op
    kind: str
    id: str
    tenant: str | None
    name: str
    transition: Transition | None = None  # an endpoint's status or host changed (update only)


class ClaimTaken(Exception):
    """``claim`` is already held by the object with id ``holder``."""

    def __init__(self, claim: Claim, holder: str) -> None:
        super().__init__(f"{claim.key} is held by {holder}")
        self.claim = claim
        self.holder = holder


class StoreError(Exception):
    """The store could not do what was asked, through no fault of the request: the REST API
    answers ``status`` with the error shape and ``code`` (never a 500)."""

    status: ClassVar[int] = 503
    code: ClassVar[str] = "unavailable"  # as the REST edge's other 503s: retry


class StoreUnavailable(StoreError):
    """The store cannot be reached, or did not answer in time (etcd down, no quorum). Nothing
    was written, unless the message says the outcome is unknown."""


class WriteConflict(StoreError):
    """Another writer committed between this transaction's reads and its commit: this one changed
    nothing and may run again (:func:`retry_conflicts`); raised past it when every attempt lost."""


class TxnTooLarge(StoreError):
    """One write is over what the store accepts in one transaction (etcd's operations or bytes per
    request); the message names the limit. Nothing was written."""

    status: ClassVar[int] = 413
    code: ClassVar[str] = "too_large"


# Replicas writing at once all bump one revision key (etcd.py), so each commit makes the others'
# transactions in flight lose and run again. A lost commit brings back, in its own round trip,
# what won (etcd.py: the cache moves to it), so the retry starts at once from the newest state: a
# sleep would only let more commits land and make the retry lose again (measured: with a back-off
# growing to 50 ms, some writes lost 20-30 times in a row behind replicas that never slept). Only
# after a few losses in a row a short random pause breaks a lockstep. Every loss means another
# write committed, so the replicas together always progress; the bound is for a pathological run.
WRITE_ATTEMPTS = 32
PAUSE_AFTER = 3  # losses in a row before the first pause
BACKOFF_MAX = 0.005  # seconds


def retry_conflicts(fn: Callable[P, T]) -> Callable[P, T]:
    """Run ``fn`` (one whole write transaction: its reads, its checks, its commit) again when it
    loses to another writer, up to ``WRITE_ATTEMPTS`` times (at once, then with a short random
    pause), then
    give up with a WriteConflict that says so. Only for functions whose effects are all inside
    the transaction (a retry must not repeat anything the failed attempt did outside it)."""

    @functools.wraps(fn)
    def retried(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except WriteConflict as conflict:
                if attempt == WRITE_ATTEMPTS:
                    raise WriteConflict(
                        f"the write lost to concurrent writers {attempt} times in a row; retry it "
                        f"({conflict})"
                    ) from conflict
                log.debug("%s: write conflict (attempt %d): %s", fn.__qualname__, attempt, conflict)
                if attempt >= PAUSE_AFTER:
                    time.sleep(random.uniform(0, min(BACKOFF_MAX, 0.0005 * 2 ** (attempt - PAUSE_AFTER))))
        raise AssertionError("unreachable")

    return retried


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

    def put(
        self, record: Record, claims: Sequence[Claim] | None, op: Op, transition: Transition | None = None
    ) -> None:
        """Insert or replace ``record`` and set its claims (None: keep those it holds), logging
        the change with ``transition`` (an endpoint's status or host, before and after);
        raises ClaimTaken."""
        ...

    def set_claims(self, id: str, claims: Sequence[Claim]) -> None:
        """Replace the claims held by ``id``; raises ClaimTaken."""
        ...

    def delete(self, record: Record) -> None: ...


class Store(Protocol):
    # how many records one write transaction should change at most, for writers that may split a
    # large batch of independent writes (agents' endpoint statuses): None, no limit (SQLite); etcd
    # refuses a transaction over --max-txn-ops (128 by default) operations
    records_per_write: int | None

    def read(self) -> AbstractContextManager[ReadTxn]: ...

    def write(self) -> AbstractContextManager[WriteTxn]: ...

    def close(self) -> None: ...


# ---- what authority replicas share beside the intent -------------------------------------------
# Short-lived state the replicas of one store keep in common: which replicas are alive, which
# agents each holds a session for, the endpoint registry's declarations and the gateway election.
# Unlike intent it has no revision of ours, no change log and no claims: keys with a lifetime (a
# lease: the replica's own, which ends when the replica dies, or a number of seconds, an OpFlex
# ``prr``), and a stream of what the OTHER replicas put and delete. The embedded store (SQLite,
# one authority process) has no other replica: ``LocalShared`` keeps nothing and tells nothing, so
# every replica-aware path reduces to what one authority does alone.

REPLICA_LEASE = "replica"  # a key that lives as long as this replica does


@dataclass(frozen=True)
class SharedEvent:
    """Another replica (or a lease's end) put or deleted ``key``: ``value`` is the new document
    (None: deleted), ``prev`` the one before (None: unknown or absent)."""

    key: str
    value: Any
    prev: Any


class Shared(Protocol):
    """Keys (``KIND/NAME``) with JSON documents, shared by the replicas of one store."""

    replica: str  # this replica's id (unique per process start)
    alone: bool  # no other replica can exist (the embedded store): it leads without a campaign

    def start(self, deliver: Callable[[builtins.list[SharedEvent]], None]) -> None:
        """Begin: ``deliver`` (from a thread of its own, or this one) the keys that exist now (what
        the others hold), then what changes later, in order, except this replica's own writes."""
        ...

    def put(self, key: str, value: Any, lease: str | float = REPLICA_LEASE) -> None:
        """Write ``key`` (queued, in order, never blocking): for as long as this replica lives
        (``REPLICA_LEASE``), or at least the given seconds."""
        ...

    def delete(self, key: str) -> None: ...

    def resign(self, key: str) -> None:
        """Delete ``key`` (queued, in order, as ``delete``) only if this replica holds it (it was
        put under this replica's lease, by ``campaign`` or ``put``): a claim this replica lost
        while cut off from the others, and another then took, is left to its new holder."""
        ...

    def campaign(self, key: str) -> bool:
        """Whether this replica holds ``key`` (taking it if nobody does) as long as it lives: a
        leader election decided once for all replicas. Blocks for one round trip; raises
        StoreError when the store cannot be reached."""
        ...

    def stop(self) -> None: ...


class LocalShared:
    """One authority alone (SQLite): there are no other replicas; it leads every election."""

    alone = True

    def __init__(self) -> None:
        self.replica = "local"

    def start(self, deliver: Callable[[builtins.list[SharedEvent]], None]) -> None:
        pass

    def put(self, key: str, value: Any, lease: str | float = REPLICA_LEASE) -> None:
        pass

    def delete(self, key: str) -> None:
        pass

    def resign(self, key: str) -> None:
        pass

    def campaign(self, key: str) -> bool:
        return True

    def stop(self) -> None:
        pass
