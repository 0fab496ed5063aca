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
