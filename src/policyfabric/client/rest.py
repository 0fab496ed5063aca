"""The REST client of the authority: the one the CLI, the lab, tests and benchmarks use.

``request`` parses a refusal into ``ApiError`` (the API's error shape: status, code, message,
field); ``response`` hands back the raw response for callers that judge it themselves (the API
tests). An ``httpx.Client`` can be passed in, e.g. FastAPI's in-process ``TestClient``.

``token`` is sent as ``Authorization: Bearer TOKEN`` (an authority run with ``--tokens``); left
out, it is ``$POLICYFABRIC_TOKEN`` if set, as for the CLI, so that code handed only a URL (the
lab, scripts) reaches a protected authority too. ``replace`` and ``delete`` take the revision
the caller read and send it as ``If-Match``: the authority refuses (409) if the object changed.
"""

from __future__ import annotations

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


class Client:
    def __init__(
        self,
        url: str = DEFAULT_URL,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
        token: str | None = None,
    ) -> None:
        """``token`` None: ``$POLICYFABRIC_TOKEN`` if set; "": none."""
        self.url = url.rstrip("/")
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
        except httpx.TransportError as exc:
            raise Unreachable(
                f"cannot reach the authority at {self.url} ({exc.__class__.__name__}: {exc}). "
                "Start one with `policyfabric authority`, or point --authority / POLICYFABRIC_URL at it."
            ) from None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """The response's JSON; a refusal raises ``ApiError``."""
        response = self.response(method, path, **kw)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ApiError(response.status_code, err["code"], err["message"], err.get("field"))
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http", response.text[:200]) from None
        return response.json()

    def revision(self) -> int:
        return int(self.request("GET", "/v1/revision")["revision"])

    def list(self, kind: Kind, tenant: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        params = {k: v for k, v in (("tenant", tenant), ("name", name)) if v is not None}
        return list(self.request("GET", f"/v1/{kind.collection}", params=params)["items"])

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.request("POST", f"/v1/{kind.collection}", json=body))

    def replace(
        self, kind: Kind, id: str, body: dict[str, Any], revision: int | None = None
    ) -> dict[str, Any]:
        """Replace the object; with ``revision``, only if it is still at that revision (else 409)."""
        return dict(
            self.request("PUT", f"/v1/{kind.collection}/{id}", json=body, headers=_if_match(revision))
        )

    def delete(self, kind: Kind, id: str, revision: int | None = None) -> dict[str, Any]:
        """Delete the object; with ``revision``, only if it is still at that revision (else 409)."""
        return dict(self.request("DELETE", f"/v1/{kind.collection}/{id}", headers=_if_match(revision)))


def _if_match(revision: int | None) -> dict[str, str]:
    return {} if revision is None else {"If-Match": f'"{revision}"'}
