"""``GET /v1/events``: what changed, as server-sent events, resumable from a revision.

Why a hub and not one store reader per stream: every stream wants the same events. So one
follower per authority reads each new revision once (woken by the commit itself, through
``Authority.listeners``, not by polling), turns it into events, and keeps the last ``window``
events in memory. Each stream reads that window at its own pace:

- a stream that asks for revisions older than the window (``?since=REV`` or ``Last-Event-ID``)
  is served from the change log first (``changelog.read_page``: whole revisions, the token's
  scope), then joins the window: resuming loses no change and no status transition;
- a stream that falls more than the window behind (its client reads slower than the fabric
  changes) is cut with a last ``cut`` event naming the revision to resume from, so one slow
  client never holds memory or slows the others.

Status events come from the change log itself: a change of an endpoint whose status or host
changed is logged with both before and after (``store.base.Transition``, in the write's own
transaction), so the window and a replay from the log give the same ``status`` events, one per
transition, in order. Not by comparing each object as it is when read with what was seen before:
two transitions committed a few milliseconds apart (BUILD -> ACTIVE, ACTIVE -> DOWN) and read in
one page would show as one (BUILD -> DOWN), and a resumed stream would have none. The change
event still carries the object as it is when read (so, in a replay, possibly a later state).

The SSE ``id:`` is the revision, and it is sent on the last event of each revision only: a
client that reconnects with ``Last-Event-ID`` never skips the rest of a revision it saw half of
(one batch is one revision). Agent events (connected, rendered revision) come from the OpFlex
observer, on the event loop; they are live only (not in the change log) and only tokens that
may read agents get them. A comment line every ``heartbeat`` seconds keeps proxies from
closing an idle stream. The follower also looks at the store's revision once a second, for
commits by another process (replicas sharing an etcd store), which no local listener hears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from policyfabric.authority import changelog
from policyfabric.authority.auth import Principal
from policyfabric.authority.service import Authority, render
from policyfabric.model import kinds as k
from policyfabric.store.base import Change, ReadTxn

log = logging.getLogger(__name__)

WINDOW = 10_000  # events kept in memory (whole revisions: one larger than this is kept whole)
HEARTBEAT = 15.0  # seconds between comment lines on an idle stream
RECHECK = 1.0  # seconds between looks at the store's revision (commits no local listener hears)
PAGE = 1000  # changes read from the log per step of a catch-up


@dataclass(frozen=True)
class Event:
    """One event: its SSE name, its JSON data (encoded once, for every stream), and what it is
    about (for scoping). ``revision`` None: not from the change log (agent events)."""

    name: str
    data: str
    revision: int | None
    kind: str
    tenant: str | None
    key: str  # the object's name, or the agent's

    def visible_to(self, who: Principal) -> bool:
        if self.name == "agent":
            return who.tenant is None  # agents span every tenant (as GET /v1/agents)
        return who.sees(self.kind, self.tenant, self.key)


@dataclass
class Entry:
    """The events of one revision (or one agent event), numbered in the order they happened."""

    seq: int
    revision: int | None
    events: list[Event]


def sse(event: Event, revision_id: int | None) -> bytes:
    """One event in the text/event-stream format; ``revision_id``: its ``id:`` line (None: none)."""
    head = f"id: {revision_id}\n" if revision_id is not None else ""
    return f"{head}event: {event.name}\ndata: {event.data}\n\n".encode()


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


Statuses = dict[str, tuple[Any, Any]]  # endpoint id -> (status, host) (by id: a rename keeps it)


def change_events(txn: ReadTxn, changes: list[Change], statuses: Statuses | None = None) -> list[Event]:
    """The events of ``changes`` (whole revisions, oldest first): a ``change`` event each, the
    object as the store has it now (None once deleted), and after the change of an endpoint
    whose status or host changed a ``status`` event, from the transition logged with it (so
    exact, and one per change however quickly they followed: a new endpoint's status is in its
    change event). ``statuses`` (endpoint -> (status, host), for /metrics) is kept up to date."""
    out = []
    for c in changes:
        record = txn.get(c.id) if c.op != "delete" else None
        obj = render(record) if record is not None else None
        body = {"revision": c.revision, "kind": c.kind, "tenant": c.tenant, "name": c.name, "op": c.op}
        out.append(Event("change", _dumps({**body, "object": obj}), c.revision, c.kind, c.tenant, c.name))
        moved = c.transition
        if moved is not None and c.kind == k.ENDPOINT.name:
            status = {"revision": c.revision, "kind": "endpoint", "tenant": c.tenant, "name": c.name}
            status |= {"status": moved.status, "host": moved.host}
            status |= {"was_status": moved.was_status, "was_host": moved.was_host}
            out.append(Event("status", _dumps(status), c.revision, c.kind, c.tenant, c.name))
        if statuses is not None and c.kind == k.ENDPOINT.name:
            if c.op == "delete":
                statuses.pop(c.id, None)
            elif moved is not None:
                statuses[c.id] = (moved.status, moved.host)
            elif obj is not None:  # new, or its status and host unchanged: known already if seen
                statuses.setdefault(c.id, (obj.get("status"), obj.get("host")))
    return out


class AgentFeed(Protocol):
    """What the hub needs of the OpFlex server: to be told when an agent's state changes."""

    def watch_agents(self, callback: Callable[[dict[str, Any]], None]) -> None: ...


@dataclass
class Hub:
    """The follower and the window (see the module's docstring). Started by the first stream."""

    authority: Authority
    agents: AgentFeed | None = None
    window: int = WINDOW
    heartbeat: float = HEARTBEAT
    entries: deque[Entry] = field(default_factory=deque)
    floor: int = 0  # every revision after it is in the window (or not written yet)
    head: int = 0  # the last revision read into the window
    seq: int = 0  # the number of the next entry
    held: int = 0  # events in the window
    statuses: Statuses = field(default_factory=dict)
    started: bool = False
    _ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once start() has read
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _grew: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[None] | None = None
    on_event: Callable[[Event], None] | None = None  # metrics: each event as it enters the window
    # whether the server is stopping: streams end then (the server waits for open responses)
    stopping: Callable[[], bool] = lambda: False

    async def start(self) -> None:
        """Follow the change log from now (idempotent); every endpoint's status is read first, for
        /metrics' endpoints by status (events do not need it: transitions are logged)."""
        if self.started:
            await self._ready.wait()  # a stream that came while the first was starting it
            return
        self.started = True
        self._loop = asyncio.get_running_loop()
        self._wake, self._grew = asyncio.Event(), asyncio.Event()
        self.authority.listeners.append(self._committed)  # first: no commit after the read is missed
        self.head, self.statuses = await asyncio.to_thread(self._read_statuses)
        self.floor = self.head
        if self.agents is not None:
            self.agents.watch_agents(self._agent)
        self._task = asyncio.create_task(self._follow())
        self._ready.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._committed in self.authority.listeners:
            self.authority.listeners.remove(self._committed)

    def _read_statuses(self) -> tuple[int, Statuses]:
        with self.authority.store.read() as txn:
            found = {
                r.id: (r.data.get("status"), r.data.get("host"))
                for r in txn.list(k.ENDPOINT.name)
            }
            return txn.revision(), found

    def _committed(self, changes: list[Change]) -> None:
        """A commit (from the writing thread): wake the follower."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _agent(self, state: dict[str, Any]) -> None:
        """An agent's state changed (on the loop): an event at once."""
        data = {"name": state["name"], "connected": state["connected"]}
        data["rendered_revision"] = state.get("rendered_revision")
        self._add(None, [Event("agent", _dumps(data), None, "agent", None, state["name"])])

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECHECK)
            self._wake.clear()
            try:
                await self._read_new()
            except Exception:  # the store failed (etcd away): try again at the next wake
                log.exception("events: reading the change log failed")
                await asyncio.sleep(RECHECK)

    async def _read_new(self) -> None:
        while True:
            pages = await asyncio.to_thread(self._read_page, self.head)
            if pages is None:
                return
            for revision, events in pages:
                self._add(revision, events)
                self.head = revision

    def _read_page(self, since: int) -> list[tuple[int, list[Event]]] | None:
        """The revisions after ``since`` (about PAGE changes), as events; None if there is none."""
        with self.authority.store.read() as txn:
            found, _ = changelog.window(txn, since, PAGE)
            if not found:
                return None
            events = change_events(txn, found, self.statuses)
        by_revision: dict[int, list[Event]] = {}
        for event in events:
            assert event.revision is not None
            by_revision.setdefault(event.revision, []).append(event)
        return sorted(by_revision.items())

    def _add(self, revision: int | None, events: list[Event]) -> None:
        self.entries.append(Entry(self.seq, revision, events))
        self.seq += 1
        self.held += len(events)
        while self.held > self.window and len(self.entries) > 1:
            gone = self.entries.popleft()
            self.held -= len(gone.events)
            if gone.revision is not None:
                self.floor = gone.revision
        if self.on_event is not None:
            for event in events:
                self.on_event(event)
        self._grew.set()
        self._grew = asyncio.Event()

    def status_counts(self) -> Counter[Any]:
        """Endpoints by status, as the follower last saw them (for /metrics)."""
        return Counter(status for status, _ in list(self.statuses.values()))

    def first_seq(self) -> int:
        return self.entries[0].seq if self.entries else self.seq

    def seq_after(self, revision: int) -> int:
        """The number of the first entry after ``revision`` (which is at least ``floor``)."""
        for entry in self.entries:
            if entry.revision is not None and entry.revision > revision:
                return entry.seq
        return self.seq

    async def stream(self, who: Principal, since: int | None) -> AsyncIterator[bytes]:
        """One client's events: from the log after ``since`` (None: from now), then live."""
        await self.start()
        sent = self.head if since is None else since  # the last revision the client has whole
        cursor = self.seq_after(sent)  # its place in the window, held from now on
        catch_up = sent < self.floor  # older than the window: from the log first
        yield b": policyfabric events\n\n"  # headers and a first line out at once
        while catch_up and sent < self.floor:
            page = await asyncio.to_thread(self.authority.changes, sent, PAGE, who.tenant)
            if not page.changes and page.until <= sent:
                break
            events = await asyncio.to_thread(self._objects, page.changes)
            for chunk in self._by_revision(events, who):
                yield chunk
            sent = max(sent, page.until)
            cursor = self.seq_after(sent)
        last_beat = time.monotonic()
        while True:
            if cursor < self.first_seq():
                yield sse(Event("cut", _dumps(self._cut_message(sent)), sent, "", None, ""), None)
                return
            if self.stopping():
                return
            if cursor >= self.seq:
                grew, left = self._grew, max(0.0, last_beat + self.heartbeat - time.monotonic())
                try:
                    await asyncio.wait_for(grew.wait(), min(left, RECHECK))
                except TimeoutError:
                    if time.monotonic() >= last_beat + self.heartbeat:
                        last_beat = time.monotonic()
                        yield b": heartbeat\n\n"
                continue
            entry = self.entries[cursor - self.first_seq()]
            cursor += 1
            if entry.revision is not None and entry.revision <= sent:
                continue
            chunk = self._entry_bytes(entry, who)
            if entry.revision is not None:
                sent = entry.revision
            if chunk:
                last_beat = time.monotonic()
                yield chunk

    def _cut_message(self, sent: int) -> dict[str, Any]:
        return {
            "revision": sent,
            "message": f"this stream fell more than {self.window} events behind: reconnect with "
            f"since={sent} (or Last-Event-ID) to resume without loss",
        }

    def _objects(self, changes: list[Change]) -> list[Event]:
        with self.authority.store.read() as txn:
            return change_events(txn, changes)

    @staticmethod
    def _by_revision(events: list[Event], who: Principal) -> list[bytes]:
        """Events of whole revisions, the ``id:`` on the last of each."""
        shown = [e for e in events if e.visible_to(who)]
        return [
            sse(e, e.revision if i + 1 == len(shown) or shown[i + 1].revision != e.revision else None)
            for i, e in enumerate(shown)
        ]

    @staticmethod
    def _entry_bytes(entry: Entry, who: Principal) -> bytes:
        shown = [e for e in entry.events if e.visible_to(who)]
        return b"".join(sse(e, entry.revision if i + 1 == len(shown) else None) for i, e in enumerate(shown))


__all__ = ["HEARTBEAT", "WINDOW", "AgentFeed", "Event", "Hub", "change_events", "sse"]
