"""OpFlex on the wire: NUL-terminated JSON-RPC 1.0 frames, ids, error codes.

Pure (no I/O), so the framer and the message classifier can be fuzzed.
Follows libopflex's dialect (see docs/opflex.md): request ids are
``["<method>", <int>]`` and are echoed verbatim; every frame ends with a NUL
byte; whitespace between frames is tolerated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_MAX_FRAME = 4 * 1024 * 1024
NUL = b"\0"


class Code(StrEnum):
    """Error codes of the OpFlex draft / libopflex."""

    ERROR = "ERROR"  # malformed or generic
    EUNSUPPORTED = "EUNSUPPORTED"  # unknown or unsupported method
    ESTATE = "ESTATE"  # wrong state, e.g. before the handshake
    EPROTO = "EPROTO"
    EDOMAIN = "EDOMAIN"


class FrameTooLarge(Exception):
    """A frame exceeded the size limit; the stream cannot be trusted any more."""


class FrameDecoder:
    """Split a byte stream into NUL-terminated frames of at most ``max_size`` bytes."""

    def __init__(self, max_size: int = DEFAULT_MAX_FRAME) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames = []
        while True:
            end = self._buf.find(NUL)
            if end < 0:
                break
            frame = bytes(self._buf[:end]).strip()
            del self._buf[: end + 1]
            if len(frame) > self.max_size:
                raise FrameTooLarge(f"frame of {len(frame)} bytes exceeds the limit of {self.max_size}")
            if frame:
                frames.append(frame)
        if len(self._buf) > self.max_size:
            raise FrameTooLarge(f"unterminated frame exceeds the limit of {self.max_size} bytes")
        return frames


def encode(message: dict[str, Any]) -> bytes:
    """One frame: compact JSON, then NUL."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + NUL


@dataclass(frozen=True)
class Request:
    id: Any
    method: str
    params: list[Any]


@dataclass(frozen=True)
class Response:
    id: Any
    result: Any
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Malformed:
    """A frame that is not a valid message; ``id`` is set when one could be read."""

    id: Any
    reason: str
    close: bool = False  # a protocol violation after which libopflex drops the peer


Message = Request | Response | Malformed


def valid_id(value: Any) -> bool:
    """libopflex's ids: ``[str, int]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def parse(frame: bytes) -> Message:
    """Classify one frame. Never raises: bad input becomes Malformed."""
    try:
        msg = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed(None, f"Malformed message: not JSON ({exc})")
    if not isinstance(msg, dict):
        return Malformed(None, "Malformed message: a message must be a JSON object")
    msg_id = msg.get("id")
    if "method" in msg:
        method, params = msg["method"], msg.get("params", [])
        if msg_id is None:
            return Malformed(
                None, "Malformed message: notifications (requests without id) are not supported", True
            )
        if not isinstance(method, str):
            return Malformed(msg_id, "Malformed message: method must be a string")
        if not isinstance(params, list):
            return Malformed(msg_id, "Malformed message: params must be an array")
        return Request(msg_id, method, params)
    if "result" in msg or "error" in msg:
        error = msg.get("error")
        if error is not None and not isinstance(error, dict):
            return Malformed(msg_id, "Malformed message: error must be an object", True)
        if not valid_id(msg_id):
            return Malformed(msg_id, "Malformed message: a reply id must be [method, number]", True)
        return Response(msg_id, msg.get("result"), error)
    return Malformed(msg_id, "Malformed message: neither a request nor a reply")


def request(method: str, xid: int, params: list[Any]) -> dict[str, Any]:
    return {"id": [method, xid], "method": method, "params": params}


def result(msg_id: Any, value: Any) -> dict[str, Any]:
    return {"id": msg_id, "result": value}


def error(msg_id: Any, code: Code | str, message: str) -> dict[str, Any]:
    return {"id": msg_id, "error": {"code": str(code), "message": message}}
