"""Acknowledged writes survive kill -9; concurrent writers lose nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from policyfabric.lab.authority import AuthorityProcess
from tests.conftest import Api

pytestmark = pytest.mark.integration  # starts authority processes and the CLI


def test_acknowledged_writes_survive_kill_9(fresh_authority: AuthorityProcess) -> None:
    api = Api(fresh_authority.url)
    api.ok("tenants", {"name": "acme"})
    made = [api.ok("contracts", {"name": f"c{i}", "tenant": "acme"}) for i in range(100)]
    deleted = api.delete("contracts", made[0]["id"])
    assert deleted.status_code == 200
    revision = api.revision()
    fresh_authority.kill()  # SIGKILL right after the last acknowledgement
    api.http.close()

    fresh_authority.start()
    api = Api(fresh_authority.url)
    assert api.revision() == revision == 102
    names = {c["name"] for c in api.get("/v1/contracts", tenant="acme").json()["items"]}
    assert names == {f"c{i}" for i in range(1, 100)}
    # And the restarted authority keeps enforcing what it stored.
    assert api.post("contracts", {"name": "c5", "tenant": "acme"}).status_code == 409
    api.http.close()


def test_eight_concurrent_writers_lose_nothing(fresh_authority: AuthorityProcess) -> None:
    api = Api(fresh_authority.url)
    api.ok("tenants", {"name": "acme"})
    start = api.revision()

    def writer(w: int) -> list[int]:
        statuses = []
        with httpx.Client(base_url=fresh_authority.url, timeout=60) as http:
            for i in range(200):
                r = http.post(
                    "/v1/contracts",
                    json={
                        "name": f"w{w}-c{i}",
                        "tenant": "acme",
                        "rules": [{"name": "r", "classifier": {"protocol": "tcp", "port": i + 1}}],
                    },
                )
                statuses.append(r.status_code)
        return statuses

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(writer, range(8)))
    assert all(s == 201 for statuses in results for s in statuses)
    items = api.get("/v1/contracts", tenant="acme").json()["items"]
    assert len(items) == 1600
    assert {c["name"] for c in items} == {f"w{w}-c{i}" for w in range(8) for i in range(200)}
    assert api.revision() == start + 1600
    revisions = sorted(c["revision"] for c in items)
    assert revisions == list(range(start + 1, start + 1601))  # one revision per write, no gaps
    api.http.close()


def test_racing_writers_cannot_both_claim_one_address(fresh_authority: AuthorityProcess) -> None:
    api = Api(fresh_authority.url)
    api.ok("tenants", {"name": "acme"})
    api.ok("l3-contexts", {"name": "vrf1", "tenant": "acme"})
    api.ok("bridge-domains", {"name": "bd", "tenant": "acme", "l3_context": "vrf1"})
    api.ok("subnets", {"name": "s", "tenant": "acme", "bridge_domain": "bd", "cidr": "10.0.0.0/16"})
    api.ok("endpoint-groups", {"name": "g", "tenant": "acme", "bridge_domain": "bd"})

    def claim(i: int) -> int:
        with httpx.Client(base_url=fresh_authority.url, timeout=60) as http:
            body = {"name": f"e{i}", "tenant": "acme", "epg": "g", "ip": f"10.0.{i // 8}.10"}
            return http.post("/v1/endpoints", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(claim, range(64)))  # 8 addresses, 8 contenders each
    assert sorted(statuses) == [201] * 8 + [409] * 56
    items = api.get("/v1/endpoints", tenant="acme").json()["items"]
    assert sorted(tuple(e["ip"]) for e in items) == [(f"10.0.{n}.10",) for n in range(8)]
    api.http.close()
