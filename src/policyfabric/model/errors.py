"""The one error type of the policy model, and how each maps to HTTP.

Every problem an operator can cause is a `PolicyError` naming the field at
fault. The REST API, the CLI and the offline checker all report these same
objects, so a message reads the same wherever it is seen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one field (dotted path, e.g. ``rules[0].classifier.port``)."""

    field: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class PolicyError(Exception):
    """Base class: an operator-facing error with an HTTP status and a stable code."""

    status = 400
    code = "bad_request"
    headers: ClassVar[dict[str, str]] = {}  # HTTP headers the answer must carry

    def __init__(self, message: str, field: str | None = None, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.problems = problems or [Problem(field, message)]

    def __str__(self) -> str:
        return str(Problem(self.field, self.message))

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> PolicyError:
        """One error carrying several problems; the first one is the headline."""
        items = list(problems)
        first = items[0]
        return cls(first.message, first.field, items)


class BadRequest(PolicyError):
    """The request cannot be read at all (malformed JSON, wrong content)."""

    status = 400
    code = "bad_request"


class Invalid(PolicyError):
    """A value is wrong: a bad CIDR, a port out of range, a missing reference."""

    status = 422
    code = "invalid"


class NotFound(PolicyError):
    """The addressed object does not exist."""

    status = 404
    code = "not_found"


class Conflict(PolicyError):
    """The value is fine on its own but clashes with another object (duplicate, overlap)."""

    status = 409
    code = "conflict"


class InUse(PolicyError):
    """The object is referenced by others and cannot be deleted or renamed."""

    status = 409
    code = "in_use"


class Unauthorized(PolicyError):
    """No token, or one the authority does not know (RFC 6750: the answer names the scheme)."""

    status = 401
    code = "unauthorized"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer realm="policyfabric"'}


class Forbidden(PolicyError):
    """The token is known but its role or tenant does not allow this request."""

    status = 403
    code = "forbidden"


class TooLarge(PolicyError):
    """The request body is larger than the authority accepts (``--max-body``)."""

    status = 413
    code = "too_large"
    headers: ClassVar[dict[str, str]] = {"Connection": "close"}  # do not read the rest of it
