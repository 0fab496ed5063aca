"""A ``policy_resolve`` the authority never answers, on a session that stays up, is asked again.

A busy authority (hundreds of agents resolving at once) can answer after the client's call
timeout; the client then dropped the request, and the object waited for the next refresh, tens
of minutes. Here a relay between a real client and a real authority process swallows the first
``policy_resolve`` naming one group: the client must ask again on the same session and get it.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress

import pytest

from policyfabric.lab.authority import AuthorityProcess
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, uri_of
from tests.conftest import Api

pytestmark = pytest.mark.integration  # a real authority process, a client over real TCP

T = "unanswered"


class SwallowingRelay:
    """TCP between the client and the authority; drops the first request to the authority that is
    a ``policy_resolve`` naming ``uri`` (frames are NUL-terminated JSON)."""

    def __init__(self, upstream: tuple[str, int], uri: str) -> None:
        self.upstream, self.uri = upstream, uri
        self.swallowed = 0
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
        if self.swallowed or not frame.strip():
            return False
        message = json.loads(frame)
        params = message.get("params") or []
        if message.get("method") == "policy_resolve" and any(p.get("policy_uri") == self.uri for p in params):
            self.swallowed += 1
            return True
        return False


def test_a_resolve_left_unanswered_is_asked_again_on_the_same_session(
    opflex_authority: AuthorityProcess,
) -> None:
    api = Api(opflex_authority.url)
    api.ok("tenants", {"name": T})
    api.ok("l3-contexts", {"name": "v", "tenant": T})
    api.ok("bridge-domains", {"name": "bd", "tenant": T, "l3_context": "v"})
    api.ok("endpoint-groups", {"name": "g", "tenant": T, "bridge_domain": "bd"})
    group = uri_of(T, Cls.GBP_EP_GROUP, "g")

    async def go() -> tuple[int, int, int, bool]:
        relay = SwallowingRelay(opflex_authority.opflex, group)
        address = await relay.start()
        client = PolicyClient("h1", [address], keepalive=0.5, backoff=(0.05, 0.5))
        client.call_timeout = 1.0
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.ready.wait(), 10)
            connects = client.connects
            client.resolve(Cls.GBP_EP_GROUP, group)
            for _ in range(100):  # the timeout (1 s), the retry's wait (2 s), the answer
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
    assert swallowed == 1
    assert held, "the group was not asked for again after its resolve went unanswered"
    assert unanswered == 1
    assert reconnects == 0  # on the same session: not by a resync after a reconnect
