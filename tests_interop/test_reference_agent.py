"""The reference agent (``opflex_agent``) against a policyfabric authority serving the demo.

What a reference agent makes of what the authority serves is read back with
``gbp_inspect`` (the agent's own view of its store), and what the authority
makes of the agent is read back through REST. Where the dialects still differ
(issue 20, ../shared/reference/libopflex-interop-notes.md), an assertion would
be a strict xfail whose reason says what the reference does with our objects;
none is left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

from policyfabric.client.wait import wait_rendered
from policyfabric.model import kinds as k
from policyfabric.opflex.mo import MO

from .conftest import AGENT, DOMAIN, FAULT_CODE, TENANT, Stack
from .harness import gbp_inspect, method_of, wait_for

SPACE = f"/PolicyUniverse/PolicySpace/{TENANT}/"


# what a policy space holds that a reference agent resolves (it resolves objects, not the space)
CLASSES = (
    "GbpEpGroup",
    "GbpContract",
    "GbpeL24Classifier",
    "GbpBridgeDomain",
    "GbpFloodDomain",
    "GbpRoutingDomain",
    "GbpSubnets",
    "GbpSecGroup",
    "GbpAllowDenyAction",
)


def tree(stack: Stack) -> dict[str, MO]:
    """Every object of those classes the agent holds, with their subtrees, by URI, once it has
    resolved what its endpoint needs (it follows references object by object, so a read right
    after start can miss the last ones): the same tree twice in a row, holding the contract, the
    subnets and the security group's member set."""

    def read() -> dict[str, MO]:
        return {mo.uri: mo for mo in gbp_inspect(stack.inspector, *CLASSES) if mo.uri.startswith(SPACE)}

    def complete(mos: dict[str, MO]) -> bool:
        names = {(mo.subject, str(mo.properties.get("name"))) for mo in mos.values()}
        return {
            ("GbpContract", "http"),
            ("GbpSubnet", "net4"),
            ("GbpSubnets", "sg.ssh-from-app.members"),
        } <= names

    last: list[dict[str, MO]] = []

    def settled() -> dict[str, MO] | None:
        now = read()
        done = complete(now) and bool(last) and last[-1] == now
        last.append(now)
        return now if done else None

    found: dict[str, MO] = wait_for("the agent's resolved tree", settled, 10)
    return found


def of(mos: dict[str, MO], subject: str) -> dict[str, MO]:
    """Objects of one class, by their ``name`` property (URI when unnamed)."""
    return {str(mo.properties.get("name", mo.uri)): mo for mo in mos.values() if mo.subject == subject}


def under(mos: dict[str, MO], prefix: str, subjects: Iterable[str]) -> list[MO]:
    wanted = set(subjects)
    return [mo for uri, mo in mos.items() if uri.startswith(prefix) and mo.subject in wanted]


# ---- (a) what the reference agent resolved


def test_agent_holds_the_groups_and_the_contract(stack: Stack) -> None:
    mos = wait_for(
        "the EPGs in gbp_inspect",
        lambda: tree(stack) if len(of(tree(stack), "GbpEpGroup")) >= 2 else None,
        10,
    )
    assert {"web", "app"} <= set(of(mos, "GbpEpGroup"))
    assert "http" in of(mos, "GbpContract")
    rules = of(mos, "GbpRule")
    assert "web-in" in rules


def test_agent_holds_the_platform_config(stack: Stack) -> None:
    """What it resolves first: /PolicyUniverse/PlatformConfig/<its domain>/ (named, nothing else:
    no encapType, since the model has no constant for Geneve)."""
    found = wait_for(
        "the PlatformConfig in gbp_inspect",
        lambda: [
            mo for mo in gbp_inspect(stack.inspector, "PlatformConfig") if mo.subject == "PlatformConfig"
        ],
        10,
    )
    assert [(mo.uri, mo.properties) for mo in found] == [
        (f"/PolicyUniverse/PlatformConfig/{DOMAIN}/", {"name": DOMAIN})
    ]


def test_agent_holds_the_subnets(stack: Stack) -> None:
    """(The agent follows EPG -> bridge domain -> subnets: they may arrive after the groups.)"""
    subnets = wait_for(
        "the subnets in gbp_inspect",
        lambda: found if {"net4", "net6"} <= set(found := of(tree(stack), "GbpSubnet")) else None,
        10,
    )
    assert subnets["net4"].properties.get("address") == "10.1.0.0"
    assert subnets["net4"].properties.get("prefixLen") == 24
    assert subnets["net6"].properties.get("address") == "fd00:1::"


def test_classifier_keeps_its_ports(stack: Stack) -> None:
    clf = of(tree(stack), "GbpeL24Classifier")["http.web-in"].properties
    assert (clf.get("prot"), clf.get("dFromPort"), clf.get("dToPort")) == (6, 80, 80)


def test_classifier_keeps_its_ethertype(stack: Stack) -> None:
    """etherT is an enum of the model, read by constant name: ssh-from-app's first rule is ipv4
    (an integer would be dropped without a word); the contract's web-in is for any family, so it
    carries none (the reference then matches both, as the intent says)."""
    classifiers = of(tree(stack), "GbpeL24Classifier")
    assert classifiers["sg.ssh-from-app.0"].properties.get("etherT") == "ipv4"
    assert "etherT" not in classifiers["http.web-in"].properties


def test_the_rule_reaches_its_classifier(stack: Stack) -> None:
    """The rule's relation source, under the URI the reference builds for it."""
    mos = tree(stack)
    rule = of(mos, "GbpRule")["web-in"]
    rels = under(mos, rule.uri, ["GbpRuleToClassifierRSrc"])
    assert [r.uri for r in rels] == [
        rule.uri + "GbpRuleToClassifierRSrc/GbpeL24Classifier/%2fPolicyUniverse%2fPolicySpace%2facme"
        "%2fGbpeL24Classifier%2fhttp.web-in%2f/"
    ]


def sg_rules(stack: Stack) -> dict[str, list[MO]]:
    """ssh-from-app's rules (by name: "0" tcp/22 from the group's members, "1" icmp from
    10.1.0.0/24) -> the remote restrictions the agent holds under each."""
    mos = tree(stack)
    sg = of(mos, "GbpSecGroup")["ssh-from-app"]
    rules = {str(mo.properties.get("name")): mo for mo in under(mos, sg.uri, ["GbpSecGroupRule"])}
    assert set(rules) == {"0", "1"}
    return {
        name: [
            mo
            for uri, mo in mos.items()
            if uri.startswith(rule.uri) and uri != rule.uri and "Remote" in mo.subject
        ]
        for name, rule in rules.items()
    }


def test_security_group_rule_keeps_its_remote_prefix(stack: Stack) -> None:
    """The icmp rule's restriction is a model class (GbpSecGroupRuleToRemoteAddressRSrc)."""
    assert [mo.subject for mo in sg_rules(stack)["1"]] == ["GbpSecGroupRuleToRemoteAddressRSrc"]


def test_security_group_rule_keeps_its_remote_group(stack: Stack) -> None:
    """A rule whose restriction the agent cannot see is an allow from anywhere: it must not exist.
    The group's members reach the reference agent as the model's remote addresses (app1's, and
    the placeholder that keeps the set from ever being empty); our own hint it drops."""
    mos = tree(stack)
    relations = [mo for mo in sg_rules(stack)["0"] if mo.subject == "GbpSecGroupRuleToRemoteAddressRSrc"]
    assert relations, "tcp/22 reached the agent with no remote restriction"
    [target] = [mo.properties["target"]["reference_uri"] for mo in relations]
    assert target in mos, "the member set was not resolved"
    addresses = sorted(
        (str(mo.properties.get("address")), mo.properties.get("prefixLen"))
        for uri, mo in mos.items()
        if uri.startswith(target) and mo.subject == "GbpSubnet"
    )
    assert addresses == [("10.1.0.20", 32), ("255.255.255.255", 32)]


# ---- (b) what the authority made of the agent


def test_agent_is_listed(stack: Stack) -> None:
    agents = wait_for(
        "the agent in /v1/agents",
        lambda: [a for a in stack.client.request("GET", "/v1/agents")["items"] if a.get("name") == AGENT],
        5,
    )
    assert agents


def test_endpoint_is_bound_to_the_agent_and_active(stack: Stack) -> None:
    def state() -> tuple[object, object, object]:
        [rec] = stack.client.list(k.ENDPOINT, TENANT, "app1")
        return rec.get("host"), rec.get("interface"), rec.get("status")

    with contextlib.suppress(AssertionError):
        wait_for("app1 bound and ACTIVE", lambda: state() == (AGENT, "tap-app1", "ACTIVE"), 5)
    assert state() == (AGENT, "tap-app1", "ACTIVE")


def test_the_agents_fault_reaches_rest(stack: Stack) -> None:
    def faults() -> list[dict[str, object]]:
        items = stack.client.request("GET", "/v1/faults")["items"]
        return [f for f in items if str(f.get("code")) == str(FAULT_CODE)]

    with contextlib.suppress(AssertionError):
        wait_for("the fault in /v1/faults", faults, 3)
    assert faults()


# ---- (c) a change through REST reaches the reference agent


def test_a_contract_change_reaches_the_agent_within_2s(stack: Stack) -> None:
    [contract] = stack.client.list(k.CONTRACT, TENANT, "http")
    body = {key: v for key, v in contract.items() if key not in ("id", "revision")}
    body["rules"] = [
        {**contract["rules"][0], "classifier": {**contract["rules"][0]["classifier"], "port": 8080}}
    ]
    stack.client.replace(k.CONTRACT, contract["id"], body)
    start = time.monotonic()

    def ported() -> bool:
        clf = of(tree(stack), "GbpeL24Classifier").get("http.web-in")
        return clf is not None and clf.properties.get("dFromPort") == 8080

    wait_for("the new port in gbp_inspect", ported, 2.0, interval=0.05)
    assert time.monotonic() - start < 2.0


def test_apply_wait_does_not_wait_for_a_reference_agent_and_names_it(stack: Stack) -> None:
    """A reference agent never reports the revision it has rendered: the authority lists it as
    not reporting (from its handshake), and ``apply --wait`` names it as unconfirmed at once
    rather than timing out on it."""
    [agent] = [a for a in stack.client.request("GET", "/v1/agents")["items"] if a.get("name") == AGENT]
    assert agent["reports_rendered"] is False and agent["rendered_revision"] is None
    [contract] = stack.client.list(k.CONTRACT, TENANT, "http")
    body = {key: v for key, v in contract.items() if key not in ("id", "revision")}
    rule = contract["rules"][0]
    body["rules"] = [{**rule, "classifier": {**rule["classifier"], "port": 8081}}]
    written = stack.client.replace(k.CONTRACT, contract["id"], body)
    start = time.monotonic()
    waited = wait_rendered(stack.client, int(written["revision"]), {TENANT}, timeout=10)
    assert time.monotonic() - start < 5
    assert waited.unconfirmed == [AGENT] and AGENT in waited.agents and waited.missing == {}


# ---- the session itself (evidence; these hold today)


def test_agent_handshakes_and_asks_for_its_groups(stack: Stack) -> None:
    """What the reference agent does at start, in order: identity, PlatformConfig of its domain
    first, then its endpoints' groups and security groups, then its endpoints."""
    frames = stack.tap.snapshot()
    sent = [method_of(f) for f in frames if f.direction == "agent->authority"]
    assert "send_identity" in sent and "policy_resolve" in sent and "endpoint_declare" in sent
    resolves = [
        p["policy_uri"]
        for f in frames
        if f.direction == "agent->authority" and method_of(f) == "policy_resolve"
        for p in f.message["params"]
    ]
    assert resolves[0] == "/PolicyUniverse/PlatformConfig/policyfabric/"
    assert {SPACE + "GbpEpGroup/app/", SPACE + "GbpEpGroup/web/", SPACE + "GbpSecGroup/ssh-from-app/"} <= set(
        resolves
    )


def test_agent_reports_its_fault(stack: Stack) -> None:
    """The fault file becomes a FaultInstance in a state_report (the frames are the evidence)."""

    def reported() -> list[dict[str, object]]:
        return [
            mo
            for f in stack.tap.snapshot()
            if f.direction == "agent->authority" and method_of(f) == "state_report"
            for p in f.message["params"]
            for mo in p.get("observable", [])
            if mo.get("subject") == "FaultInstance"
        ]

    assert wait_for("a FaultInstance state_report", reported, 5)


def test_a_rule_added_reaches_the_agent_with_its_classifier(stack: Stack) -> None:
    """Our authority pushes a new rule's classifier with the rule (it need not be resolved): the
    reference agent takes it as any pushed object, and holds the rule and its classifier."""
    [contract] = stack.client.list(k.CONTRACT, TENANT, "http")
    body = {key: v for key, v in contract.items() if key not in ("id", "revision")}
    extra = {"name": "alt", "classifier": {"protocol": "tcp", "port": 8443}, "action": "allow"}
    body["rules"] = [*contract["rules"], extra]
    stack.client.replace(k.CONTRACT, contract["id"], body)
    try:

        def added() -> bool:
            mos = {mo.uri: mo for mo in gbp_inspect(stack.inspector, *CLASSES) if mo.uri.startswith(SPACE)}
            clf = of(mos, "GbpeL24Classifier").get("http.alt")
            return clf is not None and clf.properties.get("dFromPort") == 8443 and "alt" in of(mos, "GbpRule")

        wait_for("the new rule and its classifier in gbp_inspect", added, 2.0, interval=0.05)
    finally:
        [now] = stack.client.list(k.CONTRACT, TENANT, "http")
        back = {key: v for key, v in now.items() if key not in ("id", "revision")}
        back["rules"] = contract["rules"]
        stack.client.replace(k.CONTRACT, now["id"], back)
