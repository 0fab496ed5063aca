"""Turn raw input (a REST body, a scenario entry) into a checked Spec.

This is the first half of the one validator: the REST API and the offline
checker both go through :func:`parse_spec` (FastAPI runs the same pydantic
model, then calls :func:`check_local`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from policyfabric.model.errors import Invalid, Problem
from policyfabric.model.kinds import Kind
from policyfabric.model.objects import Spec


def field_path(loc: Sequence[int | str]) -> str | None:
    """``("rules", 0, "classifier", "port")`` -> ``rules[0].classifier.port``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field (check the spelling against the documented keys)"
    if kind == "missing":
        return "field required"
    msg = error["msg"]
    return msg.removeprefix("Value error, ")


def problems_from_pydantic(errors: Iterable[ErrorDetails], strip: int = 0) -> list[Problem]:
    """pydantic's errors as Problems; ``strip`` drops leading loc parts (e.g. ``body``)."""
    found = []
    for error in errors:
        loc = error["loc"][strip:]
        # Union members add their type name to the path: drop those segments.
        loc = tuple(p for p in loc if not ((isinstance(p, str) and p[:1].isupper()) or "[" in str(p)))
        found.append(Problem(field_path(loc), _message(error)))
    return found


def check_local(spec: Spec) -> Spec:
    """Cross-field rules of one object; raises Invalid with every problem."""
    found = spec.problems()
    if found:
        raise Invalid.of(found)
    return spec


def parse_spec(kind: Kind, data: Mapping[str, Any]) -> Spec:
    """Validate ``data`` as an object of ``kind``; raises Invalid with every problem."""
    if not isinstance(data, Mapping):
        raise Invalid(f"a {kind} must be a mapping of keys to values")
    try:
        spec = kind.spec.model_validate(dict(data))
    except ValidationError as exc:
        raise Invalid.of(problems_from_pydantic(exc.errors())) from None
    return check_local(spec)
