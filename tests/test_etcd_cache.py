"""The etcd store's cache across replicas, on a real 3-member etcd cluster: a store follows the
other stores' commits (from the log entries between two snapshots, from a lost commit's answer,
from the change-log watch) instead of reading everything again, and never answers from a value
another store changed; and a replica releases an agent's session claim only while it holds it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from policyfabric.authority.service import Authority
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.model import kinds as k
from policyfabric.model.errors import Conflict
from policyfabric.store.base import Change
from policyfabric.store.etcd import EtcdStore, Item, encode, item_key
from policyfabric.store.etcd_client import b64, unb64
from policyfabric.store.etcd_follow import LogFollower
from policyfabric.store.etcd_shared import EtcdShared
from tests.conftest import etcd_prefix
from tests.test_etcd_store import endpoint, setup_tenant

pytestmark = [
    pytest.mark.integration,  # etcd clusters are processes
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]


@pytest.fixture
def stores(etcd_cluster: EtcdCluster) -> Iterator[tuple[EtcdStore, EtcdStore]]:
    prefix = etcd_prefix()
    a = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
    b = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
    yield a, b
    a.close()
    b.close()


def counting(store: EtcdStore) -> Counter[str]:
    """Count the store's etcd requests by kind: commits (a txn with a compare), other txns
    (reads of several keys, snapshots with the log), single ranges."""
    calls: Counter[str] = Counter()
    call = store.client.call

    def counted(path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        if path == "kv/txn":
            calls["commit" if body.get("compare") else "txn"] += 1
        else:
            calls[path] += 1
        return call(path, body, idempotent=idempotent)

    store.client.call = counted  # type: ignore[method-assign]
    return calls


def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_claim_taken_through_another_store_is_refused_from_a_warm_cache(
    stores: tuple[EtcdStore, EtcdStore],
) -> None:
    store_a, store_b = stores
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    a.create(k.ENDPOINT, endpoint("e1", "10.0.0.11"))  # A's cache now holds the VRF's addresses
    e2 = b.create(k.ENDPOINT, endpoint("e2", "10.0.0.2"))
    with pytest.raises(Conflict, match=r"10\.0\.0\.2"):
        a.create(k.ENDPOINT, endpoint("e3", "10.0.0.2"))
    b.delete(k.ENDPOINT, e2["id"])
    a.create(k.ENDPOINT, endpoint("e3", "10.0.0.2"))  # released through B: free for A
    names = {e["name"] for e in b.list(k.ENDPOINT, "acme")[0]}
    assert names == {"e1", "e3"}


def test_a_lost_commit_is_retried_from_what_won_without_reading_the_store_again(
    stores: tuple[EtcdStore, EtcdStore],
) -> None:
    store_a, store_b = stores
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    for i in range(30):  # ranges worth caching: the tenant's endpoints, the VRF's addresses
        a.create(k.ENDPOINT, endpoint(f"a{i}", f"10.0.1.{i + 1}"))
    b.create(k.ENDPOINT, endpoint("b0", "10.0.2.1"))  # A does not know yet
    calls = counting(store_a)
    a.create(k.ENDPOINT, endpoint("a-next", "10.0.2.2"))
    # the commit that lost brought back B's commit; the keys it wrote in one read; the retry
    # commits: no range read again, whatever the size of the ranges the cache holds
    assert calls == Counter({"commit": 2, "txn": 1}), calls
    with store_b.read() as txn:
        assert {r.name for r in txn.list("endpoint", "acme")} >= {"a-next", "b0", "a29"}


def test_a_read_follows_the_log_between_two_snapshots_and_refetches_only_what_changed(
    stores: tuple[EtcdStore, EtcdStore],
) -> None:
    store_a, store_b = stores
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    made = [a.create(k.ENDPOINT, endpoint(f"a{i}", f"10.0.1.{i + 1}")) for i in range(30)]
    a.list(k.ENDPOINT, "acme")
    b.replace(k.ENDPOINT, made[3]["id"], endpoint("a3", "10.0.3.3"))
    calls = counting(store_a)
    found = {e["name"]: e for e in a.list(k.ENDPOINT, "acme")[0]}
    assert found["a3"]["ip"] == ["10.0.3.3"]
    assert calls == Counter({"txn": 2}), calls  # the snapshot with the log; B's keys, read at once


def test_a_commit_outside_the_log_makes_the_cache_read_everything_again(
    stores: tuple[EtcdStore, EtcdStore],
) -> None:
    """A commit whose log entry does not chain (a fence, an entry from before the log named its
    keys, a raw write): nothing says what it changed, so nothing cached is trusted."""
    store_a, store_b = stores
    a = Authority(store_a)
    setup_tenant(a)
    ep = a.create(k.ENDPOINT, endpoint("e1", "10.0.0.11"))
    with store_a.read() as txn:
        record = txn.get(ep["id"])
        assert record is not None
        item = store_a.get(txn.snap, item_key("endpoint", "acme", "e1"))
    assert isinstance(item, Item)
    changed = Item(replace(record, data={**record.data, "ip": "10.0.0.19"}), item.claims)
    with store_b.read() as txn:
        rev = txn.snap.rev_raw
    assert rev is not None
    key = item_key("endpoint", "acme", "e1")
    store_b.transact(
        [],
        [
            {"request_put": {"key": b64(store_b.key(key)), "value": b64(encode(key, changed))}},
            {"request_put": {"key": b64(store_b.key("rev")), "value": b64(rev)}},  # no log entry
        ],
        idempotent=True,
    )
    with store_a.read() as txn:
        again = txn.get(ep["id"])
        assert again is not None and again.data["ip"] == "10.0.0.19"


def test_the_watch_brings_another_replicas_commit_into_the_cache(stores: tuple[EtcdStore, EtcdStore]) -> None:
    store_a, store_b = stores
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    a.create(k.ENDPOINT, endpoint("e1", "10.0.0.11"))
    seen: list[Change] = []
    follower = LogFollower(store_a, seen.extend)
    follower.start(store_a.ping())
    try:
        until(lambda: follower.streams > 0 and store_a.watcher is not None)
        created = b.create(k.ENDPOINT, endpoint("e2", "10.0.0.2"))
        until(lambda: any(c.id == created["id"] for c in seen))
        warm = store_a.cache.warm()
        assert warm is not None and warm.revision == created["revision"]
        calls = counting(store_a)
        a.create(k.ENDPOINT, endpoint("e3", "10.0.0.3"))
        assert calls == Counter({"commit": 1}), calls  # nothing read: the watch brought B's keys
        with pytest.raises(Conflict, match=r"10\.0\.0\.2"):
            a.create(k.ENDPOINT, endpoint("e4", "10.0.0.2"))
    finally:
        follower.stop()


def test_the_change_log_watch_carries_endpoint_transitions(stores: tuple[EtcdStore, EtcdStore]) -> None:
    store_a, store_b = stores
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    b.create(k.ENDPOINT, endpoint("e1", "10.0.0.11"))
    seen: list[Change] = []
    follower = LogFollower(store_a, seen.extend)
    follower.start(store_a.ping())
    try:
        until(lambda: store_a.watcher is not None)
        b.set_endpoint_state("acme", "e1", host="h2")
        until(lambda: any(c.transition is not None for c in seen))
        moved = next(c.transition for c in seen if c.transition is not None)
        assert moved is not None and moved.host == "h2"
    finally:
        follower.stop()


def test_a_session_claim_is_released_only_by_the_replica_holding_it(etcd_cluster: EtcdCluster) -> None:
    """After a partition: A's lease ended (its claims went), B took the agent's claim; A, back,
    releases the session it had: B's claim stays."""
    prefix = etcd_prefix()
    store_a = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
    store_b = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
    a, b = EtcdShared(store_a, ttl=2), EtcdShared(store_b, ttl=2)
    a.start(lambda events: None)
    b.start(lambda events: None)
    try:
        assert a.campaign("session/agent1")
        assert not b.campaign("session/agent1")
        store_a.client.call("lease/revoke", {"ID": a.lease}, idempotent=True)  # as if it ran out
        assert b.campaign("session/agent1")
        a.resign("session/agent1")
        a.resign("session/agent1")  # twice: still not its own
        until(lambda: a._queue.empty() and not a._deleting)
        reply = store_b.client.range(store_b.key("shared/session/agent1"))
        holder = json.loads(unb64(reply["kvs"][0]["value"])) if reply.get("kvs") else None
        assert holder is not None and holder["by"] == b.replica
        b.resign("session/agent1")  # its holder's release deletes it
        until(lambda: not store_b.client.range(store_b.key("shared/session/agent1")).get("kvs"))
    finally:
        a.stop()
        b.stop()
        store_a.close()
        store_b.close()
