"""Reading ``GET /v1/events`` (server-sent events): what ``get -w`` and ``apply --wait`` follow.

A parser of the text/event-stream format as much as the authority writes it (``event:``,
``data:``, ``id:``, comment lines; one blank line ends an event), and ``follow``, which opens the
stream and yields each event with its data parsed. ``Last`` remembers the last ``id:`` seen: the
revision to resume from after a cut (``cut`` event) or a dropped connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from policyfabric.client.rest import ApiError, Client


@dataclass(frozen=True)
class ServerEvent:
    name: str
    data: dict[str, Any]
    id: int | None  # the revision, on the last event of each revision


def parse(lines: Iterable[str]) -> Iterator[ServerEvent]:
    """Events from the stream's lines (without their line ends); comments are skipped."""
    name, ident = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield ServerEvent(name, json.loads("\n".join(data)), ident)
            name, data, ident = "message", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and value.isdigit():
            ident = int(value)


@contextmanager
def follow(
    client: Client, since: int | None = None, read_timeout: float | None = 60.0
) -> Iterator[Iterator[ServerEvent]]:
    """The authority's events after ``since`` (None: from now on). ``read_timeout``: seconds
    without a byte (the authority sends a heartbeat every 15 s) before ``httpx.ReadTimeout``."""
    params = {"since": since} if since is not None else {}
    timeout = httpx.Timeout(10.0, read=read_timeout)
    with client.http.stream(
        "GET", "/v1/events", params=params, headers=client.headers, timeout=timeout
    ) as response:
        if response.status_code >= 400:
            response.read()
            try:
                err = response.json()["error"]
                raise ApiError(response.status_code, err["code"], err["message"], err.get("field"))
            except (ValueError, KeyError, TypeError):
                raise client._stranger(response) from None
        yield parse(response.iter_lines())


__all__ = ["ServerEvent", "follow", "parse"]
