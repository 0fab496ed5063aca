"""The REST client of the authority: the one the CLI, the lab, tests and benchmarks use.

``request`` parses a refusal into ``ApiError`` (the API's error shape: status, code, message,
field); ``response`` hands back the raw response for callers that judge it themselves (the API
tests). An ``httpx.Client`` can be passed in, e.g. FastAPI's in-process ``TestClient``.

``token`` is sent as ``Authorization: Bearer TOKEN`` (an authority run with ``--tokens``); left
out, it is ``$POLICYFABRIC_TOKEN`` if set, as for the CLI, so that code handed only a URL (the
lab, scripts) reaches a protected authority too. ``replace`` and ``delete`` take the revision
the caller read and send it as ``If-Match``: the authority refuses (409) if the object changed.
``batch`` sends many creates, updates and deletes as one transaction (``POST /v1/batch``).

A URL without a scheme, and a server that answers but not as a policyfabric authority (an HTML
page, another service's JSON, a port that does not speak HTTP), raise ``NotAnAuthority`` with
one line saying so, never the page itself.
"""

from __future__ import annotations

import builtins
import os
from typing import Any

import httpx

from policyfabric.model.kinds import Kind

DEFAULT_URL = "http://127.0.0.1:8700"
TOKEN_ENV = "POLICYFABRIC_TOKEN"


class ApiError(Exception):
    """The authority refused a request: its status, error code, message and field."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"{self.message}{where} [{self.status} {self.code}]"


class Unreachable(Exception):
    """No authority answers at the URL."""


class NotAnAuthority(Unreachable):
    """The URL is not one (no scheme), or what answers there is not a policyfabric authority."""


HINT = "is --authority / POLICYFABRIC_URL the authority's REST URL (http://HOST:8700)?"


def check_url(url: str) -> str:
    """``url`` without a trailing slash; ``NotAnAuthority`` unless it is http(s)://HOST[:PORT]."""
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise NotAnAuthority(
            f"{url!r} is not a REST URL: write http://HOST:PORT or https://HOST:PORT "
            "(the authority listens on http://127.0.0.1:8700 by default)"
        )
    return url.rstrip("/")


class Client:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        token: str | None = None,
    ) -> None:
        """``token`` None: ``$POLICYFABRIC_TOKEN`` if set; "": none. A ``url`` that is not
        http(s)://HOST[:PORT] raises ``NotAnAuthority`` (unless ``http`` is given)."""
        self.url = check_url(url) if http is None else url.rstrip("/")
        self.http = http if http is not None else httpx.Client(base_url=self.url, timeout=timeout)
        token = os.environ.get(TOKEN_ENV) if token is None else token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def response(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The raw response, whatever its status; ``Unreachable`` if no authority answers."""
        if self.headers:
            kw["headers"] = {**self.headers, **kw.get("headers", {})}
        try:
            return self.http.request(method, path, **kw)
        except httpx.ProtocolError as exc:
            raise NotAnAuthority(
                f"{self.url} answered, but not in HTTP ({exc.__class__.__name__}): {HINT} "
                "(OpFlex, on 8009, is for agents)"
            ) from None
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the authority at {self.url} ({exc.__class__.__name__}: {exc}). "
                "Start one with `policyfabric authority`, or point --authority / POLICYFABRIC_URL at it."
            ) from None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """The response's JSON; a refusal raises ``ApiError``."""
        response = self.response(method, path, **kw)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            if not (isinstance(err, dict) and isinstance(err.get("message"), str) and "code" in err):
                raise self._stranger(response)
            raise ApiError(response.status_code, str(err["code"]), err["message"], err.get("field"))
        if not isinstance(body, dict):
            raise self._stranger(response)
        return body

    def _get(self, path: str, key: str, **kw: Any) -> Any:
        """``key`` of a GET's answer; an answer without it is not the authority's."""
        body = self.request("GET", path, **kw)
        if key not in body:
            what = f"GET {path} has no {key!r}"
            raise NotAnAuthority(f"{self.url} is not a policyfabric authority: {what}; {HINT}")
        return body[key]

    def _stranger(self, response: httpx.Response) -> NotAnAuthority:
        """What to say of an answer that is not the authority's (not its JSON, not its errors)."""
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        server = response.headers.get("server")
        by = f" from {server!r}" if server else ""
        return NotAnAuthority(
            f"{self.url} is not a policyfabric authority: {response.request.method} "
            f"{response.request.url.path} got {response.status_code} {response.reason_phrase} "
            f"({kind}){by}; {HINT}"
        )

    def revision(self) -> int:
        return int(self._get("/v1/revision", "revision"))

    def list(self, kind: Kind, tenant: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("tenant", tenant), ("name", name)) if v is not None}
        return list(self._get(f"/v1/{kind.collection}", "items", params=params))

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/{kind.collection}", json=body))

    def replace(
        self, kind: Kind, id: str, body: dict[str, Any], revision: int | None = None
    ) -> dict[str, Any]:
        """Replace the object; with ``revision``, only if it is still at that revision (else 409)."""
        return dict(
            self.request("PUT", f"/v1/{kind.collection}/{id}", json=body, headers=_if_match(revision))
        )

    def batch(
        self,
        items: builtins.list[dict[str, Any]],
        *,
        dry_run: bool = False,
        owner: str | None = None,
        prune: bool = False,
    ) -> dict[str, Any]:
        """One transaction of ``items`` (``{"op", "kind", "object", "revision"}``, docs/api.md):
        ``{"items": [what was done to each object], "revision", "dry_run"}``."""
        body: dict[str, Any] = {"items": items, "dry_run": dry_run, "prune": prune}
        if owner is not None:
            body["owner"] = owner
        return dict(self.request("POST", "/v1/batch", json=body))

    def agents(self) -> builtins.list[dict[str, Any]]:
        return list(self._get("/v1/agents", "items"))

    def faults(self) -> builtins.list[dict[str, Any]]:
        return list(self._get("/v1/faults", "items"))

    def changes(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        return dict(self.request("GET", "/v1/changes", params={"since": since, "limit": limit}))

    def delete(self, kind: Kind, id: str, revision: int | None = None) -> dict[str, Any]:
        """Delete the object; with ``revision``, only if it is still at that revision (else 409)."""
        return dict(self.request("DELETE", f"/v1/{kind.collection}/{id}", headers=_if_match(revision)))


def _if_match(revision: int | None) -> dict[str, str]:
    return {} if revision is None else {"If-Match": f'"{revision}"'}
