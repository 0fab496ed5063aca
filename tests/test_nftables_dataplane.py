"""The nftables renderer: real nftables, real namespaces, real packets.

Hosts with ``renderer: nftables`` plug endpoints the hybrid way (tap → Linux
bridge → veth → br-int); their agent programs one nftables table and leaves
Open vSwitch to forward. The same scenarios as the Open vSwitch tests must
pass, and the drops must really be nftables' doing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.agent.renderers.nftables.ruleset import compile_ruleset
from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.model import scenario as sc
from tests.lab_harness import (
    SCENARIOS,
    flows_with_age,
    measured,
    ns_run,
    paused,
    running_lab,
    serving,
    until,
)
from tests.test_secgroups_dataplane import set_groups

pytestmark = pytest.mark.dataplane


def with_nftables(source: Path, target: Path, hosts: str) -> Path:
    """``source`` with its ``hosts:`` line replaced (the rest of the scenario unchanged)."""
    text = source.read_text()
    old = "hosts: [{name: h1}, {name: h2}]"
    assert old in text
    target.write_text(text.replace(old, f"hosts: {hosts}"))
    return target


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("nft")
    scenario = with_nftables(
        SCENARIOS / "secgroups.yaml",
        base / "secgroups-nft.yaml",
        "[{name: h1, renderer: nftables}, {name: h2}]",
    )
    with running_lab(scenario, base / "state") as lab:
        yield lab


def nft(lab: Lab, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return ns_run(lab.state.hosts[host].netns, "nft", *args)


def test_security_groups_hold_with_a_host_on_nftables(lab: Lab) -> None:
    results = lab.probe(checked_plan(sc.load(Path(lab.state.scenario))).expect)
    assert [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok] == []
    # h1 enforces with nftables: its bridge has no policy tables (h2's has), its table has the sets
    assert policy_flows(lab, "h1") == [] and policy_flows(lab, "h2") != []
    ruleset = json.loads(nft(lab, "h1", "-j", "list", "table", "inet", "policyfabric").stdout)["nftables"]
    ssh = [
        item["set"].get("elem", [])
        for item in ruleset
        if "set" in item and "10.3.0.11" in item["set"].get("elem", [])
    ]
    assert ssh == [["10.3.0.10", "10.3.0.11"]]  # the ssh group's members, once, in one set


def policy_flows(lab: Lab, host: str) -> list[str]:
    return [f for f in flows_with_age(lab, host) if any(f"table={t}," in f for t in (61, 62, 63))]


def test_the_drops_are_nftables_doing_and_the_agent_restores_them(lab: Lab) -> None:
    with serving(lab, ("vm1", "tcp", 22)):
        assert measured(lab, "vm3", "vm1", "tcp/22") == "deny"
        with paused(lab, "h1"):  # running, the agent would put the table back at once (drift)
            assert nft(lab, "h1", "delete", "table", "inet", "policyfabric").returncode == 0
            assert measured(lab, "vm3", "vm1", "tcp/22") == "allow"  # nothing else stood in the way
        until(lambda: nft(lab, "h1", "list", "table", "inet", "policyfabric").returncode == 0, timeout=1)
        assert measured(lab, "vm3", "vm1", "tcp/22") == "deny"
        set_groups(lab, "vm3", ["ssh"])
        until(lambda: measured(lab, "vm3", "vm1", "tcp/22") == "allow")  # now a member
        set_groups(lab, "vm3", [])
        until(lambda: measured(lab, "vm3", "vm1", "tcp/22") == "deny")


def test_a_member_joining_is_one_set_element(lab: Lab) -> None:
    def elements() -> set[str]:
        ruleset = json.loads(nft(lab, "h1", "-j", "list", "table", "inet", "policyfabric").stdout)["nftables"]
        return {
            f"{item['set']['name']}:{e}"
            for item in ruleset
            if "set" in item
            for e in item["set"].get("elem", [])
        }

    before = elements()
    set_groups(lab, "vm4", ["web-client", "ssh"])
    try:
        until(lambda: elements() != before)
        added = elements() - before
        assert len(added) == 1 and added.pop().endswith(":10.3.0.31")
    finally:
        set_groups(lab, "vm4", ["web-client"])
        until(lambda: elements() == before)


@pytest.mark.parametrize(("name", "expectations"), [("two_hosts.yaml", 10), ("routed.yaml", 7)])
def test_scenarios_pass_with_a_host_on_nftables(tmp_path: Path, name: str, expectations: int) -> None:
    """The EPG scenario and the routed one (two tenants, same addresses), one host on each renderer,
    through `lab verify --json`."""
    hosts = "[{name: h1}, {name: h2, renderer: nftables}]"
    if name == "routed.yaml":
        hosts = "[{name: h1, renderer: nftables}, {name: h2}]"  # where the same-host routing happens
    scenario = with_nftables(SCENARIOS / name, tmp_path / name, hosts)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "policyfabric",
            "lab",
            "verify",
            str(scenario),
            "--json",
            "--state",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
    )
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert report["failed"] == 0 and report["passed"] == expectations


def test_the_ruleset_is_valid_nft(tmp_path: Path) -> None:
    """The compiled text passes `nft -c` (a syntax and semantics check) for a mixed view."""
    from dataclasses import replace

    from tests.test_pipeline_unit import APP1, WEB1
    from tests.test_secgroups_unit import VM1, VM3, VM9, net

    eps = tuple(replace(e, interface=f"qvo{e.ofport}") for e in (VM1, VM3, VM9, WEB1, APP1))
    path = tmp_path / "rules.nft"
    path.write_text(compile_ruleset(net(eps)).text())
    netns = f"pft-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        checked = ns_run(netns, "nft", "-c", "-f", str(path))
        assert checked.returncode == 0, checked.stderr
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
