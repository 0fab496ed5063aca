"""``apply --wait``: until every agent concerned has rendered a write (OVN's ``--wait=hv``).

An agent is concerned by a write when it has endpoints in a tenant the write changed
(``GET /v1/agents`` lists each agent's endpoints as ``TENANT/NAME``). It has rendered the write
when the revision it reports (``rendered_revision``: the highest authority revision its
installed flows reflect) is at least the write's. The events stream is opened first, then the
agents are read, then their ``agent`` events are followed until each is there or time is up: no
report can fall between the read and the stream. Agents are only sent what they need, so most
writes reach few of them: the others never render (nor report) the write, and the authority's
listing counts them as having rendered it once the write has gone out without them; that listing
is re-read a few times a second while no event arrives.

An agent that never reports what it has rendered (a reference OpFlex agent: ``reports_rendered``
false in the listing) cannot confirm anything. As OVN's ``--wait=hv`` counts only the chassis that
report, it is not waited for; it is named in ``unconfirmed`` so the operator knows what the
answer does not cover.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from policyfabric.client.events import ServerEvent, follow
from policyfabric.client.rest import Client


def written_tenants(items: Iterable[dict[str, Any]]) -> set[str]:
    """The tenants a batch's answer says it changed (a tenant object counts as its own)."""
    found = set()
    for item in items:
        if item.get("action") not in ("created", "updated", "deleted"):
            continue
        if item.get("kind") in ("tenants", "tenant"):
            found.add(str(item["name"]))
        elif item.get("tenant"):
            found.add(str(item["tenant"]))
    return found


def concerned(agents: Iterable[dict[str, Any]], tenants: set[str]) -> list[str]:
    """The agents with an endpoint in one of ``tenants``."""
    return sorted(
        a["name"] for a in agents if any(e.split("/", 1)[0] in tenants for e in a.get("endpoints", []))
    )


POLL = 0.25  # seconds between re-reads of the agents while no agent event arrives


@dataclass
class Waited:
    revision: int
    agents: list[str]  # those concerned
    missing: dict[str, str] = field(default_factory=dict)  # agent -> what it has instead
    unconfirmed: list[str] = field(default_factory=list)  # concerned, but never report (not waited for)
    seconds: float = 0.0


def _state(connected: bool, rendered: int | None, revision: int) -> str | None:
    """None when the agent has rendered ``revision``, else what it is at."""
    if not connected:
        return f"disconnected, rendered {rendered if rendered is not None else 'nothing'}"
    if rendered is None or rendered < revision:
        return f"rendered {rendered if rendered is not None else 'nothing yet'}"
    return None


def wait_rendered(client: Client, revision: int, tenants: set[str], timeout: float) -> Waited:
    """Wait until every agent concerned by ``tenants`` has rendered ``revision``, at most
    ``timeout`` seconds; what is still missing then."""
    started = time.monotonic()
    events: queue.Queue[ServerEvent | BaseException] = queue.Queue()
    opened = threading.Event()
    reader = Client(client.url, token="")
    reader.headers = dict(client.headers)

    def read() -> None:
        try:
            with follow(reader, since=revision, read_timeout=None) as stream:
                opened.set()
                for event in stream:
                    if event.name == "agent":
                        events.put(event)
        except BaseException as exc:  # the CLI exits; or the stream failed: reported below
            events.put(exc)
        finally:
            opened.set()

    threading.Thread(target=read, daemon=True).start()
    opened.wait(timeout)
    agents = client.agents()
    state = {a["name"]: (bool(a.get("connected")), a.get("rendered_revision")) for a in agents}
    silent = {a["name"] for a in agents if a.get("reports_rendered") is False}
    everyone = concerned(agents, tenants)
    names = [n for n in everyone if n not in silent]
    waited = Waited(revision, everyone, unconfirmed=[n for n in everyone if n in silent])
    while True:
        missing = {n: s for n in names if (s := _state(*state.get(n, (False, None)), revision)) is not None}
        left = timeout - (time.monotonic() - started)
        if not missing or left <= 0:
            waited.missing, waited.seconds = missing, time.monotonic() - started
            return waited
        try:
            item = events.get(timeout=min(left, POLL))
        except queue.Empty:  # an agent that needed nothing of the write has nothing to report:
            agents = client.agents()  # the authority says so in its listing (``Peer.rendered``)
            state.update({a["name"]: (bool(a.get("connected")), a.get("rendered_revision")) for a in agents})
            continue
        if isinstance(item, BaseException):
            raise item
        state[item.data["name"]] = (bool(item.data["connected"]), item.data.get("rendered_revision"))


__all__ = ["Waited", "concerned", "wait_rendered", "written_tenants"]
