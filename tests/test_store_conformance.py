"""The store interface (``store/base.py``) behaves the same on every backend: SQLite and etcd.

What the authority relies on, asserted through the interface alone: lookups by id and name,
lists in (tenant, name) order, claims that one object holds at a time, one revision per write
transaction, the change log by revision, counters, and all-or-nothing commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.model.rules import Claim
from policyfabric.store.base import Change, ClaimTaken, Record, Store, Transition
from policyfabric.store.dump import EtcdSide, SqliteSide, migrate
from policyfabric.store.etcd import EtcdStore
from policyfabric.store.sqlite import SqliteStore
from tests.conftest import STORES, open_store


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = open_store(request.param, request, tmp_path / "store.db")
    yield made
    made.close()


def claim(key: str) -> Claim:
    return Claim(key, "ip", f"address {key}")


def rec(
    id: str, name: str, revision: int, tenant: str | None = "acme", kind: str = "endpoint", **data: object
) -> Record:
    return Record(kind, id, tenant, name, revision, {"name": name, **data})


def test_put_get_find_list(store: Store) -> None:
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-b", "b", rev), [], "create")
        txn.put(rec("id-a", "a", rev, color="red"), [], "create")
        txn.put(rec("id-g", "a", rev, tenant="beta"), [], "create")
        txn.put(rec("id-x", "x", rev, tenant=None, kind="external_network"), [], "create")
        # a write transaction reads its own writes
        found = txn.find("endpoint", "acme", "a")
        assert found is not None and found.id == "id-a"
    with store.read() as txn:
        a = txn.get("id-a")
        assert a is not None and (a.kind, a.tenant, a.name, a.revision) == ("endpoint", "acme", "a", 1)
        assert a.data == {"name": "a", "color": "red"}
        assert txn.get("nope") is None
        assert txn.find("endpoint", "acme", "zz") is None
        assert txn.find("endpoint", "beta", "b") is None
        x = txn.find("external_network", None, "x")
        assert x is not None and x.tenant is None
        assert [r.id for r in txn.list("endpoint")] == ["id-a", "id-b", "id-g"]  # by tenant, then name
        assert [r.id for r in txn.list("endpoint", "acme")] == ["id-a", "id-b"]
        assert [r.id for r in txn.list("endpoint", None, "a")] == ["id-a", "id-g"]
        assert [r.id for r in txn.list("endpoint", "beta", "a")] == ["id-g"]
        assert txn.list("router") == []


def test_one_revision_per_write_transaction_and_the_change_log(store: Store) -> None:
    with store.read() as txn:
        assert txn.revision() == 0 and txn.changes(0, 10) == []
    with store.write() as txn:
        rev = txn.next_revision()
        assert txn.next_revision() == rev == 1  # stable within the transaction
        txn.put(rec("id-a", "a", rev), [], "create")
        txn.put(rec("id-b", "b", rev), [], "create")
        assert txn.revision() == 1
    with store.write() as txn:
        rev = txn.next_revision()
        a = txn.get("id-a")
        assert a is not None
        txn.put(rec("id-a", "a2", rev), None, "update")  # renamed
        txn.delete(rec("id-b", "b", rev))
    with store.read() as txn:
        assert txn.revision() == 2
        assert txn.changes(0, 10) == [
            Change(1, "create", "endpoint", "id-a", "acme", "a"),
            Change(1, "create", "endpoint", "id-b", "acme", "b"),
            Change(2, "update", "endpoint", "id-a", "acme", "a2"),
            Change(2, "delete", "endpoint", "id-b", "acme", "b"),
        ]
        assert [c.revision for c in txn.changes(1, 10)] == [2, 2]
        assert len(txn.changes(0, 3)) == 3
        assert txn.changes(2, 10) == []
        assert txn.find("endpoint", "acme", "a") is None  # the old name is free
        moved = txn.find("endpoint", "acme", "a2")
        assert moved is not None and moved.id == "id-a" and moved.revision == 2
        assert txn.get("id-b") is None and [r.name for r in txn.list("endpoint", "acme")] == ["a2"]


def test_a_claim_has_one_holder(store: Store) -> None:
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-a", "a", rev), [claim("ip/1"), claim("ip/2")], "create")
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-b", "b", rev), [claim("ip/3")], "create")
        with pytest.raises(ClaimTaken) as taken:
            txn.set_claims("id-b", [claim("ip/3"), claim("ip/2")])
        assert taken.value.holder == "id-a" and taken.value.claim.key == "ip/2"
    with store.write() as txn:  # the same claim twice by one object
        rev = txn.next_revision()
        txn.put(rec("id-c", "c", rev), [], "create")
        with pytest.raises(ClaimTaken):
            txn.set_claims("id-c", [claim("ip/9"), claim("ip/9")])
    with store.read() as txn:
        assert txn.claim_holder("ip/1") == txn.claim_holder("ip/2") == "id-a"
        assert txn.claim_holder("ip/3") == "id-b"  # the second transaction committed (the caller chose to)


def test_replacing_and_dropping_claims(store: Store) -> None:
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-a", "a", rev), [claim("ip/1"), claim("mac/1")], "create")
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-a", "a", rev), None, "update")  # None: keeps what it holds
    with store.read() as txn:
        assert txn.claim_holder("ip/1") == "id-a"
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-a", "a", rev), [claim("ip/2"), claim("mac/1")], "update")
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-b", "b", rev), [claim("ip/1")], "create")  # freed by a's update
    with store.read() as txn:
        assert (txn.claim_holder("ip/1"), txn.claim_holder("ip/2"), txn.claim_holder("mac/1")) == (
            "id-b",
            "id-a",
            "id-a",
        )
    with store.write() as txn:
        txn.next_revision()
        a = txn.get("id-a")
        assert a is not None
        txn.delete(a)
    with store.read() as txn:
        assert txn.claim_holder("ip/2") is None and txn.claim_holder("mac/1") is None
        assert txn.claim_holder("ip/1") == "id-b"


def test_an_exception_rolls_the_whole_transaction_back(store: Store) -> None:
    with store.write() as txn:
        rev = txn.next_revision()
        txn.put(rec("id-a", "a", rev), [claim("ip/1")], "create")
    with pytest.raises(RuntimeError), store.write() as txn:
        rev = txn.next_revision()
        assert txn.next_sequence("vni") == 1
        txn.put(rec("id-b", "b", rev), [claim("ip/2")], "create")
        a = txn.get("id-a")
        assert a is not None
        txn.delete(a)
        raise RuntimeError("validation failed")
    with store.read() as txn:
        assert txn.revision() == 1 and len(txn.changes(0, 10)) == 1
        assert txn.get("id-b") is None and txn.get("id-a") is not None
        assert txn.claim_holder("ip/2") is None and txn.claim_holder("ip/1") == "id-a"
    with store.write() as txn:
        assert txn.next_sequence("vni") == 1  # the rolled-back one was not kept


def test_sequences_count_per_name_across_transactions(store: Store) -> None:
    with store.write() as txn:
        assert [txn.next_sequence("vni"), txn.next_sequence("vni"), txn.next_sequence("classid")] == [1, 2, 1]
        txn.put(rec("id-a", "a", txn.next_revision()), [], "create")
    with store.write() as txn:
        assert txn.next_sequence("vni") == 3
        txn.put(rec("id-b", "b", txn.next_revision()), [], "create")


def test_a_read_snapshot_does_not_see_later_commits(store: Store) -> None:
    with store.write() as txn:
        txn.put(rec("id-a", "a", txn.next_revision()), [], "create")
    with store.read() as before:
        assert before.revision() == 1
        with store.write() as txn:
            txn.put(rec("id-b", "b", txn.next_revision()), [], "create")
        assert before.get("id-b") is None and before.revision() == 1
        assert [r.name for r in before.list("endpoint", "acme")] == ["a"]
    with store.read() as after:
        assert after.revision() == 2 and after.get("id-b") is not None


def test_a_transition_is_logged_with_its_change_and_read_back(store: Store) -> None:
    """An endpoint's status/host before and after, written with the change: what ``GET
    /v1/events`` replays; a change without one reads back without one."""
    moved = Transition("ACTIVE", "h1", "BUILD", "h1")
    with store.write() as txn:
        txn.put(rec("id-a", "a", txn.next_revision(), status="BUILD", host="h1"), [], "create")
        txn.put(rec("id-b", "b", txn.next_revision()), [], "create")
    with store.write() as txn:
        txn.put(rec("id-a", "a", txn.next_revision(), status="ACTIVE", host="h1"), None, "update", moved)
        txn.put(rec("id-b", "b", txn.next_revision(), interface="tap0"), None, "update")
        assert [c.transition for c in txn.logged] == [moved, None]  # as listeners get it
    with store.read() as txn:
        assert [(c.revision, c.name, c.transition) for c in txn.changes(0, 10)] == [
            (1, "a", None),
            (1, "b", None),
            (2, "a", moved),
            (2, "b", None),
        ]


def test_transition_between_endpoint_data() -> None:
    assert Transition.between({"status": "BUILD", "host": "h1"}, {"status": "DOWN", "host": "h1"}) == (
        Transition("DOWN", "h1", "BUILD", "h1")
    )
    assert Transition.between({"status": "UP", "host": None}, {"status": "UP", "host": "h2"}) == (
        Transition("UP", "h2", "UP", None)
    )
    assert Transition.between({"status": "UP", "interface": "a"}, {"status": "UP", "interface": "b"}) is None


def test_an_sqlite_file_made_before_transitions_were_logged_opens_and_logs_them(tmp_path: Path) -> None:
    """A file whose ``changes`` table has no ``transition`` column (as every file made before
    it): opening adds it; the old rows read with none, new ones keep theirs."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE objects (id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL,
                tenant VARCHAR NOT NULL, name VARCHAR NOT NULL, revision INTEGER NOT NULL,
                data TEXT NOT NULL, UNIQUE (kind, tenant, name));
            CREATE TABLE claims (key VARCHAR PRIMARY KEY, holder VARCHAR NOT NULL);
            CREATE TABLE changes (revision INTEGER, seq INTEGER, op VARCHAR NOT NULL,
                kind VARCHAR NOT NULL, id VARCHAR NOT NULL, tenant VARCHAR NOT NULL,
                name VARCHAR NOT NULL, PRIMARY KEY (revision, seq));
            CREATE TABLE meta (key VARCHAR PRIMARY KEY, value INTEGER NOT NULL);
            INSERT INTO objects VALUES ('id-a', 'endpoint', 'acme', 'a', 1, '{"name":"a","status":"BUILD"}');
            INSERT INTO changes VALUES (1, 1, 'create', 'endpoint', 'id-a', 'acme', 'a');
            INSERT INTO meta VALUES ('revision', 1), ('schema', 1);
            """
        )
    db.close()
    moved = Transition("ACTIVE", None, "BUILD", None)
    store = SqliteStore(path)
    with store.read() as txn:
        assert txn.changes(0, 10) == [Change(1, "create", "endpoint", "id-a", "acme", "a")]
    with store.write() as wtxn:
        wtxn.put(rec("id-a", "a", wtxn.next_revision(), status="ACTIVE"), None, "update", moved)
    store.close()
    store = SqliteStore(path)  # and it opens again, the column there
    with store.read() as txn:
        assert txn.revision() == 2 and [c.transition for c in txn.changes(0, 10)] == [None, moved]
    store.close()


def test_migrate_carries_the_logged_transitions(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """``policyfabric migrate`` copies the change log with its transitions: SQLite -> etcd -> SQLite."""
    moved = Transition("ACTIVE", "h1", "BUILD", "h1")
    source = SqliteSide(tmp_path / "from.db", source=False)
    with source.store.write() as txn:
        txn.put(rec("id-a", "a", txn.next_revision(), status="BUILD", host="h1"), [], "create")
        txn.put(rec("id-b", "b", txn.next_revision()), [], "create")
    with source.store.write() as txn:
        txn.put(rec("id-b", "b", txn.next_revision(), interface="tap0"), None, "update")
        txn.put(rec("id-a", "a", txn.next_revision(), status="ACTIVE", host="h1"), None, "update", moved)
    on_etcd = open_store("etcd", request, tmp_path / "unused")
    assert isinstance(on_etcd, EtcdStore)
    etcd = EtcdSide(on_etcd)
    back = SqliteSide(tmp_path / "back.db", source=False)
    try:
        migrate(source, etcd)
        migrate(etcd, back)
        for side in (etcd, back):
            with side.store.read() as txn:
                assert [(c.name, c.transition) for c in txn.changes(1, 10)] == [("b", None), ("a", moved)]
    finally:
        for side in (source, etcd, back):
            side.close()
