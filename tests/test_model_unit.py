"""Pure tests of the model: no server, no I/O."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc
from policyfabric.model.errors import Invalid
from policyfabric.model.parse import parse_spec
from policyfabric.model.types import check_label, parse_mac, parse_port, port_bounds

# every kind of object; the demo (examples/demo.yaml) is the lab-ready subset
EXAMPLE = Path(__file__).parent / "scenarios" / "full_model.yaml"
LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_port_ranges_round_trip(a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    assert port_bounds(parse_port(f"{low}-{high}")) == (low, high)
    assert parse_port(str(low)) == low == parse_port(low)
    if low < high:
        with pytest.raises(ValueError, match="reversed"):
            parse_port(f"{high}-{low}")


@given(st.integers().filter(lambda n: not 1 <= n <= 65535))
def test_ports_outside_the_range_are_refused(n: int) -> None:
    with pytest.raises(ValueError):
        parse_port(n)


@given(st.text(max_size=70))
def test_label_check_matches_the_documented_pattern(text: str) -> None:
    if LABEL.fullmatch(text):  # fullmatch: `$` alone lets a trailing newline through
        assert check_label(text) == text
    else:
        with pytest.raises(ValueError, match="not a valid name"):
            check_label(text)


@given(st.binary(min_size=6, max_size=6))
def test_macs_normalise_and_refuse_group_addresses(raw: bytes) -> None:
    text = ":".join(f"{b:02X}" for b in raw)
    if raw[0] & 1 or raw == bytes(6):
        with pytest.raises(ValueError):
            parse_mac(text)
    else:
        assert parse_mac(text) == text.lower()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-70000, 70000)
    | st.text(max_size=20)
    | st.sampled_from(
        ["10.1.0.0/24", "10.1.0.1", "fd00::/64", "tcp", "icmpv6", "ipv4", "slaac", "80-90", "web",
         "dhcpv6-stateful", "dhcpv6-stateless"]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(k.ORDER),
    st.dictionaries(
        st.sampled_from(
            [
                "name",
                "tenant",
                "cidr",
                "gateway_ip",
                "rules",
                "ip",
                "mac",
                "port",
                "bridge_domain",
                "l3_context",
                "epg",
                "interfaces",
                "external_gateway",
                "ipv6_ra_mode",
                "ipv6_address_mode",
                "enable_dhcp",
                "dns_nameservers",
                "host_routes",
                "destination",
                "nexthop",
                "mtu",
                "other",
            ]
        ),
        json_values,
        max_size=6,
    ),
)
def test_any_input_parses_or_fails_with_invalid(kind: k.Kind, data: dict[str, Any]) -> None:
    """The validator's only failure mode is Invalid with named fields: never a crash."""
    try:
        spec = parse_spec(kind, data)
    except Invalid as err:
        assert err.problems and all(p.message for p in err.problems)
    else:
        assert spec.name == data["name"]


def test_the_checker_does_not_depend_on_file_order() -> None:
    scenario = sc.load(EXAMPLE)
    assert sc.check(scenario) == []
    rng = random.Random(7)
    for _ in range(20):
        rng.shuffle(scenario.entries)
        for entry in scenario.entries:
            entry.spec = None
        assert sc.check(scenario) == []


def test_the_checker_reports_a_clash_once_on_the_later_object(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("""
tenants:
  - name: t
    l3_contexts: [{name: v}]
    bridge_domains: [{name: b1, l3_context: v}, {name: b2, l3_context: v}]
    subnets:
      - {name: s1, bridge_domain: b1, cidr: 10.0.0.0/16}
      - {name: s2, bridge_domain: b2, cidr: 10.0.1.0/24}
""")
    problems = sc.check(sc.load(f))
    assert [(p.line, p.path, p.problem.field) for p in problems] == [(8, "tenants[0].subnets[1]", "cidr")]


def test_unknown_sections_and_keys_are_reported(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("tenant:\n  - name: t\ntenants:\n  - name: t\n    subnet: []\n")
    problems = [p.render("s") for p in sc.check(sc.load(f))]
    assert problems[0].startswith("s:1: tenant: unknown section")
    assert problems[1].startswith("s:5: tenants[0].subnet: unknown key in a tenant")


def test_unreadable_files_are_scenario_errors(tmp_path: Path) -> None:
    with pytest.raises(sc.ScenarioError, match="cannot read"):
        sc.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tenants: [\n")
    with pytest.raises(sc.ScenarioError, match="not valid YAML"):
        sc.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(sc.ScenarioError, match="top level must be a mapping"):
        sc.load(tmp_path / "list.yaml")
