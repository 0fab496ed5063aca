"""POST /v1/batch: many creates in one transaction, all or nothing, errors that name the item."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, error, unique


def ep(t: str, name: str, ip: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "endpoints", "object": {"name": name, "tenant": t, "epg": "ga", "ip": ip, **extra}}


def test_a_batch_creates_everything_in_order_at_one_revision(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    before = api.revision()
    body = {
        "create": [
            {"kind": "endpoint_group", "object": {"name": "gc", "tenant": t, "bridge_domain": "bd-a"}},
            *(ep(t, f"e{i}", f"10.1.0.{10 + i}") for i in range(50)),
            {"kind": "endpoint", "object": {"name": "in-gc", "tenant": t, "epg": "gc", "ip": "10.1.0.99"}},
        ]
    }
    r = api.post("batch", body)
    assert r.status_code == 201, r.text
    created = r.json()["created"]
    assert len(created) == 52 and created[-1]["epg"] == "gc"  # a later item may use an earlier one
    # one transaction, one revision for all of it
    assert {c["revision"] for c in created} == {r.json()["revision"]} == {api.revision()} == {before + 1}
    assert api.find("endpoints", t, "e49") is not None


def test_one_bad_item_refuses_the_whole_batch_and_says_which(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    before = api.revision()
    r = api.post("batch", {"create": [ep(t, "ok1", "10.1.0.20"), ep(t, "bad", "10.1.0.300")]})
    assert r.status_code == 422
    err = error(r)
    assert err["field"] == "create[1].ip[0]" and "10.1.0.300" in err["message"]
    r = api.post("batch", {"create": [ep(t, "a", "10.1.0.21"), ep(t, "b", "10.1.0.21")]})
    assert r.status_code == 409
    err = error(r)
    assert err["field"] == "create[1].ip[0]" and err["message"].startswith("create[1] (endpoint 'b'):")
    r = api.post("batch", {"create": [{"kind": "gizmos", "object": {}}]})
    assert r.status_code == 422 and error(r)["field"] == "create[0].kind"
    assert api.revision() == before  # nothing was written
    assert api.find("endpoints", t, "ok1") is None and api.find("endpoints", t, "a") is None


def test_a_batch_that_is_not_one_is_refused(api: Api) -> None:
    assert api.post("batch", {"create": "x"}).status_code == 422
    r = api.http.post("/v1/batch", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = api.http.post(
        "/v1/batch", json={"create": [{"kind": "tenant", "object": {"name": unique("t")}}] * 20_001}
    )
    assert r.status_code == 422 and "at most 20000" in error(r)["message"]


# ---- items: creates, updates and deletes in one transaction --------------------------------------


def item(op: str, kind: str, obj: dict[str, Any], revision: int | None = None) -> dict[str, Any]:
    return {"op": op, "kind": kind, "object": obj, **({"revision": revision} if revision is not None else {})}


def ep_obj(t: str, name: str, ip: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "tenant": t, "epg": "ga", "ip": ip, **extra}


def test_items_create_update_and_delete_at_one_revision(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    api.ok("endpoints", ep_obj(t, "old", "10.1.0.40"))
    web = api.ok("endpoints", ep_obj(t, "web", "10.1.0.41"))
    before = api.revision()
    r = api.post(
        "batch",
        {
            "items": [
                item("create", "endpoints", ep_obj(t, "new", "10.1.0.40")),  # the address `old` frees
                item("update", "endpoints", ep_obj(t, "web", "10.1.0.42"), web["revision"]),
                item("delete", "endpoints", {"name": "old", "tenant": t}),
            ]
        },
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["revision"] == before + 1 == api.revision() and answer["dry_run"] is False
    actions = {(i["name"], i["action"]) for i in answer["items"]}
    assert actions == {("old", "deleted"), ("new", "created"), ("web", "updated")}
    changed = next(i for i in answer["items"] if i["name"] == "web")["changes"]
    assert changed == [{"field": "ip", "from": ["10.1.0.41"], "to": ["10.1.0.42"]}]
    assert api.find("endpoints", t, "old") is None
    assert api.find("endpoints", t, "new")["ip"] == ["10.1.0.40"]  # type: ignore[index]
    assert api.find("endpoints", t, "web")["ip"] == ["10.1.0.42"]  # type: ignore[index]


def test_a_failure_in_the_middle_commits_nothing_and_names_the_object(
    api: Api, tenant: dict[str, str]
) -> None:
    t = tenant["name"]
    web = api.ok("endpoints", ep_obj(t, "web", "10.1.0.50"))
    api.ok("endpoints", ep_obj(t, "db", "10.1.0.51"))
    before = api.revision()
    r = api.post(
        "batch",
        {
            "items": [
                item("create", "endpoints", ep_obj(t, "first", "10.1.0.52")),
                item("update", "endpoints", ep_obj(t, "web", "10.1.0.53"), web["revision"]),
                item("create", "endpoints", ep_obj(t, "clash", "10.1.0.51")),  # db holds it
                item("create", "endpoints", ep_obj(t, "last", "10.1.0.54")),
            ]
        },
    )
    assert r.status_code == 409
    err = error(r)
    assert err["field"] == "items[2].ip[0]"
    assert err["message"].startswith(f"items[2] (endpoint {t}/clash): ")
    assert "already taken by endpoint 'db'" in err["message"]
    assert api.revision() == before
    assert api.find("endpoints", t, "first") is None and api.find("endpoints", t, "last") is None
    assert api.find("endpoints", t, "web")["ip"] == ["10.1.0.50"]  # type: ignore[index]  # not updated


def test_every_parse_problem_of_every_item_in_one_answer(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    r = api.post(
        "batch",
        {
            "items": [
                item("create", "endpoints", ep_obj(t, "a", "10.1.0.300")),
                item("update", "contracts", {"name": "c", "tenant": t, "rules": [{"name": "r", "nope": 1}]}),
                item("delete", "endpoints", {"name": "x"}),
                item("create", "gizmos", {}),
            ]
        },
    )
    assert r.status_code == 422
    fields = {p["field"]: p["message"] for p in error(r)["problems"]}
    assert set(fields) == {"items[0].ip[0]", "items[1].rules[0].nope", "items[2].tenant", "items[3].kind"}
    assert fields["items[0].ip[0]"].startswith(f"items[0] (endpoint {t}/a): ")
    assert fields["items[1].rules[0].nope"].startswith(f"items[1] (contract {t}/c): unknown field")


def test_a_stale_revision_is_a_409_and_nothing_is_written(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    web = api.ok("endpoints", ep_obj(t, "web", "10.1.0.60"))
    moved = api.put("endpoints", web["id"], ep_obj(t, "web", "10.1.0.61"))  # someone else's change
    assert moved.status_code == 200
    before = api.revision()
    stale = item("update", "endpoints", ep_obj(t, "web", "10.1.0.62"), web["revision"])
    r = api.post("batch", {"items": [item("create", "endpoints", ep_obj(t, "n", "10.1.0.63")), stale]})
    assert r.status_code == 409
    err = error(r)
    assert err["field"] == "items[1].revision" and f"(endpoint {t}/web)" in err["message"]
    assert f"at revision {moved.json()['revision']}, not {web['revision']}" in err["message"]
    gone = item("delete", "endpoints", {"name": "web", "tenant": t}, web["revision"])
    assert api.post("batch", {"items": [gone]}).status_code == 409
    assert api.revision() == before
    assert api.find("endpoints", t, "web")["ip"] == ["10.1.0.61"]  # type: ignore[index]
    assert api.find("endpoints", t, "n") is None


def test_a_dry_run_says_what_would_change_and_writes_nothing(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    web = api.ok("endpoints", ep_obj(t, "web", "10.1.0.70"))
    before = api.revision()
    body: dict[str, Any] = {
        "items": [
            item("update", "endpoints", ep_obj(t, "web", "10.1.0.71"), web["revision"]),
            item("create", "endpoints", ep_obj(t, "new", "10.1.0.72")),
            item("update", "endpoint-groups", {"name": "gb", "tenant": t, "bridge_domain": "bd-b"}),
        ],
        "dry_run": True,
    }
    r = api.post("batch", body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["dry_run"] is True and answer["revision"] == before
    by_name = {i["name"]: i for i in answer["items"]}
    assert by_name["web"]["action"] == "updated"
    assert by_name["web"]["changes"] == [{"field": "ip", "from": ["10.1.0.70"], "to": ["10.1.0.71"]}]
    assert by_name["new"]["action"] == "created"
    assert {"field": "ip", "from": None, "to": ["10.1.0.72"]} in by_name["new"]["changes"]
    assert by_name["gb"]["action"] == "unchanged" and by_name["gb"]["changes"] == []
    assert api.revision() == before
    now = api.find("endpoints", t, "web")
    assert now is not None and now["revision"] == web["revision"] and now["ip"] == ["10.1.0.70"]
    assert api.find("endpoints", t, "new") is None
    # a dry run is checked like the real thing: a clash is the same 409
    body["items"].append(item("create", "endpoints", ep_obj(t, "clash", "10.1.0.71")))
    assert api.post("batch", body).status_code == 409
    assert api.revision() == before


def test_unchanged_items_write_nothing(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    api.ok("endpoints", ep_obj(t, "web", "10.1.0.75"))
    before = api.revision()
    r = api.post("batch", {"items": [item("update", "endpoints", ep_obj(t, "web", "10.1.0.75"))]})
    assert r.status_code == 200 and r.json()["items"][0]["action"] == "unchanged"
    assert r.json()["revision"] == before == api.revision()


def test_a_delete_whose_users_stay_is_refused_and_one_whose_users_move_is_not(
    api: Api, tenant: dict[str, str]
) -> None:
    t = tenant["name"]
    api.ok("endpoint-groups", {"name": "gone", "tenant": t, "bridge_domain": "bd-a"})
    api.ok("endpoints", {"name": "e", "tenant": t, "epg": "gone", "ip": "10.1.0.80"})
    drop = item("delete", "endpoint-groups", {"name": "gone", "tenant": t})
    r = api.post("batch", {"items": [drop]})
    assert r.status_code == 409 and error(r)["code"] == "in_use"
    assert error(r)["message"].startswith(f"items[0] (endpoint group {t}/gone): ")
    move = item("update", "endpoints", {"name": "e", "tenant": t, "epg": "ga", "ip": "10.1.0.80"})
    r = api.post("batch", {"items": [drop, move]})
    assert r.status_code == 200, r.text
    assert api.find("endpoint-groups", t, "gone") is None


def test_prune_deletes_only_what_the_owner_created(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    owner, other = unique("file"), unique("file")
    mine = [item("create", "endpoints", ep_obj(t, n, f"10.1.0.{90 + i}")) for i, n in enumerate(("a", "b"))]
    assert api.post("batch", {"items": mine, "owner": owner}).status_code == 200
    theirs = item("create", "endpoints", ep_obj(t, "theirs", "10.1.0.95"))
    assert api.post("batch", {"items": [theirs], "owner": other}).status_code == 200
    api.ok("endpoints", ep_obj(t, "by-hand", "10.1.0.96"))
    assert api.find("endpoints", t, "a")["applied_by"] == owner  # type: ignore[index]
    # `a` leaves the file; the owner's batch with prune removes it, and nothing else
    keep = item("update", "endpoints", ep_obj(t, "b", "10.1.0.91"))
    dry = api.post("batch", {"items": [keep], "owner": owner, "prune": True, "dry_run": True})
    assert [(i["name"], i["action"], i.get("pruned")) for i in dry.json()["items"]] == [
        ("a", "deleted", True),
        ("b", "unchanged", None),
    ]
    assert api.find("endpoints", t, "a") is not None  # the dry run deleted nothing
    r = api.post("batch", {"items": [keep], "owner": owner, "prune": True})
    assert r.status_code == 200, r.text
    assert api.find("endpoints", t, "a") is None
    for name in ("b", "theirs", "by-hand"):
        assert api.find("endpoints", t, name) is not None
    # an update by another owner does not take the object over
    assert api.post("batch", {"items": [keep], "owner": other, "prune": True}).status_code == 200
    assert api.find("endpoints", t, "b")["applied_by"] == owner  # type: ignore[index]
    assert api.find("endpoints", t, "theirs") is None  # `other` no longer declares it
    assert api.post("batch", {"items": [], "prune": True}).status_code == 422  # prune needs an owner


def test_a_member_cannot_prune_or_write_another_tenant_in_a_batch(as_: Any) -> None:
    acme, ops = as_("acme"), as_("ops")
    for name in ("acme", "beta"):
        ops.post("tenants", {"name": name})
    owner = unique("file")
    r = ops.post(
        "batch", {"items": [item("create", "contracts", {"name": "c1", "tenant": "beta"})], "owner": owner}
    )
    assert r.status_code == 200, r.text
    r = acme.post("batch", {"items": [item("create", "contracts", {"name": "c2", "tenant": "beta"})]})
    assert r.status_code == 403 and error(r)["field"] == "items[0].tenant"
    # the member's prune does not see beta's contract, so it is not deleted
    r = acme.post("batch", {"items": [], "owner": owner, "prune": True})
    assert r.status_code == 200 and r.json()["items"] == []
    assert ops.find("contracts", "beta", "c1") is not None


def test_keep_writes_nothing_checks_the_revision_and_is_spared_by_prune(
    api: Api, tenant: dict[str, str], as_: Any
) -> None:
    t = tenant["name"]
    owner = unique("file")
    made = api.post(
        "batch", {"items": [item("create", "endpoints", ep_obj(t, "k", "10.1.0.110"))], "owner": owner}
    )
    revision = made.json()["items"][0]["revision"]
    before = api.revision()
    keep = item("keep", "endpoints", {"name": "k", "tenant": t}, revision)
    r = api.post("batch", {"items": [keep], "owner": owner, "prune": True})
    assert r.status_code == 200 and r.json()["items"][0]["action"] == "unchanged"
    assert api.revision() == before and api.find("endpoints", t, "k") is not None
    stale = item("keep", "endpoints", {"name": "k", "tenant": t}, revision - 1)
    r = api.post("batch", {"items": [stale]})
    assert r.status_code == 409 and error(r)["field"] == "items[0].revision"
    # keeping a tenant is no write: a member may name its own tenant in a file it applies
    ops, acme = as_("ops"), as_("acme")
    ops.post("tenants", {"name": "acme"})
    r = acme.post("batch", {"items": [item("keep", "tenants", {"name": "acme"})]})
    assert r.status_code == 200, r.text
