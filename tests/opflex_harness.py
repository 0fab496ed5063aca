"""In-process OpFlex server pieces for tests that need no sockets."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.params import Identity
from policyfabric.authority.opflex.peers import Peer
from policyfabric.authority.service import Authority
from policyfabric.opflex import wire
from policyfabric.opflex.rpc import Session
from policyfabric.store.sqlite import SqliteStore

_STORE: SqliteStore | None = None


def _store() -> SqliteStore:
    global _STORE
    if _STORE is None:
        _STORE = SqliteStore(Path(tempfile.mkdtemp()) / "db", sync="normal")
    return _STORE


class _NullWriter:
    transport: Any = None

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 8009)


class RecordingWriter(_NullWriter):
    """Keeps what the server sends: ``messages()`` decodes it."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def messages(self, method: str | None = None) -> list[dict[str, Any]]:
        """The messages sent so far (only requests of ``method``, if given)."""
        out = [json.loads(f) for f in wire.FrameDecoder().feed(bytes(self.data))]
        return [m for m in out if method is None or m.get("method") == method]


def attach(server: OpflexServer, agent: str) -> tuple[Session, RecordingWriter]:
    """A session of ``agent`` that has done its handshake, with no socket behind it."""
    writer = RecordingWriter()
    session = Session(asyncio.StreamReader(), writer, server._handle, label=agent)  # type: ignore[arg-type]
    server.peers[session] = Peer("127.0.0.1:8009")
    server._identity(session, Identity(name=agent, domain="policyfabric", my_role=["policy_element"]))
    return session, writer


async def ready_server_session() -> tuple[OpflexServer, Session]:
    """A server and one session that has done its handshake, with no socket behind it."""
    server = OpflexServer(Authority(_store()))
    server.loop = asyncio.get_running_loop()
    session, _ = attach(server, "fuzz")
    return server, session
