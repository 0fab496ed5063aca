"""Resolution by need, the pure parts: the reverse relations the authority's tree carries, what an
agent's endpoints need from a tree (``subscriptions.needs``), how the authority finds the sessions
a change goes to (``repository.Subscribers``), and how the client lets go of what it followed
(``PolicyClient.unresolve``). The same with real sessions: ``test_opflex_by_need.py``."""

from __future__ import annotations

import time
from typing import Any

from policyfabric.agent.subscriptions import needs
from policyfabric.authority.opflex.peers import Peer
from policyfabric.authority.opflex.policy_tree import tenant_tree
from policyfabric.authority.opflex.repository import Subscribers
from policyfabric.model import objects as o
from policyfabric.opflex.cache import ancestors
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, uri_of
from policyfabric.opflex.mo import MO, Tree, ref

T = "t"


def objects() -> dict[str, list[Any]]:
    rule = o.ContractRule(name="r", classifier=o.Classifier(protocol="tcp", port=80))
    return {
        "l3_context": [o.L3Context(name="v", tenant=T)],
        "bridge_domain": [
            o.BridgeDomain(name="b1", tenant=T, l3_context="v"),
            o.BridgeDomain(name="b2", tenant=T, l3_context="v"),
        ],
        "subnet": [
            o.Subnet(name="s1", tenant=T, bridge_domain="b1", cidr="10.1.0.0/24"),
            o.Subnet(name="s2", tenant=T, bridge_domain="b2", cidr="10.2.0.0/24"),
        ],
        "contract": [o.Contract(name=c, tenant=T, rules=[rule]) for c in ("ca", "cb")],
        "endpoint_group": [
            o.EndpointGroup(name="a", tenant=T, bridge_domain="b1", provides=["ca"]),
            o.EndpointGroup(name="a2", tenant=T, bridge_domain="b1", provides=["ca"]),
            o.EndpointGroup(name="c", tenant=T, bridge_domain="b2", consumes=["ca", "cb"]),
            o.EndpointGroup(name="b", tenant=T, bridge_domain="b2", provides=["cb"]),
        ],
        "endpoint": [o.Endpoint(name="e1", tenant=T, epg="a", ip=["10.1.0.5"])],
        "router": [o.Router(name="r", tenant=T, l3_context="v", interfaces=["s1", "s2"])],
        "floating_ip": [o.FloatingIp(name="f", tenant=T, network="ext", ip="203.0.113.5", endpoint="e1")],
    }


def tree() -> Tree:
    return tenant_tree(T, objects(), {})


def test_the_tree_carries_the_reverse_relations() -> None:
    mos = tree().mos
    contract = mos[uri_of(T, Cls.GBP_CONTRACT, "ca")]
    sources = {
        (mos[c].subject, mos[c].properties[Prop.SOURCE]["reference_uri"])
        for c in contract.children
        if mos[c].subject.startswith("PfEpGroup")
    }
    assert sources == {
        (Cls.PF_EP_GROUP_TO_PROV_CONTRACT_RTGT, uri_of(T, Cls.GBP_EP_GROUP, "a")),
        (Cls.PF_EP_GROUP_TO_PROV_CONTRACT_RTGT, uri_of(T, Cls.GBP_EP_GROUP, "a2")),
        (Cls.PF_EP_GROUP_TO_CONS_CONTRACT_RTGT, uri_of(T, Cls.GBP_EP_GROUP, "c")),
    }
    for bd in ("b1", "b2"):
        kids = [mos[c] for c in mos[uri_of(T, Cls.GBP_BRIDGE_DOMAIN, bd)].children]
        routers = [
            k.properties[Prop.SOURCE] for k in kids if k.subject == Cls.PF_ROUTER_TO_BRIDGE_DOMAIN_RTGT
        ]
        assert routers == [ref(Cls.PF_ROUTER, uri_of(T, Cls.PF_ROUTER, "r"))]
    ep = mos[endpoint_uri(T, "e1")]
    assert ep.properties[Prop.FLOATING_IP] == [ref(Cls.PF_FLOATING_IP, uri_of(T, Cls.PF_FLOATING_IP, "f"))]
    legs = [mos[c] for c in mos[uri_of(T, Cls.PF_ROUTER, "r")].children if "PfRouterInterface/" in c]
    assert {leg.properties[Prop.BRIDGE_DOMAIN]["reference_uri"] for leg in legs} == {
        uri_of(T, Cls.GBP_BRIDGE_DOMAIN, b) for b in ("b1", "b2")
    }


def test_an_endpoint_needs_its_group_its_contracts_their_other_side_and_its_bridge_domains_routers() -> None:
    mos = tree().mos
    group = {g: uri_of(T, Cls.GBP_EP_GROUP, g) for g in ("a", "a2", "b", "c")}
    got = needs(mos, [group["a"]], [uri_of(T, Cls.GBP_BRIDGE_DOMAIN, "b1")])
    # a provides ca: its consumers (c), not its fellow provider a2; not cb, which only c uses
    assert got == {
        group["a"]: Cls.GBP_EP_GROUP,
        uri_of(T, Cls.GBP_CONTRACT, "ca"): Cls.GBP_CONTRACT,
        group["c"]: Cls.GBP_EP_GROUP,
        uri_of(T, Cls.PF_ROUTER, "r"): Cls.PF_ROUTER,
    }
    got = needs(mos, [group["c"]], [])
    assert set(got) == {
        group["c"],
        group["a"],
        group["a2"],
        group["b"],
        *(uri_of(T, "GbpContract", c) for c in ("ca", "cb")),
    }
    # what is not cached yet brings nothing more, until it is
    assert needs({}, [group["a"]], []) == {group["a"]: Cls.GBP_EP_GROUP}


def test_a_change_finds_the_sessions_subscribed_to_it_or_above_it() -> None:
    subs = Subscribers()
    now = time.monotonic()
    whole, one, two = Peer("x"), Peer("y"), Peer("z")
    space, contract = "/PolicyUniverse/PolicySpace/t/", uri_of(T, Cls.GBP_CONTRACT, "ca")
    for peer, uri in ((whole, space), (one, contract), (two, uri_of(T, Cls.GBP_CONTRACT, "cb"))):
        peer.subs[uri] = now + 60
        subs.add(uri, peer)
    rule = contract + "GbpSubject/default/GbpRule/r/"
    assert ancestors(rule)[-1] == rule and ancestors(rule)[:2] == ["/", "/PolicyUniverse/"]
    found = subs.of([rule], now)
    assert found == {id(whole): {space: now + 60}, id(one): {contract: now + 60}}
    assert subs.of([uri_of(T, Cls.GBP_CONTRACT, "cab")], now).keys() == {
        id(whole)
    }  # a prefix, not an ancestor
    del one.subs[contract]  # unresolved: forgotten when met
    two.subs[uri_of(T, Cls.GBP_CONTRACT, "cb")] = now - 1  # expired
    assert subs.of([rule, uri_of(T, Cls.GBP_CONTRACT, "cb")], now).keys() == {id(whole)}
    assert len(subs) == 1


def test_unresolving_lets_go_of_what_was_followed_from_it_alone() -> None:
    client = PolicyClient("h", [("127.0.0.1", 1)])
    contract, clf, allow = "/P/C/c/", "/P/L/clf/", "/P/A/allow/"
    rule = MO(Cls.GBP_RULE_TO_CLASSIFIER_RSRC, contract + "R/", {Prop.TARGET: ref("L", clf)})
    to_allow = MO(Cls.GBP_RULE_TO_ACTION_RSRC, contract + "A/", {Prop.TARGET: ref("A", allow)})
    other = MO(Cls.GBP_RULE_TO_ACTION_RSRC, "/P/C/d/A/", {Prop.TARGET: ref("A", allow)})
    for mo in (
        MO(Cls.GBP_CONTRACT, contract, {}, [rule.uri, to_allow.uri]),
        rule,
        to_allow,
        MO(Cls.GBP_CONTRACT, "/P/C/d/", {}, [other.uri]),
        other,
        MO("L", clf),
        MO("A", allow),
    ):
        client.policy[mo.uri] = mo
    client.wanted = {contract: Cls.GBP_CONTRACT, "/P/C/d/": Cls.GBP_CONTRACT, clf: "L", allow: "A"}
    client.followed = {clf, allow}
    client.unresolve(contract)
    # the classifier only the contract referred to is gone; the action another contract uses stays
    assert set(client.wanted) == {"/P/C/d/", allow} and client.followed == {allow}
    assert contract not in client.policy and rule.uri not in client.policy and clf not in client.policy
    assert allow in client.policy
