"""The journal's decisions, as pure functions: which row goes next, what an outcome does to it.

The networking-odl way: every change Neutron commits writes a row (``Row``) in Neutron's own
transaction, naming the resource and its id, never its contents. One worker sends rows strictly
in the order Neutron wrote them. Sending a row reads the resource's *current* state from Neutron
and makes the authority hold exactly that (an upsert, or a delete when it is gone), so sending is
idempotent and a row may be sent again after any failure. It follows that a row with a later row
for the same resource adds nothing: that later row will send the same current state from a place
in the order after everything the resource came to depend on (``superseded``).

Outcomes (``after``): sent -> done; the authority away (connection refused, 5xx) -> the row
stays at the head and is retried with a capped backoff, forever: nothing is lost while the
authority is down; refused (4xx) -> retried a few times (a refusal may be transient: a reference
the authority does not hold yet), then ``failed`` and logged, so one bad row cannot block the
rest. A full sync repairs what failed rows left behind.

Refusals that name other objects (``mentioned``) are mostly the order of a fast series of changes
seen through current state: a subnet deleted in the authority while an endpoint there still holds
an address in it, because Neutron dropped that address without a port update; a row skipped as
superseded by a later row that another row depends on. Before a refused row is retried, the
objects its refusal names are sent again from Neutron's current state (one level deep).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

PENDING, DONE, FAILED = "pending", "done", "failed"
SENT, AWAY, REFUSED = "sent", "away", "refused"
MAX_REFUSALS = 3
BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class Row:
    seq: int
    resource: str  # network, subnet, port, security_group, router, floatingip
    object_id: str
    project_id: str
    state: str = PENDING
    attempts: int = 0
    next_try: float = 0.0
    error: str = ""


def superseded(row: Row, rows: Sequence[Row]) -> bool:
    """Whether a later pending row names the same resource (it will send the same state)."""
    return any(
        r.seq > row.seq and r.state == PENDING and (r.resource, r.object_id) == (row.resource, row.object_id)
        for r in rows
    )


def head(rows: Sequence[Row], now: float) -> tuple[Row | None, list[Row], float | None]:
    """The row to send now, the rows to mark done unsent (superseded ones before it), and when to
    look again if nothing may be sent yet (the head is backing off). Strict order: only the
    oldest pending row that is not superseded may be sent."""
    skipped: list[Row] = []
    for row in sorted((r for r in rows if r.state == PENDING), key=lambda r: r.seq):
        if superseded(row, rows):
            skipped.append(row)
            continue
        if row.next_try > now:
            return None, skipped, row.next_try
        return row, skipped, None
    return None, skipped, None


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones: 0.5, 1, 2, 4, 8, 10, 10, ..."""
    return min(BACKOFF_MAX, 0.5 * 2 ** max(0, attempts - 1))


def after(row: Row, outcome: str, now: float, error: str = "") -> Row:
    """The row once a send ended with ``outcome`` (SENT, AWAY or REFUSED)."""
    if outcome == SENT:
        return replace(row, state=DONE, error="")
    attempts = row.attempts + 1
    if outcome == REFUSED and attempts >= MAX_REFUSALS:
        return replace(row, state=FAILED, attempts=attempts, error=error)
    return replace(row, attempts=attempts, next_try=now + backoff(attempts), error=error)


def classify(status: int | None) -> str:
    """A send's HTTP status (None: no answer) as an outcome."""
    if status is None or status >= 500 or status in (401, 408, 429):
        return AWAY  # no answer, overloaded, or our token not (yet) accepted: try again later
    if 200 <= status < 300 or status == 404:
        return SENT  # 404 only comes back from deleting what is already gone
    return REFUSED


# How the authority names objects in its messages (a kind's title, then the name), and the Neutron
# resource each one is made from.
_TITLES = {
    "external network": "network",
    "bridge domain": "network",
    "subnet": "subnet",
    "security group": "security_group",
    "endpoint": "port",
    "router": "router",
    "floating IP": "floatingip",
}
_MENTION = re.compile(
    r"(external network|bridge domain|subnet|security group|endpoint|router|floating IP)(?: named)? "
    r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'"
)


def mentioned(error: str, own_id: str) -> list[tuple[str, str]]:
    """The Neutron resources a refusal names, other than the row's own, in order, once each."""
    found: list[tuple[str, str]] = []
    for title, name in _MENTION.findall(error):
        item = (_TITLES[title], name)
        if name != own_id and item not in found:
            found.append(item)
    return found
