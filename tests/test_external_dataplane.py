"""External networks with real Open vSwitch, namespaces and packets: floating IPs NATed on the
endpoint's host, SNAT on the elected gateway host, and that gateway failing over to its standby."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.lab.ovs import OvsInstance
from policyfabric.model import scenario as sc
from tests.lab_harness import SCENARIOS, lab_fixture, measured, serving, settled, until

pytestmark = pytest.mark.dataplane
SCENARIO = SCENARIOS / "external.yaml"

PEER_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    c, addr = s.accept()
    print(addr[0], flush=True)
    c.close()
"""


lab = lab_fixture(SCENARIO)


def source_seen_outside(lab: Lab, src: str, port: int) -> str:
    """The source address internet1 sees when ``src`` connects to it."""
    netns = lab.state.external_hosts["internet1"].netns
    server = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", PEER_SERVER, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert measured(lab, src, "internet1", f"tcp/{port}") == "allow"
        return server.stdout.readline().strip()
    finally:
        server.kill()
        server.wait()


def nat_packets(lab: Lab, host: str) -> int:
    """Packets through the host's SNAT/floating-IP table (71) so far."""
    ovs = OvsInstance(Path(lab.state.hosts[host].rundir))
    flows = ovs.ofctl("--no-names", "dump-flows", ovs.mgmt("br-int"), "table=71")
    return sum(int(m) for m in re.findall(r"n_packets=(\d+)", flows))


def test_the_external_matrix_matches_the_intent(lab: Lab) -> None:
    results = lab.probe(checked_plan(sc.load(SCENARIO)).expect)
    assert [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok] == []


def nat_counts(lab: Lab, *hosts: str) -> dict[str, int]:
    return {h: settled(lambda h=h: nat_packets(lab, h)) for h in hosts}  # type: ignore[misc]


def test_a_floating_ip_is_the_source_outside_and_nat_happens_on_the_endpoints_host(lab: Lab) -> None:
    before = nat_counts(lab, "h1", "gw1", "gw2")
    assert source_seen_outside(lab, "web1", 9001) == "203.0.113.10"
    after = nat_counts(lab, "h1", "gw1", "gw2")
    assert after["h1"] > before["h1"]  # web1's host did the NAT ...
    assert (after["gw1"], after["gw2"]) == (before["gw1"], before["gw2"])  # ... no gateway was involved


def test_snat_goes_through_the_elected_gateway_only(lab: Lab) -> None:
    """The active gateway NATs, the standby does not. Which one is active depends on which reported
    its ports first at start (the election never preempts): gw1 unless gw2's agent was quicker."""
    active = lab.active_gateway("acme/r1")
    assert active in ("gw1", "gw2")
    standby = "gw2" if active == "gw1" else "gw1"
    before = nat_counts(lab, "h2", "gw1", "gw2")
    assert source_seen_outside(lab, "app1", 9002) == "203.0.113.2"  # the router's external address
    after = nat_counts(lab, "h2", "gw1", "gw2")
    assert after[active] > before[active]
    assert after[standby] == before[standby]
    assert after["h2"] == before["h2"]  # app1 has no floating IP: not NATed at home


def test_the_outside_cannot_open_connections_through_snat(lab: Lab) -> None:
    with serving(lab, ("app1", "tcp", 8081)):
        assert measured(lab, "app1", "internet1", "icmp") == "allow"  # the SNAT path is up
        assert measured(lab, "internet1", "r1", "tcp/8081") == "deny"


class PingStream:
    """A ping stream (every 50 ms) with a timestamp per reply, line-buffered into a file so a test
    can see replies arrive (``replies``) while it runs."""

    def __init__(self, lab: Lab, src: str, dst: str, seconds: float, out: Path) -> None:
        self.out = out
        count = str(int(seconds / 0.05))
        with out.open("w") as sink:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", lab.state.endpoints[src].netns, "stdbuf", "-oL", "ping", "-n",
                 "-D", "-i", "0.05", "-W", "1", "-c", count, lab.address_of(dst)],
                stdout=sink, text=True,
            )  # fmt: skip

    def replies(self) -> list[float]:
        return reply_times(self.out.read_text())

    def finish(self, timeout: float = 30) -> str:
        """Wait for the stream to end; everything it printed."""
        self.proc.wait(timeout)
        return self.out.read_text()


def reply_times(output: str) -> list[float]:
    return [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", output, re.M)]


def test_snat_fails_over_to_the_standby_when_the_active_gateway_dies(lab: Lab, tmp_path: Path) -> None:
    victim = lab.active_gateway("acme/r1")
    assert victim in ("gw1", "gw2")
    standby = "gw2" if victim == "gw1" else "gw1"
    stream = PingStream(lab, "app1", "internet1", 12, tmp_path / "ping.out")
    until(lambda: len(stream.replies()) >= 5)  # SNAT traffic flows through the active gateway
    killed = time.time()
    lab.fail(victim)
    output = stream.finish()
    recovered = [t for t in reply_times(output) if t > killed]
    assert [t for t in reply_times(output) if t < killed], "no SNAT traffic before the failure"
    assert recovered, f"SNAT traffic never came back through the standby:\n{output[-600:]}"
    assert recovered[0] - killed < 5.0
    assert source_seen_outside(lab, "app1", 9003) == "203.0.113.2"  # same address, other host
    # the healed host comes back as a standby: no second interruption (no preemption)
    assert lab.active_gateway("acme/r1") == standby
    lab.heal(victim)
    until(lambda: measured(lab, "app1", "internet1", "icmp") == "allow", timeout=10)
    before = nat_counts(lab, "gw1", "gw2")
    assert source_seen_outside(lab, "app1", 9004) == "203.0.113.2"
    after = nat_counts(lab, "gw1", "gw2")
    assert after[victim] == before[victim] and after[standby] > before[standby]


def test_snat_fails_over_when_the_active_gateway_is_cut_off_silently(lab: Lab, tmp_path: Path) -> None:
    """No goodbye this time: links down and the agent frozen; the authority notices by keepalive."""
    victim = lab.active_gateway("acme/r1")
    assert victim is not None
    stream = PingStream(lab, "app1", "internet1", 10, tmp_path / "ping.out")
    until(lambda: len(stream.replies()) >= 5)
    cut = time.time()
    lab.fail(victim, cut=True)
    try:
        output = stream.finish()
        recovered = [t for t in reply_times(output) if t > cut + 0.1]
        assert recovered, f"SNAT traffic never came back through the standby:\n{output[-600:]}"
        assert recovered[0] - cut < 5.0
        assert lab.active_gateway("acme/r1") != victim
    finally:
        lab.heal(victim)
    until(lambda: measured(lab, "app1", "internet1", "icmp") == "allow", timeout=10)
    assert lab.active_gateway("acme/r1") != victim  # back, and a standby
