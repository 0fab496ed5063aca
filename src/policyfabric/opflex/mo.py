"""Managed objects (MOs) as OpFlex carries them, and a builder for MO trees.

Wire form (libopflex MOSerializer)::

    {"subject": "GbpEpGroup", "uri": "/PolicyUniverse/PolicySpace/acme/GbpEpGroup/web/",
     "properties": [{"name": "name", "data": "web"}],
     "children": ["<child uri>", ...],
     "parent_subject": "PolicySpace", "parent_uri": "...", "parent_relation": "GbpEpGroup"}

References are ``{"subject": <class>, "reference_uri": <uri>}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from policyfabric.opflex.uri import child

REFERENCE_URI = "reference_uri"  # a reference's target; its class is under "subject"


def ref(subject: str, uri: str) -> dict[str, str]:
    return {"subject": subject, REFERENCE_URI: uri}


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REFERENCE_URI), str) and "subject" in value


@dataclass
class MO:
    subject: str
    uri: str
    properties: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    parent_subject: str | None = None
    parent_uri: str | None = None
    parent_relation: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "subject": self.subject,
            "uri": self.uri,
            "properties": [{"name": k, "data": v} for k, v in self.properties.items()],
            "children": list(self.children),
        }
        if self.parent_uri is not None:
            out["parent_subject"] = self.parent_subject
            out["parent_uri"] = self.parent_uri
            out["parent_relation"] = self.parent_relation or self.subject
        return out

    @classmethod
    def from_wire(cls, data: Any) -> MO:
        """Parse one MO; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("an MO must be an object")
        subject, uri = data.get("subject"), data.get("uri")
        if not isinstance(subject, str) or not isinstance(uri, str):
            raise ValueError("an MO needs string 'subject' and 'uri'")
        props: dict[str, Any] = {}
        for prop in data.get("properties") or []:
            if isinstance(prop, dict) and isinstance(prop.get("name"), str):
                props[prop["name"]] = prop.get("data")
        children = [c for c in data.get("children") or [] if isinstance(c, str)]
        return cls(
            subject,
            uri,
            props,
            children,
            data.get("parent_subject"),
            data.get("parent_uri"),
            data.get("parent_relation"),
        )

    def references(self) -> Iterator[tuple[str, str]]:
        """(subject, uri) of every reference property."""
        for value in self.properties.values():
            for item in value if isinstance(value, list) else [value]:
                if is_ref(item):
                    yield item["subject"], item[REFERENCE_URI]


class Tree:
    """A set of MOs keyed by URI; ``add`` links each new MO under its parent."""

    def __init__(self) -> None:
        self.mos: dict[str, MO] = {}

    def root(self, subject: str, uri: str, **props: Any) -> str:
        self.mos[uri] = MO(subject, uri, dict(props))
        return uri

    def add(self, parent: str, subject: str, *names: str, **props: Any) -> str:
        """Add a ``subject`` child of ``parent`` named by ``names``; returns its URI."""
        uri = child(parent, subject, *names)
        up = self.mos[parent]
        self.mos[uri] = MO(subject, uri, dict(props), [], up.subject, parent, subject)
        up.children.append(uri)
        return uri

    def subtree(self, uri: str) -> list[MO]:
        """``uri`` and all its descendants (empty if absent)."""
        out, todo = [], [uri]
        while todo:
            mo = self.mos.get(todo.pop())
            if mo is not None:
                out.append(mo)
                todo.extend(reversed(mo.children))
        return out
