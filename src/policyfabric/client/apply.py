"""`policyfabric apply` and `delete -f`: make the authority hold what a scenario file declares.

``plan`` reads one listing per kind (not a GET per object) and gives each declared object a
step: create, update or unchanged (the same comparison the authority makes), with the revision
it read. ``execute`` sends the whole plan as ONE batch (``POST /v1/batch``): one transaction,
all or nothing. Every update, and every unchanged object (a "keep" item: nothing is written to
it), carries the revision the plan read, so an
object someone changed after the plan is a 409 (``Changed``) rather than a lost update, and
nothing of the file is written. With ``dry_run`` the authority checks everything and answers
what each object would become, field by field (``apply --diff``), writing nothing.

Ownership: objects the batch creates record ``owner`` (the file's identity, ``applied_by``).
With ``prune`` the same batch deletes every object ``owner`` created that the file no longer
declares; objects created by hand or by another owner are never pruned. An object keeps the
owner that created it: an update from another file does not take it over.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from policyfabric.client.rest import ApiError, Client
from policyfabric.model import kinds as k
from policyfabric.model.objects import SecurityGroup, Spec, keep_omitted
from policyfabric.model.scenario import Entry, Scenario

Action = Literal["create", "update", "unchanged", "delete", "absent"]
# the authority's words for what it did -> the plan's
DONE = {"created": "create", "updated": "update", "unchanged": "unchanged", "deleted": "delete"}


@dataclass
class Step:
    entry: Entry
    action: Action
    body: dict[str, Any]
    id: str | None = None
    revision: int | None = None  # the object's revision when the plan read it (or created it)


class Refused(Exception):
    """The authority refused the batch because of one step (None: of the batch as a whole, or
    of an object the file does not declare, e.g. one prune would delete)."""

    def __init__(self, message: str, step: Step | None, error: ApiError) -> None:
        super().__init__(message)
        self.step, self.error = step, error


class Changed(Refused):
    """An object changed at the authority after the plan read it; nothing was applied."""


@dataclass
class Result:
    counts: dict[str, Counter[str]] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)  # the authority's answer, per object
    revision: int | None = None  # the revision written (or read, if nothing was written)

    def count(self, kind: str, action: str) -> None:
        self.counts.setdefault(kind, Counter())[action] += 1

    def total(self, action: str) -> int:
        return sum(c[action] for c in self.counts.values())


def _key(kind: k.Kind, obj: dict[str, Any]) -> tuple[str | None, str]:
    return (obj.get("tenant") if kind.scoped else None), str(obj["name"])


def _body(spec: Spec) -> dict[str, Any]:
    """What to send: the declared fields only (the server fills the rest the same way)."""
    return spec.model_dump(
        mode="json", include=spec.model_fields_set | ({"name", "tenant"} & set(type(spec).model_fields))
    )


class _Live:
    """What the authority holds of each kind a file declares: one listing per kind, on first use."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._listed: dict[str, dict[tuple[str | None, str], dict[str, Any]]] = {}

    def current(self, kind: k.Kind, spec: Spec) -> dict[str, Any] | None:
        if kind.name not in self._listed:
            self._listed[kind.name] = {_key(kind, o): o for o in self.client.list(kind)}
        return self._listed[kind.name].get((spec.scope, spec.name))


def plan(scenario: Scenario, client: Client) -> list[Step]:
    """One step per declared object, in dependency order."""
    live = _Live(client)
    steps = []
    for entry in scenario.in_order():
        spec = entry.spec
        assert spec is not None, "plan() needs a checked scenario"
        kind = entry.kind
        current = live.current(kind, spec)
        if current is None:
            steps.append(Step(entry, "create", _body(spec)))
            continue
        have = kind.spec.model_validate(current)
        want = keep_omitted(spec, have)
        same = want.model_dump(mode="json") == have.model_dump(mode="json")
        action: Action = "unchanged" if same else "update"
        steps.append(Step(entry, action, _body(spec), current["id"], current["revision"]))
    return steps


def plan_delete(scenario: Scenario, client: Client) -> list[Step]:
    """`delete -f`: a delete step for each declared object that exists (dependents first), with
    the revision read; "absent" for the others."""
    live = _Live(client)
    steps = []
    for entry in reversed(scenario.in_order()):
        spec = entry.spec
        assert spec is not None, "plan_delete() needs a checked scenario"
        kind = entry.kind
        current = live.current(kind, spec)
        key = {"name": spec.name, **({"tenant": spec.scope} if kind.scoped else {})}
        if current is None:
            steps.append(Step(entry, "absent", key))
        else:
            steps.append(Step(entry, "delete", key, current["id"], current["revision"]))
    return steps


def _without_forward_refs(body: dict[str, Any], known: set[str], own: str) -> dict[str, Any]:
    """A security group's rules minus those naming groups that do not exist yet."""
    rules = [r for r in body.get("rules", []) if r.get("remote_group") in (None, own, *known)]
    return {**body, "rules": rules}


def batch_items(steps: list[Step]) -> list[tuple[Step, dict[str, Any]]]:
    """The batch for ``steps``, each item with the step it comes from. Security groups that name
    groups created later in the same batch are created without those rules first and completed
    by an update at the end (one transaction all the same)."""
    groups = {
        s.entry.spec.name for s in steps if isinstance(s.entry.spec, SecurityGroup) and s.action != "create"
    }
    items: list[tuple[Step, dict[str, Any]]] = []
    complete_later: list[tuple[Step, dict[str, Any]]] = []
    for step in steps:
        kind = step.entry.kind.collection
        if step.action == "create":
            body = step.body
            if step.entry.kind is k.SECURITY_GROUP:
                body = _without_forward_refs(body, groups, step.body["name"])
                groups.add(step.body["name"])
                if body != step.body:
                    complete_later.append((step, {"op": "update", "kind": kind, "object": step.body}))
            items.append((step, {"op": "create", "kind": kind, "object": body}))
        elif step.action in ("update", "unchanged", "delete"):
            op = {"update": "update", "unchanged": "keep", "delete": "delete"}[step.action]
            body = (
                step.body
                if op == "update"
                else {f: step.body[f] for f in ("name", "tenant") if f in step.body}
            )
            items.append((step, {"op": op, "kind": kind, "object": body, "revision": step.revision}))
    return items + complete_later


ITEM = re.compile(r"^items\[(\d+)\]\.?")
LABEL = re.compile(r"^items\[\d+\] \([^)]*\): ")


def execute(
    steps: list[Step],
    client: Client,
    progress: Callable[[Step], None] = lambda step: None,
    *,
    dry_run: bool = False,
    owner: str | None = None,
    prune: bool = False,
) -> Result:
    """Send the plan as one batch; the result counts what the authority did (or, ``dry_run``,
    would do) per kind. A refusal raises ``Refused`` (``Changed`` for a stale revision) naming
    the step at fault. A plan with nothing to change and nothing to prune sends nothing."""
    result = Result()
    pairs = batch_items(steps)
    if not prune and all(step.action in ("unchanged", "absent") for step in steps):
        for step in steps:
            result.count(step.entry.kind.name, step.action)
            progress(step)
        result.revision = client.revision()
        return result
    try:
        answer = client.batch([item for _, item in pairs], dry_run=dry_run, owner=owner, prune=prune)
    except ApiError as exc:
        raise _refusal(exc, pairs) from None
    seen: dict[tuple[str, str | None, str], str] = {}
    for item in answer["items"]:
        key = (item["kind"], item.get("tenant"), item["name"])
        if key in seen:  # a security group completed at the end of the batch: still "created"
            continue
        seen[key] = DONE.get(item["action"], item["action"])
        kind = k.lookup(item["kind"])
        result.count(kind.name if kind else item["kind"], seen[key])
        result.items.append(item)
    for step in steps:
        if step.action == "absent":
            result.count(step.entry.kind.name, "absent")
        progress(step)
    result.revision = int(answer["revision"])
    return result


def _refusal(exc: ApiError, pairs: list[tuple[Step, dict[str, Any]]]) -> Refused:
    """The batch's error, tied to the step (file entry) of the item it names."""
    found = ITEM.match(exc.field or "")
    step = pairs[int(found[1])][0] if found and int(found[1]) < len(pairs) else None
    if step is not None:
        exc.field = ITEM.sub("", exc.field or "") or None
        exc.message = LABEL.sub("", exc.message)  # the caller names the entry its own way
    if exc.status == 409 and (exc.field or "").endswith("revision"):
        what = f"{step.entry.kind} {step.body['name']!r}" if step else "an object"
        return Changed(f"{what} changed at the authority after apply read it ({exc.message})", step, exc)
    return Refused(exc.message, step, exc)
