"""The client asks for what it wants in one turn of its loop with one ``policy_resolve`` request.

An agent resolves each of its endpoints' ``PfEndpoint``; a request each cost the agent and the
authority more than the objects (900 agents of 100 endpoints reconnecting at once, some requests
waited out the call timeout and were never answered). A real client over TCP to a real authority
process: the requests it made are counted by the client (``requests``: those answered), the
objects by what its cache holds.
"""

from __future__ import annotations

import asyncio

import pytest

from policyfabric.lab.authority import AuthorityProcess
from policyfabric.opflex.client import RESOLVE_BATCH, PolicyClient
from policyfabric.opflex.gbp import Cls, endpoint_uri, uri_of
from tests.conftest import Api

pytestmark = pytest.mark.integration  # a real authority process, a client over real TCP

T = "batch"
N = 2 * RESOLVE_BATCH + 30  # three requests' worth


def _tenant(api: Api) -> None:
    api.ok("tenants", {"name": T})
    api.ok("l3-contexts", {"name": "v", "tenant": T})
    api.ok("bridge-domains", {"name": "bd", "tenant": T, "l3_context": "v"})
    api.ok("subnets", {"name": "s", "tenant": T, "bridge_domain": "bd", "cidr": "10.9.0.0/16"})
    api.ok("endpoint-groups", {"name": "g", "tenant": T, "bridge_domain": "bd"})
    for i in range(N):
        ip = f"10.9.{i // 200}.{i % 200 + 2}"
        api.ok("endpoints", {"name": f"e{i}", "tenant": T, "epg": "g", "ip": ip})


def test_endpoints_resolved_at_once_go_in_few_requests(opflex_authority: AuthorityProcess) -> None:
    _tenant(Api(opflex_authority.url))

    async def go() -> tuple[int, int, int]:
        client = PolicyClient("h1", [opflex_authority.opflex], keepalive=0.5, backoff=(0.05, 0.5))
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.ready.wait(), 10)
            before = client.requests
            for i in range(N):  # connected: each resolve as an agent makes it, in one turn of the loop
                client.resolve(Cls.PF_ENDPOINT, endpoint_uri(T, f"e{i}"))
            assert await client.settled(20)
            held = sum(endpoint_uri(T, f"e{i}") in client.policy for i in range(N))
            group = uri_of(T, Cls.GBP_EP_GROUP, "g") in client.policy  # followed from the endpoints
            return client.requests - before, held, int(group)
        finally:
            await client.stop()
            task.cancel()

    requests, held, group = asyncio.run(go())
    assert held == N and group == 1
    # three batches of endpoints, then what they refer to (the group, then its bridge domain...):
    # a handful of requests, where one per URI made more than N
    assert requests <= 10, requests


def test_a_refused_batch_is_asked_again_uri_by_uri(opflex_authority: AuthorityProcess) -> None:
    """One URI asked with the wrong class makes the authority refuse the whole request; the others
    are still answered (asked again one by one), the wrong one is not."""
    _tenant(Api(opflex_authority.url))
    wrong = uri_of(T, Cls.GBP_EP_GROUP, "g")  # a group, asked for as an endpoint

    async def go() -> tuple[int, bool]:
        client = PolicyClient("h2", [opflex_authority.opflex], keepalive=0.5, backoff=(0.05, 0.5))
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.ready.wait(), 10)
            for i in range(20):
                client.resolve(Cls.PF_ENDPOINT, endpoint_uri(T, f"e{i}"))
            client.resolve(Cls.PF_ENDPOINT, wrong)
            assert await client.settled(20)
            held = sum(endpoint_uri(T, f"e{i}") in client.policy for i in range(20))
            wrong_held = wrong in client.policy and client.policy[wrong].subject == Cls.PF_ENDPOINT
            return held, wrong_held
        finally:
            await client.stop()
            task.cancel()

    held, wrong_held = asyncio.run(go())
    assert held == 20
    assert not wrong_held
