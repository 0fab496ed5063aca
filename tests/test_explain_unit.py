"""The explainer on real ``ofproto/trace`` outputs (captured from lab runs of tests/scenarios with
Open vSwitch 3.1: tests/data/traces, each file's first line ``# HOST: FLOW`` is what was traced).

The catalog is built from the scenario files themselves, so a cookie or conjunction id that the
agent computes differently from what the catalog hashes fails here: the ids in the fixtures are
the installed flows' own."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyfabric.agent.explain import (
    OUTSIDE,
    Catalog,
    arrival_flow,
    catalog,
    explain,
    parse_trace,
)
from policyfabric.agent.renderers.ovs.tables import POLICY_CT, PORT_SECURITY, ROUTING, SG_EGRESS, SG_INGRESS
from policyfabric.model import scenario as sc

HERE = Path(__file__).parent
TRACES = HERE / "data" / "traces"
UNDERLAY = {"h1": "192.0.2.1", "h2": "192.0.2.2", "gw1": "192.0.2.3", "gw2": "192.0.2.4"}


def scenario_catalog(name: str) -> Catalog:
    raw = sc.load(HERE / "scenarios" / f"{name}.yaml").raw
    return catalog(raw["tenants"], raw["endpoints"], raw.get("external_networks", ()))


def recorded(prefix: str) -> dict[str, tuple[str, str]]:
    """host → (the flow traced there, the trace's text) for one captured probe."""
    out = {}
    for host in UNDERLAY:
        path = TRACES / f"{prefix}-{host}.txt"
        if not path.exists():
            continue
        first, _, text = path.read_text().partition("\n")
        traced, _, flow = first.removeprefix("# ").partition(": ")
        assert traced == host, path
        out[host] = (flow, text)
    assert out, prefix
    return out


def replay(prefix: str, cat: Catalog):  # type: ignore[no-untyped-def]
    """``explain`` with a tracer that answers from the captured traces, and checks that the flow
    it is asked to trace on each host is the one that was traced there (the tunnel hand-over)."""
    traces = recorded(prefix)
    start = next(h for h, (flow, _) in traces.items() if "tun_id" not in flow)
    asked: list[str] = []

    def tracer(host: str, flow: str) -> str:
        asked.append(host)
        want, text = traces[host]
        assert flow == want
        return text

    result = explain(start, traces[start][0], tracer, UNDERLAY, cat)
    return result, asked


def test_parse_steps_cookies_and_recirculation() -> None:
    _, text = recorded("two-app1-web1-tcp80")["h1"]
    trace = parse_trace(text)
    tables = [s.table for s in trace.steps]
    assert tables == [
        0,
        30,
        60,
        POLICY_CT,
        SG_EGRESS,
        SG_INGRESS,
        70,
    ]  # 61 onwards: after ct()'s recirculation
    decide = trace.steps[3]
    assert decide.match_field("conj_id") == "2130483444" and decide.priority == 1000
    assert decide.cookie == 0x50460841671C54A3
    assert not any(s.drops for s in trace.steps)  # the "drop" printed after ct() is not a verdict
    assert trace.steps[2].actions == ("ct(table=61,zone=NXM_NX_REG3[0..15])",)
    assert trace.steps[-1].outputs() == ["1"] and not trace.steps[-1].tunnels


def test_parse_tunnel_writes() -> None:
    _, text = recorded("two-app1-web1-tcp80")["h2"]
    trace = parse_trace(text)
    assert trace.steps[-1].tunnels
    assert trace.writes == {"tun_id": "0x10002", "tun_dst": "192.0.2.1", "tun_metadata0": "0x4002"}
    assert trace.protocol == "tcp" and trace.final["tp_dst"] == "80"


def test_arrival_flow_is_what_the_next_host_was_traced_with() -> None:
    traces = recorded("sg-vm2-vm1-tcp22")
    trace = parse_trace(traces["h2"][1])
    assert arrival_flow(trace, UNDERLAY["h2"]) == traces["h1"][0]


def test_catalog_names_installed_cookies_and_conjunctions() -> None:
    cat = scenario_catalog("two_hosts")
    assert cat.section(0x50460841671C54A3) == "contract acme/http"
    assert cat.rules[2130483444] == "contract acme/http rule web-in"
    assert cat.section(0x5046071894DFF1B6) == "endpoint-group acme/app"
    assert cat.section(0x50460BC76A5EB4B7) == "fixed flows"
    assert cat.section(0x504601C918B0A695) == "endpoint acme/app1"
    assert cat.section(0x5046999999999999).startswith("cookie 0x5046")  # unknown: said so, not guessed


@pytest.mark.parametrize(
    ("prefix", "scenario", "verdict", "by", "hosts"),
    [
        ("two-app1-web1-tcp80", "two_hosts", "allow", "contract acme/http rule web-in", ["h2", "h1"]),
        ("two-app1-web1-tcp22", "two_hosts", "deny", "default deny", ["h2"]),
        ("two-app1-app2-icmp", "two_hosts", "deny", "endpoint-group acme/app intra_group deny", ["h2"]),
        ("two-app2-web2-udp80", "two_hosts", "deny", "default deny", ["h1"]),
        ("sg-vm2-vm1-tcp22", "secgroups", "allow", "security-group acme/ssh rule 0", ["h2", "h1"]),
        (
            "sg-vm3-vm1-tcp22",
            "secgroups",
            "deny",
            "default deny (security groups of acme/vm1, ingress)",
            ["h1"],
        ),
        (
            "sg-vm4-vm1-tcp22",
            "secgroups",
            "deny",
            "default deny (security groups of acme/vm4, egress)",
            ["h2"],
        ),
        ("routed-app1-web1-tcp80", "routed", "allow", "contract acme/http rule web-in", ["h2", "h1"]),
        ("routed-spoofed-mac", "routed", "deny", "port-security", ["h1"]),
        ("routed-no-route", "routed", "deny", "no route", ["h1"]),
        ("ext-internet1-fip-web1-tcp80", "external", "allow", "contract acme/http rule web-in", ["h1"]),
        ("ext-internet1-r1-tcp8080", "external", "deny", "no inbound connection through SNAT", ["gw1"]),
        ("ext-app1-internet1-tcp8080", "external", "allow", OUTSIDE, ["h2", "gw1"]),
    ],
)
def test_explain_captured(prefix: str, scenario: str, verdict: str, by: str, hosts: list[str]) -> None:
    cat = scenario_catalog(scenario)
    result, asked = replay(prefix, cat)
    assert (result.verdict, result.by) == (verdict, by)
    assert asked == hosts and [h.host for h in result.hops] == hosts
    doc = result.to_json(cat)
    assert doc["verdict"] == verdict and doc["by"] == by and len(doc["hops"]) == len(hosts)


def test_deciding_tables_of_denials() -> None:
    """Where each kind of denial is decided (so a renamed table or a moved drop shows here)."""
    cat = scenario_catalog("routed")
    spoofed, _ = replay("routed-spoofed-mac", cat)
    assert spoofed.hops[-1].steps[-1].table == PORT_SECURITY
    noroute, _ = replay("routed-no-route", cat)
    assert noroute.hops[-1].steps[-1].table == ROUTING and noroute.hops[-1].outcome == "drop"


def test_catalog_names_external_sections() -> None:
    """The floating IP's DNAT and the external port's flows in a captured trace are named."""
    cat = scenario_catalog("external")
    _, text = recorded("ext-internet1-fip-web1-tcp80")["h1"]
    names = {cat.section(s.cookie) for s in parse_trace(text).steps}
    assert {"external-network public", "floating-ip acme/fip-web1", "endpoint acme/web1"} <= names
    assert not [n for n in names if n.startswith("cookie ")], names


def test_table_miss_is_default_deny() -> None:
    text = 'bridge("br-int")\n----------------\n 0. No match.\n    drop\n'
    trace = parse_trace(text)
    assert trace.steps[0].miss and trace.steps[0].drops
    result = explain("h1", "ip", lambda h, f: text, UNDERLAY, Catalog())
    assert (result.verdict, result.by) == ("deny", "default deny")
