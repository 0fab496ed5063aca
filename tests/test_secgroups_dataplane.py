"""Security groups with real Open vSwitch, namespaces and packets (plain Neutron mode).

The scenario's expectations are the allow/deny matrix; then a member joins
and leaves a remote group, which must open and close the path and change a
handful of flows on each host, not a number that grows with the group.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policyfabric.client import Client
from policyfabric.lab.lab import Lab, checked_plan
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc
from tests.lab_harness import (
    SCENARIOS,
    endpoint,
    flows_with_age,
    lab_fixture,
    measured,
    serving,
    until,
)

pytestmark = pytest.mark.dataplane
SCENARIO = SCENARIOS / "secgroups.yaml"


lab = lab_fixture(SCENARIO)


def test_the_matrix_matches_the_security_groups(lab: Lab) -> None:
    results = lab.probe(checked_plan(sc.load(SCENARIO)).expect)
    assert len(results) == 10
    wrong = [(r.expect.source, r.expect.target, r.expect.probe, r.measured) for r in results if not r.ok]
    assert wrong == []


def set_groups(lab: Lab, name: str, groups: list[str]) -> None:
    ep = endpoint(lab, name)
    with Client(lab.state.url) as client:
        client.replace(k.ENDPOINT, ep["id"], {**ep, "security_groups": groups})


def flow_set(lab: Lab, host: str) -> set[str]:
    return set(flows_with_age(lab, host))


def test_a_member_joining_opens_the_path_and_changes_few_flows(lab: Lab) -> None:
    before = {h: flow_set(lab, h) for h in ("h1", "h2")}
    with serving(lab, ("vm1", "tcp", 22), ("vm2", "tcp", 22)):
        assert measured(lab, "vm3", "vm1", "tcp/22") == "deny"
        set_groups(lab, "vm3", ["ssh"])
        took = until(lambda: measured(lab, "vm3", "vm2", "tcp/22") == "allow")
        assert measured(lab, "vm3", "vm1", "tcp/22") == "allow"
        print(f"member join open across hosts after {took:.2f} s (including probes)")
        joined = {h: flow_set(lab, h) for h in ("h1", "h2")}
        changed = {h: len(before[h] ^ joined[h]) for h in before}
        print(f"flows changed by the join: {changed}")
        # h1 (vm3's host): its port joins the rule's port clause and its address the set;
        # h2: the address joins vm2's set. A few flows (a modified flow counts twice here).
        assert 0 < changed["h1"] <= 4 and 0 < changed["h2"] <= 2
        set_groups(lab, "vm3", [])
        until(lambda: measured(lab, "vm3", "vm2", "tcp/22") == "deny")
        assert measured(lab, "vm3", "vm1", "tcp/22") == "deny"
    until(lambda: {h: flow_set(lab, h) for h in ("h1", "h2")} == before)


def test_a_plugin_renderer_runs_beside_open_vswitch(lab: Lab) -> None:
    """The example configfile renderer, in a real agent: the firewall file follows the policy."""
    path = Path(lab.state.directory) / "h1" / "firewall.conf"
    lab.stop_agent("h1")
    lab.start_agent("h1", ["--renderer", f"configfile:path={path}"])
    try:
        until(lambda: path.exists() and "acme-vm3-sg-in" in path.read_text())
        text = path.read_text()
        assert "object-group network sg-acme/ssh\n host 10.3.0.10\n host 10.3.0.11\n!" in text
        assert " permit tcp object-group sg-acme/ssh host 10.3.0.10 eq 22" in text
        set_groups(lab, "vm4", ["web-client", "ssh"])  # a member joins: the set in the file grows
        until(lambda: " host 10.3.0.31\n" in path.read_text().split("object-group network sg-acme/ssh")[1])
        set_groups(lab, "vm4", ["web-client"])
        until(
            lambda: (
                " host 10.3.0.31\n" not in path.read_text().split("ip access-list")[0].split("sg-acme/ssh")[1]
            )
        )
    finally:
        lab.stop_agent("h1")
        lab.start_agent("h1")
