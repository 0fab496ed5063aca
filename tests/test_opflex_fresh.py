"""Read-your-writes: a ``policy_resolve`` that follows an acknowledged REST write sees it, though
tree rebuilds are coalesced into flushes. The write goes through the real REST app (in process,
its handler on a worker thread, as under uvicorn) and the resolve through the OpFlex dispatcher,
with nothing in between. End to end over sockets: test_opflex_e2e.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx

from policyfabric.authority.api import create_app
from policyfabric.authority.opflex import OpflexServer
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, uri_of
from tests.opflex_harness import attach
from tests.test_opflex_roles import authority_with_a_router

ROUNDS = 50


def props(result: dict[str, Any]) -> dict[str, Any]:
    [mo] = [m for m in result["policy"] if m["subject"] == Cls.PF_ENDPOINT]
    return {p["name"]: p["data"] for p in mo["properties"]}


def test_a_resolve_after_an_acknowledged_write_sees_it_every_time(tmp_path: Path) -> None:
    async def go() -> tuple[int, float]:
        authority = authority_with_a_router(tmp_path)
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "acme"}, push=False)
        authority.listeners.append(server._on_commit)  # what start() does
        h1, _ = attach(server, "h1")
        uri = endpoint_uri("acme", "web1")
        resolve = [{"subject": Cls.PF_ENDPOINT, "policy_uri": uri, "prr": 60}]
        # a subscriber, so that pushes go out as usual while resolves wait
        await server._handle(
            attach(server, "h2")[0],
            "policy_resolve",
            [{**resolve[0], "policy_uri": uri_of("acme", Cls.GBP_EP_GROUP, "x")}],
        )
        seen, slowest = 0, 0.0
        transport = httpx.ASGITransport(app=create_app(authority, server))
        async with httpx.AsyncClient(transport=transport, base_url="http://authority") as rest:
            found = (await rest.get("/v1/endpoints", params={"tenant": "acme", "name": "web1"})).json()
            [web1] = found["items"]
            for i in range(ROUNDS):
                ip = f"10.1.0.{100 + i}"
                body = {
                    k: v
                    for k, v in web1.items()
                    if k not in ("id", "revision", "status", "host", "interface")
                }
                answer = await rest.put(f"/v1/endpoints/{web1['id']}", json={**body, "ip": [ip]})
                assert answer.status_code == 200, answer.text
                start = time.monotonic()
                result = await server._handle(h1, "policy_resolve", resolve)
                slowest = max(slowest, time.monotonic() - start)
                seen += props(result)[Prop.IP] == [ip]
        await server.stop()
        return seen, slowest

    seen, slowest = asyncio.run(go())
    assert seen == ROUNDS
    assert slowest < 1.0  # it waited for one rebuild, not for a timeout
