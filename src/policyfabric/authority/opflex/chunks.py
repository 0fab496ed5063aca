"""Messages that never depend on one frame holding a whole tenant: large payloads go out in parts.

Why: a peer reads frames up to a size limit (``wire.DEFAULT_MAX_FRAME``, 4 MiB, libopflex has its
own); a tenant of 10,000 endpoints resolves to more than that, and a peer that meets a larger
frame drops the session, reconnects, resolves again and meets it again. So a payload (the lists
of a ``policy_update`` or ``endpoint_update``, or the answer to a resolve) is cut into messages of
about ``BUDGET`` bytes each, the lists and their entries kept in order: a client that applies the
messages one after the other ends where it would with the one large message. What a resolve
cannot answer in one frame goes first as updates of the subscription it just made, and its reply
carries the last part (``resolve_parts``), so the reply still completes the answer.

One object that alone encodes beyond what a peer can read cannot be cut; it is left out, and the
caller is told (``Oversized``) so it can say so: a fault the operator sees, never a silent loop.
Every entry is measured (encoded once more; ``peers.fan_out`` measures an entry once for all the
sessions it goes to).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policyfabric.opflex.wire import DEFAULT_MAX_FRAME

BUDGET = 1 << 20  # bytes of entries per message: a quarter of the frame limit
ENVELOPE = 4096  # what a message adds around its entries, generously
LIMIT = DEFAULT_MAX_FRAME - ENVELOPE  # the largest entry a message can carry


@dataclass(frozen=True)
class Oversized:
    """An entry that alone exceeds what a peer can read: left out of the messages."""

    part: str  # the payload field it was in
    uri: str
    size: int


def size_of(entry: Any) -> int:
    """Encoded size of one entry, as ``wire.encode`` writes it."""
    return len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())


def _uri(entry: Any) -> str:
    return str(entry.get("uri", "")) if isinstance(entry, dict) else ""


def cut(entry: Any, room: int, size: Callable[[Any], int] = size_of) -> list[dict[str, Any]] | None:
    """An MO too large for a frame as pieces of at most ``room`` bytes each: the MO with as many of
    its children as fit, then the MO again with the next of them, and so on. None if it cannot be
    cut (it has no children, or it is too large even with one). Sent as ``merge_children``, the
    pieces add up to the MO: a merge sets the properties and adds the children it lists (a
    PolicySpace of 100,000 endpoints lists 100,000 children, over 8 MiB on its own)."""
    children = entry.get("children") if isinstance(entry, dict) else None
    if not isinstance(children, list) or not children:
        return None
    base = {**entry, "children": []}
    room -= size(base)
    pieces: list[dict[str, Any]] = []
    current: list[Any] = []
    used = 0
    for c in children:
        n = size(c) + 1  # and its comma
        if n > room:
            return None
        if current and used + n > room:
            pieces.append({**base, "children": current})
            current, used = [], 0
        current.append(c)
        used += n
    pieces.append({**base, "children": current})
    return pieces


def split(
    parts: Mapping[str, Sequence[Any]],
    budget: int | None = None,
    limit: int | None = None,
    size: Callable[[Any], int] = size_of,
    into: str | None = None,
) -> tuple[list[dict[str, list[Any]]], list[Oversized]]:
    """``parts`` (payload field -> entries) as messages of about ``budget`` bytes of entries each
    (``BUDGET``), every field present in every message, entries in order (all of the first field's,
    then the next's); and the entries left out because one alone exceeds ``limit`` (what fits a
    frame of ``wire.DEFAULT_MAX_FRAME``). With ``into`` (a field, ``merge_children`` for policy),
    an MO over ``limit`` is ``cut`` into pieces that go, in its place, into that field of the
    messages (each piece in a message of its own); only one that cannot be cut is left out."""
    budget = BUDGET if budget is None else budget
    limit = LIMIT if limit is None else limit
    fields = [*parts, *([into] if into is not None and into not in parts else [])]
    messages: list[dict[str, list[Any]]] = []
    oversized: list[Oversized] = []
    current: dict[str, list[Any]] = {k: [] for k in fields}
    used = 0

    def place(name: str, entry: Any, n: int) -> None:
        nonlocal current, used
        if used and used + n > budget:
            messages.append(current)
            current, used = {k: [] for k in fields}, 0
        current[name].append(entry)
        used += n

    for name, entries in parts.items():
        for entry in entries:
            n = size(entry)
            if n <= limit:
                place(name, entry, n)
                continue
            pieces = cut(entry, min(budget, limit), size) if into is not None else None
            if pieces is None:
                oversized.append(Oversized(name, _uri(entry), n))
                continue
            for piece in pieces:
                place(into or name, piece, budget)  # alone in its message
    if used or not messages:
        messages.append(current)
    return messages, oversized


def resolve_parts(
    answer: dict[str, list[Any]], into: str | None = None
) -> tuple[list[dict[str, list[Any]]], dict[str, list[Any]], list[Oversized]]:
    """The answer to a resolve that may be too large for one frame: the parts to send first (as
    updates of the subscription the resolve made), the reply (the last part, which completes the
    answer), and what no frame can carry. A part holding pieces of a ``cut`` MO (``into``) goes as
    an update too, since a reply only replaces: the reply is then empty."""
    messages, oversized = split(answer, into=into)
    last = messages[-1]
    if into is not None and into not in answer and last.get(into):
        return messages, {k: [] for k in answer}, oversized
    return messages[:-1], {k: last[k] for k in answer}, oversized


__all__ = ["BUDGET", "Oversized", "cut", "resolve_parts", "size_of", "split"]
