"""A full sync's plan, as a pure function: what Neutron holds against what the authority holds.

One batch (``POST /v1/batch``, one transaction): ``create`` what the authority lacks, ``update``
what it has (an update that changes nothing writes nothing), ``delete`` what Neutron no longer
has. Deletes are only ever of objects the driver made: objects of tenants named like Neutron
projects (32 hex digits) and external networks named like Neutron UUIDs; an operator's own
tenants and objects are left alone. Tenants themselves are never deleted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from networking_policyfabric.mapping import Obj

PROJECT = re.compile(r"^[0-9a-f]{32}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# the order a batch may create them in: what an object names comes before it
ORDER = (
    "tenants", "l3-contexts", "external-networks", "bridge-domains", "subnets", "security-groups",
    "endpoints", "routers", "floating-ips",
)  # fmt: skip


def managed(collection: str, obj: Mapping[str, Any]) -> bool:
    """Whether the driver made this object (so a full sync may delete it)."""
    if collection == "tenants":
        return False
    if collection == "external-networks":
        return bool(UUID.fullmatch(obj["name"]))
    return bool(PROJECT.fullmatch(obj.get("tenant") or ""))


def plan(desired: Sequence[Obj], actual: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """The batch items that make the authority hold ``desired`` (``actual``: its objects by
    collection, as listed)."""
    want: dict[tuple[str, str | None, str], Obj] = {}
    for obj in desired:
        want[obj.key] = obj
    have = {(c, o.get("tenant"), o["name"]) for c, objs in actual.items() for o in objs}
    items: list[dict[str, Any]] = []
    for collection in reversed(ORDER):  # users before what they use (the batch runs deletes first)
        for o in actual.get(collection, []):
            if managed(collection, o) and (collection, o.get("tenant"), o["name"]) not in want:
                items.append({"op": "delete", "kind": collection, "object": _ident(o)})
    rank = {c: i for i, c in enumerate(ORDER)}
    for obj in sorted(want.values(), key=lambda o: rank[o.collection]):
        op = "update" if obj.key in have else "create"
        items.append({"op": op, "kind": obj.collection, "object": obj.body})
    return items


def _ident(o: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": o["name"], **({"tenant": o["tenant"]} if o.get("tenant") else {})}
