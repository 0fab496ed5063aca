"""Messages that never depend on one frame holding a whole tenant: large payloads go out in parts.

Why: a peer reads frames up to a size limit (``wire.DEFAULT_MAX_FRAME``, 4 MiB, libopflex has its
own); a tenant of 10,000 endpoints resolves to more than that, and a peer that meets a larger
frame drops the session, reconnects, resolves again and meets it again. So a payload (the lists
of a ``policy_update`` or ``endpoint_update``, or the answer to a resolve) is cut into messages of
about ``BUDGET`` bytes each, the lists and their entries kept in order: a client that applies the
messages one after the other ends where it would with the one large message. What a resolve
cannot answer in one frame goes first as updates of the subscription it just made, and its reply
carries the last part (``resolve_in_parts``), so the reply still completes the answer.

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


def split(
    parts: Mapping[str, Sequence[Any]],
    budget: int | None = None,
    limit: int | None = None,
    size: Callable[[Any], int] = size_of,
) -> tuple[list[dict[str, list[Any]]], list[Oversized]]:
    """``parts`` (payload field -> entries) as messages of about ``budget`` bytes of entries each
    (``BUDGET``), every field present in every message, entries in order (all of the first field's,
    then the next's); and the entries left out because one alone exceeds ``limit`` (what fits a
    frame of ``wire.DEFAULT_MAX_FRAME``)."""
    budget = BUDGET if budget is None else budget
    limit = LIMIT if limit is None else limit
    messages: list[dict[str, list[Any]]] = []
    oversized: list[Oversized] = []
    current: dict[str, list[Any]] = {k: [] for k in parts}
    used = 0
    for name, entries in parts.items():
        for entry in entries:
            n = size(entry)
            if n > limit:
                oversized.append(Oversized(name, _uri(entry), n))
                continue
            if used and used + n > budget:
                messages.append(current)
                current, used = {k: [] for k in parts}, 0
            current[name].append(entry)
            used += n
    if used or not messages:
        messages.append(current)
    return messages, oversized


def resolve_in_parts(
    answer: dict[str, list[Any]],
    post: Callable[[dict[str, list[Any]]], object] | None,
    as_update: Callable[[dict[str, list[Any]]], dict[str, list[Any]]],
) -> tuple[dict[str, list[Any]], list[Oversized]]:
    """The reply to a resolve whose ``answer`` may be too large for one frame: every part but the
    last is ``post``ed at once (as the update ``as_update`` makes of it, to the subscription the
    resolve just made), the last is returned as the reply. Without ``post`` (no session to push
    to) the whole answer is the reply."""
    messages, oversized = split(answer)
    if post is None or len(messages) == 1:
        if len(messages) == 1:
            return messages[0], oversized
        return {k: [e for m in messages for e in m[k]] for k in answer}, oversized
    for message in messages[:-1]:
        post(as_update(message))
    return messages[-1], oversized


__all__ = ["BUDGET", "Oversized", "resolve_in_parts", "size_of", "split"]
