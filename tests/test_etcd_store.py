"""The etcd store on a real 3-member etcd cluster (``policyfabric.lab.etcd``): what SQLite cannot
show. Two stores on one cluster (two "replicas") see each other's writes at once and never both
win a claim; a member down changes nothing; all members down is a 503 in the error shape, and
everything resumes when etcd returns; a write over etcd's limits is a 413 naming them, with
nothing written; a commit whose answer is lost is resolved, never applied twice; TLS towards etcd.

The API suites (tests/test_api_*.py) and test_durability.py also run on etcd (conftest.STORES).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trustme
from fastapi.testclient import TestClient

from policyfabric.authority.api import create_app
from policyfabric.authority.service import Authority
from policyfabric.lab.authority import authority_in
from policyfabric.lab.etcd import EtcdCluster, EtcdTls
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.model import kinds as k
from policyfabric.model import objects as o
from policyfabric.model.errors import Conflict, InUse, Invalid, NotFound
from policyfabric.model.rules import Claim
from policyfabric.store.base import Record, StoreUnavailable, TxnTooLarge, WriteConflict
from policyfabric.store.etcd import EtcdStore
from policyfabric.store.etcd_client import Ambiguous, ClientTls, EtcdClient
from tests.conftest import Api, error, etcd_prefix

pytestmark = [
    pytest.mark.integration,  # etcd clusters are processes
    pytest.mark.xdist_group("etcd"),  # one worker: the module's own clusters start once
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[EtcdCluster]:
    """A cluster of this module's own, with etcd's default limits (128 operations, 1.5 MiB per
    request), for the tests that stop its members."""
    with EtcdCluster(max_txn_ops=128, max_request_bytes=3 * (1 << 19)) as cluster:
        yield cluster


def two_replicas(cluster: EtcdCluster) -> tuple[EtcdStore, EtcdStore]:
    prefix = etcd_prefix()
    return EtcdStore(cluster.endpoints, prefix=prefix), EtcdStore(cluster.endpoints, prefix=prefix)


def setup_tenant(authority: Authority, tenant: str = "acme") -> None:
    authority.create(k.TENANT, o.Tenant(name=tenant))
    authority.create(k.L3_CONTEXT, o.L3Context(name="vrf1", tenant=tenant))
    authority.create(k.BRIDGE_DOMAIN, o.BridgeDomain(name="bd", tenant=tenant, l3_context="vrf1"))
    authority.create(
        k.SUBNET,
        o.Subnet.model_validate(
            {"name": "s", "tenant": tenant, "bridge_domain": "bd", "cidr": "10.0.0.0/16"}
        ),
    )
    authority.create(k.ENDPOINT_GROUP, o.EndpointGroup(name="g", tenant=tenant, bridge_domain="bd"))


def endpoint(name: str, ip: str, tenant: str = "acme") -> o.Spec:
    return o.Endpoint.model_validate({"name": name, "tenant": tenant, "epg": "g", "ip": ip})


# ---- two stores on one cluster: two replicas of the authority


def test_a_write_through_one_store_is_read_at_once_through_another(etcd_cluster: EtcdCluster) -> None:
    store_a, store_b = two_replicas(etcd_cluster)
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    made = a.create(k.CONTRACT, o.Contract(name="web", tenant="acme"))
    assert b.get(k.CONTRACT, made["id"]) == made  # no delay: reads are linearizable
    assert b.revision() == a.revision() == made["revision"]
    # b deletes what it has cached; a, whose cache still holds it, sees it gone at once
    b.delete(k.CONTRACT, made["id"])
    with pytest.raises(NotFound):
        a.get(k.CONTRACT, made["id"])
    with pytest.raises(NotFound):  # a write from a's stale cache is run again, not answered from it
        a.delete(k.CONTRACT, made["id"])
    again = a.create(k.CONTRACT, o.Contract(name="web", tenant="acme"))  # the name is free again
    assert b.list(k.CONTRACT, "acme")[0] == [again]
    assert [c.op for c in b.changes(0).changes[-3:]] == ["create", "delete", "create"]
    store_a.close()
    store_b.close()


def test_a_refusal_answered_from_a_stale_cache_is_checked_first(etcd_cluster: EtcdCluster) -> None:
    """a's cache says the name is taken; b deleted it meanwhile: a's create must succeed, not 409."""
    store_a, store_b = two_replicas(etcd_cluster)
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    first = a.create(k.CONTRACT, o.Contract(name="web", tenant="acme"))
    b.delete(k.CONTRACT, first["id"])
    second = a.create(k.CONTRACT, o.Contract(name="web", tenant="acme"))
    assert second["id"] != first["id"] and second["revision"] == first["revision"] + 2
    # and a replace that changes nothing (no commit) is not answered from the stale cache either
    b.replace(k.CONTRACT, second["id"], o.Contract(name="web", tenant="acme", rules=[]))
    b.delete(k.CONTRACT, second["id"])
    with pytest.raises(NotFound):
        a.replace(k.CONTRACT, second["id"], o.Contract(name="web", tenant="acme"))
    store_a.close()
    store_b.close()


def test_interleaved_transactions_on_two_stores_the_later_commit_loses(etcd_cluster: EtcdCluster) -> None:
    store_a, store_b = two_replicas(etcd_cluster)
    ip = Claim("ip/acme/vrf1/10.0.0.5", "ip", "address 10.0.0.5")
    with pytest.raises(WriteConflict), store_a.write() as txn_a:
        assert txn_a.claim_holder(ip.key) is None
        rev = txn_a.next_revision()
        with store_b.write() as txn_b:  # b commits first, the same claim
            assert txn_b.claim_holder(ip.key) is None
            txn_b.put(Record("endpoint", "id-b", "acme", "b", txn_b.next_revision(), {}), [ip], "create")
        txn_a.put(Record("endpoint", "id-a", "acme", "a", rev, {}), [ip], "create")
    with store_a.read() as txn:
        assert txn.claim_holder(ip.key) == "id-b" and txn.get("id-a") is None and txn.revision() == 1
    store_a.close()
    store_b.close()


def test_two_replicas_racing_for_the_same_addresses_exactly_one_wins_each(etcd_cluster: EtcdCluster) -> None:
    store_a, store_b = two_replicas(etcd_cluster)
    replicas = [Authority(store_a), Authority(store_b)]
    setup_tenant(replicas[0])
    conflicts = count_conflicts([store_a, store_b])
    rounds = 15
    results: dict[int, list[str]] = {i: [] for i in range(rounds)}

    def racer(who: int) -> None:
        for i in range(rounds):
            barrier.wait()
            try:
                replicas[who].create(k.ENDPOINT, endpoint(f"e{i}-{who}", f"10.0.1.{i + 1}"))
                results[i].append("won")
            except Conflict:
                results[i].append("lost")

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=racer, args=(who,)) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(sorted(r) == ["lost", "won"] for r in results.values()), results
    found, _ = replicas[1].list(k.ENDPOINT, "acme")
    assert sorted(e["ip"][0] for e in found) == sorted(f"10.0.1.{i + 1}" for i in range(rounds))
    assert conflicts[0] > 0, "the two replicas never raced: the test proved nothing"
    store_a.close()
    store_b.close()


def test_two_replicas_cannot_skew_a_delete_and_a_dependent_create(etcd_cluster: EtcdCluster) -> None:
    """Write skew, the anomaly a per-claim check alone lets through: a deletes a subnet (it saw no
    endpoint in it) while b creates an endpoint in it (it saw the subnet). One must lose."""
    store_a, store_b = two_replicas(etcd_cluster)
    a, b = Authority(store_a), Authority(store_b)
    setup_tenant(a)
    conflicts = count_conflicts([store_a, store_b])
    for n in range(1, 11):
        subnet = o.Subnet.model_validate(
            {"name": f"r{n}", "tenant": "acme", "bridge_domain": "bd", "cidr": f"10.{n}.0.0/16"}
        )
        made = a.create(k.SUBNET, subnet)
        deleted, created = race(
            partial(a.delete, k.SUBNET, made["id"]),
            partial(b.create, k.ENDPOINT, endpoint(f"ep{n}", f"10.{n}.0.5")),
        )
        # the delete won (the endpoint has no subnet), or the create did (the subnet is in use)
        if isinstance(deleted, InUse):
            assert isinstance(created, dict), created
        else:
            assert isinstance(deleted, tuple) and isinstance(created, Invalid), (deleted, created)
    subnets = {s["name"] for s in b.list(k.SUBNET, "acme")[0]}
    eps = {e["name"] for e in a.list(k.ENDPOINT, "acme")[0]}
    assert all((f"r{n}" in subnets) == (f"ep{n}" in eps) for n in range(1, 11))
    assert conflicts[0] > 0, "the two replicas never raced: the test proved nothing"
    store_a.close()
    store_b.close()


def race(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` at once (their threads released together): each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the outcome under test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def count_conflicts(stores: list[EtcdStore]) -> list[int]:
    """Counts the commits that lost to the other store (the race was real)."""
    counter = [0]
    for store in stores:
        commit = store._commit

        def counting(txn: Any, commit: Callable[[Any], bool] = commit) -> bool:
            try:
                return commit(txn)
            except WriteConflict:
                counter[0] += 1
                raise

        store._commit = counting  # type: ignore[method-assign]
    return counter


# ---- a commit whose answer is lost


def lose_answer(store: EtcdStore, *, apply: bool) -> list[int]:
    """The next commit (a txn with a compare) fails as if the member died after (``apply``) or
    before it was applied; its answer never arrives either way."""
    real = store.client.txn
    done = [0]

    def txn(compare: list[dict[str, Any]], success: list[dict[str, Any]], *args: Any, **kw: Any) -> Any:
        if compare and not done[0] and len(success) > 1:  # a commit, not the fence
            done[0] += 1
            if apply:
                real(compare, success, *args, **kw)
            raise Ambiguous("connection reset (test)")
        return real(compare, success, *args, **kw)

    store.client.txn = txn  # type: ignore[method-assign]
    return done


@pytest.mark.parametrize("applied", [True, False], ids=["applied", "not-applied"])
def test_a_commit_whose_answer_is_lost_is_resolved_never_doubled(
    etcd_cluster: EtcdCluster, applied: bool
) -> None:
    store = EtcdStore(etcd_cluster.endpoints, prefix=etcd_prefix())
    authority = Authority(store)
    authority.create(k.TENANT, o.Tenant(name="acme"))
    before = authority.revision()
    lost = lose_answer(store, apply=applied)
    made = authority.create(k.CONTRACT, o.Contract(name="web", tenant="acme"))
    assert lost == [1]
    assert made["revision"] == before + 1 == authority.revision()  # once, whichever way it went
    found, _ = authority.list(k.CONTRACT, "acme")
    assert [c["id"] for c in found] == [made["id"]]
    store.close()


# ---- members down


def leader(cluster: EtcdCluster) -> int:
    """The index of the member that leads the cluster now."""
    with cluster.http_client() as http:
        status = {
            i: http.post(f"http://{m.endpoint}/v3/maintenance/status", json={}).json()
            for i, m in enumerate(cluster.members)
            if m.running
        }
    by_id = {s["header"]["member_id"]: i for i, s in status.items()}
    return by_id[next(iter(status.values()))["leader"]]


@pytest.fixture
def rest(own_cluster: EtcdCluster) -> Iterator[Api]:
    store = EtcdStore(own_cluster.endpoints, prefix=etcd_prefix(), timeout=3.0)
    with TestClient(create_app(Authority(store)), raise_server_exceptions=False) as client:
        yield Api(str(client.base_url), client)
    store.close()


def test_writes_go_on_with_one_member_down_even_the_leader(own_cluster: EtcdCluster, rest: Api) -> None:
    rest.ok("tenants", {"name": "acme"})
    # the leader (a commit in flight then times out and is resolved), then a follower
    for round in ("leader", "follower"):
        victim = leader(own_cluster)
        if round == "follower":
            victim = (victim + 1) % len(own_cluster.members)
        own_cluster.stop_member(victim)
        try:
            made = [rest.ok("contracts", {"name": f"{round}-{i}", "tenant": "acme"}) for i in range(5)]
            assert rest.get(f"/v1/contracts/{made[-1]['id']}").status_code == 200
        finally:
            own_cluster.start_member(victim)
    found = rest.get("/v1/contracts", tenant="acme").json()["items"]
    assert sorted(c["revision"] for c in found) == list(range(2, 12))  # each write once


def test_all_members_down_is_a_503_then_everything_resumes(own_cluster: EtcdCluster, rest: Api) -> None:
    rest.ok("tenants", {"name": "acme"})
    kept = rest.ok("contracts", {"name": "kept", "tenant": "acme"})
    for i in range(len(own_cluster.members)):
        own_cluster.stop_member(i)
    try:
        for r in (
            rest.post("contracts", {"name": "lost", "tenant": "acme"}),
            rest.get("/v1/contracts", tenant="acme"),
            rest.get(f"/v1/contracts/{kept['id']}"),
            rest.get("/v1/revision"),
            rest.post("batch", {"create": [{"kind": "contract", "object": {"name": "b", "tenant": "acme"}}]}),
        ):
            assert r.status_code == 503, r.text
            assert error(r)["code"] == "unavailable" and "etcd cannot be reached" in error(r)["message"]
            assert r.headers["retry-after"] == "1"
    finally:
        own_cluster.start_members(timeout=60)
    assert rest.get(f"/v1/contracts/{kept['id']}").json() == kept
    rest.ok("contracts", {"name": "after", "tenant": "acme"})
    names = {c["name"] for c in rest.get("/v1/contracts", tenant="acme").json()["items"]}
    assert names == {"kept", "after"}  # nothing of what was refused was written


def test_quorum_lost_is_a_503_not_a_hang(own_cluster: EtcdCluster, rest: Api) -> None:
    rest.ok("tenants", {"name": "acme"})
    own_cluster.stop_member(1)
    own_cluster.stop_member(2)
    try:
        r = rest.post("contracts", {"name": "c", "tenant": "acme"})  # one member left: no leader
        # the commit reached that member, which timed out: it may still apply (not "unavailable",
        # which says nothing was sent), so the error says to read before retrying
        assert r.status_code == 503 and error(r)["code"] == "outcome_unknown", r.text
        assert "outcome of this write is unknown" in error(r)["message"]
        assert "read the object back before writing it again" in error(r)["message"]
        assert r.headers["retry-after"] == "1"
    finally:
        own_cluster.start_members([1, 2], timeout=60)
    # as the error said: its proposal may have been committed once the quorum came back. So the
    # write is retried, and it is there either way.
    again = rest.post("contracts", {"name": "c", "tenant": "acme"})
    assert again.status_code == 201 or (again.status_code == 409 and error(again)["code"] == "conflict"), (
        again.text
    )
    assert rest.find("contracts", "acme", "c") is not None


# ---- etcd's limits


def test_a_batch_over_etcds_operations_limit_is_a_413_naming_it(own_cluster: EtcdCluster, rest: Api) -> None:
    rest.ok("tenants", {"name": "acme"})
    before = rest.revision()
    items = [{"kind": "contract", "object": {"name": f"c{i}", "tenant": "acme"}} for i in range(100)]
    r = rest.post("batch", {"create": items})  # ~200 operations in one transaction: over 128
    assert r.status_code == 413, r.text
    err = error(r)
    assert (
        err["code"] == "too_large"
        and "--max-txn-ops" in err["message"]
        and "nothing was written" in err["message"]
    )
    assert rest.revision() == before and rest.get("/v1/contracts", tenant="acme").json()["items"] == []
    assert rest.post("batch", {"create": items[:40]}).status_code == 201  # under it: one transaction


@pytest.mark.parametrize("size", [1_700_000, 5_000_000], ids=["over-max-request-bytes", "over-grpc-max"])
def test_a_write_over_etcds_request_size_is_refused_whole(own_cluster: EtcdCluster, size: int) -> None:
    store = EtcdStore(own_cluster.endpoints, prefix=etcd_prefix())
    with pytest.raises(TxnTooLarge, match="--max-request-bytes"), store.write() as txn:
        rev = txn.next_revision()
        txn.put(Record("contract", "id-a", "acme", "a", rev, {"blob": "x" * 1000}), [], "create")
        txn.put(Record("contract", "id-b", "acme", "b", rev, {"blob": "x" * size}), [], "create")
    with store.read() as txn:
        assert txn.revision() == 0 and txn.get("id-a") is None
    store.close()


# ---- TLS towards etcd, and the command line


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EtcdCluster, Path]]:
    """One member serving clients over TLS, asking for a client certificate of our CA."""
    where = tmp_path_factory.mktemp("etcd-tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(where / "server.pem"))
    server.private_key_pem.write_to_path(str(where / "server.key"))
    client = ca.issue_cert("policyfabric-authority")
    client.cert_chain_pems[0].write_to_path(str(where / "client.pem"))
    client.private_key_pem.write_to_path(str(where / "client.key"))
    tls = EtcdTls(where / "ca.pem", where / "server.pem", where / "server.key", client_cert_auth=True)
    with EtcdCluster(size=1, tls=tls) as cluster:
        yield cluster, where


def test_the_store_over_tls_with_a_client_certificate(tls_cluster: tuple[EtcdCluster, Path]) -> None:
    cluster, where = tls_cluster
    good = ClientTls(where / "ca.pem", where / "client.pem", where / "client.key")
    store = EtcdStore(cluster.endpoints, prefix=etcd_prefix(), tls=good)
    Authority(store).create(k.TENANT, o.Tenant(name="acme"))
    assert store.ping() == 1
    store.close()
    anonymous = EtcdStore(cluster.endpoints, prefix=etcd_prefix(), tls=ClientTls(where / "ca.pem"), timeout=2)
    with pytest.raises(StoreUnavailable):  # no client certificate: the member refuses the handshake
        anonymous.ping()
    anonymous.close()
    with pytest.raises(ValueError, match="needs its key"):
        EtcdClient(cluster.endpoints, ClientTls(where / "ca.pem", where / "client.pem"))


def test_authority_command_on_etcd_over_tls(tls_cluster: tuple[EtcdCluster, Path], tmp_path: Path) -> None:
    cluster, where = tls_cluster
    options = ["--etcd-cacert", str(where / "ca.pem"), "--etcd-cert", str(where / "client.pem")]
    options += ["--etcd-key", str(where / "client.key")]
    server = authority_in(tmp_path / "authority", extra=["--store", cluster.url + etcd_prefix(), *options])
    with server:
        api = Api(server.url)
        api.ok("tenants", {"name": "acme"})
        assert api.revision() == 1
        api.http.close()
    log = server.log.read_text()
    assert "store etcd etcd://" in log and "policyfabric.db" not in log


def test_authority_command_refuses_a_bad_or_unreachable_store(tmp_path: Path) -> None:
    def start(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "policyfabric", "authority", "--opflex-listen", "off", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    bad = start("--store", "etcd://nowhere")
    assert bad.returncode == 1 and "not HOST:PORT" in bad.stderr and "Traceback" not in bad.stderr
    other = start("--store", "sqlite:///x.db")
    assert (
        other.returncode == 1
        and "is not etcd://HOST:PORT" in other.stderr
        and "Traceback" not in other.stderr
    )
    down = start("--store", "etcd://127.0.0.1:9")
    assert (
        down.returncode == 1 and "cannot use the etcd store" in down.stderr and "Traceback" not in down.stderr
    )
    stray = start("--db", str(tmp_path / "x.db"), "--etcd-cacert", str(tmp_path / "ca.pem"))
    assert stray.returncode == 1 and "go with --store" in stray.stderr
