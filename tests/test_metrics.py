"""``GET /metrics`` of a real authority, parsed by prometheus_client's own parser, with values
that move as the authority works; ``--log-format json`` lines that parse."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policyfabric.cli.logformat import JsonFormatter
from policyfabric.client import Client
from policyfabric.lab.authority import AuthorityProcess, authority_in

pytestmark = pytest.mark.integration  # starts an authority process

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AuthorityProcess]:
    process = authority_in(tmp_path / "authority", extra=["--log-format", "json"])
    try:
        yield process.start()
    finally:
        process.kill()


def test_metrics_move_as_the_authority_works(server: AuthorityProcess) -> None:
    before = scrape(server.url)
    with Client(server.url) as client:
        client.create(_kind("tenants"), {"name": "acme"})
        client.create(_kind("l3-contexts"), {"name": "vrf", "tenant": "acme"})
        client.create(_kind("bridge-domains"), {"name": "bd", "tenant": "acme", "l3_context": "vrf"})
        client.create(
            _kind("subnets"), {"name": "s", "tenant": "acme", "bridge_domain": "bd", "cidr": "10.0.0.0/24"}
        )
        client.create(_kind("epgs"), {"name": "web", "tenant": "acme", "bridge_domain": "bd"})
        client.create(_kind("endpoints"), {"name": "e1", "tenant": "acme", "epg": "web", "ip": "10.0.0.5"})
        refused = client.response("POST", "/v1/tenants", json={"name": "acme"})
        assert refused.status_code == 409
        ep = client.list(_kind("endpoints"), "acme", "e1")[0]
        client.response("GET", f"/v1/endpoints/{ep['id']}")
    after = scrape(server.url)
    post = {"route": "/v1/tenants", "method": "POST"}
    assert value(after, "policyfabric_http_requests_total", **post, status="201") == 1 + value(
        before, "policyfabric_http_requests_total", **post, status="201"
    )
    assert value(after, "policyfabric_http_requests_total", **post, status="409") == 1
    # one series per route template, never per object id
    item = {"route": "/v1/endpoints/{id}", "method": "GET", "status": "200"}
    assert value(after, "policyfabric_http_requests_total", **item) == 1
    assert not any(ep["id"] in str(labels) for _, labels in after)
    assert value(after, "policyfabric_http_request_seconds_count", route="/v1/tenants", method="POST") == 2
    assert value(after, "policyfabric_commits_total") - value(before, "policyfabric_commits_total") == 6
    assert value(after, "policyfabric_changed_objects_total", kind="endpoint", op="create") == 1
    assert value(after, "policyfabric_endpoints", status="DOWN") == 1
    # the OpFlex flush ran for these writes (the fan-out to sessions, none connected here)
    assert value(after, "policyfabric_opflex_flush_seconds_count") > value(
        before, "policyfabric_opflex_flush_seconds_count"
    )
    assert value(after, "policyfabric_opflex_agents", connected="true") == 0


def test_json_logs_parse(server: AuthorityProcess) -> None:
    with Client(server.url) as client:
        client.create(_kind("tenants"), {"name": "logged"})
        client.response("POST", "/v1/tenants", json={"name": "logged"})
    with socket.create_connection(("127.0.0.1", server.port)) as raw:  # uvicorn's own warning
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        raw.recv(1000)
    server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    assert lines
    parsed = [json.loads(line) for line in lines]  # every line: one JSON object
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    audit = [p for p in parsed if p["logger"] == "policyfabric.audit"]
    assert any("POST tenant logged" in p["message"] for p in audit), audit
    assert any(p["logger"] == "policyfabric.authority.server" and "REST on" in p["message"] for p in parsed)
    assert any(p["logger"].startswith("uvicorn") for p in parsed), parsed  # its lines are JSON too


def test_json_formatter_keeps_structured_fields() -> None:
    record = logging.LogRecord("x.y", logging.WARNING, __file__, 1, "moved %s", ("e1",), None)
    record.endpoint = "acme/e1"  # as extra={"endpoint": ...} sets it
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "moved e1" and line["level"] == "warning" and line["logger"] == "x.y"
    assert line["endpoint"] == "acme/e1" and line["time"].endswith("Z")


def _kind(name: str):  # type: ignore[no-untyped-def]
    from policyfabric.model import kinds

    return kinds.lookup(name)
