"""The authority's REST API (docs/api.md), over ``requests``, which Neutron's environment has.

Every write is idempotent, so the journal may send a row again after any failure: ``upsert``
looks the object up by tenant and name and replaces it (PUT, which writes nothing when nothing
changed) or creates it; ``delete`` deletes it by name and treats "not there" as done. Errors
come back as ``Answer`` (status None: no answer at all), never as an exception, because the
journal decides what each one means (``journal.classify``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Answer:
    status: int | None
    body: Any = None
    error: str = ""


class Authority:
    def __init__(self, url: str, token: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            r = self.http.request(method, f"{self.url}/v1/{path}", timeout=self.timeout, **kwargs)
        except requests.RequestException as e:
            return Answer(None, error=f"{type(e).__name__}: {e}")
        try:
            body = r.json()
        except ValueError:
            body = None
        error = ""
        if r.status_code >= 400:
            err = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            error = f"{r.status_code} {err.get('code', '')}: {err.get('message', r.text[:300])}"
        return Answer(r.status_code, body, error)

    def find(self, collection: str, tenant: str | None, name: str) -> Answer:
        params = {"name": name, **({"tenant": tenant} if tenant else {})}
        return self._call("GET", collection, params=params)

    def upsert(self, collection: str, body: dict[str, Any]) -> Answer:
        found = self.find(collection, body.get("tenant"), body["name"])
        if found.status != 200:
            return found
        items = found.body.get("items", [])
        if items:
            return self._call("PUT", f"{collection}/{items[0]['id']}", json=body)
        created = self._call("POST", collection, json=body)
        if created.status == 409 and "exists" in created.error:  # created meanwhile: replace it
            return self.upsert(collection, body)
        return created

    def delete(self, collection: str, tenant: str | None, name: str) -> Answer:
        found = self.find(collection, tenant, name)
        if found.status != 200:
            return found
        items = found.body.get("items", [])
        if not items:
            return Answer(404)
        return self._call("DELETE", f"{collection}/{items[0]['id']}")

    def list(self, collection: str, tenant: str | None = None) -> Answer:
        return self._call("GET", collection, params={"tenant": tenant} if tenant else {})

    def batch(self, items: list[dict[str, Any]]) -> Answer:
        return self._call("POST", "batch", json={"items": items})

    def revision(self) -> Answer:
        return self._call("GET", "revision")

    def agents(self) -> Answer:
        return self._call("GET", "agents")

    def schema_fields(self) -> dict[str, list[str]] | None:
        """The properties of each of the authority's OpenAPI schemas (what its model has), or None
        when it cannot be read."""
        try:
            r = self.http.get(f"{self.url}/openapi.json", timeout=self.timeout)
            schemas = r.json()["components"]["schemas"] if r.status_code == 200 else None
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        if not isinstance(schemas, dict):
            return None
        return {name: list((s or {}).get("properties") or {}) for name, s in schemas.items()}
