"""Optimistic concurrency (a write carrying a stale revision is refused, 409), the change log's
bounds and pages, and `policyfabric apply` refusing to overwrite a change made after it planned."""

from __future__ import annotations

from typing import Any

import pytest

from policyfabric.client import ApiError, Client
from policyfabric.client import apply as applying
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc
from tests.conftest import Api, error, unique


def contract(api: Api, tenant: dict[str, str], port: int = 80) -> dict[str, Any]:
    rules = [{"name": "r", "classifier": {"protocol": "tcp", "port": port}}]
    return api.ok("contracts", {"name": unique("c"), "tenant": tenant["name"], "rules": rules})


def with_port(obj: dict[str, Any], port: int) -> dict[str, Any]:
    return {**obj, "rules": [{"name": "r", "classifier": {"protocol": "tcp", "port": port}}]}


def test_a_put_with_a_stale_revision_in_the_body_is_refused(api: Api, tenant: dict[str, str]) -> None:
    read = contract(api, tenant)
    theirs = api.put("contracts", read["id"], with_port(read, 8080))  # someone else, in between
    assert theirs.status_code == 200
    current = theirs.json()["revision"]
    r = api.put("contracts", read["id"], with_port(read, 9090))  # body carries the revision read
    assert r.status_code == 409
    assert error(r) == {
        "code": "conflict",
        "field": "revision",
        "message": f"contract {read['name']!r} is at revision {current}, not {read['revision']} as this "
        "request expects: it changed since you read it; read it again and retry",
    }
    assert api.get(f"/v1/contracts/{read['id']}").json()["rules"][0]["classifier"]["port"] == 8080
    # the same body at the current revision goes through; without a revision, as before
    assert api.put("contracts", read["id"], {**with_port(read, 9090), "revision": current}).status_code == 200
    no_revision = {key: v for key, v in with_port(read, 7070).items() if key != "revision"}
    assert api.put("contracts", read["id"], no_revision).status_code == 200


def test_if_match_guards_put_and_delete(api: Api, tenant: dict[str, str]) -> None:
    read = contract(api, tenant)
    r = api.get(f"/v1/contracts/{read['id']}")
    assert r.headers["etag"] == f'"{read["revision"]}"'
    stale = f'"{read["revision"]}"'
    changed = api.put("contracts", read["id"], with_port(read, 8080), if_match=stale)
    assert changed.status_code == 200 and changed.headers["etag"] == f'"{changed.json()["revision"]}"'
    body = {key: v for key, v in with_port(read, 9090).items() if key != "revision"}
    assert api.put("contracts", read["id"], body, if_match=stale).status_code == 409
    r = api.delete("contracts", read["id"], if_match=stale)
    assert r.status_code == 409 and error(r)["code"] == "conflict"
    assert f"at revision {changed.json()['revision']}" in error(r)["message"]
    assert api.get(f"/v1/contracts/{read['id']}").status_code == 200  # still there
    # header and body disagreeing cannot both hold
    current = f'"{changed.json()["revision"]}"'
    both = api.put("contracts", read["id"], {**body, "revision": read["revision"]}, if_match=current)
    assert both.status_code == 409 and error(both)["field"] == "revision"
    # a no-op PUT with a stale revision is refused too: it was not written on what is there
    assert api.put("contracts", read["id"], changed.json(), if_match=stale).status_code == 409
    assert api.delete("contracts", read["id"], if_match="*").status_code == 200


@pytest.mark.parametrize("value", ['W/"3"', "three", '"3", "4"', '"-1"', f'"{2**64}"'])
def test_a_malformed_if_match_is_a_400(api: Api, tenant: dict[str, str], value: str) -> None:
    read = contract(api, tenant)
    r = api.delete("contracts", read["id"], if_match=value)
    assert r.status_code == 400 and error(r)["field"] == "If-Match", r.text


@pytest.mark.parametrize("revision", ["3", -1, 1.5, True, 2**64])
def test_a_body_revision_that_is_not_one_is_a_422(api: Api, tenant: dict[str, str], revision: object) -> None:
    read = contract(api, tenant)
    r = api.put("contracts", read["id"], {**read, "revision": revision})
    assert r.status_code == 422 and error(r)["field"] == "revision", r.text


# ---- the change log ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": 2**63}, "since"),
        ({"since": -1}, "since"),
        ({"limit": 0}, "limit"),
        ({"limit": 10**6}, "limit"),
    ],
)
def test_changes_parameters_are_bounded(api: Api, params: dict[str, int], field: str) -> None:
    r = api.get("/v1/changes", **params)
    assert r.status_code == 422 and error(r)["field"] == field, r.text


def test_the_largest_since_is_an_empty_page(api: Api) -> None:
    r = api.get("/v1/changes", since=2**63 - 1)
    assert r.status_code == 200 and r.json()["changes"] == []


def test_a_page_never_splits_a_revision(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    since = api.revision()
    batch = [{"kind": "contracts", "object": {"name": f"b{i}", "tenant": t}} for i in range(5)]
    one = api.post("batch", {"create": batch}).json()["revision"]
    contract(api, tenant)
    page = api.get("/v1/changes", since=since, limit=2).json()
    assert [c["name"] for c in page["changes"]] == [f"b{i}" for i in range(5)]  # the whole revision
    assert page["until"] == one and page["revision"] == one + 1
    rest = api.get("/v1/changes", since=page["until"], limit=2).json()
    assert [c["revision"] for c in rest["changes"]] == [one + 1] and rest["until"] == one + 1


# ---- apply and delete through the SDK ----------------------------------------------------------


def test_apply_refuses_to_overwrite_a_change_made_after_it_planned(
    api: Api, tenant: dict[str, str], tmp_path: Any
) -> None:
    t = tenant["name"]
    made = contract(api, tenant, port=80)
    f = tmp_path / "s.yaml"
    f.write_text(
        f"tenants:\n  - name: {t}\n    contracts:\n"
        f"      - {{name: {made['name']}, rules: [{{name: r, classifier: {{protocol: tcp, port: 443}}}}]}}\n"
    )
    scenario = sc.load(f)
    assert sc.check(scenario) == []
    steps = applying.plan(scenario, api.client)
    assert [s.action for s in steps] == ["unchanged", "update"]
    assert api.put("contracts", made["id"], with_port(made, 8080)).status_code == 200  # someone else
    with pytest.raises(applying.Changed, match=f"contract '{made['name']}' changed at the authority"):
        applying.execute(steps, api.client, lambda step: None)
    assert api.get(f"/v1/contracts/{made['id']}").json()["rules"][0]["classifier"]["port"] == 8080
    # planned again, it applies
    applying.execute(applying.plan(scenario, api.client), api.client, lambda step: None)
    assert api.get(f"/v1/contracts/{made['id']}").json()["rules"][0]["classifier"]["port"] == 443


def test_the_sdk_sends_the_revision_it_read_on_delete(api: Api, tenant: dict[str, str]) -> None:
    client: Client = api.client
    read = contract(api, tenant)
    api.put("contracts", read["id"], with_port(read, 8080))
    with pytest.raises(ApiError) as refused:
        client.delete(k.CONTRACT, read["id"], read["revision"])
    assert refused.value.status == 409 and refused.value.field == "revision"
    assert client.delete(k.CONTRACT, read["id"])["deleted"]["id"] == read["id"]
