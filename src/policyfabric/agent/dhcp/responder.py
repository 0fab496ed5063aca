"""The host's DHCPv4 and DHCPv6 server and IPv6 router advertiser, the OVN way: no daemon, the
agent answers on the OpenFlow channel.

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

IPv6 the same way: a router solicitation or a DHCPv6 client message from a port is answered from
that port's ``Port6`` (``hosts6``, worked out per port like the leases). Unsolicited router
advertisements are the responder's own: each port with advertisements gets three at once when it
appears or its advertisements change (an endpoint plugged, a subnet or router changed), two
seconds apart, then one every 30 to 60 s (jittered per port, RFC 4861's MaxRtrAdvInterval range
kept short so a booting host waits little), all from the same thread (``Schedule``).
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import logging
import random
import select
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from policyfabric.agent.dhcp import dhcp6, ip6, ra
from policyfabric.agent.dhcp.hosts6 import BdConfig, Port6, bd_config, port6
from policyfabric.agent.dhcp.packet import Lease, Malformed, build_reply, decide, parse_request
from policyfabric.agent.renderers.ovs import ofwire as w
from policyfabric.agent.renderers.ovs.switching import dhcp_subnet
from policyfabric.agent.renderers.service_thread import ServiceThread
from policyfabric.agent.view import Endpoint, Network

log = logging.getLogger(__name__)

RETRY = 1.0  # seconds between attempts to (re)connect to the bridge
INITIAL_ADVERTS, INITIAL_INTERVAL = 3, 2.0  # at once when a port's advertisements appear or change
ADVERT_INTERVAL = (30.0, 60.0)  # s: then one in this range, jittered per port
LINK_WIDE_DELAY = 3.0  # s: RFC 4861's MIN_DELAY_BETWEEN_RAS, between answers to a whole link


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
        self.ipv6 = Ports6(net, lease_time)  # the same view's IPv6 side

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


class Ports6(Mapping[int, Port6]):
    """Each local port's IPv6 configuration (``hosts6.Port6``), worked out when asked, as
    ``Leases`` does; iterating visits only endpoints of bridge domains with IPv6 subnets."""

    def __init__(self, net: Network, lease_time: int = 86400) -> None:
        self.net, self.lease_time = net, lease_time
        self._ports: dict[int, Endpoint] | None = None
        self._made: dict[int, Port6 | None] = {}
        self._bds: dict[str, BdConfig] = {}

    def _bd(self, uri: str) -> BdConfig:
        if uri not in self._bds:
            self._bds[uri] = bd_config(self.net, self.net.bds[uri], self.lease_time)
        return self._bds[uri]

    def adverts(self) -> dict[int, tuple[ra.Advert, ...]]:
        """Every port's advertisements (ports with none left out): what the periodic sender
        sends, from one ``BdConfig`` per bridge domain."""
        out = {}
        for port, ep in self._index().items():
            found = self._bd(ep.bd).adverts
            if found:
                out[port] = found
        return out

    def _index(self) -> dict[int, Endpoint]:
        if self._ports is None:
            bds = {uri for uri, bd in self.net.bds.items() if bd.ipv6}
            self._ports = {ep.ofport: ep for ep in self.net.local if ep.ofport is not None and ep.bd in bds}
        return self._ports

    def _port6(self, port: int) -> Port6 | None:
        if port not in self._made:
            ep = self._index().get(port)
            self._made[port] = port6(self._bd(ep.bd), ep) if ep is not None else None
        return self._made[port]

    def __getitem__(self, port: int) -> Port6:
        found = self._port6(port)
        if found is None:
            raise KeyError(port)
        return found

    def __iter__(self) -> Iterator[int]:
        return (port for port in self._index() if self._port6(port) is not None)

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
    by_type: dict[int, int] = field(default_factory=dict)  # DHCPv4 message types
    by_type6: dict[int, int] = field(default_factory=dict)  # DHCPv6 message types, 133 for solicitations
    adverts: int = 0  # unsolicited router advertisements sent


class Schedule:
    """When each port's next unsolicited router advertisement is due. ``update`` with every port's
    advertisements (new or changed: due now, then ``INITIAL_ADVERTS - 1`` more ``INITIAL_INTERVAL``
    apart; gone: forgotten; unchanged: left as scheduled); ``due`` pops what is due and schedules
    its next one. A heap with stale entries skipped (``_at`` holds each port's one true time)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.current: dict[int, tuple[ra.Advert, ...]] = {}
        self._at: dict[int, float] = {}
        self._initial: dict[int, int] = {}
        self._heap: list[tuple[float, int]] = []
        self._links: dict[tuple[ra.Advert, ...], set[int]] = {}  # ports told alike: one link
        self._link_wide: dict[tuple[ra.Advert, ...], float] = {}

    def _put(self, port: int, at: float) -> None:
        self._at[port] = at
        heapq.heappush(self._heap, (at, port))

    def update(self, now: float, adverts: Mapping[int, tuple[ra.Advert, ...]]) -> None:
        for port in [p for p in self.current if p not in adverts]:
            self._leave(port)
            del self.current[port], self._at[port]
            self._initial.pop(port, None)
        for port, ads in adverts.items():
            if self.current.get(port) != ads:
                self._leave(port)
                self.current[port] = ads
                self._links.setdefault(ads, set()).add(port)
                self._initial[port] = INITIAL_ADVERTS - 1
                self._put(port, now)

    def _leave(self, port: int) -> None:
        old = self.current.get(port)
        if old is not None:
            link = self._links.get(old, set())
            link.discard(port)
            if not link:
                self._links.pop(old, None)
                self._link_wide.pop(old, None)

    def solicited(self, port: int, now: float) -> None:
        """A solicitation came from ``port``: every port told the same (its link, as a router's
        multicast answer reaches it) is due now, at most once per ``LINK_WIDE_DELAY``. Endpoints
        that boot together solicit together, and the switch's upcall queue drops part of such a
        burst: any one solicitation that gets through then answers them all."""
        ads = self.current.get(port)
        if ads is None or now - self._link_wide.get(ads, -LINK_WIDE_DELAY) < LINK_WIDE_DELAY:
            return
        self._link_wide[ads] = now
        for peer in self._links.get(ads, ()):
            if self._at.get(peer, now) > now:
                self._put(peer, now)

    def next_in(self, now: float) -> float | None:
        """Seconds until the next advertisement is due (0: now), None: none scheduled."""
        while self._heap and self._at.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def due(self, now: float) -> list[tuple[int, tuple[ra.Advert, ...]]]:
        out = []
        while (wait := self.next_in(now)) is not None and wait <= 0:
            _, port = heapq.heappop(self._heap)
            out.append((port, self.current[port]))
            left = self._initial.get(port, 0)
            if left > 0:
                self._initial[port] = left - 1
                self._put(port, now + INITIAL_INTERVAL)
            else:
                self._initial.pop(port, None)
                self._put(port, now + self.rng.uniform(*ADVERT_INTERVAL))
        return out


class Responder(ServiceThread):
    """The responder thread on ``path`` (a bridge's ``.mgmt`` socket)."""

    def __init__(self, path: Path | str) -> None:
        super().__init__("dhcp-responder", f"dhcp responder: connection to {path}", RETRY)
        self.path = Path(path)
        self.leases: Mapping[int, Lease] = {}
        self.ipv6: Mapping[int, Port6] = {}
        self.counters = Counters()
        self.schedule = Schedule()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)  # a full pipe (the thread away, reconnecting) never blocks update
        self._rescan = True  # the thread works out the ports' advertisements again
        self._xid = 0

    def stop(self) -> None:
        super().stop()
        self._wake_r.close()
        self._wake_w.close()

    def _stopping(self) -> None:
        self._wake()

    def update(self, leases: Mapping[int, Lease], ipv6: Mapping[int, Port6] | None = None) -> None:
        """New answers: ``leases`` (and ``ipv6``, else the IPv6 side of a ``Leases``). One reference
        each: the thread sees the old map or the new, never half. The thread then works out which
        ports' advertisements changed (off the caller's loop) and advertises to those at once."""
        self.leases = leases
        self.ipv6 = ipv6 if ipv6 is not None else leases.ipv6 if isinstance(leases, Leases) else {}
        self._rescan = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed, or its buffer full: the thread wakes anyway
            self._wake_w.send(b"\0")

    # ---- the thread
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
            if self._rescan:
                self._rescan = False
                ipv6 = self.ipv6
                adverts = (
                    ipv6.adverts()
                    if isinstance(ipv6, Ports6)
                    else {port: c.adverts for port, c in ipv6.items() if c.adverts}
                )
                self.schedule.update(time.monotonic(), adverts)
            wait = self.schedule.next_in(time.monotonic()) if self.connected.is_set() else None
            ready, _, _ = select.select([sock, self._wake_r], [], [], wait)
            if self._wake_r in ready:
                self._wake_r.recv(4096)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    raise OSError("closed by the switch")
                buf += data
                self._messages(sock, buf)
            if self.connected.is_set():
                self._advertise(sock)

    def _messages(self, sock: socket.socket, buf: bytearray) -> None:
        while (msg := w.take_message(buf)) is not None:
            _, msg_type, xid, body = msg
            if msg_type == w.OFPT_HELLO:
                self._greeted()
            elif msg_type == w.OFPT_ECHO_REQUEST:
                sock.sendall(w.message(w.OFPT_ECHO_REPLY, xid, body))
            elif msg_type == w.OFPT_PACKET_IN:
                out = self.handle(body)
                if out is not None:
                    sock.sendall(out)
            elif msg_type == w.OFPT_ERROR:
                log.warning("dhcp responder: %s", w.decode_error(xid, body).name)

    def _advertise(self, sock: socket.socket) -> None:
        """The unsolicited advertisements due now, each a packet-out to its port."""
        out = b""
        for port, adverts in self.schedule.due(time.monotonic()):
            for adv in adverts:
                out += w.packet_out(self._next_xid(), port, ra.build_advert(adv))
                self.counters.adverts += 1
        if out:
            sock.sendall(out)

    def handle(self, body: bytes) -> bytes | None:
        """The packet-out answering one packet-in, or None (dropped, counted)."""
        pin = w.decode_packet_in(body)
        if pin is None:
            self.counters.malformed += 1
            return None
        if pin.data[12:14] == ip6.ETH_IPV6.to_bytes(2, "big"):
            return self._handle6(pin.in_port, pin.data)
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

    def _handle6(self, port: int, frame: bytes) -> bytes | None:
        """A router solicitation (answered with the port's advertisements, one packet-out each) or
        a DHCPv6 client message (answered from the port's ``Config6``)."""
        config = self.ipv6.get(port)
        try:
            if len(frame) > 20 and frame[20] == ip6.ICMPV6:
                rs = ra.parse_solicitation(frame)
                self.counters.by_type6[ra.SOLICITATION] = self.counters.by_type6.get(ra.SOLICITATION, 0) + 1
                if config is None or not config.adverts:
                    self.counters.unanswered += 1
                    return None
                self.counters.answered += 1
                self.schedule.solicited(port, time.monotonic())  # sent by ``_advertise`` right after
                return b"".join(
                    w.packet_out(self._next_xid(), port, ra.build_advert(adv, rs)) for adv in config.adverts
                )
            msg = dhcp6.parse_message(frame)
        except (Malformed, ValueError) as exc:  # ValueError: an address ``ipaddress`` refuses
            self.counters.malformed += 1
            log.debug("dhcp responder: port %d sent a malformed IPv6 request: %s", port, exc)
            return None
        self.counters.by_type6[msg.msg_type] = self.counters.by_type6.get(msg.msg_type, 0) + 1
        cfg = config.dhcp6 if config is not None else None
        kind = dhcp6.decide(msg, cfg)
        if kind is None or cfg is None:
            self.counters.unanswered += 1
            return None
        self.counters.answered += 1
        return w.packet_out(self._next_xid(), port, dhcp6.build_reply(msg, kind, cfg))
