"""Drift repaired, with real packets: a lab of examples/demo.yaml whose h1 enforces policy with
nftables and h2 with Open vSwitch.

Someone deletes the policy by hand: ``ovs-ofctl del-flows br-int table=60`` on h2 (POLICY: without
its flows every IP packet is dropped there, so an allowed path breaks), or ``nft delete table inet
policyfabric`` in h1's namespace (a denied path opens). With the host's agent paused (SIGSTOP)
that really happens (the control); once the agent runs, what was deleted is back within 1 s, the
path is denied again (probed as the lab probes), and the fault ``drift-<renderer>`` appears in
``GET /v1/faults`` and clears. Then the same with the agent running throughout: detection and
repair within 1 s.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from policyfabric.agent.renderers.ovs.tables import POLICY
from policyfabric.client import Client
from policyfabric.lab.lab import Lab
from policyfabric.model import kinds as k
from tests.lab_harness import AgentLog, measured, ns_run, paused, running_lab, until

pytestmark = pytest.mark.dataplane

DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"
REPAIRED_WITHIN = 1.0  # seconds


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("drift")
    text = DEMO.read_text()
    assert "  - {name: h1}\n" in text
    scenario = base / "demo-drift.yaml"
    scenario.write_text(text.replace("  - {name: h1}\n", "  - {name: h1, renderer: nftables}\n"))
    with running_lab(scenario, base / "state") as lab:
        yield lab


def mgmt(lab: Lab, host: str) -> str:
    return f"unix:{lab.state.hosts[host].rundir}/br-int.mgmt"


def table_flows(lab: Lab, host: str, table: int) -> int:
    text = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", mgmt(lab, host), f"table={table}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum("cookie=" in line for line in text.splitlines())


def nft_table(lab: Lab, host: str) -> bool:
    return ns_run(lab.state.hosts[host].netns, "nft", "list", "table", "inet", "policyfabric").returncode == 0


def faults(lab: Lab, agent: str, code: str) -> list[dict[str, Any]]:
    with Client(lab.state.url) as client:
        items = client.request("GET", "/v1/faults")["items"]
    return [f for f in items if f["agent"] == agent and f["code"] == code]


class FaultWatch:
    """Polls ``GET /v1/faults`` in the background (the fault lasts ~2 s, probing takes longer):
    the faults seen of ``code`` from ``agent``."""

    def __init__(self, lab: Lab, agent: str, code: str) -> None:
        self.lab, self.agent, self.code = lab, agent, code
        self.seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.seen += faults(self.lab, self.agent, self.code)
            self._stop.wait(0.05)

    def __enter__(self) -> FaultWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def raised_then_cleared(self) -> None:
        until(lambda: self.seen, timeout=5)
        assert self.seen[0]["severity"] == "major", self.seen
        until(lambda: not faults(self.lab, self.agent, self.code), timeout=10)


# ---- Open vSwitch (h2: web2 and app1; web2 -> app1 is denied: providers do not open to consumers)


def delete_policy_flows(lab: Lab) -> None:
    subprocess.run(["ovs-ofctl", "del-flows", mgmt(lab, "h2"), f"table={POLICY}"], check=True)


def test_a_deleted_policy_table_is_put_back_within_a_second(lab: Lab) -> None:
    assert measured(lab, "web2", "app1", "icmp") == "deny"
    assert measured(lab, "web1", "web2", "icmp") == "allow"
    before = table_flows(lab, "h2", POLICY)
    assert before > 0
    log = AgentLog(lab, "h2")
    with FaultWatch(lab, "h2", "drift-openvswitch") as fault:
        # the control: with the agent paused, the deletion really breaks the allowed path
        with paused(lab, "h2"):
            delete_policy_flows(lab)
            assert table_flows(lab, "h2", POLICY) == 0
            assert measured(lab, "web1", "web2", "icmp") == "deny"
            resumed = time.monotonic()
        until(lambda: table_flows(lab, "h2", POLICY) == before, timeout=REPAIRED_WITHIN, step=0.01)
        print(f"put back {1000 * (time.monotonic() - resumed):.0f} ms after the agent resumed")
        assert measured(lab, "web2", "app1", "icmp") == "deny"
        assert measured(lab, "web1", "web2", "icmp") == "allow"
        fault.raised_then_cleared()
    said = log.since()
    assert f"drift: table {POLICY}: {before} flows deleted" in said, said
    assert "drift repaired" in said and "drift-openvswitch cleared" in said


def test_drift_while_the_agent_runs_is_repaired_within_a_second(lab: Lab) -> None:
    before = table_flows(lab, "h2", POLICY)
    log = AgentLog(lab, "h2")
    with FaultWatch(lab, "h2", "drift-openvswitch") as fault:
        start = time.monotonic()
        delete_policy_flows(lab)
        until(lambda: table_flows(lab, "h2", POLICY) == before, timeout=REPAIRED_WITHIN, step=0.01)
        print(f"put back {1000 * (time.monotonic() - start):.0f} ms after del-flows started")
        # a flow changed by hand (its actions) is drift too
        subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow15", "mod-flows", mgmt(lab, "h2"), f"table={POLICY},actions=drop"],
            check=True,
        )
        until(lambda: f"table {POLICY}: {before} flows modified" in log.since(), timeout=REPAIRED_WITHIN)
        until(lambda: log.since().count("drift repaired") == 2, timeout=REPAIRED_WITHIN)
        assert measured(lab, "web2", "app1", "icmp") == "deny"
        assert measured(lab, "web1", "web2", "icmp") == "allow"
        fault.raised_then_cleared()


def test_the_agents_own_changes_are_not_drift(lab: Lab) -> None:
    """Policy changes (deltas through the channel) raise no drift."""
    log = AgentLog(lab, "h2")
    with Client(lab.state.url) as client:
        c = client.list(k.CONTRACT, tenant="acme", name="http")[0]
        rules = c["rules"]
        extra = {"name": "ssh", "classifier": {"protocol": "tcp", "port": 22}, "action": "allow"}
        client.replace(k.CONTRACT, c["id"], {"name": "http", "tenant": "acme", "rules": [*rules, extra]})
        until(lambda: "renderer openvswitch: +" in log.since())
        client.replace(k.CONTRACT, c["id"], {"name": "http", "tenant": "acme", "rules": rules})
        until(lambda: log.since().count("renderer openvswitch: +") == 2)
    time.sleep(1.0)
    assert "drift" not in log.since(), log.since()
    assert faults(lab, "h2", "drift-openvswitch") == []


# ---- nftables (h1: web1 and app2; web1 -> app2 is denied)


def test_a_deleted_nftables_table_is_put_back_within_a_second(lab: Lab) -> None:
    netns = lab.state.hosts["h1"].netns
    assert nft_table(lab, "h1")
    assert measured(lab, "web1", "app2", "icmp") == "deny"
    log = AgentLog(lab, "h1")
    with FaultWatch(lab, "h1", "drift-nftables") as fault:
        with paused(lab, "h1"):
            assert ns_run(netns, "nft", "delete", "table", "inet", "policyfabric").returncode == 0
            assert measured(lab, "web1", "app2", "icmp") == "allow"  # the control: open without it
            resumed = time.monotonic()
        until(lambda: nft_table(lab, "h1"), timeout=REPAIRED_WITHIN, step=0.01)
        print(f"put back {1000 * (time.monotonic() - resumed):.0f} ms after the agent resumed")
        assert measured(lab, "web1", "app2", "icmp") == "deny"
        fault.raised_then_cleared()
    said = log.since()
    assert "drift: table inet policyfabric deleted" in said and "drift repaired" in said, said
    # and with the agent running
    with FaultWatch(lab, "h1", "drift-nftables") as fault:
        start = time.monotonic()
        assert ns_run(netns, "nft", "delete", "table", "inet", "policyfabric").returncode == 0
        until(lambda: nft_table(lab, "h1"), timeout=REPAIRED_WITHIN, step=0.01)
        print(f"put back {1000 * (time.monotonic() - start):.0f} ms after the delete")
        assert measured(lab, "web1", "app2", "icmp") == "deny"
        fault.raised_then_cleared()
