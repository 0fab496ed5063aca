"""The lab's ``--store`` (checked before anything is created, kept in state.json) and how
``policyfabric migrate`` cuts a store into etcd transactions (under both per-request limits)."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyfabric.lab import store as lab_store
from policyfabric.lab.plan import LabError
from policyfabric.lab.state import LabState
from policyfabric.store.base import Change, Record
from policyfabric.store.dump import Dump, EtcdSide
from policyfabric.store.etcd import EtcdStore


@pytest.mark.parametrize("bad", ["etcd:/h:1", "etcd://", "etcd://h", "etcd://h:0", "http://h:2379", "zk"])
def test_a_store_the_lab_cannot_use_is_refused_first(bad: str) -> None:
    with pytest.raises(LabError, match="--store"):
        lab_store.check(bad)


def test_store_urls_and_their_prefix() -> None:
    lab_store.check(None)
    lab_store.check("sqlite")
    lab_store.check("etcd://a:2379,b:2379/site")
    assert lab_store.split_url("etcd://a:2379, b:2379/site/") == (["a:2379", "b:2379"], "site")
    assert lab_store.split_url("etcd://a:2379") == (["a:2379"], "")


def test_the_store_survives_state_json(tmp_path: Path) -> None:
    state = LabState("pf000001", str(tmp_path), "x.yaml", store="etcd://a:1/p", store_prefix_owned=True)
    state.save()
    back = LabState.load(tmp_path)
    assert (back.store, back.store_prefix_owned) == ("etcd://a:1/p", True)
    LabState("pf000002", str(tmp_path), "x.yaml").save()  # an SQLite lab writes no store keys
    assert '"store"' not in (tmp_path / "state.json").read_text()


def big_dump(objects: int, size: int) -> Dump:
    dump = Dump(revision=objects)
    for i in range(objects):
        record = Record("endpoint", f"id{i}", "t", f"ep{i}", i + 1, {"blob": "x" * size})
        claims = (f"ip/t/vrf/10.0.{i // 250}.{i % 250}", f"mac/02:00:00:00:{i:04x}")
        dump.records[record.id] = (record, claims)
        dump.changes.append(Change(i + 1, "create", "endpoint", record.id, "t", record.name))
    dump.sequences["vni"] = 7
    return dump


@pytest.mark.parametrize(("ops", "size"), [(16, 10), (100, 10), (100, 60_000)])
def test_a_copy_into_etcd_is_cut_under_both_limits_and_keeps_every_key(ops: int, size: int) -> None:
    side = EtcdSide(EtcdStore(["127.0.0.1:1"], prefix="/p/"), batch_ops=ops, batch_bytes=1 << 20)
    try:
        dump = big_dump(300, size)
        puts = list(side.operations(dump))
        batches = list(side._batches(puts))
        assert [kv for batch in batches for kv in batch] == puts  # all, once, in order
        assert len(puts) == 300 * 5 + 1  # item, id, 2 claims, log entry; the sequence
        for batch in batches:
            assert len(batch) <= ops - 3  # room for the marker, the revision, the marker's removal
            assert sum(len(k) + len(v) for k, v in batch) * 4 // 3 <= 1 << 20
    finally:
        side.close()
