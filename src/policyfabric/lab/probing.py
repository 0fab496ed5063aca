"""Probing a running lab with real packets: what an ``expect`` line measures.

A probe runs in the source's namespace: ping for ICMP, ``policyfabric.lab.probe`` (the
stand-alone probe programs) for a TCP connect, a UDP echo or a bulk transfer (1 MiB each way on
one TCP connection), against a probe server in the target's namespace. A deny must never be a
closed port, so ``probe`` starts the servers first. ``tcp6``, ``udp6``, ``icmpv6`` and ``bulk6``
aim at the target's global IPv6 address, the others at its IPv4 address. Each probe has a short
timeout and a second attempt: a lost first packet (ARP, a flow still being installed) is not a
deny. A bulk transfer has one attempt with a longer timeout: TCP itself retransmits what is lost,
and what does not get through in that time (a packet too big for the path, dropped without a
word) is the failure it measures.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from policyfabric.lab.plan import Expect, LabError
from policyfabric.lab.probe import BULK_TIMEOUT
from policyfabric.lab.state import LabState
from policyfabric.sh import CommandFailed

PROBE_TIMEOUT = 1.0
PROBE_ATTEMPTS = 2
PARALLEL = 4  # probes at once: enough to be quick, few enough for a 2-core machine
V6_PROBES = ("icmpv6", "tcp6", "udp6", "bulk6")
# probe kind -> the probe program's client and server (servers take both families)
PROGRAM = {"tcp": "tcp", "tcp6": "tcp", "udp": "udp", "udp6": "udp", "bulk": "bulk", "bulk6": "bulk"}


@dataclass(frozen=True)
class ProbeResult:
    expect: Expect
    measured: str  # allow | deny | error: ...

    @property
    def ok(self) -> bool:
        return self.measured == self.expect.result

    def to_json(self) -> dict[str, Any]:
        e = self.expect
        return {
            "from": e.source,
            "to": e.target,
            "probe": e.probe,
            "expected": e.result,
            "measured": self.measured,
            "ok": self.ok,
        }


def address_of(state: LabState, name: str, v6: bool = False) -> str:
    """The address probes aim at: an endpoint's (its first of the family: declared, or its SLAAC
    address), a floating IP's (or router's) or an external host's."""
    if name in state.external_addresses:
        ips: tuple[str, ...] = (state.external_addresses[name].ip,)
    elif name in state.external_hosts:
        ips = (state.external_hosts[name].ip,)
    elif name in state.endpoints:
        ips = state.endpoints[name].ips
    else:
        raise LabError(f"{name!r} is not an endpoint, floating IP or external host of this lab")
    for ip in ips:
        if (":" in ip) == v6:
            return ip
    raise LabError(f"{name} has no IPv{'6' if v6 else '4'} address")


def netns_of(state: LabState, name: str) -> str | None:
    """Where traffic to or from ``name`` starts or ends: an endpoint's or external host's
    namespace; a floating IP's endpoint's (a router's SNAT address has none)."""
    address = state.external_addresses.get(name)
    if address is not None:
        if address.endpoint is None:
            return None
        name = address.endpoint
    found = state.endpoints.get(name) or state.external_hosts.get(name)
    return found.netns if found else None


def probe_one(state: LabState, x: Expect) -> ProbeResult:
    """One expectation measured: allow if any attempt got through, deny if none, or the error."""
    try:
        src = state.endpoints.get(x.source) or state.external_hosts.get(x.source)
        if src is None:
            raise LabError(f"{x.source!r} is not an endpoint or external host of this lab")
        proto, _, port = x.probe.partition("/")
        dst = address_of(state, x.target, v6=proto in V6_PROBES)
        attempts, timeout = PROBE_ATTEMPTS, PROBE_TIMEOUT
        if proto in ("icmp", "icmpv6"):
            cmd = ["ping", "-n", "-q", "-c", "1", "-W", str(int(PROBE_TIMEOUT)), dst]
        else:
            program = PROGRAM[proto]
            if program == "bulk":
                attempts, timeout = 1, BULK_TIMEOUT
            cmd = [sys.executable, "-m", "policyfabric.lab.probe", program, dst, port, str(timeout)]
        for _ in range(attempts):
            done = subprocess.run(["ip", "netns", "exec", src.netns, *cmd], capture_output=True, timeout=30)
            if done.returncode == 0:
                return ProbeResult(x, "allow")
        return ProbeResult(x, "deny")
    except (LabError, CommandFailed, subprocess.TimeoutExpired) as exc:
        return ProbeResult(x, f"error: {exc}")


def probe(state: LabState, expects: list[Expect]) -> list[ProbeResult]:
    """Every expectation measured, with probe servers up in the targets' namespaces meanwhile."""
    wanted = set()  # one server per namespace and port (an endpoint and its floating IP share it)
    for x in expects:
        proto, _, port = x.probe.partition("/")
        netns = netns_of(state, x.target)
        if proto in PROGRAM and netns is not None:
            wanted.add((netns, PROGRAM[proto], port))
    # a bulk server also takes plain connects: one listener for tcp/N and bulk/N on one port
    wanted -= {(netns, "tcp", port) for netns, program, port in wanted if program == "bulk"}
    servers = []
    try:
        for netns, proto, port in sorted(wanted):
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, sys.executable, "-m", "policyfabric.lab.probe",
                 "serve", proto, port],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            servers.append(proc)
            assert proc.stdout is not None
            proc.stdout.readline()  # "ready"
        with ThreadPoolExecutor(PARALLEL) as pool:
            return list(pool.map(lambda x: probe_one(state, x), expects))
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
