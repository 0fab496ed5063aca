"""`lab verify --explain` agrees with real packets: for every `expect` line of the scenarios in
tests/scenarios (addressing.yaml: in test_lab_addressing_dataplane.py), the verdict read from the
installed flows (OVS's trace on each host the packet crosses) is what the probe measured, and it
names an intent object (or one of the fixed reasons), never an unknown cookie.

Every host of these scenarios renders with Open vSwitch; the last test puts one on nftables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.dataplane

SCENARIOS = Path(__file__).parent / "scenarios"
REASONS = ("contract ", "security-group ", "endpoint-group ", "port-security", "no route", "default deny",
           "to or from the outside", "no inbound connection through SNAT")  # fmt: skip


@pytest.mark.parametrize(
    "scenario", ["two_hosts", "secgroups", "routed", "external", "full_model", "ipv6_routed"]
)
def test_explain_agrees_with_the_packets(scenario: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "policyfabric", "lab", "verify", str(SCENARIOS / f"{scenario}.yaml"),
         "--json", "--explain", "--state", str(tmp_path / "lab")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["failed"] == 0, done.stderr
    for r in report["results"]:
        e, what = r["explain"], (r["from"], r["to"], r["probe"])
        assert e["verdict"] == r["measured"] == r["expected"], (what, e)
        assert e["by"].startswith(REASONS) and not re.search(r"cookie 0x|conj_id", e["by"]), (what, e["by"])
        if r["from"] in ("internet1",) and e["by"].startswith("no route"):
            assert e["hops"] == []  # decided outside the fabric: nothing answers its next hop
        else:
            assert e["hops"] and all(h["flows"] for h in e["hops"]), (what, e)
    assert not [w for w in report["warnings"] if "the installed flows say" in w]


def test_lab_explain_and_probe_explain_on_a_running_lab(tmp_path: Path) -> None:
    """`lab explain FROM TO PROBE` (human and --json) and `lab probe --explain` on a lab that is up."""
    state = str(tmp_path / "lab")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "policyfabric", "lab", *args, "--state", state],
            capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip

    up = cli("up", str(SCENARIOS / "two_hosts.yaml"))
    try:
        assert up.returncode == 0, up.stderr
        allowed = cli("explain", "app1", "web1", "tcp/80", "--json")
        doc = json.loads(allowed.stdout)
        assert allowed.returncode == 0, allowed.stderr
        assert (doc["verdict"], doc["by"]) == ("allow", "contract acme/http rule web-in")
        assert [h["host"] for h in doc["hops"]] == ["h2", "h1"]
        assert doc["hops"][0]["outcome"] == "tunnel"  # then out of web1's own port (its number: plug order)
        last = doc["hops"][1]["flows"][-1]
        assert last["table"] == "70 OUTPUT" and last["from"] == "endpoint acme/web1"
        assert doc["hops"][1]["outcome"] in last["actions"]
        deciding = [f for f in doc["hops"][1]["flows"] if f["table"] == "61 POLICY_CT"]
        assert deciding and deciding[0]["from"] == "contract acme/http"

        human = cli("explain", "app1", "app2", "icmp")
        assert human.returncode == 0
        assert "deny by endpoint-group acme/app intra_group deny" in human.stdout
        assert "61 POLICY_CT" in human.stdout and "host h2: drop" in human.stdout

        unknown = cli("explain", "nobody", "web1", "icmp")
        assert unknown.returncode == 1 and "not an endpoint or external host" in unknown.stderr

        probed = json.loads(cli("probe", "--explain", "--json").stdout)
        assert all(r["explain"]["verdict"] == r["measured"] for r in probed["results"])
    finally:
        assert cli("down").returncode == 0


@pytest.mark.parametrize("scenario", ["two_hosts", "secgroups", "ipv6_routed"])
def test_paths_through_an_nftables_host_are_explained_from_its_ruleset(scenario: str, tmp_path: Path) -> None:
    """With h2 on nftables (its Open vSwitch only forwards; policy is the table's), every path is
    explained and agrees with the packets: those that start on or cross h2 by the lab's authority,
    whose agent on h2 evaluates the table it reads back from the kernel, naming the deciding rule
    as its intent object; h1-only paths by OVS's trace, as before."""
    path = tmp_path / f"{scenario}.yaml"
    text = (SCENARIOS / f"{scenario}.yaml").read_text()
    old = "hosts: [{name: h1}, {name: h2}]"
    assert old in text
    path.write_text(text.replace(old, "hosts: [{name: h1}, {name: h2, renderer: nftables}]"))
    done = subprocess.run(
        [sys.executable, "-m", "policyfabric", "lab", "verify", str(path), "--json", "--explain",
         "--state", str(tmp_path / "lab")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["failed"] == 0, done.stderr
    through_nftables = 0
    for r in report["results"]:
        e, what = r["explain"], (r["from"], r["to"], r["probe"])
        assert e["verdict"] == r["measured"] == r["expected"], (what, e)
        assert e["by"].startswith(REASONS) and not re.search(
            r"cookie 0x|conj_id|rule \d+ of chain", e["by"]
        ), (what, e)
        on_h2 = [h for h in e["hops"] if h["host"] == "h2"]
        if on_h2:
            through_nftables += 1
            assert e["source"] == "dataplane" and on_h2[0]["renderer"] == "nftables", (what, e)
            rules = [f for f in on_h2[0]["flows"] if f["table"].startswith("nftables ")]
            assert rules and rules[-1]["actions"] in (["accept"], ["drop"]), (what, on_h2)
    assert through_nftables > 0 and through_nftables >= len(report["results"]) // 2, scenario
