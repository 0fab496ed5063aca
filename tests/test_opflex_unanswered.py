"""A ``policy_resolve`` or an ``endpoint_declare`` the authority never answers, on a session that
stays up, is sent again.

A busy authority (hundreds of agents resolving at once, or a host of 10,000 endpoints declaring
them) can answer after the client's call timeout; the client then dropped the request, and the
object waited for the next refresh, the declaration for its next lease refresh. Here a relay
between a real client and a real authority process swallows the first such request: the client
must send it again on the same session, and the authority have what it asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress

import pytest

from policyfabric.lab.authority import AuthorityProcess
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, uri_of
from tests.conftest import Api
from tests.test_opflex_by_need import Agent, Port

pytestmark = pytest.mark.integration  # a real authority process, a client over real TCP

T = "unanswered"
WINDOW = 0.5  # seconds: under the client's call timeout of the tests (1 s)


class SwallowingRelay:
    """TCP between the client and the authority; drops the requests to the authority of ``method``
    that name ``uri`` anywhere in their params (frames are NUL-terminated JSON) for ``WINDOW``
    seconds from the first: what the client sent at once (an endpoint's L2 and L3 declarations),
    not what it sends again after its call timeout."""

    def __init__(self, upstream: tuple[str, int], method: str, uri: str) -> None:
        self.upstream, self.method, self.uri = upstream, method, uri
        self.swallowed = 0
        self.first = 0.0  # when the first was swallowed: the others within WINDOW go too
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*self.upstream)

        async def to_authority() -> None:
            buffer = b""
            while data := await client_r.read(65536):
                buffer += data
                *frames, buffer = buffer.split(b"\0")
                for frame in frames:
                    if self._swallow(frame):
                        continue
                    up_w.write(frame + b"\0")
                await up_w.drain()
            up_w.close()

        async def to_client() -> None:
            while data := await up_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        with suppress(ConnectionError):
            await asyncio.gather(to_authority(), to_client())

    def _swallow(self, frame: bytes) -> bool:
        if not frame.strip() or (self.swallowed and time.monotonic() - self.first > WINDOW):
            return False
        message = json.loads(frame)
        if message.get("method") == self.method and self.uri in json.dumps(message.get("params")):
            self.first = self.first or time.monotonic()
            self.swallowed += 1
            return True
        return False


def tenant(authority: AuthorityProcess) -> Api:
    """The tests' tenant with its routing and bridge domain, through the authority's REST API."""
    api = Api(authority.url)
    api.ok("tenants", {"name": T})
    api.ok("l3-contexts", {"name": "v", "tenant": T})
    api.ok("bridge-domains", {"name": "bd", "tenant": T, "l3_context": "v"})
    return api


def test_a_resolve_left_unanswered_is_asked_again_on_the_same_session(
    opflex_authority: AuthorityProcess,
) -> None:
    api = tenant(opflex_authority)
    api.ok("endpoint-groups", {"name": "g", "tenant": T, "bridge_domain": "bd"})
    group = uri_of(T, Cls.GBP_EP_GROUP, "g")

    async def go() -> tuple[int, int, int, bool]:
        relay = SwallowingRelay(opflex_authority.opflex, "policy_resolve", group)
        address = await relay.start()
        client = PolicyClient("h1", [address], keepalive=0.5, backoff=(0.05, 0.5))
        client.call_timeout = 1.0
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.ready.wait(), 10)
            connects = client.connects
            client.resolve(Cls.GBP_EP_GROUP, group)
            for _ in range(200):  # the timeout (1 s), the retry's wait (2-6 s), the answer
                if group in client.policy:
                    break
                await asyncio.sleep(0.05)
            return relay.swallowed, client.unanswered, client.connects - connects, group in client.policy
        finally:
            await client.stop()
            task.cancel()
            assert relay.server is not None
            relay.server.close()

    swallowed, unanswered, reconnects, held = asyncio.run(go())
    assert swallowed == 1  # one request carried it
    assert held, "the group was not asked for again after its resolve went unanswered"
    assert unanswered == 1
    assert reconnects == 0  # on the same session: not by a resync after a reconnect


def test_a_declaration_left_unanswered_is_sent_again_on_the_same_session(
    opflex_authority: AuthorityProcess,
) -> None:
    api = tenant(opflex_authority)
    api.ok("subnets", {"name": "s", "tenant": T, "bridge_domain": "bd", "cidr": "10.8.0.0/24"})
    api.ok("endpoint-groups", {"name": "g", "tenant": T, "bridge_domain": "bd"})
    api.ok("endpoints", {"name": "e1", "tenant": T, "epg": "g", "ip": "10.8.0.11"})

    def host() -> str | None:
        found = api.find("endpoints", T, "e1")
        return None if found is None else found.get("host")

    async def go() -> tuple[int, int, int, str | None]:
        relay = SwallowingRelay(opflex_authority.opflex, "endpoint_declare", f"{T}/e1")
        address = await relay.start()
        agent = Agent("h1", address, "e1", "192.0.2.1")
        agent.port = Port(f"{T}/e1", "tap-e1")
        agent.client.call_timeout = 1.0
        agent.task = asyncio.create_task(agent.client.run())
        try:
            await asyncio.wait_for(agent.client.ready.wait(), 10)
            connects = agent.client.connects
            agent.declarer.sync([agent.port])
            for _ in range(200):  # the timeout (1 s), the retry's wait (2-6 s), the answer
                if host() == "h1":
                    break
                await asyncio.sleep(0.05)
            return relay.swallowed, agent.client.unanswered, agent.client.connects - connects, host()
        finally:
            await agent.stop()
            assert relay.server is not None
            relay.server.close()

    swallowed, unanswered, reconnects, bound = asyncio.run(go())
    assert swallowed >= 1  # every declaration of e1 the client sent at first
    assert bound == "h1", "the declaration was not sent again after it went unanswered"
    assert unanswered >= 1 and reconnects == 0
