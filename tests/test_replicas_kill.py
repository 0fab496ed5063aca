"""kill -9 of an authority replica in the middle of a stream of writes, on a real 3-member etcd
cluster: every write it acknowledged is read back whole from the other replica at once, and each
write it was doing when it died either committed whole or is not there at all (its client was
told it failed). Nothing acknowledged lives only in the dead process."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from policyfabric.client import Client
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.model import kinds as k
from tests.conftest import etcd_prefix

pytestmark = [
    pytest.mark.integration,  # etcd members and authorities are processes
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]

WRITERS = 4
KILL_AFTER = 60  # acknowledged writes before A is killed


@dataclass
class Writer:
    """One client writing to A as fast as A answers, until A stops answering."""

    index: int
    acked: list[dict[str, Any]] = field(default_factory=list)  # the objects A answered 201 with
    failed: list[tuple[str, str]] = field(default_factory=list)  # (name, how it failed)

    def run(self, url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            n = 0
            while not stop.is_set():
                name = f"w{self.index}-{n}"
                n += 1
                try:
                    r = http.post(f"/v1/{k.TENANT.collection}", json={"name": name})
                except httpx.HTTPError as exc:  # A died under it (or before it)
                    self.failed.append((name, type(exc).__name__))
                    return
                if r.status_code != 201:
                    self.failed.append((name, f"HTTP {r.status_code}"))
                    return
                self.acked.append(r.json())


def replica(directory: Path, url: str) -> AuthorityProcess:
    return authority_in(directory, extra=["--store", url, "--keepalive", "0.5"])


def test_kill_9_during_a_stream_of_writes_loses_no_acknowledged_write(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd_cluster.url + etcd_prefix()
    a, b = replica(tmp_path / "a", url), replica(tmp_path / "b", url)
    try:
        a.start()
        b.start()
        writers = [Writer(i) for i in range(WRITERS)]
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(a.url, stop)) for w in writers]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while sum(len(w.acked) for w in writers) < KILL_AFTER:
            assert time.monotonic() < deadline, "A acknowledged too few writes"
            assert all(t.is_alive() for t in threads), [w.failed for w in writers]
            time.sleep(0.005)
        a.kill()  # SIGKILL while the writers are still sending
        for t in threads:
            t.join(30)
        stop.set()
        acked = [obj for w in writers for obj in w.acked]
        failed = [f for w in writers for f in w.failed]
        assert len(failed) == WRITERS  # each writer's last write failed: A died mid-stream

        with Client(b.url) as on_b:
            # every acknowledged write, read at once from B, whole
            held = {t["name"]: t for t in on_b.list(k.TENANT)}
            for obj in acked:
                assert held.get(obj["name"]) == obj, obj["name"]
            # one revision each, every one in B's change log
            revisions = [obj["revision"] for obj in acked]
            assert len(set(revisions)) == len(revisions)
            logged = {c["revision"] for c in on_b.changes(0, 10_000)["changes"]}
            assert set(revisions) <= logged
            # a write in flight when A died: committed whole, or absent; never half there
            in_flight = {name for name, _ in failed}
            committed = in_flight & set(held)
            for name in committed:
                assert held[name]["name"] == name and held[name]["revision"] in logged
            print(
                f"{len(acked)} acknowledged, all on B; {len(failed)} in flight at the kill "
                f"({sorted(how for _, how in failed)}), {len(committed)} of them committed"
            )
            # B takes the next write, after everything A committed
            after = on_b.create(k.TENANT, {"name": "after-the-kill"})
            assert after["revision"] > max(revisions)
            assert on_b.revision() == after["revision"]
            assert len(on_b.list(k.TENANT)) == len(acked) + len(committed) + 1
    finally:
        a.kill()
        b.kill()
