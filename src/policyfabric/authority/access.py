"""The REST API's side of ``auth``: FastAPI dependencies that name who asks, the write checks
that run before a body is even validated, the audit line of every write, and the revision a
write expects (optimistic concurrency: ``If-Match`` or the body's ``revision``).

Kept out of ``api.py`` so that the routes read as what they do; the rules themselves (roles,
what a tenant sees) are in ``auth.py``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the dependencies' annotations
# at run time, and they name local variables (the bearer scheme, the principal dependency).

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from policyfabric.authority.auth import ANONYMOUS, Principal, Tokens
from policyfabric.model.errors import BadRequest, Conflict, Forbidden, Invalid, Unauthorized
from policyfabric.model.kinds import Kind

audit_log = logging.getLogger("policyfabric.audit")

MAX_REVISION = 2**63 - 1  # SQLite's integer: a larger one cannot even be compared

IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='the revision the object must still be at, quoted: "12" (409 conflict if not)',
    ),
]


class Validator(Protocol):
    """Tokens an outside service vouches for (``keystone.KeystoneAuth``): the principal of one, or
    a PolicyError (401 none or unknown, 403 no role this authority maps, 503 the service is
    unreachable)."""

    async def principal(self, token: str) -> Principal: ...


class Access:
    """Who a request is from (``principal``), and whether it may write (``writer``)."""

    def __init__(self, tokens: Tokens | None, keystone: Validator | None = None) -> None:
        self.tokens = tokens
        if keystone is not None:
            self.principal = _keystone_principal(keystone)
            return
        bearer = HTTPBearer(auto_error=False, description="a token of the authority's --tokens file")

        async def principal(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        ) -> Principal:
            if tokens is None:
                return ANONYMOUS
            if credentials is None:
                raise Unauthorized(
                    "this authority needs a token: send Authorization: Bearer TOKEN "
                    "(the CLI: --token or POLICYFABRIC_TOKEN)"
                )
            who = tokens.lookup(credentials.credentials)
            if who is None:
                raise Unauthorized("the token is not one this authority knows")
            return who

        self.principal = principal

    def writer(self, kind: Kind | None) -> Callable[..., Awaitable[Principal]]:
        """A dependency: the principal, if it may write ``kind`` at all (None: some kind); else
        403 before the body is validated. Which tenant a body names is checked by the route."""
        principal = self.principal

        async def may_write(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
            guarded(who, request.method, request.url.path, who.check_write, kind)
            return who

        return may_write


def _keystone_principal(keystone: Validator) -> Callable[..., Awaitable[Principal]]:
    """The ``principal`` dependency with ``--keystone``: X-Auth-Token (OpenStack clients) or a
    bearer token, validated by Keystone."""
    x_auth = APIKeyHeader(name="X-Auth-Token", auto_error=False, description="a Keystone token")
    bearer = HTTPBearer(auto_error=False, description="a Keystone token, as a bearer token")

    async def principal(
        x_auth_token: Annotated[str | None, Security(x_auth)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Principal:
        token = x_auth_token or (credentials.credentials if credentials is not None else "")
        return await keystone.principal(token)  # none: 401 too, with the validator's challenge

    return principal


def guarded(who: Principal, method: str, what: str, check: Callable[..., None], *args: Any) -> None:
    """Run an authorization check; log a refusal (an attempt to write) as an audit line."""
    try:
        check(*args)
    except Forbidden as err:
        audit_log.warning("%s: %s %s: denied: %s", who, method, what, err.message)
        raise


def audit(who: Principal, method: str, kind: Kind | str, obj: dict[str, Any], revision: int) -> None:
    """One line per write: who, what, which object, at what revision."""
    where = f"{obj['tenant']}/{obj['name']}" if obj.get("tenant") else obj.get("name", "-")
    audit_log.info(
        "%s: %s %s %s id=%s -> revision %d", who, method, kind, where, obj.get("id", "-"), revision
    )


def if_match(value: str | None) -> int | None:
    """``If-Match: "12"`` (or ``12``) as a revision; ``*`` or nothing: any."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        text = text[1:-1]
    if not text.isdigit() or not text.isascii() or int(text) > MAX_REVISION:
        raise BadRequest(
            f'If-Match must be one revision in quotes, e.g. "12", not {value[:40]!r}', "If-Match"
        )
    return int(text)


async def body_revision(request: Request) -> int | None:
    """The ``revision`` of a PUT body: the revision the client read (the spec itself drops it)."""
    try:
        data = json.loads(await request.body())
    except (ValueError, RecursionError):
        return None  # FastAPI's own parse of the body reports it
    value = data.get("revision") if isinstance(data, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REVISION:
        raise Invalid("the revision you read (an integer), or leave it out", "revision")
    return value


def expected(header: int | None, body: int | None) -> int | None:
    """The one revision a write expects, from the header and the body (which must agree)."""
    if header is not None and body is not None and header != body:
        raise Conflict(f"If-Match says revision {header} but the body says {body}", "revision")
    return header if header is not None else body


def etag(obj: dict[str, Any]) -> dict[str, str]:
    return {"ETag": f'"{obj["revision"]}"'}
