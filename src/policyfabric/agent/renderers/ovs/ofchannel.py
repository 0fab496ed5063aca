"""A persistent OpenFlow 1.5 connection to one bridge: deltas as bundles, without an ovs-ofctl process.

Why: a two-flow change through ``ovs-ofctl`` costs a process start, a handshake and a parse,
4.9-7.9 ms; on a connection the agent keeps it is ~0.2 ms (bench/ofchannel.py). The connection
is to the bridge's management socket, ``unix:<OVS rundir>/<bridge>.mgmt`` (what ``ovs-ofctl``
uses): it takes a controller-like connection without a Controller row, so no in-band flows, no
fail-mode effect and no reconnect back-off in OVS.

The API is blocking, like the applier that calls it (the agent runs ``apply`` in a worker thread):
a plain socket with a timeout, no event loop. Nothing reads the socket between bundles, so OVS's
echo requests wait until the next bundle, which first drains what arrived (answering echoes); if
OVS dropped the idle connection meanwhile, that is seen there, before anything is sent, and the
channel reconnects: nothing was lost, so the caller's mirror still holds.

A bundle (``send``) is two writes, one round trip each:

1. ``BUNDLE_CONTROL`` open, one ``BUNDLE_ADD_MESSAGE`` per flow mod, a ``BARRIER_REQUEST``; the
   barrier's reply says OVS has checked every message, and any ``OFPT_ERROR`` before it names the
   failing one by its xid;
2. commit (or, after an error, discard), and its reply.

One write would do if OVS refused a bundle with a bad message in it, but it does not: it answers
the bad add with an error and commits the rest (checked with OVS 3.1), so the barrier is what
keeps a bundle all-or-nothing. An error or a lost connection in the middle leaves the bridge in
an unknown state: the channel closes and raises ``BundleFailed`` / ``ChannelLost``, the applier
drops its mirror, and the next sync is a full one.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from policyfabric.agent.renderers.ovs import ofwire as w

log = logging.getLogger(__name__)

DEFAULT_RUNDIR = "/var/run/openvswitch"


def mgmt_socket(target: str, env: dict[str, str] | None = None) -> Path | None:
    """The management socket ``ovs-ofctl TARGET`` talks to: ``unix:PATH`` is PATH, a bare bridge
    name is ``$OVS_RUNDIR/NAME.mgmt`` (ovs-ofctl's rule); None for anything else (tcp:, ssl:)."""
    if target.startswith("unix:"):
        return Path(target[5:])
    if ":" in target or "/" in target:
        return None
    rundir = (env if env is not None else os.environ).get("OVS_RUNDIR") or DEFAULT_RUNDIR
    return Path(rundir) / f"{target}.mgmt"


class ChannelError(Exception):
    """The channel failed; what the bridge holds afterwards is unknown unless said otherwise."""


class ChannelUnavailable(ChannelError):
    """No channel could be had (no socket, refused, no OpenFlow 1.5): nothing was sent."""


class ChannelLost(ChannelError):
    """The connection broke or timed out in the middle of a bundle."""


class BundleFailed(ChannelError):
    """OVS refused the bundle: nothing of it was committed (the errors say which message and why)."""

    def __init__(self, message: str, errors: Sequence[tuple[w.OfError, str]]) -> None:
        super().__init__(message)
        self.errors = list(errors)


@dataclass(frozen=True)
class Bundled:
    """A message for a bundle: its type, its body, and what it is (for errors: the flow's text,
    rendered only if OVS refuses it: ``str(what)``)."""

    type: int
    body: bytes
    what: object


class OfChannel:
    """One OpenFlow 1.5 connection to ``path`` (a bridge's ``.mgmt`` socket), opened on first use."""

    def __init__(self, path: Path | str, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.timeout = timeout  # per reply; OVS itself gives up on a bundle left open 10 s
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._xid = 0
        self._bundle_id = 0
        self.echoes_answered = 0

    # ---- connection
    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _next_xid(self) -> int:
        self._xid = w.next_xid(self._xid)
        return self._xid

    def connect(self) -> None:
        """Connect and agree on OpenFlow 1.5; ``ChannelUnavailable`` saying why if not."""
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
            sock.sendall(w.hello(self._next_xid()))
            self._sock = sock
            msg_type, _, body, version = self._read_message()
        except ChannelLost as exc:
            self.close()
            raise ChannelUnavailable(f"no OpenFlow hello from {self.path}: {exc}") from None
        except OSError as exc:
            sock.close()
            self._sock = None
            raise ChannelUnavailable(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        if msg_type != w.OFPT_HELLO or not speaks_15(version, body):
            self.close()
            raise ChannelUnavailable(f"{self.path} does not speak OpenFlow 1.5 (hello version {version})")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buf.clear()

    def _ensure(self) -> socket.socket:
        """A live connection: answer what arrived while idle; reconnect if OVS closed it meanwhile
        (nothing was in flight, so nothing is lost)."""
        if self._sock is not None:
            try:
                self._drain()
            except ChannelLost as exc:
                log.info("openflow channel %s: closed while idle (%s), reconnecting", self.path, exc)
                self.close()
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        return self._sock

    def _drain(self) -> None:
        """Read whatever is waiting without blocking: echo requests are answered, the rest dropped."""
        assert self._sock is not None
        while select.select([self._sock], [], [], 0)[0]:
            self._fill()
            while self._take() is not False:
                pass

    # ---- reading
    def _fill(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            raise ChannelLost(f"no reply from {self.path} within {self.timeout} s") from None
        except OSError as exc:
            raise ChannelLost(f"{self.path}: {exc.strerror or exc}") from None
        if not data:
            raise ChannelLost(f"{self.path} closed the connection")
        self._buf += data

    def _take(self) -> tuple[int, int, bytes, int] | bool | None:
        """The next whole message (type, xid, body, version); None once an echo was answered;
        False while no whole message has arrived."""
        try:
            got = w.take_message(self._buf)
        except ValueError as exc:
            raise ChannelLost(f"{self.path} sent {exc}") from None
        if got is None:
            return False
        version, msg_type, xid, body = got
        if msg_type == w.OFPT_ECHO_REQUEST:
            assert self._sock is not None
            try:
                self._sock.sendall(w.message(w.OFPT_ECHO_REPLY, xid, body))
            except OSError as exc:
                raise ChannelLost(f"{self.path}: {exc.strerror or exc}") from None
            self.echoes_answered += 1
            return None
        return msg_type, xid, body, version

    def _read_message(self) -> tuple[int, int, bytes, int]:
        while True:
            got = self._take()
            if got is False:
                self._fill()
            elif got is not None and got is not True:
                return got

    # ---- bundles
    def send(self, messages: Sequence[Bundled]) -> None:
        """Install ``messages`` as one atomic bundle; ``BundleFailed`` (nothing committed) naming the
        failing messages, ``ChannelLost`` (state unknown), ``ChannelUnavailable`` (nothing sent)."""
        if not messages:
            return
        sock = self._ensure()
        self._bundle_id = (self._bundle_id + 1) & 0xFFFFFFFF
        bid = self._bundle_id
        by_xid: dict[int, object] = {}
        open_xid = self._next_xid()
        parts = [w.bundle_control(open_xid, bid, w.OFPBCT_OPEN_REQUEST)]
        for m in messages:
            xid = self._next_xid()
            by_xid[xid] = m.what
            parts.append(w.bundle_add(xid, bid, m.type, m.body))
        barrier = self._next_xid()
        parts.append(w.message(w.OFPT_BARRIER_REQUEST, barrier))
        try:
            try:
                sock.sendall(b"".join(parts))
            except OSError as exc:
                raise ChannelLost(f"{self.path}: {exc.strerror or exc}") from None
            errors = self._until(barrier, w.OFPT_BARRIER_REPLY, by_xid | {open_xid: "bundle open"})
            ctrl = w.OFPBCT_DISCARD_REQUEST if errors else w.OFPBCT_COMMIT_REQUEST
            done = self._next_xid()
            try:
                sock.sendall(w.bundle_control(done, bid, ctrl))
            except OSError as exc:
                raise ChannelLost(f"{self.path}: {exc.strerror or exc}") from None
            errors += self._until(done, w.OFPT_BUNDLE_CONTROL, by_xid | {done: "bundle commit"})
        except ChannelLost:
            self.close()
            raise
        if errors:
            self.close()  # a fresh connection for the next one: no stale replies, no open bundle
            first = "; ".join(f"{e.name} for {what}" for e, what in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise BundleFailed(f"OVS refused the bundle, nothing committed: {first}{more}", errors)

    def _until(self, xid: int, reply_type: int, names: dict[int, object]) -> list[tuple[w.OfError, str]]:
        """Read until the reply of type ``reply_type`` to ``xid`` (or an error about ``xid``); the
        errors on the way, each with what its xid was."""
        errors: list[tuple[w.OfError, str]] = []
        while True:
            msg_type, got_xid, body, _ = self._read_message()
            if msg_type == w.OFPT_ERROR:
                err = w.decode_error(got_xid, body)
                errors.append((err, str(names.get(got_xid, f"xid {got_xid:#x}"))))
                if got_xid == xid:
                    return errors
            elif msg_type == reply_type and got_xid == xid:
                return errors
            # anything else (an async message, a stale reply) is not ours to wait for


def speaks_15(version: int, hello_body: bytes) -> bool:
    """OpenFlow 1.5 is agreed if the peer's hello says so: its version, or its version bitmap."""
    if version == w.VERSION:
        return True
    offset = 0
    while offset + 4 <= len(hello_body):
        elem_type, elem_len = struct.unpack_from("!HH", hello_body, offset)
        if elem_len < 4:
            break
        if elem_type == 1 and elem_len >= 8:
            (bitmap,) = struct.unpack_from("!I", hello_body, offset + 4)
            return bool(bitmap & (1 << w.VERSION))
        offset += (elem_len + 7) // 8 * 8
    return bool(version > w.VERSION)
