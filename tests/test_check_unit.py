"""`policyfabric check`: every problem of a file in one pass, with its line, lab sections and
duplicate keys included."""

from __future__ import annotations

from policyfabric.lab import plan as lab_plan
from policyfabric.model import scenario as sc


def problems(text: str) -> list[str]:
    return [p.render("f.yaml") for p in sc.check(sc.loads(text, "f.yaml"))]


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    found = problems("tenants:\n  - name: acme\n    name: beta\nendpoints: []\nendpoints: []\n")
    assert "f.yaml:3: name: duplicate key (first at line 2): give it once" in found
    assert "f.yaml:5: endpoints: duplicate key (first at line 4): give it once" in found


def test_an_object_with_a_bad_field_still_has_its_references_checked() -> None:
    text = """\
tenants:
  - name: acme
    bridge_domains:
      - name: bd
        l3_context: vrf9
        mtu: lots
"""
    found = problems(text)
    assert (
        "f.yaml:6: tenants[0].bridge_domains[0].mtu: Input should be a valid integer, "
        "unable to parse string as an integer" in found
    )
    assert (
        "f.yaml:5: tenants[0].bridge_domains[0].l3_context: no l3_context named 'vrf9' in tenant 'acme'"
        in found
    )


LAB = """\
tenants:
  - name: acme
    l3_contexts: [{name: vrf1}]
    bridge_domains: [{name: bd, l3_context: vrf1}]
    subnets: [{name: s, bridge_domain: bd, cidr: 10.1.0.0/24}]
    endpoint_groups: [{name: web, bridge_domain: bd}]
external_networks:
  - {name: public, cidr: 203.0.113.0/24}
endpoints:
  - {name: web1, tenant: acme, epg: web, host: h1, ip: 10.1.0.10}
  - {name: web2, tenant: acme, epg: web, host: h7, ip: 10.1.0.11, dhcp: maybe}
hosts:
  - {name: h1, role: boss}
  - {name: h1, renderer: vpp}
  - {name: h2, colour: red}
external_hosts:
  - {name: x1, network: public, ip: 198.51.100.5}
  - {name: x2, network: nowhere, ip: 203.0.113.9}
expect:
  - {from: web1, to: web2, probe: tcp/80, result: allow}
  - {from: web1, to: ghost, probe: tcp/99999, result: maybe}
  - {from: x1, to: web1, probe: sctp/1, result: deny}
"""


def test_the_lab_sections_are_checked_with_lines() -> None:
    found = problems(LAB)
    expected = [
        "f.yaml:11: endpoints[1].host: host 'h7' is not in hosts:",
        "f.yaml:11: endpoints[1].dhcp: dhcp 'maybe': use true or false",
        "f.yaml:13: hosts[0].role: role 'boss': use compute or gateway",
        "f.yaml:14: hosts[1].name: host 'h1' is declared twice",
        "f.yaml:14: hosts[1].renderer: renderer 'vpp' is not available (ovs, nftables)",
        "f.yaml:15: hosts[2].colour: unknown key (known: name, role, renderer)",
        "f.yaml:17: external_hosts[0].ip: 198.51.100.5 must be inside 203.0.113.0/24, and not its gateway",
        "f.yaml:18: external_hosts[1].network: network 'nowhere' is not in external_networks",
        "f.yaml:21: expect[1].to: 'ghost' is not an endpoint, floating IP, router or external host "
        "of this file",
        "f.yaml:21: expect[1].probe: probe 'tcp/99999': ports are 1-65535",
        "f.yaml:21: expect[1].result: result 'maybe': use allow or deny",
        "f.yaml:22: expect[2].probe: probe 'sctp/1': use " + sc.PROBES,
    ]
    assert sorted(found) == sorted(expected)


def test_a_lab_file_the_checker_accepts_the_lab_plans() -> None:
    good = LAB.split("endpoints:")[0] + (
        "endpoints:\n  - {name: web1, tenant: acme, epg: web, host: h1, ip: 10.1.0.10}\n"
        "hosts:\n  - {name: h1}\n  - {name: gw, role: gateway, renderer: nftables}\n"
        "external_hosts:\n  - {name: x1, network: public, ip: 203.0.113.5}\n"
        "expect:\n  - {from: x1, to: web1, probe: tcp6/80, result: deny}\n"
    )
    assert problems(good) == []
    planned = lab_plan.plan(sc.loads(good))
    assert [h.name for h in planned.hosts] == ["h1", "gw"] and len(planned.expect) == 1


def test_the_checker_and_the_lab_agree_on_what_a_probe_and_a_renderer_are() -> None:
    assert sc.PROBES == lab_plan.PROBES and sc.PROBE.pattern == lab_plan.PROBE.pattern
    assert sc.RENDERERS == lab_plan.RENDERERS


def test_a_file_without_hosts_is_no_lab_and_its_endpoint_hosts_are_free() -> None:
    text = "tenants:\n  - name: acme\n    endpoint_groups: []\nendpoints: []\n"
    assert problems(text) == []
