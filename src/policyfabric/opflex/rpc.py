"""One OpFlex session over an asyncio stream: both sides send requests.

What every session does, whichever role it plays:
- frames in and out (NUL-terminated JSON, a size limit);
- matches replies to requests by id (ids are ``[method, n]``);
- answers malformed input with a JSON-RPC error, or closes cleanly when the
  stream cannot be trusted (oversized frame, notification, bad reply id);
- keepalive: an echo after ``keepalive`` seconds of silence, and the session
  is dropped after ``4 x keepalive`` with nothing heard (half-open peers);
- a peer that stops reading is dropped once writes stall ``write_timeout``;
- pushes (``post``: requests that get no success reply) never wait for the
  peer: they go into the transport's buffer at once, so one server can push
  to a thousand sessions without any slow one holding up the others. A
  session whose unsent backlog would pass ``send_queue`` bytes, or of whose
  backlog the peer takes nothing for ``write_timeout``, is not reading and is
  dropped (one that reads slowly is not), so a stalled
  peer holds neither anyone's time nor more than ``send_queue`` of memory.

Each problem is logged once per session, so a misbehaving peer cannot flood
the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from policyfabric.opflex import wire
from policyfabric.opflex.wire import Code

log = logging.getLogger(__name__)

DEFAULT_SEND_QUEUE = 4 * wire.DEFAULT_MAX_FRAME  # unsent bytes a session may hold (16 MiB; see post)


class RpcError(Exception):
    """A JSON-RPC error: from a handler to the peer, or from the peer to a caller."""

    def __init__(self, code: Code | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = str(code)
        self.message = message


class SessionClosed(Exception):
    """The session ended while a request was outstanding."""


Handler = Callable[["Session", str, list[Any]], Awaitable[Any]]


class Later:
    """A handler's answer that takes its time (a ``pf_trace`` runs a command): the session awaits
    ``work`` in a task of its own and replies when it is done, so the reader goes on reading
    (pushes are applied meanwhile). The work is cancelled if the session closes first."""

    def __init__(self, work: Awaitable[Any]) -> None:
        self.work = work


class Session:
    """A framed JSON-RPC session. ``handler(session, method, params)`` answers
    requests: it returns the result, raises RpcError, or returns ``NO_REPLY``."""

    NO_REPLY = object()

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handler: Handler,
        *,
        label: str,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        keepalive: float = 10.0,
        write_timeout: float = 10.0,
        send_queue: int = DEFAULT_SEND_QUEUE,
    ) -> None:
        self.reader, self.writer, self.handler = reader, writer, handler
        self.label = label
        self.decoder = wire.FrameDecoder(max_frame)
        self.keepalive = keepalive
        self.write_timeout = write_timeout
        self._written = 0  # bytes handed to the transport (what the peer took: this less the backlog)
        self.send_queue = send_queue
        self.pending: dict[tuple[str, int], asyncio.Future[Any]] = {}
        self.unacknowledged: dict[tuple[str, int], str] = {}
        self._xids = itertools.count(1)
        self._write_lock = asyncio.Lock()
        self.last_heard = time.monotonic()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._logged: set[str] = set()
        self.ready = False  # set by the role logic once the handshake is done
        self._later: set[asyncio.Task[None]] = set()  # replies under way (``Later``)
        with contextlib.suppress(Exception):
            writer.transport.set_write_buffer_limits(high=1 << 20)

    def log_once(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, f"opflex %s: {message}", self.label, *args)

    # ---- sending
    async def send(self, message: dict[str, Any]) -> None:
        if self.closed.is_set():
            raise SessionClosed(self.close_reason)
        data = wire.encode(message)
        async with self._write_lock:
            try:
                self.writer.write(data)
                self._written += len(data)
                await asyncio.wait_for(self.writer.drain(), self.write_timeout)
            except TimeoutError:
                await self.close(
                    f"peer stopped reading (writes stalled for {self.write_timeout:g}s)", abort=True
                )
                raise SessionClosed(self.close_reason) from None
            except (ConnectionError, RuntimeError) as exc:
                await self.close(f"write failed: {exc}")
                raise SessionClosed(self.close_reason) from None

    async def call(self, method: str, params: dict[str, Any] | list[Any], timeout: float = 30.0) -> Any:
        """Send a request and wait for its result; raises RpcError, SessionClosed or TimeoutError."""
        xid = next(self._xids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[(method, xid)] = future
        try:
            await self.send(wire.request(method, xid, params if isinstance(params, list) else [params]))
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop((method, xid), None)
            if future.done() and not future.cancelled():
                future.exception()  # mark it retrieved: the caller got SessionClosed from send() already

    def backlog(self) -> int:
        """Bytes written to the transport and not yet handed to the socket."""
        try:
            return int(self.writer.transport.get_write_buffer_size())
        except Exception:  # no transport (tests), or it is gone
            return 0

    def post(self, method: str, params: dict[str, Any] | wire.Encoded) -> bool:
        """Queue a request that gets no success reply (policy_update, endpoint_update, echo)
        without waiting for the peer to read it; False if the session is closed or was just
        dropped. A frame always goes into an empty queue (one large push is fine); one that would
        take a non-empty backlog past ``send_queue`` bytes means the peer is not reading: the
        session is dropped, logged once, rather than let it hold memory or anyone's time."""
        if self.closed.is_set():
            return False
        xid = next(self._xids)
        data = wire.encode_request(method, xid, params)  # (params encoded once for many sessions, or now)
        backlog = self.backlog()
        if backlog and backlog + len(data) > self.send_queue:
            reason = f"peer not reading: {backlog} bytes unsent, over the limit of {self.send_queue}"
            self.log_once("backlog", "%s; dropping it", reason)
            self._shut(reason, abort=True)
            return False
        self.unacknowledged[(method, xid)] = method
        if len(self.unacknowledged) > 10000:  # remember recent ones only, to log their errors
            self.unacknowledged.pop(next(iter(self.unacknowledged)))
        try:
            self.writer.write(data)
            self._written += len(data)
        except (ConnectionError, RuntimeError) as exc:
            self._shut(f"write failed: {exc}")
            return False
        return True

    async def push(self, method: str, params: dict[str, Any]) -> None:
        """``post``, raising SessionClosed if it could not be queued."""
        if not self.post(method, params):
            raise SessionClosed(self.close_reason)

    # ---- receiving
    async def run(self) -> None:
        """Serve the session until it closes."""
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while not self.closed.is_set():
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError) as exc:
                    await self.close(f"read failed: {exc}")
                    break
                if not data:
                    await self.close("peer closed the connection")
                    break
                self.last_heard = time.monotonic()
                try:
                    frames = self.decoder.feed(data)
                except wire.FrameTooLarge as exc:
                    self.log_once("too-large", "%s; closing", exc)
                    with contextlib.suppress(SessionClosed):
                        await self.send(wire.error(None, Code.ERROR, f"Malformed message: {exc}"))
                    await self.close(str(exc))
                    break
                for frame in frames:
                    await self._handle(wire.parse(frame))
        finally:
            keepalive.cancel()
            await self.close(self.close_reason or "done")

    async def _handle(self, msg: wire.Message) -> None:
        if isinstance(msg, wire.Malformed):
            self.log_once(f"malformed:{msg.reason[:40]}", "%s", msg.reason)
            with contextlib.suppress(SessionClosed):
                await self.send(wire.error(msg.id, Code.ERROR, msg.reason))
            if msg.close:
                await self.close(msg.reason)
        elif isinstance(msg, wire.Response):
            self._settle(msg)
        else:
            await self._answer(msg)

    def _settle(self, msg: wire.Response) -> None:
        key = (msg.id[0], msg.id[1])
        future = self.pending.pop(key, None)
        if future is None:
            method = self.unacknowledged.pop(key, None)
            if method is not None and msg.error:
                log.warning("opflex %s: peer refused %s: %s", self.label, method, msg.error)
            elif method is None:
                self.log_once("unknown-id", "reply to unknown request id %r ignored", msg.id)
            return
        if future.done():
            return
        if msg.error:
            future.set_exception(
                RpcError(str(msg.error.get("code", "ERROR")), str(msg.error.get("message", "")))
            )
        else:
            future.set_result(msg.result)

    async def _answer(self, msg: wire.Request) -> None:
        if msg.method == "echo":  # every participant answers echo, in any state
            with contextlib.suppress(SessionClosed):
                await self.send(wire.result(msg.id, msg.params))
            return
        await self._reply(msg, self.handler(self, msg.method, msg.params))

    async def _reply(self, msg: wire.Request, work: Awaitable[Any]) -> None:
        try:
            value = await work
            if isinstance(value, Later):  # answered by its own task: the reader goes on
                task = asyncio.create_task(self._reply(msg, value.work))
                self._later.add(task)
                task.add_done_callback(self._later.discard)
                return
        except RpcError as err:
            self.log_once(
                f"refused:{msg.method}:{err.code}",
                "refused %s: %s",
                msg.method,
                err.message,
                level=logging.INFO,
            )
            with contextlib.suppress(SessionClosed):
                await self.send(wire.error(msg.id, err.code, err.message))
            if err.code == Code.ESTATE and not self.ready:
                await self.close(f"{msg.method} before the handshake")
            return
        except SessionClosed:
            return
        except Exception:
            log.exception("opflex %s: internal error handling %s", self.label, msg.method)
            with contextlib.suppress(SessionClosed):
                await self.send(wire.error(msg.id, Code.ERROR, "internal error"))
            return
        if value is not Session.NO_REPLY:
            with contextlib.suppress(SessionClosed):
                try:
                    await self.send(wire.result(msg.id, value))
                except (ValueError, RecursionError):  # cannot be encoded as JSON: a bug, not the peer's
                    log.exception("opflex %s: cannot encode the reply to %s", self.label, msg.method)
                    await self.send(wire.error(msg.id, Code.ERROR, "internal error"))

    async def _keepalive(self) -> None:
        tick = max(self.keepalive / 4, 0.05)
        unsent_since: float | None = None  # since when the peer has taken nothing of a backlog
        taken = 0  # bytes the peer has taken (written less the backlog), as of the last tick
        while not self.closed.is_set():
            await asyncio.sleep(tick)
            now = time.monotonic()
            idle = now - self.last_heard
            if idle >= 4 * self.keepalive:
                await self.close(f"peer silent for {idle:.1f}s (keepalive {self.keepalive:g}s)", abort=True)
                return
            # A peer that talks but does not read would keep its pushes queued for ever: it is
            # dropped once it has taken nothing of a backlog for ``write_timeout``. A peer that
            # reads, however slowly (an authority checking 10,000 declarations), is not.
            backlog = self.backlog()
            now_taken = self._written - backlog
            if not backlog or now_taken > taken:
                unsent_since = None if not backlog else now
            else:
                unsent_since = unsent_since or now
            taken = now_taken
            if unsent_since is not None and now - unsent_since > self.write_timeout:
                await self.close(
                    f"peer stopped reading (took none of its pushes for {self.write_timeout:g}s)", abort=True
                )
                return
            if idle >= self.keepalive:
                self.post("echo", {"ts": int(time.time() * 1000)})

    async def close(self, reason: str, abort: bool = False) -> None:
        """End the session. ``abort`` drops unsent data at once: for a peer that is
        gone or not reading, where a graceful close would wait for it forever."""
        self._shut(reason, abort)

    def _shut(self, reason: str, abort: bool = False) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(SessionClosed(reason))
        for task in list(self._later):
            task.cancel()
        with contextlib.suppress(Exception):
            if abort:
                self.writer.transport.abort()
            else:
                self.writer.close()
        log.info("opflex %s: session closed: %s", self.label, reason)
