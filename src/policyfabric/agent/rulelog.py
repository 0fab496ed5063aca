"""Rule logging: one line per new connection a logging rule decided, named as the intent names it.

The flows send the first packet of each judged connection to the agent with 6 bytes saying what
decided (``renderers/ovs/logflows.py``); the rule log's OpenFlow connection hands them here
(``renderers/ovs/rulelog.py``). This module is the pure part: the ``Namer`` turns those bytes and
the packet into a ``Verdict`` with the rule's intent name (``contract acme/http rule web-in``,
``security-group acme/ssh rule 0``, ``default deny (security groups of acme/web1, ingress)``),
the 5-tuple and the endpoints' names, from the agent's current view; the ``Sink`` rate-limits
(a token bucket behind the datapath's meter: the meter bounds what reaches the agent, the bucket
what reaches its log), writes each line through the agent's logger (``--log-format json`` gives
the fields as JSON) and appends it to ``rulelog.jsonl`` in the agent's state directory (bounded:
one rotation), which ``policyfabric logs`` reads.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from policyfabric.agent.renderers.logcodes import DEFAULT_DENY_IN, RULE, Decided, rule_id
from policyfabric.agent.renderers.ovs.rulelog import LoggedPacket, RuleLogChannel
from policyfabric.agent.view import Network

log = logging.getLogger("policyfabric.rulelog")

FILE = "rulelog.jsonl"  # in the agent's state directory
MAX_FILE_LINES = 100_000  # then rotated once to rulelog.jsonl.1
RATE = 100.0  # lines per second the agent writes, at most (the meter lets a little more arrive)
BURST = 200  # lines it may write at once after a quiet spell
RING = 1000  # recent lines kept in memory


@dataclass(frozen=True)
class Packet:
    """What the log line says of the packet: protocol and 5-tuple (ICMP: type and code as ports)."""

    protocol: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None


_PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


def parse_ip(data: bytes) -> Packet | None:
    """``parse_packet`` of an IP packet without its Ethernet header (the netfilter log's)."""
    if not data:
        return None
    ethertype = b"\x86\xdd" if data[0] >> 4 == 6 else b"\x08\x00"
    return parse_packet(bytes(12) + ethertype + data)


def parse_packet(data: bytes) -> Packet | None:
    """An Ethernet frame's IP header and ports; None for what is not IP or is cut short. The frame
    comes from the switch, but it is read bounded like anything off a socket."""
    if len(data) < 14:
        return None
    (ethertype,) = struct.unpack_from("!H", data, 12)
    offset = 14
    if ethertype == 0x8100 and len(data) >= 18:
        (ethertype,) = struct.unpack_from("!H", data, 16)
        offset = 18
    if ethertype == 0x0800 and len(data) >= offset + 20:
        ihl = (data[offset] & 0x0F) * 4
        proto = data[offset + 9]
        src = str(ipaddress.IPv4Address(data[offset + 12 : offset + 16]))
        dst = str(ipaddress.IPv4Address(data[offset + 16 : offset + 20]))
        l4 = offset + ihl
    elif ethertype == 0x86DD and len(data) >= offset + 40:
        proto = data[offset + 6]  # extension headers are not followed: the protocol is then theirs
        src = str(ipaddress.IPv6Address(data[offset + 8 : offset + 24]))
        dst = str(ipaddress.IPv6Address(data[offset + 24 : offset + 40]))
        l4 = offset + 40
    else:
        return None
    name = _PROTOCOLS.get(proto, str(proto))
    if proto in (6, 17) and len(data) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", data, l4)
        return Packet(name, src, dst, sport, dport)
    if proto in (1, 58) and len(data) >= l4 + 2:
        return Packet(name, src, dst, data[l4], data[l4 + 1])
    return Packet(name, src, dst)


def _tenant_name(uri: str) -> str:
    """``/PolicyUniverse/PolicySpace/acme/GbpContract/http/`` → ``acme/http``."""
    parts = uri.strip("/").split("/")
    return f"{parts[2]}/{parts[4]}" if len(parts) >= 5 else uri


def _rule_names(net: Network) -> dict[int, str]:
    """The logging rules' log ids → their names as the intent gives them."""
    rules: dict[int, str] = {}
    for contract in net.contracts.values():
        for rule in contract.rules:
            if rule.log:
                rname = rule.key.rpartition(".")[2] if "." in rule.key else rule.key
                rules[rule_id(contract.uri, rule.key)] = f"contract {_tenant_name(contract.uri)} rule {rname}"
    for sg in net.security_groups.values():
        for sg_rule in sg.rules:
            if sg_rule.log:
                number = sg_rule.key.rpartition("#")[2]
                rules[rule_id(sg_rule.key)] = f"security-group {_tenant_name(sg.uri)} rule {number}"
    return rules


@dataclass(frozen=True)
class Verdict:
    """One log line's fields."""

    time: str
    host: str
    verdict: str  # allowed | dropped
    by: str  # the rule, as the intent names it
    protocol: str
    src: str
    dst: str
    sport: int | None
    dport: int | None
    src_endpoint: str | None
    dst_endpoint: str | None

    def text(self) -> str:
        """The plain one-line form: ``allowed tcp 10.0.0.1:40000 -> 10.0.0.2:80 (acme/web1 ->
        acme/db1) by contract acme/http rule web-in``."""

        def end(addr: str, port: int | None) -> str:
            shown = f"[{addr}]" if ":" in addr and port is not None else addr
            return f"{shown}:{port}" if port is not None else shown

        names = f" ({self.src_endpoint or '?'} -> {self.dst_endpoint or '?'})"
        if self.protocol in ("icmp", "icmpv6"):  # the ports are its type and code
            kind = f" type {self.sport} code {self.dport}" if self.sport is not None else ""
            return f"{self.verdict} {self.protocol} {self.src} -> {self.dst}{kind}{names} by {self.by}"
        return (
            f"{self.verdict} {self.protocol} {end(self.src, self.sport)} -> {end(self.dst, self.dport)}"
            f"{names} by {self.by}"
        )


class Namer:
    """Names what decided from the agent's view. ``update`` (after each reconcile, on the agent's
    loop) only keeps the view: the names are looked up by the rule log's thread when a line is
    written, each map made again only when the part of the view it reads is no longer the object it
    was made from (the view keeps the identity of the parts that did not change). Rebuilding the
    maps on every reconcile cost ~12 ms at 10,000 endpoints, in every change's latency, whether or
    not anything was ever logged; now a change costs one reference, and the first line after it
    pays for what that change touched (the endpoints' maps when they changed, the rules' when a
    contract or security group did)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._net: Network | None = None
        self._lock = threading.Lock()  # the rule log's threads (OpenFlow, netfilter) share the maps
        self._rules: tuple[object, object, Mapping[int, str]] = (None, None, {})
        self._ports: tuple[object, Mapping[int, str]] = (None, {})
        self._addresses: tuple[object, object, Mapping[str, str]] = (None, None, {})
        self.builds = 0  # maps made (what the names cost: one per part changed and then logged)

    def update(self, net: Network) -> None:
        self._net = net  # one reference swap: a reader sees the old view or the new

    def _maps(self) -> tuple[Mapping[int, str], Mapping[int, str], Mapping[str, str]]:
        """(rule id → name, OpenFlow port → endpoint, address → endpoint) of the current view."""
        net = self._net
        if net is None:
            return {}, {}, {}
        with self._lock:
            if self._rules[0] is not net.contracts or self._rules[1] is not net.security_groups:
                self._rules = (net.contracts, net.security_groups, _rule_names(net))
                self.builds += 1
            if self._ports[0] is not net.local:
                ports = {e.ofport: e.key for e in net.local if e.ofport is not None}
                self._ports = (net.local, ports)
                self.builds += 1
            if self._addresses[0] is not net.local or self._addresses[1] is not net.remote:
                addresses: dict[str, str] = {ip: e.key for e in (*net.local, *net.remote) for ip in e.ips}
                self._addresses = (net.local, net.remote, addresses)
                self.builds += 1
            return self._rules[2], self._ports[1], self._addresses[2]

    def verdict(self, decided: Decided, packet: Packet, when: float | None = None) -> Verdict:
        rules, ports, addresses = self._maps()
        if decided.kind == RULE:
            by = rules.get(decided.ident, f"a rule no longer in the policy (log id {decided.ident})")
        else:
            inbound = decided.kind == DEFAULT_DENY_IN
            if decided.ident:  # a port (Open vSwitch)
                port = ports.get(decided.ident, f"port {decided.ident}")
            else:  # 0: the endpoint the packet goes to (ingress) or comes from (egress): nftables
                address = packet.dst if inbound else packet.src
                port = addresses.get(address, address)
            by = f"default deny (security groups of {port}, {'ingress' if inbound else 'egress'})"
        stamp = datetime.datetime.fromtimestamp(time.time() if when is None else when, tz=datetime.UTC)
        return Verdict(
            time=stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            host=self.host,
            verdict="allowed" if decided.allowed else "dropped",
            by=by,
            protocol=packet.protocol,
            src=packet.src,
            dst=packet.dst,
            sport=packet.sport,
            dport=packet.dport,
            src_endpoint=addresses.get(packet.src),
            dst_endpoint=addresses.get(packet.dst),
        )


class TokenBucket:
    """At most ``rate`` a second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Sink:
    """Where verdicts go: the logger, a ring of recent ones, the state directory's file. Lines
    over the rate are counted (``suppressed``) and said once a second at most."""

    def __init__(
        self, state_dir: Path | None, rate: float = RATE, burst: int = BURST, max_lines: int = MAX_FILE_LINES
    ) -> None:
        self.path = state_dir / FILE if state_dir is not None else None
        self.bucket = TokenBucket(rate, burst)
        self.recent: deque[Verdict] = deque(maxlen=RING)
        self.written = 0
        self.suppressed = 0
        self._max_lines = max_lines
        self._lines = 0
        self._told = 0.0
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():  # a restart goes on counting toward rotation
            with self.path.open("rb") as f:
                self._lines = sum(1 for _ in f)

    def __call__(self, verdict: Verdict) -> bool:
        """Log ``verdict`` unless over the rate; whether it was."""
        with self._lock:
            if not self.bucket.take():
                self.suppressed += 1
                now = time.monotonic()
                if now - self._told >= 1.0:
                    self._told = now
                    log.warning(
                        "rule log: over %.0f lines/s, %d suppressed so far", self.bucket.rate, self.suppressed
                    )
                return False
            self.written += 1
            self.recent.append(verdict)
            fields = asdict(verdict)
            log.info("rule log: %s", verdict.text(), extra={"rulelog": fields})
            if self.path is not None:
                self._append(json.dumps(fields))
            return True

    def _append(self, line: str) -> None:
        assert self.path is not None
        if self._lines >= self._max_lines:
            self.path.replace(self.path.with_name(FILE + ".1"))
            self._lines = 0
        with self.path.open("a") as f:
            f.write(line + "\n")
        self._lines += 1


def read_lines(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The verdicts in rule log files (older rotation first), in time order; lines that do not
    parse (a write cut by a crash) are skipped."""
    found: list[dict[str, Any]] = []
    for path in paths:
        for name in (path.with_name(path.name + ".1"), path):
            if not name.exists():
                continue
            for line in name.read_text().splitlines():
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(item, dict):
                    found.append(item)
    return sorted(found, key=lambda v: str(v.get("time", "")))


class RuleLog:
    """The agent's rule log, one per agent: the namer and the one sink (so one writer of
    ``rulelog.jsonl``: one lock, one rotation count) fed by whichever renderers log. The Open
    vSwitch copies arrive on the rule log's OpenFlow connection (``channel``, when the bridge's
    management socket is local); an nftables renderer is handed ``write_ip`` (its
    ``RendererContext.rule_log``) and reads its netfilter log itself. The datapath meter and the
    sink's bucket have the same rate: the meter keeps a flood off the agent, the bucket keeps the
    log within it whatever the datapath does."""

    def __init__(
        self, mgmt: Path | None, host: str, state_dir: Path | None, rate: float = RATE, burst: int = BURST
    ) -> None:
        self.namer = Namer(host)
        self.sink = Sink(state_dir, rate, burst)
        self.channel = RuleLogChannel(mgmt, self._handle, int(rate), burst) if mgmt is not None else None

    def _handle(self, logged: LoggedPacket) -> None:
        packet = parse_packet(logged.data)
        if packet is not None:
            self.sink(self.namer.verdict(logged.decided, packet))

    def write_ip(self, decided: Decided, data: bytes) -> None:
        """Log a verdict on an IP packet (no Ethernet header): the netfilter log's."""
        packet = parse_ip(data)
        if packet is not None:
            self.sink(self.namer.verdict(decided, packet))

    def on_meter_created(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` when the switch's meter is created (the logging flows must be repointed)."""
        if self.channel is not None:
            self.channel.on_created = wake

    def start(self) -> None:
        if self.channel is not None:
            self.channel.start()

    def stop(self) -> None:
        if self.channel is not None:
            self.channel.stop()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the switch has the meter (within ``timeout`` s): logging flows added before it
        would stay unmetered (``renderers/ovs/rulelog.py``). No channel: nothing to wait for."""
        return self.channel is None or self.channel.meter_ready.wait(timeout)

    def repoint_if_created(self, installed: Mapping[Any, Any] | None) -> None:
        """The meter was just created (a restarted switch): the logging flows among ``installed``
        (what the agent put on the bridge, after a sync) are sent again so that they use it; the
        flows a full sync left as they were (equal text) are among them. Unknown (None): later."""
        channel = self.channel
        if channel is not None and channel.created.is_set() and installed is not None:
            channel.created.clear()
            channel.repoint(list(installed.values()))
