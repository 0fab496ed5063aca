"""Pages of the change log (``GET /v1/changes``) that a client can follow without missing a change.

Two things make a naive ``LIMIT`` page lossy, and this module handles both:

- one revision may hold many changes (a batch is one transaction): a page that ends inside a
  revision would make a client resuming from the last revision it saw skip the rest of it, so
  pages hold whole revisions only (a single revision larger than the limit comes whole);
- a token scoped to one tenant sees only that tenant's changes (``auth.visible``): its page is
  filtered, and at most ``SCAN`` changes are looked at per request, so a poll stays cheap while
  other tenants write; ``until`` then says where the next request continues (``since=until``).
"""

from __future__ import annotations

from dataclasses import dataclass

from policyfabric.authority.auth import visible
from policyfabric.store.base import Change, ReadTxn

SCAN = 20_000


def whole_revisions(found: list[Change], limit: int) -> list[Change]:
    """The first ``limit`` of ``found`` (which holds more) minus the revision cut in two; that
    whole revision if it alone fills them (it is complete in ``found``)."""
    cut = found[limit].revision
    page = [c for c in found[:limit] if c.revision != cut]
    return page or [c for c in found if c.revision == found[0].revision]


def window(txn: ReadTxn, since: int, limit: int) -> tuple[list[Change], bool]:
    """Whole revisions after ``since``, about ``limit`` changes; True when read to the log's end."""
    n = limit
    while True:
        found = txn.changes(since, n + 1)
        if len(found) <= n:
            return found, True
        if found[0].revision != found[n].revision:
            return whole_revisions(found, n), False
        n *= 2  # one revision holds more than n changes: read all of it


@dataclass
class Page:
    changes: list[Change]
    revision: int  # the store's, now
    until: int  # continue from here (since=until): nothing before it is left unseen


def read_page(txn: ReadTxn, since: int, limit: int, scope: str | None) -> Page:
    current = txn.revision()
    scanned, complete = window(txn, since, limit if scope is None else SCAN)
    kept = [c for c in scanned if visible(scope, c.kind, c.tenant, c.name)]
    if len(kept) > limit:
        kept = whole_revisions(kept, limit)
        return Page(kept, current, kept[-1].revision)
    return Page(kept, current, current if complete else scanned[-1].revision)
