"""An OpFlex relay that records the size of every frame (bench/converge.py --trace-frames).

The agent connects to the relay, the relay to the authority; each NUL-terminated frame is passed on
unchanged and one line is written for it: direction, bytes, the method (a reply: the method of the
request it answers, matched by id) and the first URI it names. What a session that ends in
"frame ... exceeds the limit" was sent is then in that file, with its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from policyfabric.lab.authority import free_port


def _first_uri(params: Any) -> str:
    items = params if isinstance(params, list) else [params]
    for item in items:
        if isinstance(item, dict):
            for key in ("policy_uri", "endpoint_uri", "uri"):
                if isinstance(item.get(key), str):
                    return str(item[key])
    return ""


class FrameTrace:
    """A relay on 127.0.0.1:``port`` to ``upstream``, in a thread of its own, logging to ``path``."""

    def __init__(self, upstream: tuple[str, int], path: Path) -> None:
        self.upstream = upstream
        self.out: TextIO = path.open("w")
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.requests: dict[tuple[str, Any], tuple[str, str]] = {}  # (way, id) of a request -> (method, uri)
        self.largest: tuple[int, str] = (0, "")
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        ready.set()
        with contextlib.suppress(RuntimeError):
            self.loop.run_forever()
        server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=1 << 26)
        await asyncio.gather(
            self._pump(reader, up_writer, "agent->authority"),
            self._pump(up_reader, writer, "authority->agent"),
            return_exceptions=True,
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        buffer = b""
        try:
            while data := await reader.read(1 << 20):
                writer.write(data)
                buffer += data
                while (end := buffer.find(b"\0")) >= 0:
                    self._record(way, buffer[:end])
                    buffer = buffer[end + 1 :]
                await writer.drain()
        finally:
            writer.close()

    def _record(self, way: str, frame: bytes) -> None:
        try:
            msg = json.loads(frame)
        except ValueError:
            msg = {}
        method, uri = msg.get("method"), _first_uri(msg.get("params"))
        if method:
            self.requests[(way, str(msg.get("id")))] = (method, uri)
            what = f"request {method}"
        else:
            back = "agent->authority" if way == "authority->agent" else "authority->agent"
            method, uri = self.requests.pop((back, str(msg.get("id"))), ("?", ""))
            what = f"reply to {method}" + (" (error)" if msg.get("error") else "")
        line = f"{time.monotonic():.3f} {way} {len(frame)} bytes: {what} {uri}"
        self.largest = max(self.largest, (len(frame), line))
        self.out.write(line + "\n")
        self.out.flush()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.out.close()
