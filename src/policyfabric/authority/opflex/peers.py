"""Sessions as the roles see them: what is kept per session, and pushes to subscribers.

A ``Peer`` is the server's record of one session: the agent behind it and
its two subscription tables, one per role that pushes (the policy
repository's ``subs``, the endpoint registry's ``ep_subs``). Each role writes
only its own table, through the ``Peer`` a request arrives with. ``fan_out``
is the one way a role pushes: it is handed to each role as a callback, so
no role sees the others' sessions or state. It queues each session's message
and returns (``Session.post``): it never waits for a peer to read, so a slow
or stalled peer delays nobody else (it is dropped once its backlog is too
large).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policyfabric.authority.opflex.chunks import Oversized, size_of, split
from policyfabric.authority.opflex.identity import Credentials
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import RpcError, Session
from policyfabric.opflex.uri import under
from policyfabric.opflex.wire import Code

MAX_SUBSCRIPTIONS = 100_000  # per session and role
Entries = list[tuple[str, dict[str, Any]]]  # (uri, wire form) of each MO in a push
FanOut = Callable[[str, Callable[["Peer"], dict[str, float]], dict[str, Entries]], None]


@dataclass
class Peer:
    """What the server keeps about one session."""

    dialed: str  # the address the agent dialed: listed first in the handshake's peers
    credentials: Credentials = field(default_factory=Credentials)  # what its transport proved
    accepted: float = field(default_factory=time.monotonic)  # when the connection was accepted
    agent: str | None = None  # its name, once identified (once per session)
    current: bool = True  # False once a newer session of the same agent replaced it
    reports_status: bool = True  # False for a reference agent: its declarations say ACTIVE
    # queues a message on its session (``Session.post``); set by the server once the session exists
    post: Callable[[str, dict[str, Any]], bool] | None = None
    subs: dict[str, float] = field(default_factory=dict)  # policy URI -> lease expiry (monotonic)
    ep_subs: dict[str, float] = field(default_factory=dict)  # registry URI or prefix -> expiry

    def subscribe(self, table: dict[str, float], uri: str, prr: int) -> None:
        """Subscribe to ``uri`` in ``table`` (``subs`` or ``ep_subs``) for ``prr`` seconds; each
        table holds at most ``MAX_SUBSCRIPTIONS`` (an agent holds one per object it resolved)."""
        if uri not in table and len(table) >= MAX_SUBSCRIPTIONS:
            raise RpcError(Code.ERROR, f"too many subscriptions: at most {MAX_SUBSCRIPTIONS} per session")
        table[uri] = time.monotonic() + prr

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


def fan_out(
    peers: Mapping[Session, Peer],
    method: str,
    table: Callable[[Peer], dict[str, float]],
    parts: dict[str, Entries],
    oversized: Callable[[Peer, list[Oversized]], None] = lambda peer, found: None,
) -> None:
    """Queue for each session the (uri, wire form) entries of ``parts`` that fall under its live
    subscriptions in ``table``; ``parts`` maps a payload field to its entries. One message, or
    several when it would be large (``chunks.split``: a peer reads frames up to a limit); an entry
    too large for any frame is left out and handed to ``oversized``."""
    now = time.monotonic()
    sizes: dict[int, int] = {}  # by entry identity: the same forms go to many sessions

    def size(entry: Any) -> int:
        found = sizes.get(id(entry))
        if found is None:
            found = sizes[id(entry)] = size_of(entry)
        return found

    for session, peer in list(peers.items()):
        subs = [u for u, exp in table(peer).items() if exp > now]
        if not session.ready or not subs:
            continue
        payload = {
            name: [form for uri, form in entries if any(under(uri, s) for s in subs)]
            for name, entries in parts.items()
        }
        if not any(payload.values()):
            continue
        messages, too_large = split(payload, size=size)
        if too_large:
            oversized(peer, too_large)
        for message in messages:
            if any(message.values()) and not session.post(method, message):
                break  # closed, or dropped for not reading


__all__ = ["MAX_SUBSCRIPTIONS", "Entries", "FanOut", "Peer", "fan_out", "refs", "wire"]
