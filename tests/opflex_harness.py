"""In-process OpFlex server pieces for tests that need no sockets."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.identity import Credentials
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


class _Buffer:
    """A transport that says how much it holds unsent (what ``Session.post`` checks)."""

    def __init__(self, writer: RecordingWriter) -> None:
        self.writer = writer
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return self.writer.unsent()

    def abort(self) -> None:
        self.aborted = True

    def set_write_buffer_limits(self, high: int) -> None: ...


class RecordingWriter(_NullWriter):
    """Keeps what the server sends: ``messages()`` decodes it. A ``stalled`` one is a peer that
    never reads: its bytes stay unsent and ``drain`` never returns."""

    def __init__(self, stalled: bool = False) -> None:
        self.data = bytearray()
        self.stalled = stalled
        self.transport = _Buffer(self)

    def write(self, data: bytes) -> None:
        self.data += data

    def unsent(self) -> int:
        return len(self.data) if self.stalled else 0

    async def drain(self) -> None:
        if self.stalled:
            await asyncio.Event().wait()

    def messages(self, method: str | None = None) -> list[dict[str, Any]]:
        """The messages sent so far (only requests of ``method``, if given)."""
        out = [json.loads(f) for f in wire.FrameDecoder(1 << 30).feed(bytes(self.data))]
        return [m for m in out if method is None or m.get("method") == method]


def connect(
    server: OpflexServer, credentials: Credentials | None = None, stalled: bool = False
) -> tuple[Session, RecordingWriter]:
    """A session before its handshake, with no socket behind it (``credentials``: what its TLS
    transport would have proved)."""
    writer = RecordingWriter(stalled)
    session = Session(
        asyncio.StreamReader(),
        writer,  # type: ignore[arg-type]
        server._handle,
        label="test",
        keepalive=server.keepalive,
        write_timeout=max(2 * server.keepalive, 1.0),  # as the server's own sessions
        send_queue=server.send_queue,
    )
    server.peers[session] = Peer("127.0.0.1:8009", credentials or Credentials(), post=session.post)
    return session, writer


# what our agent sends in send_identity's data, and what libopflex's sends (it reports no statuses)
OURS: dict[str, Any] = {"agent": "policyfabric test"}
REFERENCE: dict[str, Any] = {"mac": "02:00:00:00:00:01", "features": ["erspan-mirror"]}


def identity(name: str, data: dict[str, Any] | None = None) -> list[Any]:
    return [
        {
            "proto_version": "1.0",
            "name": name,
            "domain": "policyfabric",
            "my_role": ["policy_element"],
            "data": OURS if data is None else data,
        }
    ]


def attach(
    server: OpflexServer,
    agent: str,
    credentials: Credentials | None = None,
    stalled: bool = False,
    data: dict[str, Any] | None = None,
) -> tuple[Session, RecordingWriter]:
    """A session of ``agent`` that has done its handshake (``data``: its identity's), with no
    socket behind it."""
    session, writer = connect(server, credentials, stalled)
    server._identity(session, identity(agent, data))
    return session, writer


async def ready_server_session() -> tuple[OpflexServer, Session]:
    """A server and one session that has done its handshake, with no socket behind it."""
    server = OpflexServer(Authority(_store()))
    server.loop = asyncio.get_running_loop()
    session, _ = attach(server, "fuzz")
    return server, session
