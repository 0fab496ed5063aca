"""``GET /v1/events`` against a real authority process: resuming without loss, scoping, a slow
consumer cut, and the client's parser (``client/events.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policyfabric.authority.auth import Principal
from policyfabric.authority.events import Hub
from policyfabric.authority.service import Authority
from policyfabric.client import Client
from policyfabric.client.events import ServerEvent, follow, parse
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.store.sqlite import SqliteStore
from tests.conftest import STORES, open_store

pytestmark = pytest.mark.integration  # starts authority processes


def test_parse_keeps_ids_only_where_sent_and_skips_comments() -> None:
    lines = [": hello", "", "event: change", 'data: {"revision": 3}', "", "id: 3", "event: status"]
    lines += ['data: {"revision": 3}', "", ": heartbeat", ""]
    found = list(parse(lines))
    assert found == [ServerEvent("change", {"revision": 3}, None), ServerEvent("status", {"revision": 3}, 3)]


class Reader:
    """Events of one stream, read in a thread into a queue (the test never blocks on the socket)."""

    def __init__(self, url: str, since: int | None = None, token: str = "") -> None:
        self.events: queue.Queue[ServerEvent | BaseException] = queue.Queue()
        self.client = Client(url, token=token)
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(since,), daemon=True)
        self.thread.start()
        assert self.opened.wait(10)

    def _run(self, since: int | None) -> None:
        try:
            with follow(self.client, since) as events:
                self.opened.set()
                for event in events:
                    self.events.put(event)
        except BaseException as exc:  # closed by the test, or a failure it reports
            self.opened.set()
            self.events.put(exc)

    def until(self, revision: int, timeout: float = 15.0) -> list[ServerEvent]:
        """Every event up to the one whose id is ``revision`` (or later)."""
        got: list[ServerEvent] = []
        deadline = time.monotonic() + timeout
        while True:
            item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, BaseException):
                raise item
            got.append(item)
            if item.id is not None and item.id >= revision:
                return got

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AuthorityProcess]:
    process = authority_in(tmp_path / "authority", extra=["--events-window", "300"])
    try:
        yield process.start()
    finally:
        process.kill()


def tenant_with_endpoints(tenant: str, count: int, first: int = 0) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if first == 0:
        items += [
            {"op": "create", "kind": "tenants", "object": {"name": tenant}},
            {"op": "create", "kind": "l3-contexts", "object": {"name": "vrf", "tenant": tenant}},
            {
                "op": "create",
                "kind": "bridge-domains",
                "object": {"name": "bd", "tenant": tenant, "l3_context": "vrf"},
            },
            {
                "op": "create",
                "kind": "subnets",
                "object": {"name": "s", "tenant": tenant, "bridge_domain": "bd", "cidr": "10.0.0.0/16"},
            },
            {
                "op": "create",
                "kind": "epgs",
                "object": {"name": "web", "tenant": tenant, "bridge_domain": "bd"},
            },
        ]
    for i in range(first, first + count):
        ip = f"10.0.{1 + i // 250}.{1 + i % 250}"
        body = {"name": f"ep{i}", "tenant": tenant, "epg": "web", "ip": ip}
        items.append({"op": "create", "kind": "endpoints", "object": body})
    return items


def changes_of(events: list[ServerEvent]) -> list[tuple[int, str, str, str]]:
    return [
        (e.data["revision"], e.data["kind"], e.data["name"], e.data["op"])
        for e in events
        if e.name == "change"
    ]


def test_a_stream_resumes_from_a_revision_without_loss(server: AuthorityProcess) -> None:
    client = Client(server.url)
    start = client.revision()
    live = Reader(server.url)  # from now on: served from the window as commits land
    client.batch(tenant_with_endpoints("acme", 3))
    written = [start + 1]
    for i in range(3):  # one revision each, and one update
        client.batch(tenant_with_endpoints("acme", 1, first=10 + i))
        written.append(client.revision())
    ep = client.list(_kind("endpoints"), "acme", "ep0")[0]
    client.replace(_kind("endpoints"), ep["id"], {**_spec(ep), "ip": ["10.0.9.9"]}, ep["revision"])
    gone = client.list(_kind("endpoints"), "acme", "ep11")[0]
    last = client.delete(_kind("endpoints"), gone["id"])["revision"]

    seen_live = live.until(last)
    replayed = Reader(server.url, since=start)  # from the change log, then the window
    seen_again = replayed.until(last)
    log = [(c["revision"], c["kind"], c["name"], c["op"]) for c in client.changes(start, 10_000)["changes"]]
    assert changes_of(seen_live) == log
    assert changes_of(seen_again) == log
    # the id is the revision, on the last event of each revision only
    ids = [e.id for e in seen_again if e.id is not None]
    assert ids == sorted({c[0] for c in log})
    first_batch = [e for e in seen_again if e.data["revision"] == start + 1]
    assert len(first_batch) == 8 and [e.id for e in first_batch][-1] == start + 1
    assert all(e.id is None for e in first_batch[:-1])
    # what changed, as the authority now has it; a delete carries no object
    update = next(e for e in seen_again if e.name == "change" and e.data["op"] == "update")
    assert update.data["object"]["ip"] == ["10.0.9.9"] and update.data["tenant"] == "acme"
    delete = next(e for e in seen_again if e.name == "change" and e.data["op"] == "delete")
    assert delete.data["object"] is None and delete.data["name"] == "ep11"

    # resuming in the middle (Last-Event-ID, as a browser does) gives exactly the rest
    middle = written[2]
    with Client(server.url) as resumer:
        response = resumer.http.stream(
            "GET", "/v1/events", headers={"Last-Event-ID": str(middle)}, params={"since": 0}
        )
        with response as r:
            rest = []
            for event in parse(r.iter_lines()):
                rest.append(event)
                if event.id == last:
                    break
    assert changes_of(rest) == [c for c in log if c[0] > middle]
    for reader in (live, replayed):
        reader.close()
    client.close()


def _kind(name: str) -> Any:
    from policyfabric.model import kinds

    kind = kinds.lookup(name)
    assert kind is not None
    return kind


def _spec(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("id", "revision", "status", "applied_by")}


def test_a_member_token_sees_only_its_tenant(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    admin, member = "admin-0123456789abcdef", "member-acme-0123456789"
    tokens.write_text(
        yaml.safe_dump(
            {
                "tokens": [
                    {"token": admin, "role": "admin", "name": "ops"},
                    {"token": member, "role": "member", "tenant": "acme", "name": "acme"},
                ]
            }
        )
    )
    tokens.chmod(0o600)
    process = authority_in(tmp_path / "authority", extra=["--tokens", str(tokens)], token=admin)
    try:
        process.start()
        ops = Client(process.url, token=admin)
        start = ops.revision()
        mine = Reader(process.url, since=start, token=member)
        everything = Reader(process.url, since=start, token=admin)
        ops.batch(tenant_with_endpoints("beta", 2))
        ops.batch(tenant_with_endpoints("acme", 2))
        last = ops.revision()
        ops.batch(tenant_with_endpoints("beta", 1, first=5))
        final = ops.revision()
        seen = mine.until(last)
        assert {e.data["tenant"] or e.data["name"] for e in seen if e.name == "change"} == {"acme"}
        assert [e.id for e in seen if e.id is not None] == [last]  # beta's revision is not even hinted
        all_seen = everything.until(final)
        assert {e.data["tenant"] or e.data["name"] for e in all_seen if e.name == "change"} == {
            "acme",
            "beta",
        }
        # replayed from the log, the same scope
        replay = Reader(process.url, since=start, token=member)
        assert changes_of(replay.until(last)) == changes_of(seen)
        for reader in (mine, everything, replay):
            reader.close()
        ops.close()
    finally:
        process.kill()


def test_a_slow_consumer_is_cut_and_resumes_without_loss(tmp_path: Path) -> None:
    """In process, so that "slow" does not depend on how much the kernel's socket buffers absorb
    (over 4 MB on loopback): the stream is read one event, then not at all while 12 revisions
    of 40 events land in a window of 100 events, then read again."""
    store = SqliteStore(tmp_path / "policyfabric.db")
    authority = Authority(store)
    hub = Hub(authority, window=100)
    who = Principal("test", "admin")
    batches = 12

    async def run() -> tuple[list[ServerEvent], int]:
        await asyncio.to_thread(_write, authority, tenant_with_endpoints("slow", 1))
        start = authority.revision()
        stream = hub.stream(who, start).__aiter__()
        got = [await stream.__anext__()]  # the opening comment: the client is there, then stalls
        for b in range(batches):
            await asyncio.to_thread(_write, authority, tenant_with_endpoints("slow", 40, first=1 + b * 40))
        last = authority.revision()
        while hub.head < last:  # the follower has read every commit into the window
            await asyncio.sleep(0.01)
        got += [chunk async for chunk in stream]  # it resumes reading: the rest, then the cut
        await hub.stop()
        return list(parse(b"".join(got).decode().split("\n"))), last

    events, last = asyncio.run(run())
    assert events[-1].name == "cut", events[-1]
    resume = events[-1].data["revision"]
    assert "since=" in events[-1].data["message"] and resume < last
    assert len(events) < 100  # it was not handed what fell out of the window
    # the rest, as a reconnect with since=resume gets it: from the change log
    rest = {c.name for c in authority.changes(resume, 10_000).changes}
    before = {e.data["name"] for e in events if e.name == "change"}
    store.close()
    assert before | rest == {f"ep{i}" for i in range(1, 1 + batches * 40)}


def _write(authority: Authority, items: list[dict[str, Any]]) -> None:
    from policyfabric.authority.api import Batch, parse_ops

    authority.batch(parse_ops(Batch.model_validate({"items": items})))


def test_heartbeat_and_events_media_type(server: AuthorityProcess) -> None:
    with Client(server.url) as client, client.http.stream("GET", "/v1/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = next(response.iter_lines())
        assert first.startswith(":")
    bad = Client(server.url).response("GET", "/v1/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and json.loads(bad.text)["error"]["field"] == "Last-Event-ID"


def test_get_watch_prints_a_change_made_by_another_client(server: AuthorityProcess) -> None:
    client = Client(server.url)
    client.batch(tenant_with_endpoints("acme", 1))
    env = {**os.environ, "POLICYFABRIC_URL": server.url, "COLUMNS": "200"}
    env.pop("POLICYFABRIC_TOKEN", None)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "policyfabric", "get", "endpoints", "--tenant", "acme", "-w", "-o", "json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        listed = ""
        while not listed.rstrip().endswith("]"):  # the list first, as -o json prints it
            line = watcher.stdout.readline()
            assert line, watcher.stderr.read() if watcher.stderr else ""
            listed += line
        assert [e["name"] for e in json.loads(listed)] == ["ep0"]
        time.sleep(0.5)  # the stream is open (it starts from the list's revision: nothing is missed)
        client.batch(tenant_with_endpoints("acme", 1, first=7))
        other = client.list(_kind("endpoints"), "acme", "ep0")[0]
        client.delete(_kind("endpoints"), other["id"])
        created = json.loads(watcher.stdout.readline())
        deleted = json.loads(watcher.stdout.readline())
        assert (created["event"], created["op"], created["name"], created["object"]["ip"]) == (
            "change",
            "create",
            "ep7",
            ["10.0.1.8"],
        )
        assert (deleted["op"], deleted["name"], deleted["object"]) == ("delete", "ep0", None)
    finally:
        watcher.kill()
        watcher.wait()
        client.close()


async def _until(stream: Any, revision: int) -> list[ServerEvent]:
    """Read ``stream`` until the event that ends ``revision`` (its ``id:``)."""
    got: list[ServerEvent] = []
    while not got or got[-1].id != revision:
        chunk = await asyncio.wait_for(stream.__anext__(), 15)
        got += list(parse(chunk.decode().split("\n")))
    return got


def _statuses(events: list[ServerEvent]) -> list[tuple[str, str, str | None, str, str | None, int]]:
    return [
        (
            e.data["name"],
            e.data["was_status"],
            e.data["was_host"],
            e.data["status"],
            e.data["host"],
            e.data["revision"],
        )
        for e in events
        if e.name == "status"
    ]


@pytest.mark.parametrize("backend", STORES)
def test_quick_status_transitions_arrive_each_in_order_live_and_resumed(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """What agents' reports do to an endpoint (``set_endpoint_state``, as the OpFlex registry calls
    it): one ``status`` event per transition, in order, even for transitions committed back to back
    (the follower reads them in one page, each object then as it is after the last), the same
    again when a stream resumes from before them (served from the change log), and none for a
    write that leaves status and host as they were."""
    store = open_store(backend, request, tmp_path / "policyfabric.db")
    authority = Authority(store)
    hub = Hub(authority)
    who = Principal("test", "admin")

    async def run() -> tuple[list[ServerEvent], list[ServerEvent], int, int]:
        await asyncio.to_thread(_write, authority, tenant_with_endpoints("acme", 2))
        start = authority.revision()
        stream = hub.stream(who, None).__aiter__()
        await stream.__anext__()  # open: from now on
        # on the loop, not in a thread: the follower cannot read before all four are committed
        authority.set_endpoint_state("acme", "ep0", host="h1", status="BUILD")
        authority.set_endpoint_state("acme", "ep0", status="ACTIVE")
        authority.set_endpoint_state("acme", "ep0", status="DOWN")
        authority.set_endpoint_state("acme", "ep1", interface="tap1")  # no transition
        authority.set_endpoint_state("acme", "ep0", status="ACTIVE")
        last = authority.revision()
        live = await _until(stream, last)
        await hub.stop()
        # a client that saw up to ``start`` reconnects to another hub (a restarted authority): the
        # revisions it missed are older than that hub's window, so they come from the change log
        again = Hub(authority)
        resumed = await _until(again.stream(who, start).__aiter__(), last)
        await again.stop()
        return live, resumed, start, last

    live, resumed, start, last = asyncio.run(run())
    store.close()
    assert last == start + 5
    expected = [
        ("ep0", "DOWN", None, "BUILD", "h1", start + 1),
        ("ep0", "BUILD", "h1", "ACTIVE", "h1", start + 2),
        ("ep0", "ACTIVE", "h1", "DOWN", "h1", start + 3),
        ("ep0", "DOWN", "h1", "ACTIVE", "h1", start + 5),
    ]
    assert _statuses(live) == expected
    assert _statuses(resumed) == expected
    for events in (live, resumed):
        names = [(e.name, e.data["revision"]) for e in events]
        assert names.index(("status", start + 1)) == names.index(("change", start + 1)) + 1  # after it
        assert [e.data["name"] for e in events if e.name == "change"] == ["ep0", "ep0", "ep0", "ep1", "ep0"]
