"""Authority replicas on one etcd cluster (a real 3-member one): a write acknowledged by one
replica is read at once on another and pushed by every replica to its own agents; the
follower that feeds other replicas' commits to a replica catches up after a broken stream.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.authority.opflex.registry import EndpointStateWriter
from policyfabric.authority.service import Authority, EndpointState
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.store.base import Change
from policyfabric.store.etcd import EtcdStore
from policyfabric.store.etcd_follow import LogFollower
from tests.conftest import Api, apply_scenario, etcd_prefix
from tests.test_etcd_store import endpoint, setup_tenant
from tests.test_opflex_e2e import CONTRACT, Agent, run, set_http_port, until

pytestmark = [
    pytest.mark.integration,  # etcd members and authorities are processes
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]


def replica(directory: Path, url: str, *extra: str) -> AuthorityProcess:
    return authority_in(directory, extra=["--store", url, "--keepalive", "0.5", *extra])


@pytest.fixture
def two_replicas(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> Iterator[tuple[AuthorityProcess, AuthorityProcess]]:
    """Replicas A and B on one prefix of the cluster, the example scenario applied through A."""
    url = etcd_cluster.url + etcd_prefix()
    a, b = replica(tmp_path / "a", url), replica(tmp_path / "b", url)
    try:
        a.start()
        b.start()
        apply_scenario(a)
        yield a, b
    finally:
        a.kill()
        b.kill()


def test_a_write_on_one_replica_is_read_at_once_and_pushed_by_the_other(
    two_replicas: tuple[AuthorityProcess, AuthorityProcess],
) -> None:
    a, b = two_replicas
    api_a, api_b = Api(a.url), Api(b.url)

    async def go() -> None:
        # subscribed on B only; the change is written on A
        web = await Agent("h1", [b.opflex], ["acme/web1"]).start()
        try:
            assert web.prop(CONTRACT, "dFromPort") == 80
            for port in (8080, 8081, 8082):
                assert set_http_port(api_a, port) == 200
                contract = api_b.find("contracts", "acme", "http")  # read at once on B, no wait
                assert contract is not None and contract["rules"][0]["classifier"]["port"] == port
                took = await until(lambda: web.prop(CONTRACT, "dFromPort") == port, timeout=5)  # noqa: B023
                print(f"a write on A reached an agent of B in {took * 1000:.0f} ms")
            # and a write on B still reaches B's agent (its own commit, not the follower's)
            assert set_http_port(api_b, 9090) == 200
            await until(lambda: web.prop(CONTRACT, "dFromPort") == 9090, timeout=5)
        finally:
            await web.stop()

    run(go)


def test_the_follower_delivers_other_writers_commits_once_and_not_its_own(etcd_cluster: EtcdCluster) -> None:
    prefix = etcd_prefix()
    mine, other = (
        EtcdStore(etcd_cluster.endpoints, prefix=prefix),
        EtcdStore(etcd_cluster.endpoints, prefix=prefix),
    )
    here, there = Authority(mine), Authority(other)
    got: list[Change] = []
    arrived = threading.Event()

    def deliver(changes: list[Change]) -> None:
        got.extend(changes)
        arrived.set()

    follower = LogFollower(mine, deliver, idle=1.0)
    follower.start(here.revision())
    try:
        here.create(k.TENANT, o.Tenant(name="mine"))  # its own: not delivered
        made = there.create(k.TENANT, o.Tenant(name="theirs"))
        assert arrived.wait(5)
        time.sleep(0.3)
        assert [(c.op, c.name, c.revision) for c in got] == [("create", "theirs", made["revision"])]
        # the member it watches through dies: it follows through another, losing and doubling nothing
        streams = follower.streams
        watched = mine.client.endpoints.index(mine.client.endpoints[mine.client._current])
        etcd_cluster.stop_member(watched)
        try:
            later = [there.create(k.TENANT, o.Tenant(name=f"t{i}"))["revision"] for i in range(5)]
            deadline = time.monotonic() + 10
            while len(got) < 6 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            etcd_cluster.start_member(watched)
        assert [c.revision for c in got[1:]] == later
        assert follower.streams > streams
    finally:
        follower.stop()
        mine.close()
        other.close()


def test_a_burst_of_endpoint_statuses_is_split_under_etcds_default_operations_limit() -> None:
    """Agents report statuses by the thousand while hosts start; on a cluster with etcd's default
    of 128 operations per transaction the registry's batch writer must split them, not fail."""
    with EtcdCluster(size=1, max_txn_ops=128) as cluster:
        store = EtcdStore(cluster.endpoints, prefix=etcd_prefix())
        authority = Authority(store)
        setup_tenant(authority)
        for i in range(200):
            authority.create(k.ENDPOINT, endpoint(f"e{i}", f"10.0.1.{i + 1}"))
        states = EndpointStateWriter(authority)

        async def report() -> list[bool]:
            done = [
                states.queue(EndpointState("acme", f"e{i}", host="h1", status="ACTIVE")) for i in range(200)
            ]
            await states.idle()
            return [f.result() for f in done]

        assert asyncio.run(report()) == [True] * 200
        found, _ = authority.list(k.ENDPOINT, "acme")
        assert {(e["host"], e["status"]) for e in found} == {("h1", "ACTIVE")}
        store.close()
