"""`lab verify --explain` agrees with real packets: for every `expect` line of the scenarios in
tests/scenarios (addressing.yaml: in test_lab_addressing_dataplane.py), the verdict read from the
installed flows (OVS's trace on each host the packet crosses) is what the probe measured, and it
names an intent object (or one of the fixed reasons), never an unknown cookie.

Every host of these scenarios renders with Open vSwitch (nftables hosts are not explained yet)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.dataplane

SCENARIOS = Path(__file__).parent / "scenarios"
REASONS = ("contract ", "security-group ", "endpoint-group ", "port-security", "no route", "default deny",
           "to or from the outside", "no inbound connection through SNAT")  # fmt: skip


@pytest.mark.parametrize("scenario", ["two_hosts", "secgroups", "routed", "external", "full_model"])
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
        assert e["by"].startswith(REASONS) and "cookie 0x" not in e["by"], (what, e["by"])
        if r["from"] in ("internet1",) and e["by"].startswith("no route"):
            assert e["hops"] == []  # decided outside the fabric: nothing answers its next hop
        else:
            assert e["hops"] and all(h["flows"] for h in e["hops"]), (what, e)
    assert not [w for w in report["warnings"] if "the installed flows say" in w]
