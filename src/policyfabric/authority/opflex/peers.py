"""Sessions as the roles see them: what is kept per session, and pushes to subscribers.

A ``Peer`` is the server's record of one session: the agent behind it and
its two subscription tables, one per role that pushes (the policy
repository's ``subs``, the endpoint registry's ``ep_subs``). Each role writes
only its own table, through the ``Peer`` a request arrives with. ``fan_out``
is the one way a role pushes: it is handed to each role as a callback, so
no role sees the others' sessions or state.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import Session
from policyfabric.opflex.uri import under

Entries = list[tuple[str, dict[str, Any]]]  # (uri, wire form) of each MO in a push
FanOut = Callable[[str, Callable[["Peer"], dict[str, float]], dict[str, Entries]], Awaitable[None]]


@dataclass
class Peer:
    """What the server keeps about one session."""

    dialed: str  # the address the agent dialed: listed first in the handshake's peers
    agent: str | None = None  # its name, once identified
    current: bool = True  # False once a newer session of the same agent replaced it
    subs: dict[str, float] = field(default_factory=dict)  # policy URI -> lease expiry (monotonic)
    ep_subs: dict[str, float] = field(default_factory=dict)  # registry URI or prefix -> expiry

    def expire(self, now: float) -> None:
        for table in (self.subs, self.ep_subs):
            for uri in [u for u, exp in table.items() if exp <= now]:
                del table[uri]


def wire(mos: list[MO]) -> Entries:
    """(uri, wire form): serialised once, not once per session."""
    return [(mo.uri, mo.to_wire()) for mo in mos]


def refs(mos: list[MO]) -> Entries:
    """(uri, {subject, uri}): how a deletion names an MO."""
    return [(mo.uri, {"subject": mo.subject, "uri": mo.uri}) for mo in mos]


async def fan_out(
    peers: Mapping[Session, Peer],
    method: str,
    table: Callable[[Peer], dict[str, float]],
    parts: dict[str, Entries],
) -> None:
    """Send each session, in one message, the (uri, wire form) entries of ``parts`` that fall
    under its live subscriptions in ``table``; ``parts`` maps a payload field to its entries."""
    now = time.monotonic()
    sends = []
    for session, peer in list(peers.items()):
        subs = [u for u, exp in table(peer).items() if exp > now]
        if not session.ready or not subs:
            continue
        payload = {
            name: [form for uri, form in entries if any(under(uri, s) for s in subs)]
            for name, entries in parts.items()
        }
        if any(payload.values()):
            sends.append(_send_quietly(session, method, payload))
    await asyncio.gather(*sends)


async def _send_quietly(session: Session, method: str, params: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await session.push(method, params)


__all__ = ["Entries", "FanOut", "Peer", "fan_out", "refs", "wire"]
