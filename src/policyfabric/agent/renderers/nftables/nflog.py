"""The rule log on nftables hosts: the ``log ... group N`` rules' packets, read over netlink (NFLOG).

The ruleset's logging rules (``ruleset.log_line``) hand the kernel's netfilter log a packet with a
prefix saying what decided (``pf:KIND:VERDICT:ID``); an NFLOG socket bound to the group in the
renderer's network namespace receives it (the kernel log, the other way, is off in namespaces
other than the first unless ``net.netfilter.nf_log_all_netns`` is set, and is text for everyone).
The socket is made inside the namespace by the reader's own thread (``setns`` moves only the
calling thread), then read there. Each packet goes to the agent's sink (the renderer is handed
it) with what its prefix says decided and its IP packet.

Protocol (linux/netfilter/nfnetlink_log.h): NETLINK_NETFILTER messages of subsystem NFNL_SUBSYS_ULOG;
NFULNL_MSG_CONFIG with NFULA_CFG_CMD BIND to the group and NFULA_CFG_MODE (copy the packet, 128
bytes); each logged packet is NFULNL_MSG_PACKET with attributes NFULA_PREFIX and NFULA_PAYLOAD.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
from dataclasses import dataclass

from policyfabric.agent.renderers.logcodes import Decided, LogSink, parse_prefix
from policyfabric.agent.renderers.nftables.kernel import _enter
from policyfabric.agent.renderers.nftables.ruleset import NFLOG_GROUP
from policyfabric.sh import CommandFailed

log = logging.getLogger(__name__)

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
SOL_NETLINK, NETLINK_NO_ENOBUFS = 270, 5
RCVBUF = 1 << 20  # bytes of queued log messages the socket holds (the kernel caps it at rmem_max)
RETRY = 1.0  # seconds before a failed socket is made again
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
COPY = 128  # bytes of each packet: the IP and transport headers
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id (host order)


def _attr(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


def config_message(group: int, seq: int, attrs: bytes) -> bytes:
    """An NFULNL_MSG_CONFIG for ``group`` (nfgenmsg: AF_UNSPEC, version 0, the group big-endian)."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, group) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def bind_messages(group: int) -> list[bytes]:
    return [
        config_message(group, 1, _attr(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND))),
        config_message(group, 2, _attr(NFULA_CFG_MODE, struct.pack("!IBx", COPY, NFULNL_COPY_PACKET))),
    ]


@dataclass(frozen=True)
class Logged:
    decided: Decided
    packet: bytes  # from the IP header


def parse_messages(data: bytes) -> tuple[list[Logged], list[int]]:
    """The logged packets in one netlink read, and the errors (negative errno) the kernel sent."""
    found: list[Logged] = []
    errors: list[int] = []
    i = 0
    while i + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, i)
        if length < _NLMSG.size or i + length > len(data):
            break
        body = data[i + _NLMSG.size : i + length]
        if kind == NLMSG_ERROR and len(body) >= 4:
            (code,) = struct.unpack_from("=i", body)
            if code:
                errors.append(code)
        elif kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs: dict[int, bytes] = {}
            j = 4  # after nfgenmsg
            while j + 4 <= len(body):
                alen, akind = struct.unpack_from("=HH", body, j)
                if alen < 4 or j + alen > len(body):
                    break
                attrs[akind & 0x7FFF] = body[j + 4 : j + alen]
                j += (alen + 3) // 4 * 4
            decided = parse_prefix(attrs.get(NFULA_PREFIX, b""))
            if decided is not None and NFULA_PAYLOAD in attrs:
                found.append(Logged(decided, attrs[NFULA_PAYLOAD]))
        i += (length + 3) // 4 * 4
    return found, errors


class NflogReader:
    """The thread reading group ``group`` in namespace ``netns`` (None: the agent's own) and
    handing each logged packet to ``sink`` (the agent's rule log: the renderer is given it).

    A full socket buffer (a burst faster than the agent reads) loses messages, not the reader:
    the socket asks the kernel not to report it (``NETLINK_NO_ENOBUFS``) and, should an
    ``ENOBUFS`` come anyway, it is counted (``lost``) and reading goes on. Any other socket error
    makes a new socket after ``RETRY`` seconds, as the Open vSwitch rule log's connection does."""

    def __init__(self, netns: str | None, sink: LogSink, group: int = NFLOG_GROUP) -> None:
        self.netns, self.group, self.sink = netns, group, sink
        self.bound = threading.Event()
        self.lost = 0  # ENOBUFS seen: messages the kernel dropped for a full socket buffer
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="rule-log-nflog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.ident is not None:
            self._thread.join(timeout=5)

    def _socket(self) -> socket.socket:
        """A netlink socket made inside the namespace (this thread enters it and stays), bound to
        the group, with a large buffer and overruns not reported."""
        if self.netns is not None:
            _enter(self.netns)
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            with contextlib.suppress(OSError):  # best effort: an ENOBUFS is handled anyway
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            sock.bind((0, 0))
            sock.settimeout(1.0)
            for msg in bind_messages(self.group):
                sock.send(msg)
        except OSError:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        told = False  # a socket that cannot be made is said once, then retried quietly
        while not self._stop.is_set():
            try:
                sock = self._socket()
            except (OSError, CommandFailed) as exc:  # e.g. the namespace is not there (yet)
                if not told:
                    log.warning("rule log: netfilter log group %d: %s; retrying", self.group, exc)
                    told = True
                self._stop.wait(RETRY)
                continue
            told = False
            self._sock = sock
            try:
                self._read(sock)
            except OSError as exc:
                if not self._stop.is_set():
                    log.warning("rule log: netfilter log group %d: %s; reconnecting", self.group, exc)
                    self._stop.wait(RETRY)
            finally:
                self._sock = None
                sock.close()

    def _read(self, sock: socket.socket) -> None:
        """Until stopped or the socket fails with anything but a lost message."""
        while not self._stop.is_set():
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.lost += 1
                log.warning("rule log: netfilter log messages lost (socket buffer full), %d times", self.lost)
                continue
            if not data:
                if self._stop.is_set():
                    return
                raise OSError(errno.ECONNRESET, "the netlink socket closed")
            packets, errors = parse_messages(data)
            for code in errors:
                log.warning("rule log: the netfilter log refused the binding: %s", os.strerror(-code))
            if not errors:
                self.bound.set()
            for logged in packets:
                self.sink(logged.decided, logged.packet)
