"""Who is asking the REST API, and what they may see and change: bearer tokens and tenant scoping.

One authority serves every tenant, so its REST edge must tell them apart itself: a proxy in
front can authenticate, but it cannot scope (it does not know which tenant an object id belongs
to). ``--tokens FILE`` lists the tokens, each with a role:

- ``admin``: everything, every tenant (an admin token names no tenant);
- ``member``: reads and writes the objects of its ``tenant``; reads what every tenant shares
  (external networks) and its own tenant object. Other tenants' objects do not exist for it: 404,
  not 403, so a member cannot learn what others hold, not even which ids exist;
- ``reader``: reads, never writes; with a ``tenant`` it sees what a member of it sees, without
  one everything (agents and faults too).

Pure, no HTTP: ``api.py`` turns the ``Authorization`` header into a :class:`Principal` with
:meth:`Tokens.lookup` and asks it before each request; ``service.py`` uses :func:`visible` to
scope reads inside its transactions. Tokens are kept as SHA-256 digests and compared in constant
time; neither a token nor the file's text is ever logged or echoed in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from policyfabric.model import kinds as k
from policyfabric.model.errors import Forbidden
from policyfabric.model.kinds import Kind
from policyfabric.model.parse import problems_from_pydantic
from policyfabric.model.types import Name

log = logging.getLogger(__name__)

Role = Literal["admin", "member", "reader"]
MIN_TOKEN = 16
# RFC 6750's b64token: what fits in "Authorization: Bearer ..." unquoted.
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/-]+=*$")


class TokenError(Exception):
    """The tokens file is unreadable or wrong; the message names the entry and field, never a token."""


def visible(scope: str | None, kind: str, tenant: str | None, name: str) -> bool:
    """Whether an object (or a change to it) is seen from ``scope`` (a tenant; None: every tenant)."""
    if scope is None:
        return True
    if kind == k.TENANT.name:
        return name == scope
    if not k.BY_NAME[kind].scoped:
        return True  # shared by every tenant (external networks)
    return tenant == scope


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a token's name, role and tenant (None: every tenant)."""

    name: str
    role: Role
    tenant: str | None = None

    def __str__(self) -> str:
        if self is ANONYMOUS:
            return self.name
        where = f" (tenant {self.tenant})" if self.tenant else ""
        return f"{self.role} {self.name!r}{where}"

    def sees(self, kind: str, tenant: str | None, name: str) -> bool:
        return visible(self.tenant, kind, tenant, name)

    def check_write(self, kind: Kind | None, tenant: str | None = None) -> None:
        """Refuse (403) a write this principal may not make: any for a reader, a shared kind for a
        member, or an object of another tenant (``tenant``: the one a new object names). Whether an
        existing object is the member's own is the service's check (404 when it is not). No
        ``kind``: whether it may write at all."""
        if self.role == "reader":
            raise Forbidden(f"{self} may read, not write")
        if self.role == "member" and kind is not None:
            if not kind.scoped:
                raise Forbidden(f"{kind}s belong to no one tenant: only an admin token may change them")
            if tenant is not None and tenant != self.tenant:
                raise Forbidden(f"{self} may only write objects of tenant {self.tenant!r}", "tenant")

    def check_global(self, what: str) -> None:
        """Refuse (403) what spans every tenant (agents, faults) to a token scoped to one."""
        if self.tenant is not None:
            raise Forbidden(
                f"{what} span every tenant: they need an admin token or a reader token without a tenant"
            )


ANONYMOUS = Principal("anonymous (no --tokens)", "admin")


class TokenEntry(BaseModel):
    """One entry of the tokens file."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(description=f"the secret: {MIN_TOKEN}+ characters, e.g. `openssl rand -hex 32`")
    role: Role
    tenant: Name | None = Field(None, validate_default=True)
    name: str | None = Field(None, min_length=1, max_length=100, description="who, in the audit log")

    @field_validator("token", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        # messages never quote the value: it is a secret
        if not isinstance(value, str):
            raise ValueError("must be a string (quote it if YAML reads it as a number)")
        if len(value) < MIN_TOKEN or not _TOKEN.match(value):
            raise ValueError(
                f"must be at least {MIN_TOKEN} characters of A-Z a-z 0-9 - . _ ~ + / "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant_fits_role(cls, value: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role == "admin" and value is not None:
            raise ValueError("an admin token spans every tenant: remove tenant")
        if role == "member" and value is None:
            raise ValueError("a member token needs the tenant it may change")
        return value


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry] = Field(min_length=1)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Tokens:
    """The known tokens, as digests, each with its principal."""

    def __init__(self, entries: list[tuple[str, Principal]]) -> None:
        self._known = [(_digest(token), who) for token, who in entries]

    def __len__(self) -> int:
        return len(self._known)

    def principals(self) -> list[Principal]:
        return [who for _, who in self._known]

    def lookup(self, presented: str) -> Principal | None:
        """The principal of a presented token, or None. Constant time: every entry is compared,
        digest against digest, so neither the length of a guess nor which entry it nearly
        matches shows in the time taken."""
        digest, found = _digest(presented), None
        for known, who in self._known:
            if hmac.compare_digest(digest, known):
                found = who
        return found


def parse_tokens(data: object, source: str) -> Tokens:
    """Validate a tokens document; every problem in one TokenError naming entry and field."""
    if not isinstance(data, dict):
        raise TokenError(f"{source}: expected a mapping `tokens: [{{token, role, tenant}}, ...]`")
    try:
        parsed = TokenFile.model_validate(data)
    except ValidationError as exc:
        found = problems_from_pydantic(exc.errors())
        raise TokenError("; ".join(f"{source}: {p}" for p in found)) from None
    problems: list[str] = []
    seen: dict[bytes, int] = {}
    names: dict[str, int] = {}
    for i, entry in enumerate(parsed.tokens):
        digest = _digest(entry.token)
        if digest in seen:
            problems.append(f"{source}: tokens[{i}].token: the same token as tokens[{seen[digest]}]")
        seen.setdefault(digest, i)
        if entry.name is not None:
            if entry.name in names:
                problems.append(
                    f"{source}: tokens[{i}].name: {entry.name!r} also names tokens[{names[entry.name]}]"
                )
            names.setdefault(entry.name, i)
    if problems:
        raise TokenError("; ".join(problems))
    return Tokens(
        [
            (e.token, Principal(e.name or f"tokens[{i}]", e.role, e.tenant))
            for i, e in enumerate(parsed.tokens)
        ]
    )


def load_tokens(path: Path) -> Tokens:
    """Read and check ``--tokens FILE``; a TokenError says what is wrong without quoting the file."""
    try:
        text = path.read_text()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(
            f"cannot read the tokens file {path}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise TokenError(f"{path}{where}: not valid YAML") from None  # its message would quote the line
    tokens = parse_tokens(data, str(path))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the tokens file %s can be read by other users (mode %o): chmod 600 it", path, mode & 0o777
        )
    return tokens
