"""What keeps the REST listener bounded: body size, slow clients, connections, file descriptors.

The authority is one process: REST, OpFlex and SQLite share its event loop and its file
descriptors, so a REST client that hoards either takes the agents down with it. Uvicorn bounds
none of this by itself:

- ``BodyLimit``: a body over ``--max-body`` is refused with 413 before it is parsed (by its
  Content-Length, or by counting a chunked one as it streams in); the connection is closed
  rather than drained. FastAPI's own ``max_body_size`` answers some of these in plain text, not
  in the API's error shape, hence this small middleware;
- ``guarded_protocol``: uvicorn's httptools protocol plus a header deadline (a client must finish
  its headers within ``header_timeout`` of connecting or of starting a request: slowloris, and
  connections that never send anything), a stall limit on bodies, a cap on header bytes, and a
  connection cap below the file descriptor limit that answers 503 and closes;
- ``Throttled``: refusals are counted and logged at most once a second, never one line each;
- ``quiet_accept_errors``: asyncio logs a traceback for every failed ``accept()`` (EMFILE) of
  every listener, thousands a second; this handler says it once a second, without one;
- ``raise_fd_limit``: the soft RLIMIT_NOFILE up to the hard one, at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024


def too_large_message(limit: int) -> str:
    return f"the request body is larger than {limit} bytes, the limit (--max-body)"


def _error(status: int, code: str, message: str) -> bytes:
    return json.dumps(
        {"error": {"code": code, "message": message, "field": None}}, separators=(",", ":")
    ).encode()


class BodyLimit:
    """ASGI middleware: at most ``limit`` bytes of request body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.limit):
            bad = not declared.strip().isdigit()
            status, code = (400, "bad_request") if bad else (413, "too_large")
            message = "Content-Length is not a number" if bad else too_large_message(self.limit)
            await _respond(send, status, _error(status, code, message))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI lets an HTTPException raised while reading the body through to
                    # the API's handler, which answers it in the error shape
                    raise HTTPException(413, too_large_message(self.limit), {"Connection": "close"})
            return message

        await self.app(scope, counted, send)


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Throttled:
    """Count events; log them at most once per ``interval`` (the first at once, the rest summed)."""

    def __init__(self, logger: logging.Logger, text: str, interval: float = 1.0) -> None:
        self.logger, self.text, self.interval = logger, text, interval
        self.count, self.last = 0, float("-inf")
        self._args: tuple[Any, ...] = ()
        self._pending: asyncio.TimerHandle | None = None

    def note(self, *args: Any) -> None:
        self.count += 1
        self._args = args
        if self._pending is not None:
            return
        wait = self.last + self.interval - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self._pending = asyncio.get_running_loop().call_later(wait, self.flush)

    def flush(self) -> None:
        self._pending = None
        if self.count:
            self.logger.warning(
                self.text + " (%d in the last %.0f s)", *self._args, self.count, self.interval
            )
        self.count, self.last = 0, time.monotonic()


def guarded_protocol(max_connections: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """Uvicorn's httptools protocol with the guards above (a class: uvicorn instantiates it)."""
    shed = Throttled(log, "REST: %d connections open (--max-connections): refused new ones with 503")
    slow = Throttled(log, "REST: closed connections that sent no complete request within %.0f s")
    busy = _error(503, "unavailable", f"the authority holds {max_connections} connections: retry later")
    refusal = b"".join(
        [
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n",
            b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n" % len(busy),
            busy,
        ]
    )

    class GuardedHttpTools(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _awaiting_headers = True  # since the connection opened, or since a request's first byte
        _header_bytes = 0
        _in_body = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                shed.note(max_connections)
                transport.write(refusal)
                transport.close()
                return
            self._arm(header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._in_body:
                self._arm(header_timeout)  # a body may stall this long, not longer
            if self._awaiting_headers:
                self._header_bytes += len(data)
            super().data_received(data)
            if self._awaiting_headers and self._header_bytes > MAX_HEADER_BYTES:
                self._refuse_headers()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._awaiting_headers = True
            if self._deadline is None:
                self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            self._awaiting_headers, self._header_bytes, self._in_body = False, 0, True
            self._arm(header_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_body = False
            self._disarm()
            super().on_message_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                slow.note(header_timeout)
                self.transport.close()

        def _refuse_headers(self) -> None:
            self._disarm()
            body = _error(431, "bad_request", f"request headers over {MAX_HEADER_BYTES} bytes")
            head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            self.transport.write(head + b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            self.transport.close()

    return GuardedHttpTools


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def default_max_connections(fd_limit: int) -> int:
    """Half the descriptors at most: the rest are OpFlex's, SQLite's and the process's own."""
    return max(1, min(1000, fd_limit // 2))


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    """Replace asyncio's traceback per failed ``accept()`` with one line a second; the undo."""
    accept = Throttled(
        log, "cannot accept connections: %s (the open-file limit; see --max-connections)", interval=1.0
    )
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "out of system resource" in str(context.get("message", "")):
            accept.note(context.get("exception"))
        elif previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return lambda: loop.set_exception_handler(previous)
