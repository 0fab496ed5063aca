"""The host's DHCPv4 server, the OVN way: no daemon, the agent answers on the OpenFlow channel.

Each local endpoint's DHCP requests reach the agent as packet-ins (the ``CONTROLLER`` flow of its
section, ``switching.dhcp_flows``); the answer goes back as a packet-out straight to the port, so
DHCP never leaves the host. The responder has a connection of its own to the bridge's management
socket (the flow channel's bundles and the flow monitor are not disturbed), read by its own
thread: a packet-in is answered in microseconds with no help from the asyncio loop.

What to answer is the intent: ``leases`` (a pure function of the view, worked out per port when
a request asks) maps each local port to its endpoint's address and subnet options, and the agent
hands the responder a new map after every reconcile (one reference swap: the thread reads
whichever map is current). A request from a
port with no lease, or that does not parse, is dropped and counted, never answered by a guess.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from policyfabric.agent.dhcp.packet import Lease, Malformed, build_reply, decide, parse_request
from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.switching import dhcp_subnet
from policyfabric.agent.view import Endpoint, Network

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds between attempts to (re)connect to the bridge


class Leases(Mapping[int, Lease]):
    """What each local port's endpoint is handed by DHCP (port → ``Lease``), worked out when asked:
    the agent hands the responder a new one after every reconcile, and building every lease of
    10,000 endpoints there cost ~100 ms a reconcile for the few ports that ever ask. The index of
    ports is built on the first request after a reconcile (on the responder's thread), and each
    port's lease once. Thread-safe enough: a race computes one entry twice, equal."""

    def __init__(self, net: Network, lease_time: int = 86400) -> None:
        self.net, self.lease_time = net, lease_time
        self._ports: dict[int, Endpoint] | None = None
        self._made: dict[int, Lease | None] = {}

    def _index(self) -> dict[int, Endpoint]:
        if self._ports is None:
            self._ports = {ep.ofport: ep for ep in self.net.local if ep.ofport is not None}
        return self._ports

    def _lease(self, port: int) -> Lease | None:
        if port not in self._made:
            ep = self._index().get(port)
            self._made[port] = lease_of(self.net, ep, self.lease_time) if ep is not None else None
        return self._made[port]

    def __getitem__(self, port: int) -> Lease:
        found = self._lease(port)
        if found is None:
            raise KeyError(port)
        return found

    def __iter__(self) -> Iterator[int]:
        return (port for port in self._index() if self._lease(port) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def leases(net: Network, lease_time: int = 86400) -> Leases:
    """The leases of ``net``'s local ports (``Leases``, worked out when asked)."""
    return Leases(net, lease_time)


def lease_of(net: Network, ep: Endpoint, lease_time: int) -> Lease | None:
    """What ``ep`` is handed: its IPv4 address in a DHCP-answered subnet of its bridge domain, that
    subnet's gateway (router and server identifier), name servers and routes, the bridge domain's
    MTU. The server's MAC is the router's on that bridge domain (the same gateway MAC the
    endpoint's ARP for the gateway gets), else a fixed local one. None: nothing to hand out."""
    bd = net.bds.get(ep.bd)
    if ep.ofport is None or bd is None:
        return None
    found = dhcp_subnet(ep, bd)
    if found is None:
        return None
    subnet, address = found
    router_mac = next(
        (
            r.mac
            for r in net.routers.values()
            for i in r.interfaces
            if i.bd == bd.uri and str(i.gateway_ip) == str(subnet.gateway)
        ),
        None,
    )
    return Lease(
        address=address,
        prefix_len=ipaddress.IPv4Network(subnet.prefix).prefixlen,
        gateway=subnet.gateway,
        dns=tuple(subnet.dns),
        routes=tuple((str(d), str(h)) for d, h in subnet.routes),
        mtu=bd.mtu,
        lease_time=lease_time,
        **({"server_mac": router_mac} if router_mac else {}),
    )


@dataclass
class Counters:
    answered: int = 0
    malformed: int = 0
    unanswered: int = 0  # well-formed, but nothing to say (no lease, RELEASE, another server's)
    by_type: dict[int, int] = field(default_factory=dict)


class Responder:
    """The responder thread on ``path`` (a bridge's ``.mgmt`` socket)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.leases: Mapping[int, Lease] = {}
        self.counters = Counters()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="dhcp-responder", daemon=True)
        self._xid = 0
        self._last_error = ""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed: the thread is leaving anyway
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    def update(self, leases: Mapping[int, Lease]) -> None:
        self.leases = leases  # one reference: the thread sees the old map or the new, never half

    # ---- the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._serve()
            except OSError as exc:
                if not self._stop.is_set() and str(exc) != self._last_error:  # once per outage
                    log.warning("dhcp responder: connection to %s: %s (retrying)", self.path, exc)
                self._last_error = str(exc)
            finally:
                self.connected.clear()
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
            self._stop.wait(RETRY)

    def _next_xid(self) -> int:
        self._xid = w.next_xid(self._xid)
        return self._xid

    def _serve(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = sock
        sock.connect(str(self.path))
        sock.sendall(w.hello(self._next_xid()) + w.set_config(self._next_xid()))
        buf = bytearray()
        while not self._stop.is_set():
            data = sock.recv(65536)
            if not data:
                raise OSError("closed by the switch")
            buf += data
            while (msg := w.take_message(buf)) is not None:
                _, msg_type, xid, body = msg
                if msg_type == w.OFPT_HELLO:
                    self.connected.set()
                    self._last_error = ""
                elif msg_type == w.OFPT_ECHO_REQUEST:
                    sock.sendall(w.message(w.OFPT_ECHO_REPLY, xid, body))
                elif msg_type == w.OFPT_PACKET_IN:
                    out = self.handle(body)
                    if out is not None:
                        sock.sendall(out)
                elif msg_type == w.OFPT_ERROR:
                    log.warning("dhcp responder: %s", w.decode_error(xid, body).name)

    def handle(self, body: bytes) -> bytes | None:
        """The packet-out answering one packet-in, or None (dropped, counted)."""
        pin = w.decode_packet_in(body)
        if pin is None:
            self.counters.malformed += 1
            return None
        try:
            req = parse_request(pin.data)
        except Malformed as exc:
            self.counters.malformed += 1
            log.debug("dhcp responder: port %d sent a malformed request: %s", pin.in_port, exc)
            return None
        self.counters.by_type[req.msg_type] = self.counters.by_type.get(req.msg_type, 0) + 1
        lease = self.leases.get(pin.in_port)
        kind = decide(req, lease)
        if kind is None or lease is None:
            self.counters.unanswered += 1
            return None
        self.counters.answered += 1
        return w.packet_out(self._next_xid(), pin.in_port, build_reply(req, kind, lease))
