"""REST authentication and tenant scoping (``--tokens``), in-process: who may read and change what.

Tokens (``conftest.TOKENS``): ``ops`` admin, ``acme`` and ``beta`` members of those tenants,
``audit`` a reader of everything, ``acme-ro`` a reader of acme only.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import pytest

from tests.conftest import TOKENS, AsToken, error, unique


@pytest.fixture
def two_tenants(as_: AsToken) -> dict[str, dict[str, Any]]:
    """In acme and beta: an l3_context, bridge domain, subnet 10.1.0.0/24 and group (fresh names),
    and in beta an endpoint with a known MAC. Returns each tenant's objects by kind."""
    ops, made = as_("ops"), {}
    for t in ("acme", "beta"):
        if ops.find("tenants", None, t) is None:
            ops.ok("tenants", {"name": t})
        vrf, bd, epg = unique("vrf"), unique("bd"), unique("g")
        made[t] = {
            "l3": ops.ok("l3-contexts", {"name": vrf, "tenant": t}),
            "bd": ops.ok("bridge-domains", {"name": bd, "tenant": t, "l3_context": vrf}),
            "subnet": ops.ok(
                "subnets", {"name": unique("s"), "tenant": t, "bridge_domain": bd, "cidr": "10.1.0.0/24"}
            ),
            "epg": ops.ok("endpoint-groups", {"name": epg, "tenant": t, "bridge_domain": bd}),
        }
    epg = made["beta"]["epg"]["name"]
    made["beta"]["endpoint"] = ops.ok(
        "endpoints",
        {
            "name": unique("secret"),
            "tenant": "beta",
            "epg": epg,
            "ip": "10.1.0.7",
            "mac": "02:be:" + ":".join(f"{b:02x}" for b in os.urandom(4)),
        },
    )
    return made


# ---- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["none", "not-a-token-we-know-0000"])
@pytest.mark.parametrize("path", ["/v1/tenants", "/v1/revision", "/v1/changes", "/v1/agents"])
def test_no_token_or_an_unknown_one_is_401_with_a_bearer_challenge(as_: AsToken, who: str, path: str) -> None:
    r = as_(who).get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert error(r)["code"] == "unauthorized"


def test_writes_without_a_token_are_401_and_change_nothing(as_: AsToken) -> None:
    before = as_("ops").revision()
    anon = as_("none")
    assert anon.post("tenants", {"name": unique("t")}).status_code == 401
    r = anon.http.post("/v1/tenants", json={"name": "x"}, headers={"Authorization": "Basic b3BzOm9wcw=="})
    assert r.status_code == 401 and error(r)["code"] == "unauthorized"
    assert as_("ops").revision() == before


def test_the_openapi_document_needs_no_token_and_names_the_scheme(as_: AsToken) -> None:
    doc = as_("none").get("/openapi.json").json()
    assert any(s.get("scheme") == "bearer" for s in doc["components"]["securitySchemes"].values())


# ---- members -----------------------------------------------------------------------------------


def test_a_member_reads_and_writes_its_tenant(as_: AsToken, two_tenants: dict[str, Any]) -> None:
    acme = as_("acme")
    c = acme.ok("contracts", {"name": unique("c"), "tenant": "acme"})
    r = acme.put("contracts", c["id"], {**c, "rules": [{"name": "r", "classifier": {"protocol": "tcp"}}]})
    assert r.status_code == 200, r.text
    assert acme.get(f"/v1/contracts/{c['id']}").json()["rules"][0]["name"] == "r"
    assert acme.delete("contracts", c["id"]).status_code == 200


def test_a_member_sees_only_its_tenant(as_: AsToken, two_tenants: dict[str, Any]) -> None:
    acme = as_("acme")
    mine, theirs = two_tenants["acme"]["bd"], two_tenants["beta"]["bd"]
    names = {b["name"] for b in acme.get("/v1/bridge-domains").json()["items"]}
    assert mine["name"] in names and theirs["name"] not in names
    assert {b["tenant"] for b in acme.get("/v1/bridge-domains").json()["items"]} == {"acme"}
    assert acme.get("/v1/bridge-domains", tenant="beta").json()["items"] == []
    assert acme.get("/v1/endpoints", tenant="beta", name=two_tenants["beta"]["endpoint"]["name"]).json() == {
        "items": [],
        "revision": acme.revision(),
    }
    assert [t["name"] for t in acme.get("/v1/tenants").json()["items"]] == ["acme"]
    # the admin sees both
    assert {mine["name"], theirs["name"]} <= {
        b["name"] for b in as_("ops").get("/v1/bridge-domains").json()["items"]
    }


def test_another_tenants_objects_are_404_exactly_like_missing_ones(
    as_: AsToken, two_tenants: dict[str, Any]
) -> None:
    acme, ops = as_("acme"), as_("ops")
    theirs = two_tenants["beta"]["endpoint"]
    missing = acme.get("/v1/endpoints/no-such-id")
    for r in (
        acme.get(f"/v1/endpoints/{theirs['id']}"),
        acme.put("endpoints", theirs["id"], {**theirs, "tenant": "acme"}),
        acme.put("endpoints", theirs["id"], theirs),
        acme.delete("endpoints", theirs["id"]),
    ):
        assert r.status_code == 404, r.text
        assert error(r)["code"] == "not_found"
        assert error(r)["message"] == error(missing)["message"].replace("no-such-id", theirs["id"])
    tenant = ops.find("tenants", None, "beta")
    assert tenant is not None and acme.get(f"/v1/tenants/{tenant['id']}").status_code == 404
    assert ops.get(f"/v1/endpoints/{theirs['id']}").json() == theirs  # untouched


def test_a_member_cannot_create_in_another_tenant(as_: AsToken, two_tenants: dict[str, Any]) -> None:
    before = as_("ops").revision()
    r = as_("acme").post("contracts", {"name": unique("c"), "tenant": "beta"})
    assert r.status_code == 403
    assert error(r) == {
        "code": "forbidden",
        "message": "member 'acme' (tenant acme) may only write objects of tenant 'acme'",
        "field": "tenant",
    }
    assert as_("ops").revision() == before


def test_a_member_cannot_create_or_change_tenants_or_external_networks(as_: AsToken) -> None:
    acme, ops = as_("acme"), as_("ops")
    net = ops.ok("external-networks", {"name": unique("pub"), "cidr": "198.51.100.0/24"})
    before = ops.revision()
    assert acme.find("external-networks", None, net["name"]) == net  # shared: a member may read it
    for r in (
        acme.post("tenants", {"name": unique("t")}),
        acme.post("external-networks", {"name": unique("pub"), "cidr": "203.0.113.0/24"}),
        acme.put("external-networks", net["id"], {**net, "cidr": "203.0.113.0/24"}),
        acme.delete("external-networks", net["id"]),
        acme.delete("tenants", str(ops.find("tenants", None, "acme")["id"])),  # type: ignore[index]
    ):
        assert r.status_code == 403, r.text
        assert error(r)["code"] == "forbidden"
    assert ops.revision() == before


def test_a_conflict_with_another_tenants_object_does_not_name_it(
    as_: AsToken, two_tenants: dict[str, Any]
) -> None:
    secret = two_tenants["beta"]["endpoint"]
    body = {
        "name": unique("e"),
        "tenant": "acme",
        "epg": two_tenants["acme"]["epg"]["name"],
        "mac": secret["mac"],
    }
    r = as_("acme").post("endpoints", body)
    assert r.status_code == 409
    err = error(r)
    assert err["field"] == "mac" and "another tenant" in err["message"]
    assert secret["name"] not in err["message"] and "beta" not in err["message"]
    # the admin is told who holds it
    assert secret["name"] in error(as_("ops").post("endpoints", body))["message"]


def test_changes_are_filtered_for_a_member(as_: AsToken, two_tenants: dict[str, Any]) -> None:
    ops = as_("ops")
    since = ops.revision()
    mine = as_("acme").ok("contracts", {"name": unique("c"), "tenant": "acme"})
    theirs = as_("beta").ok("contracts", {"name": unique("c"), "tenant": "beta"})
    seen = as_("acme").get("/v1/changes", since=since).json()
    assert [c["name"] for c in seen["changes"]] == [mine["name"]]
    assert seen["until"] == seen["revision"] == theirs["revision"]  # nothing left to read
    assert [c["name"] for c in ops.get("/v1/changes", since=since).json()["changes"]] == [
        mine["name"],
        theirs["name"],
    ]


def test_a_members_batch_is_checked_item_by_item(as_: AsToken, two_tenants: dict[str, Any]) -> None:
    acme, before = as_("acme"), as_("ops").revision()
    ok = {"kind": "contracts", "object": {"name": unique("c"), "tenant": "acme"}}
    for bad, field in (
        ({"kind": "contracts", "object": {"name": unique("c"), "tenant": "beta"}}, "create[1].tenant"),
        ({"kind": "tenants", "object": {"name": unique("t")}}, "create[1].kind"),
    ):
        r = acme.post("batch", {"create": [ok, bad]})
        assert r.status_code == 403, r.text
        assert error(r)["field"] == field and error(r)["message"].startswith("create[1] (")
    assert as_("ops").revision() == before  # nothing of either batch was written
    assert acme.post("batch", {"create": [ok]}).status_code == 201


# ---- readers, agents and faults ------------------------------------------------------------


def test_a_reader_reads_everything_and_writes_nothing(as_: AsToken, two_tenants: dict[str, Any]) -> None:
    audit, ops = as_("audit"), as_("ops")
    theirs = two_tenants["beta"]["endpoint"]
    assert audit.get(f"/v1/endpoints/{theirs['id']}").json() == theirs
    before = ops.revision()
    for r in (
        audit.post("contracts", {"name": unique("c"), "tenant": "beta"}),
        audit.put("endpoints", theirs["id"], theirs),
        audit.delete("endpoints", theirs["id"]),
        audit.post("batch", {"create": []}),
        audit.post("tenants", {"name": "x"}),
    ):
        assert r.status_code == 403 and error(r)["code"] == "forbidden", r.text
    assert ops.revision() == before


def test_a_tenant_reader_sees_what_a_member_sees_and_writes_nothing(
    as_: AsToken, two_tenants: dict[str, Any]
) -> None:
    ro = as_("acme-ro")
    assert {b["tenant"] for b in ro.get("/v1/bridge-domains").json()["items"]} == {"acme"}
    assert ro.get(f"/v1/endpoints/{two_tenants['beta']['endpoint']['id']}").status_code == 404
    r = ro.post("contracts", {"name": unique("c"), "tenant": "acme"})
    assert r.status_code == 403 and "may read, not write" in error(r)["message"]


@pytest.mark.parametrize(("who", "status"), [("ops", 200), ("audit", 200), ("acme", 403), ("acme-ro", 403)])
def test_agents_and_faults_are_for_admins_and_readers_of_all(as_: AsToken, who: str, status: int) -> None:
    for path in ("/v1/agents", "/v1/faults"):
        r = as_(who).get(path)
        assert r.status_code == status, r.text
        if status == 403:
            assert "span every tenant" in error(r)["message"]
        else:
            assert r.json() == {"items": []}


# ---- the audit log -----------------------------------------------------------------------------


def test_every_write_logs_who_what_and_the_revision(
    as_: AsToken, two_tenants: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    acme = as_("acme")
    with caplog.at_level(logging.INFO, logger="policyfabric.audit"):
        c = acme.ok("contracts", {"name": unique("c"), "tenant": "acme"})
        gone = acme.delete("contracts", c["id"]).json()
        acme.post("contracts", {"name": "x", "tenant": "beta"})
    lines = [r.getMessage() for r in caplog.records if r.name == "policyfabric.audit"]
    assert lines == [
        f"member 'acme' (tenant acme): POST contract acme/{c['name']} id={c['id']} -> revision "
        f"{c['revision']}",
        f"member 'acme' (tenant acme): DELETE contract acme/{c['name']} id={c['id']} -> revision "
        f"{gone['revision']}",
        "member 'acme' (tenant acme): POST /v1/contracts: denied: member 'acme' (tenant acme) may only write "
        "objects of tenant 'acme'",
    ]
    assert not any(token in line for line in lines for token, _, _ in TOKENS.values())
