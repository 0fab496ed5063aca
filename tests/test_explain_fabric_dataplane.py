"""``policyfabric explain`` against a running fabric: a real authority and real agents on Open
vSwitch (the lab's netdev bridges), the verdict read by the agents from what they installed
(``GET /v1/explain`` → ``pf_trace`` on the source's host, then on the host it tunnels to), and
checked against real packets (``lab probe``) on every expectation of the scenario: allowed and
denied, on one host and across the tunnel. The CLI prints the same answer for humans and as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.dataplane

SCENARIOS = Path(__file__).parent / "scenarios"
REASONS = ("contract ", "security-group ", "endpoint-group ", "port-security", "no route", "default deny",
           "to or from the outside")  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "policyfabric", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip


def agrees_with_the_packets(state: str) -> tuple[str, set[tuple[str, str, str]]]:
    """Every expectation from an endpoint, probed with real packets and explained through the
    API (the target named if an endpoint, else by its address); (the authority's URL, what was
    explained)."""
    lab = json.loads((Path(state) / "state.json").read_text())
    url, eps = lab["url"], lab["endpoints"]
    addresses = {**{n: a["ip"] for n, a in lab.get("external_addresses", {}).items()},
                 **{n: h["ip"] for n, h in lab.get("external_hosts", {}).items()}}  # fmt: skip
    probed = json.loads(cli("lab", "probe", "--json", "--state", state).stdout)
    explained = set()
    for r in probed["results"]:
        if r["from"] not in eps:
            continue  # an external host: not an endpoint, the fabric explains from endpoints
        to = eps[r["to"]]["key"] if r["to"] in eps else addresses[r["to"]]
        query = {"from": eps[r["from"]]["key"], "to": to, "probe": r["probe"]}
        doc = httpx.get(f"{url}/v1/explain", params=query, timeout=30).json()
        what = (r["from"], r["to"], r["probe"])
        assert doc["source"] == "dataplane", (what, doc)
        assert doc["verdict"] == r["measured"] == r["expected"], (what, doc)
        assert doc["by"].startswith(REASONS) and "cookie 0x" not in doc["by"], (what, doc["by"])
        assert doc["hops"] and all(h["flows"] for h in doc["hops"]), (what, doc)
        explained.add(what)
    return url, explained


def test_explain_through_the_api_agrees_with_real_packets_through_gateways(tmp_path: Path) -> None:
    """external.yaml: SNAT through the elected gateway host (the hop found by its tunnel
    address) and to the outside through a floating IP's host."""
    state = str(tmp_path / "lab")
    up = cli("lab", "up", str(SCENARIOS / "external.yaml"), "--state", state)
    try:
        assert up.returncode == 0, up.stderr
        _, explained = agrees_with_the_packets(state)
        assert ("app1", "internet1", "tcp/8080") in explained and len(explained) >= 4
    finally:
        assert cli("lab", "down", "--state", state).returncode == 0


def test_explain_through_the_api_and_the_cli_agrees_with_real_packets(tmp_path: Path) -> None:
    state = str(tmp_path / "lab")
    up = cli("lab", "up", str(SCENARIOS / "two_hosts.yaml"), "--state", state)
    try:
        assert up.returncode == 0, up.stderr
        url, explained = agrees_with_the_packets(state)
        assert {
            ("app1", "web1", "tcp/80"),
            ("app1", "web1", "tcp/22"),
            ("app2", "web1", "tcp/80"),
        } <= explained

        across = json.loads(
            cli("explain", "acme/app1", "acme/web1", "tcp/80", "-o", "json", "--authority", url).stdout
        )
        assert (across["verdict"], across["by"]) == ("allow", "contract acme/http rule web-in")
        assert [h["host"] for h in across["hops"]] == ["h2", "h1"]
        assert across["hops"][0]["outcome"] == "tunnel"
        # out of web1's own port on h1 (its number depends on the order the lab plugged the ports)
        last = across["hops"][1]["flows"][-1]
        assert last["table"] == "70 OUTPUT" and last["from"] == "endpoint acme/web1"
        assert across["hops"][1]["outcome"] in last["actions"] and last["actions"][-1].startswith("output:")
        deciding = [f for f in across["hops"][1]["flows"] if f["table"] == "61 POLICY_CT"]
        assert deciding and deciding[0]["from"] == "contract acme/http"  # h1 checks it again, by cookie

        denied = cli("explain", "acme/app1", "acme/web1", "tcp/22", "--authority", url)
        assert denied.returncode == 0, denied.stderr
        assert "acme/app1 → acme/web1 tcp/22: deny by default deny" in denied.stdout
        assert "host h2 (ovs): drop" in denied.stdout and "61 POLICY_CT" in denied.stdout

        to_address = httpx.get(
            f"{url}/v1/explain",
            params={"from": "acme/app2", "to": "10.1.0.10", "probe": "tcp/80"},
            timeout=30,
        ).json()
        assert (to_address["verdict"], [h["host"] for h in to_address["hops"]]) == ("allow", ["h1"])

        bad = cli("explain", "acme/app1", "acme/web1", "tcp/0", "--authority", url)
        assert bad.returncode == 1 and "field probe" in bad.stderr and "422" in bad.stderr
    finally:
        assert cli("lab", "down", "--state", state).returncode == 0
