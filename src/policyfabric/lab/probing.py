"""Probing a running lab with real packets: what an ``expect`` line measures.

A probe runs in the source's namespace: ping for ICMP, ``policyfabric.lab.probe`` (the
stand-alone probe programs) for a TCP connect or a UDP echo, against a probe server in the
target's namespace. A deny must never be a closed port, so ``probe`` starts the servers
first. Each probe has a short timeout and a second attempt: a lost first packet (ARP, a
flow still being installed) is not a deny.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from policyfabric.lab.plan import Expect, LabError
from policyfabric.lab.state import LabState
from policyfabric.sh import CommandFailed

PROBE_TIMEOUT = 1.0
PROBE_ATTEMPTS = 2
PARALLEL = 4  # probes at once: enough to be quick, few enough for a 2-core machine


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
    """The address probes aim at: an endpoint's, a floating IP's (or router's) or an external host's."""
    if name in state.external_addresses:
        return state.external_addresses[name].ip
    if name in state.external_hosts:
        return state.external_hosts[name].ip
    ep = state.endpoints.get(name)
    if ep is None:
        raise LabError(f"{name!r} is not an endpoint, floating IP or external host of this lab")
    for ip in ep.ips:
        if (":" in ip) == v6:
            return ip
    raise LabError(f"endpoint {name} has no IPv{'6' if v6 else '4'} address")


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
        dst = address_of(state, x.target, v6=proto == "icmpv6")
        if proto in ("icmp", "icmpv6"):
            cmd = ["ping", "-n", "-q", "-c", "1", "-W", str(int(PROBE_TIMEOUT)), dst]
        else:
            cmd = [sys.executable, "-m", "policyfabric.lab.probe", proto, dst, port, str(PROBE_TIMEOUT)]
        for _ in range(PROBE_ATTEMPTS):
            done = subprocess.run(["ip", "netns", "exec", src.netns, *cmd], capture_output=True, timeout=30)
            if done.returncode == 0:
                return ProbeResult(x, "allow")
        return ProbeResult(x, "deny")
    except (LabError, CommandFailed, subprocess.TimeoutExpired) as exc:
        return ProbeResult(x, f"error: {exc}")


def probe(state: LabState, expects: list[Expect]) -> list[ProbeResult]:
    """Every expectation measured, with probe servers up in the targets' namespaces meanwhile."""
    wanted = {
        (netns, *x.probe.partition("/")[::2])
        for x in expects
        if x.probe.startswith(("tcp/", "udp/")) and (netns := netns_of(state, x.target)) is not None
    }  # one server per namespace and port (an endpoint and its floating IP share it)
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
