"""The agent's policy cache: how a ``policy_update`` changes it, and its copy on disk, which lets a
restarted agent enforce its last policy while no authority answers.

One JSON file, written whole (to a temporary name, then renamed: a crash leaves the old file or
the new one, never half of one), versioned, with the MOs in their wire form. An unreadable file
is ignored with a warning: the agent then starts empty and resolves everything again.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from sys import intern
from typing import Any

from policyfabric import __version__
from policyfabric.opflex.mo import MO, REFERENCE_URI

log = logging.getLogger(__name__)

FORMAT = 1


@dataclass
class CacheContents:
    version: int = 0  # bumped on every change the client applies
    policy: dict[str, MO] = field(default_factory=dict)
    endpoints: dict[str, MO] = field(default_factory=dict)
    wanted: dict[str, str] = field(default_factory=dict)  # policy URI -> subject
    ep_wanted: dict[str, str] = field(default_factory=dict)  # registry URI or prefix -> subject
    followed: list[str] = field(default_factory=list)  # wanted URIs resolved by following a reference


class CacheFile:
    def __init__(self, path: Path, agent: str) -> None:
        self.path, self.agent = path, agent

    def load(self) -> CacheContents | None:
        """What the file holds; None if there is no file or it cannot be read (logged)."""
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
            contents = CacheContents(
                int(data["version"]),
                {m["uri"]: held(m) for m in data["policy"]},
                {m["uri"]: held(m) for m in data["endpoints"]},
                dict(data["wanted"]),
                dict(data["ep_wanted"]),
                [str(u) for u in data.get("followed", [])],  # (absent from older files: none)
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("opflex client %s: ignoring unreadable cache %s: %s", self.agent, self.path, exc)
            return None
        log.info(
            "opflex client %s: loaded cache version %d (%d policy objects)",
            self.agent,
            contents.version,
            len(contents.policy),
        )
        return contents

    def save(self, contents: CacheContents) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "format": FORMAT,
            "version": contents.version,
            "agent": self.agent,
            "written_by": __version__,
            "policy": [m.to_wire() for m in contents.policy.values()],
            "endpoints": [m.to_wire() for m in contents.endpoints.values()],
            "wanted": contents.wanted,
            "ep_wanted": contents.ep_wanted,
            "followed": contents.followed,
        }
        tmp = self.path.with_suffix(f".{threading.get_ident()}.tmp")  # a write in a thread, one on stop
        tmp.write_text(dumps_in_pieces(data))
        os.replace(tmp, self.path)


_pieces = itertools.count()


def _yielding_dumps(value: Any) -> str:
    """``json.dumps(value)``; every 64th call first lets a thread waiting for the GIL have it (the
    agent's loop would otherwise wait up to the interpreter's switch interval, 5 ms, each time)."""
    if next(_pieces) % 64 == 0:
        time.sleep(0)
    return json.dumps(value)


def dumps_in_pieces(data: dict[str, Any]) -> str:
    """``json.dumps(data)``, its lists encoded an element at a time. Why: the cache is written in a
    thread while the agent's loop goes on, and one ``json.dumps`` of the whole of it is one C call
    that holds the GIL throughout (tens of ms at 1,000 endpoints): a change the loop was handling
    then waited for it. Between pieces the loop gets the GIL (``_yielding_dumps``): a
    member-change reconcile during a save (bench/reconcile.py, ``group+save``) went from 21-25 ms
    p50 and 104-110 ms p99 to 4-5 and 16-18 ms at 1,000 endpoints, from 198 / 970 to 30 / 133 ms
    at 10,000; the save itself takes longer in its thread (~0.15 → ~0.23 s at 1,000)."""
    fields = []
    for key, value in data.items():
        if isinstance(value, list):
            encoded = "[" + ", ".join(map(_yielding_dumps, value)) + "]"
        else:
            encoded = json.dumps(value)
        fields.append(f"{json.dumps(key)}: {encoded}")
    return "{" + ", ".join(fields) + "}"


def ancestors(uri: str) -> list[str]:
    """``uri`` and every URI above it (each prefix ending in "/": naming values are escaped, so a
    "/" always ends a segment), from the root down."""
    out, at = [], uri.find("/")
    while at != -1:
        out.append(uri[: at + 1])
        at = uri.find("/", at + 1)
    return out


def covered(uri: str, roots: set[str] | dict[str, str]) -> bool:
    """Whether ``uri`` is one of ``roots`` or under one of them (costs its depth)."""
    return any(a in roots for a in ancestors(uri))


def drop_subtree(policy: dict[str, MO], uri: str) -> set[str]:
    """Remove ``uri`` and its descendants from ``policy`` (an object no longer resolved: its parent,
    if cached, is another subscription's and keeps listing it); the URIs removed."""
    return _drop(policy, uri)


def apply_policy_update(
    policy: dict[str, MO], replace: list[MO], merge: list[MO], delete: list[str]
) -> set[str]:
    """Apply one ``policy_update`` to ``policy`` in place; returns the URIs it changed: every object
    replaced, merged, removed, or whose list of children lost a deleted child (the parent of a
    deleted object is not resent, yet it changed). Objects are replaced, never mutated: consumers
    (the agent's declarer and view) tell a change by identity and look again only at these URIs."""
    changed: set[str] = set()
    for mo in replace:
        old = policy.get(mo.uri)
        if old is not None:  # replace: children not listed any more are gone
            for child in set(old.children) - set(mo.children):
                changed |= _drop(policy, child)
        policy[mo.uri] = mo
        changed.add(mo.uri)
    for mo in merge:  # properties replaced, children added to those the object has
        old = policy.get(mo.uri)
        if old is not None:
            have = set(old.children)
            mo = dataclasses.replace(
                old,
                properties={**old.properties, **mo.properties},
                children=old.children + [c for c in mo.children if c not in have],
            )
        policy[mo.uri] = mo
        changed.add(mo.uri)
    for uri in delete:
        was = policy.get(uri)
        changed |= _drop(policy, uri)
        if was is not None and was.parent_uri is not None and _unlink(policy, was.parent_uri, uri):
            changed.add(was.parent_uri)
    return changed


def _unlink(policy: dict[str, MO], parent_uri: str, uri: str) -> bool:
    """Take a deleted object out of its parent's children (the parent itself is not resent);
    whether the parent changed."""
    parent = policy.get(parent_uri)
    if parent is None or uri not in parent.children:
        return False
    kids = parent.children
    if kids.count(uri) == 1:  # (in C: a member leaving a set of 10,000 costs no Python loop)
        at = kids.index(uri)
        rest = kids[:at] + kids[at + 1 :]
    else:
        rest = [c for c in kids if c != uri]
    policy[parent_uri] = dataclasses.replace(parent, children=rest)
    return True


def _drop(policy: dict[str, MO], uri: str) -> set[str]:
    """Remove ``uri`` and its descendants; their URIs."""
    mo = policy.pop(uri, None)
    if mo is None:
        return set()
    gone = {uri}
    for child in mo.children:
        gone |= _drop(policy, child)
    return gone


def _text(value: Any) -> Any:
    return intern(value) if type(value) is str else value


def _ref(value: Any) -> Any:
    """A reference's class and URI interned; any other value as it is."""
    if type(value) is dict and REFERENCE_URI in value:
        return {k: _text(v) for k, v in value.items()}
    return value


def held(data: Any) -> MO:
    """``MO.from_wire``, for an MO the cache keeps: its URIs and class names interned.

    Why: every URI is decoded from JSON once per place it appears (the object's own, its parent's
    children list, each reference to it, the cache's key), a new string each time; the cache holds
    them for the agent's life. Interned, each URI is one string however many hold it."""
    mo = MO.from_wire(data)
    mo.subject, mo.uri = intern(mo.subject), intern(mo.uri)
    mo.parent_subject, mo.parent_uri = _text(mo.parent_subject), _text(mo.parent_uri)
    mo.parent_relation = _text(mo.parent_relation)
    mo.children = [intern(c) for c in mo.children]
    for name, value in mo.properties.items():
        if type(value) is dict:
            mo.properties[name] = _ref(value)
        elif type(value) is list:
            mo.properties[name] = [_ref(item) for item in value]
    return mo
