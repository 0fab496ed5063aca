"""``explain`` on a running fabric, its bounds and its naming, without sockets or switches where
it can: the trace catalog names an ICMP-typed rule by the id its flows carry, the CLI prints
what the agents answer verbatim (brackets included), the trace request's values are checked
whole."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from policyfabric.agent.renderers.ovs.secgroups import sg_flows
from policyfabric.agent.trace_rpc import catalog_of
from policyfabric.agent.view import Network
from policyfabric.cli import explain as cli_explain
from policyfabric.opflex.trace import BadTrace, Request
from tests.test_addrpairs_unit import ECHO


def test_the_trace_catalog_names_an_icmp_typed_rule_by_its_flows_conjunction() -> None:
    net = Network(security_groups={ECHO.uri: ECHO})
    ids = {int(v) for f in sg_flows(ECHO, ()) for key, v in f.match if key == "conj_id"}
    assert ids, "the rule renders a conjunction"
    cat = catalog_of(net)
    assert {cat.rules.get(i) for i in ids} == {f"security-group {ECHO.uri} rule 0"}


def test_the_cli_prints_addresses_and_flow_text_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(cli_explain, "out", Console(file=buf, width=300, color_system=None))
    flow = {"table": "[/]", "match": "ipv6,ipv6_dst=[fd00::2]", "priority": 10, "from": "[bold]x",
            "actions": ["[/]"]}  # fmt: skip
    doc = {"verdict": "allow", "by": "contract [acme]/web", "hops": [
        {"host": "h1", "renderer": "ovs", "outcome": "output:[2]", "flows": [flow]}]}  # fmt: skip
    cli_explain.print_explanation(doc, "acme/a1", "[fd00::2]", "tcp6/80")
    text = buf.getvalue()
    for shown in ("[fd00::2]", "contract [acme]/web", "output:[2]", "ipv6_dst=[fd00::2]", "[bold]x", "[/]"):
        assert shown in text, text
    buf.truncate(0)
    member = {"verdict": "deny", "by": "another tenant's rule"}
    cli_explain.print_explanation(member, "a/b", "10.0.0.1", "icmp")
    assert "deny" in buf.getvalue()  # a member's answer has no hops


def test_a_mac_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(BadTrace):
        Request.parse([{"arrival": {"protocol": "tcp", "dl_src": "02:00:00:00:00:01\n"}}])
