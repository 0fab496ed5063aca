"""The request body cap (``--max-body``, 1 MiB by default), in-process: a larger body is refused with
413 in the error shape before it is parsed, whether it declares its length or streams chunked."""

from __future__ import annotations

from collections.abc import Iterator

from tests.conftest import Api, error

LIMIT = 1 << 20  # the default, which the in-process app runs with


def test_a_declared_length_over_the_cap_is_refused_before_reading(api: Api) -> None:
    before = api.revision()
    body = b'{"create": [' + b" " * LIMIT + b"]}"
    r = api.http.post("/v1/batch", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert error(r) == {
        "code": "too_large",
        "message": f"the request body is larger than {LIMIT} bytes, the limit (--max-body)",
        "field": None,
    }
    assert r.headers["connection"] == "close"
    assert api.revision() == before


def test_a_route_that_reads_no_body_answers_413_in_the_same_shape(api: Api) -> None:
    r = api.http.request("GET", "/v1/tenants", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413 and error(r)["code"] == "too_large"


def test_a_chunked_body_is_counted_as_it_arrives(api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"a" * (64 * 1024)
        yield b'"}'

    r = api.http.post("/v1/tenants", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413, r.text
    assert error(r)["code"] == "too_large" and str(LIMIT) in error(r)["message"]


def test_a_body_at_the_cap_is_parsed_as_usual(api: Api) -> None:
    body = b'{"name": "' + b"a" * (LIMIT - 12) + b'"}'
    assert len(body) == LIMIT
    r = api.http.post("/v1/tenants", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and error(r)["field"] == "name"  # too long a name: parsed, not capped
