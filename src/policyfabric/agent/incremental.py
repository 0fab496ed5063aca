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

from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from policyfabric.agent.view import Invalid
from policyfabric.opflex.mo import MO

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


Inputs = dict[str, MO | None]  # the URIs a record read, and the object each held (None: absent)


class Reads(Mapping[str, MO]):
    """The cache as one record's reader sees it: every URI it looks up (``get``, ``[]``, ``in``) is
    added to ``seen`` with the object it found (None: absent). It cannot be iterated: a record that
    read the whole cache would depend on every object, which is what the incremental view exists
    to avoid."""

    __slots__ = ("_cache", "seen")

    def __init__(self, cache: Mapping[str, MO], *uris: str) -> None:
        self._cache = cache
        self.seen: Inputs = {uri: cache.get(uri) for uri in uris}

    def __getitem__(self, uri: str) -> MO:
        found = self.seen[uri] = self._cache.get(uri)
        if found is None:
            raise KeyError(uri)
        return found

    def get(self, uri: str, default: MO | None = None) -> MO | None:  # type: ignore[override]
        found = self.seen[uri] = self._cache.get(uri)
        return default if found is None else found

    def __contains__(self, uri: object) -> bool:
        if not isinstance(uri, str):
            return False
        found = self.seen[uri] = self._cache.get(uri)
        return found is not None

    def __iter__(self) -> Iterator[str]:
        raise TypeError("a record reads the cache by URI, never the whole of it")

    def __len__(self) -> int:
        return len(self._cache)


class DependencyIndex(Generic[K]):
    """URI → the nodes (keys) that read it, kept with each node's reads. Most URIs are read by one
    node (an endpoint's children, a set's members): that one is stored as it is, a set only for
    more (a full build at 10,000 endpoints makes tens of thousands of entries)."""

    def __init__(self) -> None:
        self._users: dict[str, K | set[K]] = {}
        self._reads: dict[K, tuple[str, ...]] = {}

    def set_reads(self, key: K, uris: Iterable[str]) -> None:
        """``key`` now depends on exactly ``uris``."""
        new = tuple(dict.fromkeys(uris))
        old = self._reads.get(key)
        if old is None:
            added: Iterable[str] = new
        elif old == new:
            return
        else:
            for uri in set(old).difference(new):
                self.discard(key, uri)
            added = set(new).difference(old)
        for uri in added:
            self.add(key, uri)
        self._reads[key] = new

    def add(self, key: K, uri: str) -> None:
        """``key`` depends on ``uri`` too (a node that keeps its reads itself, one at a time)."""
        users = self._users.get(uri)
        if users is None:
            self._users[uri] = key
        elif isinstance(users, set):
            users.add(key)
        elif users != key:
            self._users[uri] = {users, key}

    def discard(self, key: K, uri: str) -> None:
        users = self._users.get(uri)
        if isinstance(users, set):
            users.discard(key)
            if not users:
                del self._users[uri]
        elif users is not None and users == key:
            del self._users[uri]

    def drop(self, key: K) -> None:
        """``key`` is gone: it depends on nothing."""
        for uri in self._reads.pop(key, ()):
            self.discard(key, uri)

    def users_of(self, uri: str) -> Collection[K]:
        """The nodes that read ``uri`` (not to be changed by the caller)."""
        users = self._users.get(uri)
        if users is None:
            return ()
        return users if isinstance(users, set) else (users,)

    def users(self, uris: Iterable[str]) -> set[K]:
        """The nodes that read any of ``uris``."""
        out: set[K] = set()
        for uri in uris:
            users = self._users.get(uri)
            if isinstance(users, set):
                out |= users
            elif users is not None:
                out.add(users)
        return out

    def __len__(self) -> int:
        return len(self._users)


def unchanged(inputs: Inputs, cache: Mapping[str, MO]) -> bool:
    """Whether ``cache`` holds the very objects a record read (and lacks those it found absent):
    then it would read the same (objects are replaced, never mutated). What a full build with a
    state to take over from checks instead of reading again: the check the declarer's own full
    sync makes, and what catches a change nobody reported."""
    return all(cache.get(uri) is found for uri, found in inputs.items())


def same(old: T | None, new: T) -> T:
    """``old`` if it equals ``new`` (records are frozen values): a record that reads as it did keeps
    its identity, which is what the compilers downstream memoise and compare by."""
    return old if old is not None and old == new else new


def problem_order(i: Invalid) -> tuple[str, str, str, str]:
    """The order problems are listed in (a view built whole or incrementally lists them alike)."""
    return (i.uri, i.field, i.value, i.why)
