"""`policyfabric apply`: make the authority hold what a scenario file declares.

Create or update by name, in dependency order, never delete; an object whose
spec already matches is left alone, so applying a file twice changes
nothing. The plan is computed from one listing per kind, not a GET per object.

An update sends the revision the plan read (``If-Match``): if someone changed
the object between plan and execute, the authority refuses it and ``execute``
raises ``Changed`` rather than overwrite their change with a stale plan.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from policyfabric.client.rest import ApiError, Client
from policyfabric.model import kinds as k
from policyfabric.model.objects import SecurityGroup, Spec, keep_omitted
from policyfabric.model.scenario import Entry, Scenario

Action = Literal["create", "update", "unchanged"]


@dataclass
class Step:
    entry: Entry
    action: Action
    body: dict[str, Any]
    id: str | None = None
    revision: int | None = None  # the object's revision when the plan read it (or created it)


class Changed(Exception):
    """An object changed at the authority after the plan read it; nothing after it was applied."""


@dataclass
class Result:
    counts: dict[str, Counter[str]] = field(default_factory=dict)

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


def plan(scenario: Scenario, client: Client) -> list[Step]:
    """One step per declared object, in dependency order."""
    existing: dict[str, dict[tuple[str | None, str], dict[str, Any]]] = {}
    steps = []
    for entry in scenario.in_order():
        spec = entry.spec
        assert spec is not None, "plan() needs a checked scenario"
        kind = entry.kind
        if kind.name not in existing:
            existing[kind.name] = {_key(kind, o): o for o in client.list(kind)}
        current = existing[kind.name].get((spec.scope, spec.name))
        if current is None:
            steps.append(Step(entry, "create", _body(spec)))
            continue
        have = kind.spec.model_validate(current)
        want = keep_omitted(spec, have)
        same = want.model_dump(mode="json") == have.model_dump(mode="json")
        action: Action = "unchanged" if same else "update"
        steps.append(Step(entry, action, _body(spec), current["id"], current["revision"]))
    return steps


def _without_forward_refs(body: dict[str, Any], known: set[str], own: str) -> dict[str, Any]:
    """A security group's rules minus those naming groups that do not exist yet."""
    rules = [r for r in body.get("rules", []) if r.get("remote_group") in (None, own, *known)]
    return {**body, "rules": rules}


def execute(steps: list[Step], client: Client, progress: Callable[[Step], None]) -> Result:
    """Run the plan. Security groups that name groups created later in the same
    run are created without those rules first and completed at the end."""
    result = Result()
    groups = {
        s.entry.spec.name for s in steps if isinstance(s.entry.spec, SecurityGroup) and s.action != "create"
    }
    complete_later: list[Step] = []
    for step in steps:
        kind = step.entry.kind
        if step.action == "create":
            body = step.body
            if kind is k.SECURITY_GROUP:
                body = _without_forward_refs(body, groups, step.body["name"])
                groups.add(step.body["name"])
                if body != step.body:
                    complete_later.append(step)
            made = client.create(kind, body)
            step.id, step.revision = made["id"], made["revision"]
        elif step.action == "update":
            _replace(client, step)
        result.count(kind.name, step.action)
        progress(step)
    for step in complete_later:
        _replace(client, step)
    return result


def _replace(client: Client, step: Step) -> None:
    try:
        client.replace(step.entry.kind, str(step.id), step.body, step.revision)
    except ApiError as exc:
        if exc.status == 409 and exc.field == "revision":
            what = f"{step.entry.kind} {step.body['name']!r}"
            raise Changed(f"{what} changed at the authority after apply read it ({exc.message})") from None
        raise
