"""``policyfabric migrate``: a whole store copied from SQLite to a real 3-member etcd cluster and
back, read through REST by an authority on each side, identical (ids, revisions, VNIs, the change
log); a copy run again writes nothing; a copy cut off half way is refused by the authority and
cleared by the next copy; a target holding something else is refused."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from policyfabric.cli.main import app
from policyfabric.client import Client
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.model import kinds as k
from policyfabric.store.dump import EtcdSide, MigrationError, SqliteSide, migrate
from policyfabric.store.etcd import EtcdStore
from policyfabric.store.etcd_client import Unreachable, b64
from policyfabric.store.sqlite import SqliteStore
from tests.conftest import apply_scenario, etcd_prefix

pytestmark = [
    pytest.mark.integration,  # etcd members and authorities are processes
    pytest.mark.xdist_group("etcd"),
    pytest.mark.skipif(etcd_missing() is not None, reason=str(etcd_missing())),
]

DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"


def everything(server: AuthorityProcess) -> dict[str, Any]:
    """What an authority serves: every object of every kind, the revision, the change log."""
    with Client(server.url) as client:
        seen: dict[str, Any] = {kind.collection: client.list(kind) for kind in k.ORDER}
        seen["revision"] = client.revision()
        seen["changes"] = client.changes(0, 10_000)
    return seen


def cli_migrate(source: str, target: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``policyfabric migrate`` as an operator runs it (a process of its own)."""
    return subprocess.run(
        [sys.executable, "-m", "policyfabric", "migrate", "--from", source, "--to", target, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def migrate_here(source: str, target: str, *extra: str) -> Result:
    """The same command run in this process (a second's start-up less each)."""
    return CliRunner().invoke(app, ["migrate", "--from", source, "--to", target, *extra])


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite store with the demo declared, an object changed and one deleted (the change log
    then has every op), its authority stopped: what an operator migrates."""
    server = authority_in(tmp_path_factory.mktemp("sqlite"))
    with server:
        apply_scenario(server, DEMO)
        with Client(server.url) as client:
            web = client.list(k.ENDPOINT_GROUP, "acme", "web")[0]
            body = {key: v for key, v in web.items() if key not in ("id", "revision")}
            client.replace(k.ENDPOINT_GROUP, web["id"], {**body, "intra_group": "deny"})
            app3 = client.list(k.ENDPOINT, "acme", "app3")[0]
            client.delete(k.ENDPOINT, app3["id"])
    return server.db


@pytest.fixture
def sqlite_copy(demo_db: Path, tmp_path: Path) -> Path:
    """A copy of it for one test (SQLite's backup: the WAL's pages included)."""
    path = tmp_path / "source.db"
    with sqlite3.connect(demo_db) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    return path


@pytest.fixture
def started() -> Iterator[list[AuthorityProcess]]:
    """Authorities a test starts, killed after it."""
    servers: list[AuthorityProcess] = []
    yield servers
    for server in servers:
        server.kill()


def test_sqlite_to_etcd_and_back_reads_identical_through_rest(
    etcd_cluster: EtcdCluster, sqlite_copy: Path, tmp_path: Path, started: list[AuthorityProcess]
) -> None:
    on_sqlite = authority_in(tmp_path / "before")
    on_sqlite.db = sqlite_copy
    started.append(on_sqlite.start())
    before = everything(on_sqlite)
    on_sqlite.stop()  # offline: nothing writes during the copy
    assert before[k.ENDPOINT.collection] and before["changes"]["changes"]

    url = etcd_cluster.url + etcd_prefix()
    # 16 operations a transaction: the demo takes many batches, so the marker path runs
    copied = cli_migrate(f"sqlite:{sqlite_copy}", url, "--batch-ops", "16")
    assert copied.returncode == 0, copied.stderr
    assert "read back: identical" in copied.stdout
    again = migrate_here(f"sqlite:{sqlite_copy}", url, "--batch-ops", "16")
    assert again.exit_code == 0, again.stderr
    assert "nothing written" in again.stdout

    on_etcd = authority_in(tmp_path / "etcd", extra=["--store", url])
    started.append(on_etcd.start())
    assert everything(on_etcd) == before
    # the sequences came along: a new bridge domain gets a VNI no copied one has
    with Client(on_etcd.url) as client:
        used = {bd["vni"] for bd in before[k.BRIDGE_DOMAIN.collection]}
        used |= {vrf["vni"] for vrf in before[k.L3_CONTEXT.collection]}
        new = client.create(k.BRIDGE_DOMAIN, {"tenant": "acme", "name": "bd-new", "l3_context": "vrf1"})
        assert new["vni"] not in used
        assert new["revision"] == before["revision"] + 1
    after = everything(on_etcd)
    busy = migrate_here(url, f"sqlite:{tmp_path / 'busy.db'}")
    assert busy.exit_code == 1 and "stop them first" in busy.stderr  # the authority runs on it
    on_etcd.stop()

    back = tmp_path / "back.db"
    returned = migrate_here(url, f"sqlite:{back}")
    assert returned.exit_code == 0, returned.stderr
    on_sqlite_again = authority_in(tmp_path / "after")
    on_sqlite_again.db = back
    started.append(on_sqlite_again.start())
    assert everything(on_sqlite_again) == after


class FailingTxns:
    """The etcd client, except that every transaction after the first ``allowed`` fails as when
    the cluster loses its quorum (the copy is then cut off half way)."""

    def __init__(self, client: Any, allowed: int) -> None:
        self.client, self.allowed = client, allowed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def txn(self, *args: Any, **kwargs: Any) -> Any:
        if self.allowed <= 0:
            raise Unreachable("no etcd member answered (injected)")
        self.allowed -= 1
        return self.client.txn(*args, **kwargs)


def test_a_copy_cut_off_half_way_is_refused_by_the_authority_and_redone(
    etcd_cluster: EtcdCluster, sqlite_copy: Path, tmp_path: Path, started: list[AuthorityProcess]
) -> None:
    prefix = etcd_prefix()
    url = etcd_cluster.url + prefix
    store = EtcdStore(etcd_cluster.endpoints, prefix=prefix)
    target = EtcdSide(store, batch_ops=16)
    etcd = store.client
    store.client = FailingTxns(etcd, allowed=3)  # type: ignore[assignment]
    source = SqliteSide(sqlite_copy, source=True)
    try:
        with pytest.raises(MigrationError, match="partial copy"):
            migrate(source, target)
        assert target.marker() is not None
        assert target.count() > 3 * 10  # three batches are there

        refused = authority_in(tmp_path / "refused", extra=["--store", url])
        started.append(refused)
        with pytest.raises(RuntimeError):
            refused.start(timeout=20)
        assert "unfinished copy" in refused.log.read_text()

        store.client = etcd  # etcd answers again
        outcome = migrate(source, target)
        assert outcome.copied and outcome.cleared_partial
        assert target.marker() is None
        expected = source.read()
    finally:
        source.close()
        target.close()

    on_etcd = authority_in(tmp_path / "etcd", extra=["--store", url])
    started.append(on_etcd.start())
    with Client(on_etcd.url) as client:
        assert client.revision() == expected.revision
        ids = {o["id"] for kind in k.ORDER for o in client.list(kind)}
    assert ids == set(expected.records)


def test_a_target_holding_something_else_is_refused_and_left_alone(
    etcd_cluster: EtcdCluster, sqlite_copy: Path, tmp_path: Path
) -> None:
    url = etcd_cluster.url + etcd_prefix()
    assert migrate_here(f"sqlite:{sqlite_copy}", url).exit_code == 0
    other = tmp_path / "other.db"
    SqliteStore(other).close()  # an empty store: not what the target holds
    refused = migrate_here(f"sqlite:{other}", url)
    assert refused.exit_code == 1
    assert "never merges" in refused.stderr
    # the target is as it was: copied out again, it is the demo
    back = tmp_path / "back.db"
    assert migrate_here(url, f"sqlite:{back}").exit_code == 0
    source, copy = SqliteSide(sqlite_copy, source=True), SqliteSide(back, source=True)
    try:
        assert source.read().same(copy.read())
    finally:
        source.close()
        copy.close()
    # an SQLite target holding something else is refused as well
    refused_sqlite = migrate_here(f"sqlite:{other}", f"sqlite:{back}")
    assert refused_sqlite.exit_code == 1
    assert "never merges" in refused_sqlite.stderr


def test_a_refused_copy_into_a_new_sqlite_file_leaves_no_file(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    """An empty database left behind would be taken for a store (an authority would start on it
    with nothing): a copy refused before writing creates no file, one that fails removes it."""
    url = etcd_cluster.url + etcd_prefix()
    store = EtcdStore.from_url(url)
    try:  # a copy into this prefix was cut off: as a source it is refused
        store.transact([], [{"request_put": {"key": b64(store.key("migration")), "value": b64(b"x")}}],
                       idempotent=True)  # fmt: skip
    finally:
        store.close()
    target = tmp_path / "new.db"
    refused = migrate_here(url, f"sqlite:{target}")
    assert refused.exit_code == 1
    assert "unfinished copy" in refused.stderr
    assert not target.exists()

    class Failing(SqliteSide):
        def _write(self, *args: Any) -> None:
            assert self.path.exists()  # made for the copy...
            raise MigrationError("cut off")

    side = Failing(target, source=False)
    with pytest.raises(MigrationError):
        side.write(SqliteSide(target, source=False).read(), lambda done, total: None)
    side.close()
    assert not target.exists()  # ...and removed with it
