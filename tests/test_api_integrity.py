"""Referential integrity, updates, revisions and filters, through real HTTP."""

from __future__ import annotations

from tests.conftest import Api, error, unique


def test_deleting_a_referenced_object_is_refused_naming_the_referrers(
    api: Api, tenant: dict[str, str]
) -> None:
    t = tenant["name"]
    bd = api.find("bridge-domains", t, "bd-a")
    assert bd is not None
    r = api.delete("bridge-domains", bd["id"])
    assert r.status_code == 409
    err = error(r)
    assert err["code"] == "in_use"
    assert "subnet 'sa'" in err["message"] and "endpoint group 'ga'" in err["message"]
    assert api.find("bridge-domains", t, "bd-a") is not None  # still there


def test_a_subnet_holding_endpoint_addresses_cannot_be_deleted(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    api.ok("endpoints", {"name": "e1", "tenant": t, "epg": "ga", "ip": "10.1.0.10"})
    subnet = api.find("subnets", t, "sa")
    assert subnet is not None
    r = api.delete("subnets", subnet["id"])
    assert r.status_code == 409 and "endpoint 'e1'" in error(r)["message"]


def test_delete_in_dependency_order_succeeds(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    e = api.ok("endpoints", {"name": "e1", "tenant": t, "epg": "ga", "ip": "10.1.0.10"})
    before = api.revision()
    r = api.delete("endpoints", e["id"])
    assert r.status_code == 200
    body = r.json()
    assert body["deleted"]["name"] == "e1" and body["revision"] == before + 1
    assert api.get(f"/v1/endpoints/{e['id']}").status_code == 404
    # Its address is free again.
    api.ok("endpoints", {"name": "e2", "tenant": t, "epg": "ga", "ip": "10.1.0.10"})


def test_tenant_delete_refused_while_it_holds_objects(api: Api, tenant: dict[str, str]) -> None:
    t = api.find("tenants", None, tenant["name"])
    assert t is not None
    r = api.delete("tenants", t["id"])
    assert r.status_code == 409 and "l3_context 'vrf1'" in error(r)["message"]
    empty = api.ok("tenants", {"name": unique("t")})
    assert api.delete("tenants", empty["id"]).status_code == 200


def test_a_security_group_naming_itself_can_be_deleted(api: Api, tenant: dict[str, str]) -> None:
    sg = api.ok(
        "security-groups",
        {"name": "sg", "tenant": tenant["name"], "rules": [{"direction": "ingress", "remote_group": "sg"}]},
    )
    assert api.delete("security-groups", sg["id"]).status_code == 200


def test_update_replaces_and_bumps_the_revision(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    c = api.ok(
        "contracts",
        {
            "name": "http",
            "tenant": t,
            "rules": [{"name": "r", "classifier": {"protocol": "tcp", "port": 80}}],
        },
    )
    before = api.revision()
    r = api.put(
        "contracts", c["id"], {**c, "rules": [{"name": "r", "classifier": {"protocol": "tcp", "port": 8080}}]}
    )
    assert r.status_code == 200, r.text
    assert r.json()["revision"] == before + 1 == api.revision()
    assert r.json()["rules"][0]["classifier"]["port"] == 8080
    # The same body again changes nothing: no new revision.
    again = api.put("contracts", c["id"], r.json())
    assert again.status_code == 200 and again.json()["revision"] == before + 1 == api.revision()


def test_update_keeps_generated_and_agent_fields_when_omitted(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    e = api.ok("endpoints", {"name": "e1", "tenant": t, "epg": "ga", "ip": "10.1.0.10", "host": "h1"})
    r = api.put("endpoints", e["id"], {"name": "e1", "tenant": t, "epg": "ga", "ip": "10.1.0.11"})
    assert r.status_code == 200
    assert r.json()["mac"] == e["mac"] and r.json()["host"] == "h1" and r.json()["status"] == "DOWN"


def test_renaming_a_referenced_object_is_refused(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    bd = api.find("bridge-domains", t, "bd-b")
    assert bd is not None
    r = api.put("bridge-domains", bd["id"], {**bd, "name": "bd-z"})
    assert r.status_code == 409 and error(r)["field"] == "name"
    free = api.ok("contracts", {"name": "old", "tenant": t})
    r = api.put("contracts", free["id"], {**free, "name": "new"})
    assert r.status_code == 200 and api.find("contracts", t, "new") is not None


def test_objects_cannot_move_between_tenants(api: Api, tenant: dict[str, str]) -> None:
    c = api.ok("contracts", {"name": "c", "tenant": tenant["name"]})
    other = api.ok("tenants", {"name": unique("t")})
    r = api.put("contracts", c["id"], {**c, "tenant": other["name"]})
    assert r.status_code == 422 and error(r)["field"] == "tenant"


def test_a_change_that_would_break_a_dependent_is_refused(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    api.ok("endpoints", {"name": "e1", "tenant": t, "epg": "ga", "ip": "10.1.0.10"})
    subnet = api.find("subnets", t, "sa")
    assert subnet is not None
    # Shrinking the subnet so that e1's address falls outside it.
    r = api.put("subnets", subnet["id"], {**subnet, "cidr": "10.1.0.128/25", "gateway_ip": "10.1.0.129"})
    assert r.status_code == 409
    assert "endpoint 'e1'" in error(r)["message"]
    # Moving the gateway onto e1's address.
    r = api.put("subnets", subnet["id"], {**subnet, "gateway_ip": "10.1.0.10"})
    assert r.status_code == 409 and "gateway" in error(r)["message"]
    # A change that keeps e1 valid goes through.
    r = api.put("subnets", subnet["id"], {**subnet, "cidr": "10.1.0.0/23", "gateway_ip": "10.1.0.1"})
    assert r.status_code == 200, r.text


def test_moving_a_bridge_domain_to_another_l3_context_rechecks_uniqueness(
    api: Api, tenant: dict[str, str]
) -> None:
    t = tenant["name"]
    api.ok("l3-contexts", {"name": "vrf2", "tenant": t})
    api.ok("bridge-domains", {"name": "bd-c", "tenant": t, "l3_context": "vrf2"})
    api.ok("subnets", {"name": "sc", "tenant": t, "bridge_domain": "bd-c", "cidr": "10.1.0.0/16"})
    # bd-c's 10.1.0.0/16 would overlap bd-a's 10.1.0.0/24 once in vrf1.
    bd = api.find("bridge-domains", t, "bd-c")
    assert bd is not None
    r = api.put("bridge-domains", bd["id"], {**bd, "l3_context": "vrf1"})
    assert r.status_code == 409 and "overlaps" in error(r)["message"]


def test_revision_moves_once_per_write(api: Api, tenant: dict[str, str]) -> None:
    before = api.revision()
    made = api.ok("contracts", {"name": "c1", "tenant": tenant["name"]})
    assert made["revision"] == before + 1
    refused = api.post("contracts", {"name": "c1", "tenant": tenant["name"]})
    assert refused.status_code == 409 and api.revision() == before + 1  # refused writes bump nothing
    changes = api.get("/v1/changes", since=before).json()
    assert [(c["op"], c["name"]) for c in changes["changes"]] == [("create", "c1")]


def test_list_filters_by_tenant_and_name(api: Api, tenant: dict[str, str]) -> None:
    t = tenant["name"]
    items = api.get("/v1/bridge-domains", tenant=t).json()["items"]
    assert sorted(i["name"] for i in items) == ["bd-a", "bd-b"]
    items = api.get("/v1/bridge-domains", tenant=t, name="bd-b").json()["items"]
    assert [i["name"] for i in items] == ["bd-b"] and items[0]["tenant"] == t
    assert api.get("/v1/bridge-domains", tenant=t, name="nope").json()["items"] == []
    one = api.get(f"/v1/bridge-domains/{items[0]['id']}").json()
    assert one == items[0]


def test_objects_use_the_scenario_keys(api: Api, tenant: dict[str, str]) -> None:
    e = api.ok("endpoints", {"name": "e1", "tenant": tenant["name"], "epg": "ga", "ip": "10.1.0.10"})
    assert set(e) == {
        "id",
        "name",
        "tenant",
        "epg",
        "subnet",
        "ip",
        "mac",
        "security_groups",
        "host",
        "interface",
        "allowed_address_pairs",
        "status",
        "revision",
    }


def test_openapi_lists_every_collection(api: Api) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for collection in (
        "tenants",
        "l3-contexts",
        "bridge-domains",
        "subnets",
        "endpoint-groups",
        "contracts",
        "security-groups",
        "endpoints",
        "routers",
        "floating-ips",
        "external-networks",
    ):
        assert {"get", "post"} <= set(paths[f"/v1/{collection}"])
        assert {"get", "put", "delete"} <= set(paths[f"/v1/{collection}/{{id}}"])
