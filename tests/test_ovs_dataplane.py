"""Real Open vSwitch, real namespaces, real packets.

One two-host lab (module scope) serves most tests; each test leaves the
intent as it found it. `lab verify` itself is exercised end to end in
test_lab_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from policyfabric.client import Client
from policyfabric.lab.lab import Lab
from policyfabric.model import kinds as k
from tests.lab_harness import (
    SCENARIOS,
    AgentLog,
    endpoint,
    flows_with_age,
    lab_fixture,
    measured,
    ns_run,
    serve,
    serving,
    until,
)

pytestmark = pytest.mark.dataplane


lab = lab_fixture(SCENARIOS / "two_hosts.yaml")


def contract(client: Client) -> dict:  # type: ignore[type-arg]
    return client.list(k.CONTRACT, tenant="acme", name="http")[0]


def set_rules(client: Client, rules: list[dict]) -> None:  # type: ignore[type-arg]
    c = contract(client)
    client.replace(k.CONTRACT, c["id"], {"name": "http", "tenant": "acme", "rules": rules})


HTTP = [{"name": "web-in", "classifier": {"protocol": "tcp", "port": 80}, "action": "allow"}]


def test_endpoints_are_active_and_bound_to_their_hosts(lab: Lab) -> None:
    for name, host in (("web1", "h1"), ("app1", "h2")):
        ep = endpoint(lab, name)
        assert ep["status"] == "ACTIVE" and ep["host"] == host
        assert ep["interface"] == lab.state.endpoints[name].port


def test_contract_added_changed_removed_takes_effect(lab: Lab) -> None:
    """tcp/8080 app → web: denied, allowed once a rule is added, denied again once removed."""
    ports = [(ep, "tcp", port) for ep in ("web1", "web2") for port in (80, 8080, 8081)]
    with serving(lab, *ports):
        assert measured(lab, "app1", "web1", "tcp/8080") == "deny"
        with Client(lab.state.url) as client:
            extra = {"name": "alt", "classifier": {"protocol": "tcp", "port": 8080}, "action": "allow"}
            start = time.monotonic()
            set_rules(client, [*HTTP, extra])
            added = until(lambda: measured(lab, "app1", "web2", "tcp/8080") == "allow") + 0
            print(f"rule added: cross-host path open {time.monotonic() - start:.2f} s after the REST call")
            assert measured(lab, "app2", "web1", "tcp/8080") == "allow"  # same host too
            # changed: the rule now says 8081, so 8080 closes
            set_rules(client, [*HTTP, {**extra, "classifier": {"protocol": "tcp", "port": 8081}}])
            until(lambda: measured(lab, "app1", "web2", "tcp/8080") == "deny")
            assert measured(lab, "app1", "web1", "tcp/8081") == "allow"
            set_rules(client, HTTP)
            removed = until(lambda: measured(lab, "app1", "web1", "tcp/8081") == "deny")
            assert measured(lab, "app1", "web1", "tcp/80") == "allow"
        assert added < 10 and removed < 10


SEND = """
import sys
from scapy.all import Ether, IP, TCP, sendp
src_mac, src_ip, dst_mac, dst_ip = sys.argv[1:5]
sendp(Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / TCP(sport=4242, dport=80, flags="S"),
      iface="eth0", count=3, verbose=False)
"""
SNIFF = """
import sys, time
from scapy.all import TCP, AsyncSniffer
def ours(p):
    return TCP in p and p[TCP].sport == 4242 and p[TCP].dport == 80
sniffer = AsyncSniffer(iface="eth0", lfilter=ours, started_callback=lambda: print("ready", flush=True))
sniffer.start()
sys.stdin.readline()  # the sender is done: whatever was let through has arrived within a moment
time.sleep(0.5)
print(len(sniffer.stop()), flush=True)
"""


def test_spoofed_source_mac_or_ip_is_dropped(lab: Lab) -> None:
    """app1 (h2) sends SYNs to web2 (h2) and web1 (h1): genuine ones arrive, spoofed ones never do."""
    app1 = lab.state.endpoints["app1"]
    web1 = lab.state.endpoints["web1"]
    for target in ("web1", "web2"):
        dst = lab.state.endpoints[target]
        cases = {
            "genuine": (app1.mac, app1.ips[0]),
            "spoofed ip": (app1.mac, "10.1.0.99"),
            "spoofed mac": ("02:50:46:00:00:99", app1.ips[0]),
            "another endpoint's mac and ip": (web1.mac, web1.ips[0]),
        }
        for case, (mac, ip) in cases.items():
            sniffer = subprocess.Popen(
                ["ip", "netns", "exec", dst.netns, sys.executable, "-c", SNIFF],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert sniffer.stdout is not None
            assert sniffer.stdout.readline().strip() == "ready", sniffer.stderr
            sent = ns_run(app1.netns, sys.executable, "-c", SEND, mac, ip, dst.mac, dst.ips[0])
            assert sent.returncode == 0, sent.stderr
            out, errs = sniffer.communicate("sent\n", timeout=20)
            count = int(out.strip().splitlines()[-1]) if out.strip() else -1
            assert count >= 0, errs
            if case == "genuine":
                assert count == 3, f"{target}: genuine SYNs did not arrive ({count})"
            else:
                assert count == 0, f"{target}: {case}: {count} frame(s) got through"


def test_agent_restart_keeps_tcp_connection_and_changes_no_flow(lab: Lab) -> None:
    server = serve(lab, "web1", "tcp-echo", 80)
    client_code = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 80), timeout=2)
print("connected", flush=True)
for i in range(int(sys.argv[2])):
    s.sendall(b"ping %d\\n" % i)
    assert s.recv(100) == b"ping %d\\n" % i
    time.sleep(0.1)
print("ok")
"""
    try:
        before = flows_with_age(lab, "h1")
        client = subprocess.Popen(
            ["ip", "netns", "exec", lab.state.endpoints["app2"].netns, sys.executable, "-c", client_code,
             lab.state.endpoints["web1"].ips[0], "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        log = AgentLog(lab, "h1")
        lab.stop_agent("h1")
        lab.start_agent("h1")
        until(log.synced, timeout=30)  # the new agent's first (full) sync is done
        out, errs = client.communicate(timeout=30)
        assert client.returncode == 0 and out.strip() == "ok", errs
        after = flows_with_age(lab, "h1")
        assert set(after) == set(before), "the restarted agent changed flows"
        younger = [f for f in before if after[f] < before[f]]
        assert not younger, f"flows were re-installed: {younger[:3]}"
    finally:
        server.kill()


def test_authority_down_keeps_policy_and_a_later_change_applies(lab: Lab) -> None:
    assert lab.authority is not None
    try:
        listening = serving(lab, ("web2", "tcp", 8443), ("web2", "tcp", 80))
        listening.__enter__()
        lab.stop_authority()
        log = AgentLog(lab, "h2")
        lab.stop_agent("h2")
        lab.start_agent("h2")  # an agent restarted while the authority is away enforces its cache
        until(log.synced, timeout=30)
        assert measured(lab, "app2", "web2", "tcp/80") == "allow"
        assert measured(lab, "app2", "web2", "tcp/8443") == "deny"
        assert measured(lab, "web1", "app1", "icmp") == "deny"
        lab.start_authority()
        with Client(lab.state.url) as client:
            extra = {"name": "tls", "classifier": {"protocol": "tcp", "port": 8443}, "action": "allow"}
            set_rules(client, [*HTTP, extra])
            until(lambda: measured(lab, "app2", "web2", "tcp/8443") == "allow", timeout=30)
            set_rules(client, HTTP)
            until(lambda: measured(lab, "app2", "web2", "tcp/8443") == "deny", timeout=30)
    finally:
        listening.__exit__(None, None, None)
        if lab.authority.proc is None or lab.authority.proc.poll() is not None:
            lab.start_authority()


def test_endpoint_moves_between_hosts(lab: Lab) -> None:
    """web1 unplugs from h1 (DOWN), plugs into h2 (ACTIVE there); app1 reaches it at its new home."""
    with serving(lab, ("web1", "tcp", 80)):
        assert measured(lab, "app1", "web1", "tcp/80") == "allow"
    lab.unplug("web1")
    until(lambda: endpoint(lab, "web1")["status"] == "DOWN")
    with Client(lab.state.url) as client:
        from policyfabric.lab.plan import LabEndpoint

        moved = LabEndpoint("web1", "acme", "h2", 0)
        lab.plug(moved, client)
    until(lambda: endpoint(lab, "web1")["status"] == "ACTIVE" and endpoint(lab, "web1")["host"] == "h2")
    with serving(lab, ("web1", "tcp", 80), ("web1", "tcp", 22)):
        until(lambda: measured(lab, "app1", "web1", "tcp/80") == "allow")  # now same host
        until(lambda: measured(lab, "app2", "web1", "tcp/80") == "allow")  # now cross host
        assert measured(lab, "app1", "web1", "tcp/22") == "deny"
    # and back, so the module's lab is as it was
    lab.unplug("web1")
    lab.plug(LabEndpoint("web1", "acme", "h1", 0), Client(lab.state.url))
    until(lambda: endpoint(lab, "web1")["host"] == "h1" and endpoint(lab, "web1")["status"] == "ACTIVE")
    with serving(lab, ("web1", "tcp", 80)):
        until(lambda: measured(lab, "app1", "web1", "tcp/80") == "allow")


def test_endpoint_unplugged_goes_down(lab: Lab) -> None:
    lab.unplug("app2")
    until(lambda: endpoint(lab, "app2")["status"] == "DOWN")
    with Client(lab.state.url) as client:
        from policyfabric.lab.plan import LabEndpoint

        lab.plug(LabEndpoint("app2", "acme", "h1", 3), client)
    until(lambda: endpoint(lab, "app2")["status"] == "ACTIVE")


def test_a_render_failure_is_a_fault_at_the_authority(lab: Lab) -> None:
    """An agent that cannot program its bridge says so: a fault in GET /v1/faults, and it keeps trying."""
    db = f"unix:{lab.state.hosts['h1'].rundir}/db.sock"
    log = Path(lab.state.directory) / "broken-agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "policyfabric", "agent", "--host", "h1-broken",
             "--opflex", lab.state.opflex, "--ovsdb", db, "--bridge", "br-missing"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with Client(lab.state.url) as client:

            def fault() -> dict | None:  # type: ignore[type-arg]
                items = client.request("GET", "/v1/faults")["items"]
                return next((f for f in items if f["agent"] == "h1-broken"), None)

            until(fault, timeout=20)
            found = fault()
            assert found is not None and found["code"] == "render-failed" and "br-missing" in found["message"]
        assert agent.poll() is None, "the agent must keep running"
    finally:
        agent.terminate()
        agent.wait(10)
