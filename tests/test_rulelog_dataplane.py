"""Rule logging with real Open vSwitch (userspace datapath), namespaces and TCP connections.

One host: a contract rule that logs what it allows, one that logs what it drops, one that does
not log; a security group that logs (its rule and its default deny). Each connection's lines are
found by its own source port. A flood of new connections stays within the rate: the datapath's
meter drops the excess copies (its band counts them), the agent writes at most burst + rate x time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from policyfabric.agent.renderers.ovs.logflows import LOG_METER
from policyfabric.agent.rulelog import BURST, FILE, RATE
from policyfabric.lab.lab import Lab
from tests.lab_harness import SCENARIOS, AgentLog, lab_fixture, ns_run, serving, until

pytestmark = [pytest.mark.dataplane, pytest.mark.xdist_group("rulelog")]

lab = lab_fixture(SCENARIOS / "rulelog.yaml")

CONNECT = """
import socket, sys
s = socket.socket()
s.bind(("", int(sys.argv[3])))
s.settimeout(0.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as exc:
    print("failed", exc)
"""


def connect(lab: Lab, src: str, dst: str, port: int, sport: int) -> str:
    """One TCP connection from ``src``'s namespace, from source port ``sport`` (its lines' key);
    a refused one gives up after 0.5 s, before the SYN's first retransmission."""
    done = ns_run(
        lab.state.endpoints[src].netns, sys.executable, "-c", CONNECT, ADDRESS[dst], str(port), str(sport)
    )
    return done.stdout.strip()


ADDRESS = {"web1": "10.7.0.10", "app1": "10.7.0.20", "vm1": "10.7.0.30", "vm2": "10.7.0.31"}  # the scenario's


def lines(lab: Lab) -> list[dict[str, Any]]:
    path = lab.dir / "h1" / "agent" / FILE
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def of(lab: Lab, sport: int) -> list[dict[str, Any]]:
    return [v for v in lines(lab) if v["sport"] == sport]


def settle_lines(lab: Lab, sport: int) -> list[dict[str, Any]]:
    """The lines of the connection from ``sport`` once one is there and a moment has passed (a
    second line, if the flows sent one, would have arrived with it)."""
    until(lambda: of(lab, sport), timeout=10)
    time.sleep(0.5)
    return of(lab, sport)


def test_an_allowed_connection_logs_one_line_naming_the_rule(lab: Lab) -> None:
    with serving(lab, ("web1", "tcp", 80)):
        assert connect(lab, "app1", "web1", 80, 41001) == "connected"
        found = settle_lines(lab, 41001)
    assert len(found) == 1, found
    v = found[0]
    assert (v["verdict"], v["by"]) == ("allowed", "contract acme/http rule web-in")
    assert (v["protocol"], v["src"], v["dst"], v["dport"]) == ("tcp", "10.7.0.20", "10.7.0.10", 80)
    assert (v["src_endpoint"], v["dst_endpoint"]) == ("acme/app1", "acme/web1")
    assert (
        "rule log: allowed tcp 10.7.0.20:41001 -> 10.7.0.10:80" in (lab.dir / "h1" / "agent.log").read_text()
    )


def test_a_dropped_connection_logs_a_dropped_line(lab: Lab) -> None:
    with serving(lab, ("web1", "tcp", 23)):
        assert connect(lab, "app1", "web1", 23, 41002).startswith("failed")
        found = settle_lines(lab, 41002)
    assert [(v["verdict"], v["by"]) for v in found] == [("dropped", "contract acme/http rule telnet")]


def test_a_rule_without_logging_logs_nothing(lab: Lab) -> None:
    with serving(lab, ("web1", "tcp", 8080)):
        assert connect(lab, "app1", "web1", 8080, 41003) == "connected"
        with serving(lab, ("web1", "tcp", 80)):  # a logged one after it: the log is live
            assert connect(lab, "app1", "web1", 80, 41004) == "connected"
            settle_lines(lab, 41004)
    assert of(lab, 41003) == []


def test_a_logging_security_group_logs_its_rule_and_its_default_deny(lab: Lab) -> None:
    with serving(lab, ("vm1", "tcp", 22), ("vm1", "tcp", 80)):
        assert connect(lab, "vm2", "vm1", 22, 41005) == "connected"
        assert connect(lab, "vm2", "vm1", 80, 41006).startswith("failed")
        allowed, dropped = settle_lines(lab, 41005), settle_lines(lab, 41006)
    assert [(v["verdict"], v["by"]) for v in allowed] == [("allowed", "security-group acme/ssh rule 0")]
    assert [(v["verdict"], v["by"]) for v in dropped] == [
        ("dropped", "default deny (security groups of acme/vm1, ingress)")
    ]


def test_policyfabric_logs_shows_the_lines(lab: Lab) -> None:
    # left by the first test, unless this module's lab was made again (xdist may run another
    # module's tests between two of this one's, and the module's fixture is then set up anew)
    if not of(lab, 41001):
        with serving(lab, ("web1", "tcp", 80)):
            assert connect(lab, "app1", "web1", 80, 41001) == "connected"
    until(lambda: of(lab, 41001), timeout=10)
    done = subprocess.run(
        [sys.executable, "-m", "policyfabric", "logs", str(lab.dir), "--endpoint", "acme/web1", "-n", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "allowed tcp 10.7.0.20:41001 -> 10.7.0.10:80 (acme/app1 -> acme/web1) "
        "by contract acme/http rule web-in" in done.stdout
    )


FLOOD = """
import socket, sys, time
start = time.monotonic()
socks = []
for i in range(int(sys.argv[3])):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex((sys.argv[1], int(sys.argv[2])))
    socks.append(s)
print(time.monotonic() - start)
time.sleep(0.3)
"""


def meter_dropped(lab: Lab) -> int:
    rundir = Path(lab.state.hosts["h1"].rundir)
    done = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "meter-stats", f"unix:{rundir}/br-int.mgmt", f"meter={LOG_METER}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.split("packet_count:")[-1].split()[0])


def test_a_flood_of_new_connections_stays_within_the_rate(lab: Lab) -> None:
    n = 1500
    before, dropped_before = len(lines(lab)), meter_dropped(lab)
    start = time.monotonic()
    done = ns_run(lab.state.endpoints["vm2"].netns, sys.executable, "-c", FLOOD, "10.7.0.30", "80", str(n))
    assert done.returncode == 0, done.stderr
    time.sleep(1.0)
    elapsed = time.monotonic() - start
    written = len(lines(lab)) - before
    dropped = meter_dropped(lab) - dropped_before
    print(f"flood: {n} new connections in {float(done.stdout.split()[0]):.2f} s; {written} lines "
          f"in {elapsed:.2f} s; the meter dropped {dropped} copies")  # fmt: skip
    assert written <= BURST + RATE * elapsed  # the limit holds
    assert written >= min(BURST, n) // 2  # and logging went on under the flood
    assert dropped > 0  # the datapath's meter did the limiting, before the agent


def meter_seen(lab: Lab) -> int:
    """Copies the meter has seen (passed or dropped): what the logging flows sent through it."""
    rundir = Path(lab.state.hosts["h1"].rundir)
    done = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "meter-stats", f"unix:{rundir}/br-int.mgmt", f"meter={LOG_METER}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(done.stdout.split("packet_in_count:")[1].split()[0])


def restart_vswitchd(lab: Lab) -> None:
    """ovs-vswitchd killed and started again (its flows and meters die with it; ovsdb-server and
    the agent stay): the agent puts the flows back, the rule log creates the meter again."""
    rundir = Path(lab.state.hosts["h1"].rundir)
    pid = int((rundir / "ovs-vswitchd.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    until(lambda: not Path(f"/proc/{pid}").exists(), timeout=10)
    subprocess.run(
        ["ip", "netns", "exec", lab.state.hosts["h1"].netns, "ovs-vswitchd", f"unix:{rundir}/db.sock",
         f"--pidfile={rundir / 'ovs-vswitchd.pid'}", f"--unixctl={rundir / 'ovs-vswitchd.ctl'}",
         f"--log-file={rundir / 'ovs-vswitchd.log'}", "--detach"],
        check=True, env={**os.environ, "OVS_RUNDIR": str(rundir)},
    )  # fmt: skip


def test_after_a_vswitchd_restart_logging_flows_use_the_new_meter(lab: Lab) -> None:
    agent_log = AgentLog(lab, "h1")
    restart_vswitchd(lab)
    # the agent puts the flows back; the rule log, reconnected, creates the meter and, as the flows
    # were there first (OVS bound them to no meter), sends them again
    until(lambda: "logging flows sent again to use the new meter" in agent_log.since(), timeout=30)
    with serving(lab, ("web1", "tcp", 80)):
        until(lambda: connect(lab, "app1", "web1", 80, 0) == "connected", timeout=30)
        seen = meter_seen(lab)
        assert connect(lab, "app1", "web1", 80, 41010) == "connected"
        assert [v["by"] for v in settle_lines(lab, 41010)] == ["contract acme/http rule web-in"]
    assert meter_seen(lab) > seen  # the copy went through the meter: the flow was pointed at it
