"""OpFlex on the wire: NUL-terminated JSON-RPC 1.0 frames, ids, error codes.

Pure (no I/O), so the framer and the message classifier can be fuzzed.
Follows libopflex's dialect (see docs/opflex.md): request ids are
``["<method>", <int>]`` and are echoed verbatim; every frame ends with a NUL
byte; whitespace between frames is tolerated.

What a peer sends is refused here, before anything acts on it, when it could
hurt whoever handles it later: nesting deeper than ``MAX_DEPTH`` (OpFlex
messages are about 8 deep; Python's decoder and every recursive consumer of
the value give up near 1,000, taking the session with them) and numbers that
are not finite (``NaN``, ``Infinity``, ``1e400``: not JSON, so a value echoed
or stored with one is unreadable to the next reader). Both are ``ERROR``
replies that keep the session, as for any malformed frame. ``encode`` refuses
non-finite numbers too, so nothing invalid leaves either.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_MAX_FRAME = 4 * 1024 * 1024
MAX_DEPTH = 64  # arrays and objects within each other, the frame's own object counting as 1
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
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + NUL


class Encoded(bytes):
    """A request's params entry encoded once (``encode_value``), to go in many frames: a push of
    one change to every session subscribed to it is encoded once, not once per session."""


def encode_value(value: Any) -> Encoded:
    return Encoded(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())


def encode_request(method: str, xid: int, params: Any) -> bytes:
    """The frame of a request whose params hold one entry, ``params``, encoded already or not."""
    if not isinstance(params, Encoded):
        return encode(request(method, xid, [params]))
    head = json.dumps({"id": [method, xid], "method": method}, separators=(",", ":"), ensure_ascii=False)
    return head[:-1].encode() + b',"params":[' + params + b"]}" + NUL


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


class _NotFinite:
    """Stands in, while decoding, for a number that is not finite (so the id can still be read)."""


_NOT_FINITE = _NotFinite()


def _number(text: str) -> float | _NotFinite:
    value = float(text)
    return value if math.isfinite(value) else _NOT_FINITE


def _not_finite(text: str) -> _NotFinite:
    return _NOT_FINITE


def _problem(value: Any, limit: int = MAX_DEPTH) -> str | None:
    """Why a decoded value must be refused (too deep, or holding a non-finite number), or None.
    Iterative: the check itself must not be the recursion it guards against."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return f"nesting deeper than {limit} levels"
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
            elif child is _NOT_FINITE:
                return "a number that is not finite (NaN, Infinity or out of range)"
    return None


def parse(frame: bytes) -> Message:
    """Classify one frame. Never raises: bad input becomes Malformed."""
    try:
        msg = json.loads(frame, parse_float=_number, parse_constant=_not_finite)
    except RecursionError:
        return Malformed(None, f"Malformed message: nesting deeper than {MAX_DEPTH} levels")
    except (ValueError, UnicodeDecodeError) as exc:
        return Malformed(None, f"Malformed message: not JSON ({exc})")
    if isinstance(msg, list | dict):
        problem = _problem(msg)
        if problem is not None:
            msg_id = msg.get("id") if isinstance(msg, dict) else None
            return Malformed(msg_id if valid_id(msg_id) else None, f"Malformed message: {problem}")
    elif msg is _NOT_FINITE:
        return Malformed(None, "Malformed message: a number that is not finite")
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
