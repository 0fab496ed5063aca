"""What the agent's incremental view is made of: a record's reads, and who read what.

The view (``agent/view.Network``) is kept up to date rather than rebuilt on every change, the
shape of OVN's incremental processing engine and Felix's calculation graph: each record of the
view is a node whose inputs are the cache objects it looked up while it was read, and a change to
the cache reaches exactly the nodes that read a changed URI (a reverse index). That stays correct
without a hand-written list of what each kind of record depends on: whatever a reader looks up is
recorded, an object it found absent included (its arrival is a change too). Objects in the cache
are replaced, never mutated, and the client reports every URI it changed
(``opflex.client.PolicyClient.on_change``), so "the URIs it read are unchanged" means "it would
read the same".
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from policyfabric.agent.view import Invalid
from policyfabric.opflex.mo import MO

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Reads(Mapping[str, MO]):
    """The cache as one record's reader sees it: every URI it looks up (``get``, ``[]``, ``in``) is
    added to ``seen``, found or not. It cannot be iterated: a record that read the whole cache
    would depend on every object, which is what the incremental view exists to avoid."""

    __slots__ = ("_cache", "seen")

    def __init__(self, cache: Mapping[str, MO], *uris: str) -> None:
        self._cache = cache
        self.seen: set[str] = set(uris)

    def __getitem__(self, uri: str) -> MO:
        self.seen.add(uri)
        return self._cache[uri]

    def get(self, uri: str, default: MO | None = None) -> MO | None:  # type: ignore[override]
        self.seen.add(uri)
        return self._cache.get(uri, default)

    def __contains__(self, uri: object) -> bool:
        if isinstance(uri, str):
            self.seen.add(uri)
        return uri in self._cache

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a record reads the cache by URI, never the whole of it")

    def __len__(self) -> int:
        return len(self._cache)


class DependencyIndex(Generic[K]):
    """URI → the nodes (keys) that read it, kept with each node's reads."""

    def __init__(self) -> None:
        self._users: dict[str, set[K]] = {}
        self._reads: dict[K, frozenset[str]] = {}

    def set_reads(self, key: K, uris: Iterable[str]) -> None:
        """``key`` now depends on exactly ``uris``."""
        new = frozenset(uris)
        old = self._reads.get(key, frozenset())
        if new == old:
            return
        for uri in old - new:
            self._discard(key, uri)
        for uri in new - old:
            self._users.setdefault(uri, set()).add(key)
        self._reads[key] = new

    def add(self, key: K, uri: str) -> None:
        """``key`` depends on ``uri`` too (a node that keeps its reads itself, one at a time)."""
        self._users.setdefault(uri, set()).add(key)

    def discard(self, key: K, uri: str) -> None:
        self._discard(key, uri)

    def drop(self, key: K) -> None:
        """``key`` is gone: it depends on nothing."""
        for uri in self._reads.pop(key, frozenset()):
            self._discard(key, uri)

    def users_of(self, uri: str) -> frozenset[K] | set[K]:
        """The nodes that read ``uri`` (not to be changed by the caller)."""
        return self._users.get(uri) or frozenset()

    def users(self, uris: Iterable[str]) -> set[K]:
        """The nodes that read any of ``uris``."""
        out: set[K] = set()
        for uri in uris:
            found = self._users.get(uri)
            if found:
                out |= found
        return out

    def __len__(self) -> int:
        return len(self._users)

    def _discard(self, key: K, uri: str) -> None:
        users = self._users.get(uri)
        if users is not None:
            users.discard(key)
            if not users:
                del self._users[uri]


def same(old: T | None, new: T) -> T:
    """``old`` if it equals ``new`` (records are frozen values): a record that reads as it did keeps
    its identity, which is what the compilers downstream memoise and compare by."""
    return old if old is not None and old == new else new


def problem_order(i: Invalid) -> tuple[str, str, str, str]:
    """The order problems are listed in (a view built whole or incrementally lists them alike)."""
    return (i.uri, i.field, i.value, i.why)
