"""Drift on the bridge: Open vSwitch tells the agent of every flow changed by anyone else.

A flow deleted or changed by hand (``ovs-ofctl del-flows br-int table=61``) used to stay so until
the next policy change: the applier's mirror (``FlowApplier.installed``) still said it was there,
so the next delta did not restore it. ``FlowMonitor`` keeps a second OpenFlow 1.5 connection to the
bridge's management socket with an ``OFPMP_FLOW_MONITOR`` request on it (every table, flows added,
removed and modified; no initial dump, no instructions): OVS then pushes one update per flow
changed, by any connection. A thread blocked in ``recv`` reads them, so while nothing changes the
cost is nothing (no polling, no dump; measured in bench/drift.py against a periodic dump).

The agent's own changes arrive too (they are made on other connections: the channel's bundles,
``ovs-ofctl``), so each is bracketed: ``own(commands)`` before it opens a window, ``settle(token)``
after it sends a barrier on this connection, and the window closes at the barrier's reply (OVS
queues a change's updates to every monitor before it answers the change, so all of them come
before that reply). In a delta's window an update is the agent's if the delta had a flow mod of
that kind for that table and priority still unaccounted for; in the window of a full sync (``replace-
flows``: what it changes is unknown beforehand) or of a bulk delta (``BULK``) every update is the
agent's. What is left is
drift: ``on_drift`` is called with what drifted (tables, how many flows, how), and the applier's
next sync is a full one, which restores exactly what is missing and touches nothing else.

Not drift: flows the pipeline's ``learn`` actions add in their own tables (their cookie is not one
of the agent's compiled flows': it has the ``LEARNED`` origin, ``flows.py``), and flows the switch
itself removes (idle or hard timeout, eviction): only learned flows have those.
A change by hand during one of the agent's own full syncs or bulk deltas is taken as the agent's
(the window is the length of that ``ovs-ofctl`` call); any other is seen. If the connection is
lost (OVS restarted, say), what changed meanwhile is unknown: when it is back, that is reported as
drift too.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.flowmods import AddFlow, Command, DeleteFlow, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import is_agents
from policyfabric.agent.renderers.ovs.ofchannel import speaks_15
from policyfabric.agent.renderers.ovs.tables import TABLES

log = logging.getLogger(__name__)

LEARNED = frozenset(n for t in TABLES for n in t.learns)  # tables that learn() actions add flows to
MONITOR_ID = 0x5046
KINDS = {w.OFPFME_ADDED: "added", w.OFPFME_REMOVED: "deleted", w.OFPFME_MODIFIED: "modified"}
SWITCH_REMOVED = frozenset({w.OFPRR_IDLE_TIMEOUT, w.OFPRR_HARD_TIMEOUT, w.OFPRR_EVICTION})


def installed_by_agent(table: int, cookie: int) -> bool:
    """The agent's compiled flows carry the policyfabric tag with the compiled origin (learned
    ones the learned origin; ``flows.py`` has the layout), in every table."""
    return is_agents(cookie)


@dataclass
class _Window:
    """An own change in flight: what it may cause (``None``: anything, a full sync)."""

    adds: Counter[tuple[int, int]] | None
    deletes: Counter[tuple[int, int]] = field(default_factory=Counter)


# An own change of more flow mods than this is taken as a full sync's: whatever it changed is the
# agent's. Such a burst overflows the monitor's connection (OVS pauses it, and re-sends only the
# flows added meanwhile), so counting it flow by flow would see the pause as drift and sync the
# whole bridge again for nothing (seen at 10,000 endpoints: a 46,065-flow delta, then a needless
# 2.7 s full sync of 110,060 flows). It is the size past which the applier sends through
# ``ovs-ofctl`` rather than its channel (``applier.CHANNEL_MAX``).
BULK = 200


def window(commands: Sequence[Command], bulk: int = BULK) -> _Window:
    if len(commands) > bulk or any(isinstance(c, ReplaceFlows) for c in commands):
        return _Window(None)
    adds: Counter[tuple[int, int]] = Counter()
    deletes: Counter[tuple[int, int]] = Counter()
    for c in commands:
        if isinstance(c, AddFlow):
            adds[c.flow.table, c.flow.priority] += 1
        elif isinstance(c, DeleteFlow):
            deletes[c.flow.table, c.flow.priority] += 1
    return _Window(adds, deletes)


class Attribution:
    """Whose a flow update is: the agent's (an open window accounts for it), the switch's (learned
    flows, timeouts) or someone else's (drift). Pure; the monitor holds it under a lock."""

    def __init__(self, learned: frozenset[int] = LEARNED) -> None:
        self.learned = learned
        self._windows: dict[int, _Window] = {}
        self._token = 0

    def open(self, commands: Sequence[Command]) -> int:
        self._token += 1
        self._windows[self._token] = window(commands)
        return self._token

    def close(self, token: int) -> None:
        self._windows.pop(token, None)

    @property
    def open_windows(self) -> int:
        return len(self._windows)

    @property
    def full_sync_open(self) -> bool:
        """One of the agent's full syncs (or bulk changes, ``BULK``) is in flight (its window
        accounts for anything)."""
        return any(win.adds is None for win in self._windows.values())

    def foreign(self, update: w.FlowUpdate) -> bool:
        """True if ``update`` is drift (it consumes what an open window expected, if it is the agent's)."""
        if update.event not in KINDS:
            return False  # INITIAL (not asked for), ABBREV (own connection: none)
        if update.event == w.OFPFME_REMOVED and update.reason in SWITCH_REMOVED:
            return False  # a learned flow timed out: only those have timeouts
        if update.table in self.learned and not installed_by_agent(update.table, update.cookie):
            return False  # learned by the pipeline's learn() action
        key = (update.table, update.priority)
        for win in self._windows.values():
            if win.adds is None:
                return False  # a full sync: whatever it changed
            expected = win.deletes if update.event == w.OFPFME_REMOVED else win.adds
            if expected[key] > 0:
                expected[key] -= 1
                return False
        return True


def describe(drifted: Counter[tuple[int, str]]) -> str:
    """``table 61: 12 flows deleted; table 0: 1 flow added``."""
    parts = []
    for (table, kind), n in sorted(drifted.items()):
        parts.append(f"table {table}: {n} flow{'s' if n != 1 else ''} {kind}")
    return "; ".join(parts)


class FlowMonitor:
    """A flow monitor on ``path`` (a bridge's ``.mgmt`` socket), read by a thread of its own.

    ``start`` connects in the caller's thread (so the monitor is in place before the first sync),
    then the thread reads; if OVS is not there yet, the thread keeps trying. ``on_drift(what)`` is
    called from that thread."""

    def __init__(
        self,
        path: Path | str,
        on_drift: Callable[[str], None],
        *,
        learned: frozenset[int] = LEARNED,
        retry: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.on_drift = on_drift
        self.retry = retry
        self.attribution = Attribution(learned)
        self._lock = threading.Lock()  # attribution, the socket's writes, the barriers
        self._closing: dict[int, int] = {}  # barrier xid -> window token
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._xid = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._own_pause = False  # OVS paused this monitor during one of the agent's full syncs
        self.updates = 0  # flow updates read (own and others')
        self.drifts = 0  # drift reports made

    # ---- the applier's side
    def own(self, commands: Sequence[Command]) -> int | None:
        """Open a window for a change the agent is about to make; None when not monitoring."""
        with self._lock:
            if self._sock is None:
                return None
            return self.attribution.open(commands)

    def settle(self, token: int | None) -> None:
        """The change is made: its window closes once the barrier sent now is answered."""
        if token is None:
            return
        with self._lock:
            if self._sock is None:
                self.attribution.close(token)
                return
            xid = self._next_xid()
            self._closing[xid] = token
            try:
                self._sock.sendall(w.message(w.OFPT_BARRIER_REQUEST, xid))
            except OSError:
                self.attribution.close(token)  # the reader sees the connection gone
                self._closing.pop(xid, None)

    # ---- life
    def start(self) -> bool:
        """Connect (False if OVS is not there: the thread retries) and start reading."""
        try:
            self._connect()
        except OSError as exc:
            log.warning("flow monitor %s: %s (retrying every %.1f s)", self.path, exc, self.retry)
        self._thread = threading.Thread(target=self._run, name=f"flow-monitor {self.path.name}", daemon=True)
        self._thread.start()
        return self._sock is not None

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)  # wakes the reader's recv
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close()

    def _next_xid(self) -> int:
        self._xid = w.next_xid(self._xid)
        return self._xid

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(str(self.path))
            sock.sendall(w.hello(1))
            msg_type, _, body, version = self._read_one(sock)
            if msg_type != w.OFPT_HELLO or not speaks_15(version, body):
                raise OSError(f"{self.path} does not speak OpenFlow 1.5")
            self._own_pause = False  # a new monitor starts unpaused
            sock.sendall(w.flow_monitor_request(2, MONITOR_ID))
            while True:  # the request's (empty) reply, or an error
                msg_type, xid, body, _ = self._read_one(sock)
                if xid == 2 and msg_type == w.OFPT_ERROR:
                    raise OSError(f"{self.path} refused the flow monitor: {w.decode_error(xid, body).name}")
                if xid == 2 and msg_type == w.OFPT_MULTIPART_REPLY:
                    break
        except BaseException:
            sock.close()
            self._buf.clear()
            raise
        sock.settimeout(None)  # block: nothing to do until OVS says something
        with self._lock:
            self._sock, self._xid = sock, 2

    def _close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
            self._sock = None
            self._buf.clear()
            for token in self._closing.values():
                self.attribution.close(token)
            self._closing.clear()

    # ---- reading
    def _read_one(self, sock: socket.socket) -> tuple[int, int, bytes, int]:
        while True:
            try:
                got = w.take_message(self._buf)
            except ValueError as exc:
                raise ConnectionError(f"{self.path} sent {exc}") from None
            if got is None:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError(f"{self.path} closed the connection")
                self._buf += data
                continue
            version, msg_type, xid, body = got
            if msg_type == w.OFPT_ECHO_REQUEST:
                with self._lock:
                    sock.sendall(w.message(w.OFPT_ECHO_REPLY, xid, body))
                continue
            return msg_type, xid, body, version

    def _run(self) -> None:
        lost = False
        while not self._stopped.is_set():
            if self._sock is None:
                try:
                    self._connect()
                except OSError:
                    self._stopped.wait(self.retry)
                    continue
                log.info("flow monitor %s: connected again", self.path)
                if lost:
                    self._report(f"flow monitor on {self.path.name} was lost: changes meanwhile unknown")
            sock = self._sock
            assert sock is not None
            try:
                self._read(sock)
            except (OSError, ValueError) as exc:
                if self._stopped.is_set():
                    break
                log.warning("flow monitor %s: %s (reconnecting)", self.path, exc)
                lost = True
                self._close()

    def _read(self, sock: socket.socket) -> None:
        """Handle everything that arrived (at least one message): updates, barrier replies."""
        drifted: Counter[tuple[int, str]] = Counter()
        unknown = ""
        while True:
            msg_type, xid, body, _ = self._read_one(sock)
            if msg_type == w.OFPT_BARRIER_REPLY:
                with self._lock:
                    token = self._closing.pop(xid, None)
                    if token is not None:
                        self.attribution.close(token)
            elif msg_type == w.OFPT_MULTIPART_REPLY:
                updates = w.decode_flow_updates(body) or ()
                self.updates += len(updates)
                with self._lock:  # once for the message, not per update (a full sync is thousands)
                    foreign, paused = self._foreign(updates)
                unknown = paused or unknown
                for u in foreign:
                    drifted[u.table, KINDS[u.event]] += 1
            elif msg_type == w.OFPT_ERROR:
                log.warning("flow monitor %s: %s", self.path, w.decode_error(xid, body).name)
            if not self._buf and not select.select([sock], [], [], 0)[0]:
                break  # all of this burst read: report it as one
        if drifted or unknown:
            self._report("; ".join(filter(None, [describe(drifted), unknown])))

    def _foreign(self, updates: Sequence[w.FlowUpdate]) -> tuple[list[w.FlowUpdate], str]:
        """Under the lock: the updates that are drift, and why what changed is unknown ("": it is
        known). Follows OVS's pauses: when a burst of updates overflows this connection,
        OVS sends ``PAUSED``, drops updates until it has caught up, then re-sends the flows added
        or modified meanwhile and ``RESUMED``; deletions meanwhile are never told. A pause that
        begins during one of the agent's full syncs or bulk changes is the agent's own (that
        ``replace-flows`` or bundle made the bridge what the agent wants; what OVS re-sends at the
        end is it): nothing to say. Any other
        pause: what changed meanwhile is unknown, the returned reason (drift: the next sync is
        full). The residue: someone else's change in the same instant as a full sync's pause
        goes unseen, as it would inside the full sync's own window."""
        unknown = ""
        foreign = []
        for u in updates:
            if u.event == w.OFPFME_PAUSED:
                self._own_pause = self.attribution.full_sync_open
                if not self._own_pause:
                    unknown = "OVS paused the flow monitor: changes meanwhile unknown"
            elif u.event == w.OFPFME_RESUMED:
                self._own_pause = False
            elif not self._own_pause and self.attribution.foreign(u):
                foreign.append(u)
        return foreign, unknown

    def _report(self, what: str) -> None:
        self.drifts += 1
        try:
            self.on_drift(what)
        except Exception:  # the reader must go on
            log.exception("flow monitor %s: drift callback failed", self.path)
