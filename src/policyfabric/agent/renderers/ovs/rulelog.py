"""The rule log's OpenFlow connection: the copies logging flows send (``logflows.py``) arrive here.

A service connection of its own to the bridge's management socket (``unix:<rundir>/<bridge>.mgmt``),
in a thread, as the DHCP responder has. On connecting it:

- sets its controller id to ``LOG_CONTROLLER_ID`` (NXT_SET_CONTROLLER_ID), so it receives the
  logging flows' packet-ins and no other (the responder's DHCP requests go to controller id 0);
- asks for NXT_PACKET_IN2 (NXT_SET_PACKET_IN_FORMAT): the one packet-in format that carries the
  controller action's ``userdata``, which says what decided;
- sets a non-zero miss_send_len (OFPT_SET_CONFIG): OVS sends a service connection asynchronous
  messages only once it has (``ofconn_receives_async_msg``);
- makes sure of the meter ``LOG_METER`` (OFPT_METER_MOD add; if it exists, modify: its rate
  may have changed), then a barrier: ``meter_ready`` is set when the switch has it.

OVS resolves a controller action's meter when the flow is added (``ofproto_fix_controller_action``):
a logging flow added before its meter exists stays unmetered, and deleting the meter would leave
flows pointing at nothing. So the meter is never deleted, the agent waits for ``meter_ready``
before its first flows, and when the meter had to be created while logging flows may already be
on the bridge (a restarted ovs-vswitchd, whose flows the agent put back first), ``created`` is
set and the agent hands back the logging flows it installed (``repoint``): each is sent again as
OFPFC_MODIFY_STRICT (same match and actions), which makes OVS resolve the meter.

Each packet-in's userdata and packet go to ``handle`` (the agent names and logs them:
``agent/rulelog.py``). A lost connection is retried every second.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.flows import Flow
from policyfabric.agent.renderers.ovs.logflows import LOG_CONTROLLER_ID, LOG_METER, Decided, decode_userdata
from policyfabric.agent.renderers.service_thread import ServiceThread

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds between attempts to (re)connect
OFPT_EXPERIMENTER, OFPT_METER_MOD = 4, 29
NXT_SET_PACKET_IN_FORMAT, NXT_SET_CONTROLLER_ID, NXT_PACKET_IN2 = 16, 20, 30
NXPIF_NXT_PACKET_IN2 = 2
NXPINT_PACKET, NXPINT_USERDATA = 0, 7
OFPMC_ADD, OFPMC_MODIFY, OFPMC_DELETE = 0, 1, 2
OFPFC_MODIFY_STRICT = 2
_COMMAND = 17  # the command's offset in a flow mod's body (after cookie, cookie mask, table)
OFPMF_PKTPS, OFPMF_BURST, OFPMF_STATS = 2, 4, 8
OFPMBT_DROP = 1


def nicira(xid: int, subtype: int, body: bytes) -> bytes:
    """A Nicira extension message (OFPT_EXPERIMENTER, NX vendor id, subtype)."""
    return w.message(OFPT_EXPERIMENTER, xid, struct.pack("!II", w.NX_VENDOR_ID, subtype) + body)


def meter_mod(xid: int, command: int, meter_id: int, rate: int = 0, burst: int = 0) -> bytes:
    """OFPT_METER_MOD: with ``rate`` (packets a second) and ``burst`` (packets), one drop band."""
    if command == OFPMC_DELETE:
        return w.message(OFPT_METER_MOD, xid, struct.pack("!HHI", command, 0, meter_id))
    band = struct.pack("!HHII4x", OFPMBT_DROP, 16, rate, burst)
    flags = OFPMF_PKTPS | OFPMF_BURST | OFPMF_STATS
    return w.message(OFPT_METER_MOD, xid, struct.pack("!HHI", command, flags, meter_id) + band)


def modify_strict(xid: int, flow: Flow) -> bytes:
    """OFPFC_MODIFY_STRICT of ``flow`` (its table, priority and match) to its own actions: the add's
    body with the command changed (a modify never adds a flow that is not there)."""
    body = bytearray(w.add_body(flow))
    body[_COMMAND] = OFPFC_MODIFY_STRICT
    return w.message(w.OFPT_FLOW_MOD, xid, bytes(body))


def logs(flow: Flow) -> bool:
    """The flow sends the rule log copies (its meter must be resolved)."""
    return any(a.startswith("controller(") and f"id={LOG_CONTROLLER_ID}," in a for a in flow.actions)


@dataclass(frozen=True)
class LoggedPacket:
    decided: Decided
    data: bytes


def decode_packet_in2(body: bytes) -> LoggedPacket | None:
    """An NXT_PACKET_IN2's packet and userdata (its body after the Nicira header: properties, each
    type, length, value, padded to 8); None unless it is one of the rule log's, or it is cut."""
    if len(body) < 8 or struct.unpack_from("!II", body) != (w.NX_VENDOR_ID, NXT_PACKET_IN2):
        return None
    packet: bytes | None = None
    userdata: bytes | None = None
    i = 8
    while i + 4 <= len(body):
        kind, length = struct.unpack_from("!HH", body, i)
        if length < 4 or i + length > len(body):
            return None
        value = body[i + 4 : i + length]
        if kind == NXPINT_PACKET:
            packet = value
        elif kind == NXPINT_USERDATA:
            userdata = value
        i += (length + 7) // 8 * 8
    decided = decode_userdata(userdata) if userdata is not None else None
    if packet is None or decided is None:
        return None
    return LoggedPacket(decided, packet)


@dataclass
class Counters:
    received: int = 0  # rule log packet-ins
    ignored: int = 0  # packet-ins that were not (or did not parse)


class RuleLogChannel(ServiceThread):
    """The connection's thread; ``handle`` runs in it, once per logged packet."""

    def __init__(
        self,
        path: Path,
        handle: Callable[[LoggedPacket], None],
        rate: int,
        burst: int,
    ) -> None:
        super().__init__("rule-log", f"rule log: connection to {path}", RETRY)
        self.path = path
        self.handle = handle
        self.rate, self.burst = rate, burst
        self.counters = Counters()
        self.meter_ready = threading.Event()  # the switch has the meter (this connection made sure)
        self.created = threading.Event()  # it had to be created: logging flows may need repointing
        self.on_created: Callable[[], None] = lambda: None
        self._repoint: list[Flow] = []
        self._add_xid = self._barrier_xid = 0
        self._fresh = False
        self._xid = 0

    def _next_xid(self) -> int:
        self._xid = w.next_xid(self._xid)
        return self._xid

    def _lost(self) -> None:
        self.meter_ready.clear()

    def repoint(self, flows: list[Flow]) -> None:
        """Send ``flows`` (logging flows on the bridge) again so that OVS resolves their meter."""
        self._repoint = [f for f in flows if logs(f)]

    def _setup(self) -> bytes:
        x = self._next_xid
        head = (
            w.hello(x()),
            nicira(x(), NXT_SET_CONTROLLER_ID, struct.pack("!6xH", LOG_CONTROLLER_ID)),
            nicira(x(), NXT_SET_PACKET_IN_FORMAT, struct.pack("!I", NXPIF_NXT_PACKET_IN2)),
            w.set_config(x()),
        )
        self._add_xid = x()
        add = meter_mod(self._add_xid, OFPMC_ADD, LOG_METER, self.rate, self.burst)
        self._barrier_xid = x()
        self._fresh = True  # until the add is refused because the meter exists
        return b"".join((*head, add, w.message(w.OFPT_BARRIER_REQUEST, self._barrier_xid)))

    def _serve(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        sock.connect(str(self.path))
        sock.sendall(self._setup())
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.2)
            if self._repoint:
                flows, self._repoint = self._repoint, []
                sock.sendall(b"".join(modify_strict(self._next_xid(), f) for f in flows))
                log.info("rule log: %d logging flows sent again to use the new meter", len(flows))
            if not ready:
                continue
            data = sock.recv(65536)
            if not data:
                raise OSError("closed by the switch")
            buf += data
            while (msg := w.take_message(buf)) is not None:
                _, msg_type, xid, body = msg
                if msg_type == w.OFPT_HELLO:
                    self._greeted()
                elif msg_type == w.OFPT_ECHO_REQUEST:
                    sock.sendall(w.message(w.OFPT_ECHO_REPLY, xid, body))
                elif msg_type == OFPT_EXPERIMENTER:
                    self._packet_in(body)
                elif msg_type == w.OFPT_ERROR and xid == self._add_xid:  # it exists: set its rate
                    self._fresh = False
                    sock.sendall(meter_mod(self._next_xid(), OFPMC_MODIFY, LOG_METER, self.rate, self.burst))
                elif msg_type == w.OFPT_BARRIER_REPLY and xid == self._barrier_xid:
                    self.meter_ready.set()
                    if self._fresh:
                        self.created.set()
                        self.on_created()
                elif msg_type == w.OFPT_ERROR:
                    log.warning("rule log: the switch refused a message: %s", w.decode_error(xid, body).name)

    def _packet_in(self, body: bytes) -> None:
        logged = decode_packet_in2(body)
        if logged is None:
            self.counters.ignored += 1
            return
        self.counters.received += 1
        self.handle(logged)
