"""Fixtures: the authority's REST API in-process (fast, for API semantics) or as a real process on
loopback (for the CLI, OpFlex and the lab); the ``dataplane`` and ``integration`` markers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from policyfabric.authority.api import create_app
from policyfabric.authority.auth import parse_tokens
from policyfabric.authority.service import Authority
from policyfabric.client import Client
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.lab.etcd import EtcdCluster
from policyfabric.lab.etcd import missing as etcd_missing
from policyfabric.store.base import Store
from policyfabric.store.sqlite import SqliteStore

PROCESS_FIXTURES = frozenset({"authority", "fresh_authority", "opflex_authority"})
SCENARIOS = Path(__file__).parent / "scenarios"
# The stores the API tests (``inprocess_app``) and the modules of BOTH_STORES (``fresh_authority``)
# run on: SQLite (the default) and etcd (``--store etcd://``, on a 3-member cluster per worker).
STORES = ("sqlite", "etcd")
BOTH_STORES = frozenset({"test_durability"})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The authority processes of the BOTH_STORES modules run once per store."""
    module = metafunc.module.__name__.rpartition(".")[2]
    if "fresh_authority" in metafunc.fixturenames and module in BOTH_STORES:
        metafunc.parametrize("store_kind", STORES, indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    """Which store ``fresh_authority`` runs on (``sqlite`` unless parametrized)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A real 3-member etcd cluster on loopback for this test worker (``policyfabric.lab.etcd``);
    tests keep apart by each using a key prefix of its own (``etcd_prefix``)."""
    why = etcd_missing()
    if why is not None:
        pytest.skip(why)
    with EtcdCluster() as cluster:
        yield cluster


def etcd_prefix() -> str:
    """A key prefix no other test uses: a fresh, empty store on the shared cluster."""
    return f"/test-{uuid.uuid4().hex[:12]}/"


def open_store(kind: str, request: pytest.FixtureRequest, path: Path) -> Store:
    """A new, empty store of ``kind``: SQLite at ``path``, or a fresh prefix on ``etcd_cluster``."""
    if kind == "sqlite":
        return SqliteStore(path)
    from policyfabric.store.etcd import EtcdStore

    cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
    return EtcdStore(cluster.endpoints, prefix=etcd_prefix())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that starts an authority process or runs on etcd is an ``integration`` test; ``dataplane`` tests
    (real packets: namespaces, Open vSwitch, nftables) are skipped, saying why, when not root."""
    not_root = pytest.mark.skip(reason="dataplane: needs root (network namespaces, Open vSwitch)")
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        callspec = getattr(item, "callspec", None)
        if "etcd" in (callspec.params.values() if callspec else ()):  # runs an etcd cluster
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("dataplane") is not None:
            item.add_marker(pytest.mark.integration)
            if os.geteuid() != 0:
                item.add_marker(not_root)


class Api:
    """The SDK client (``policyfabric.client.Client``) as the API tests use it: every call returns
    the ``httpx.Response``, whatever its status, so that tests assert on status and error shape."""

    def __init__(self, url: str, http: httpx.Client | None = None, token: str = "") -> None:
        self.client = Client(url, http=http, token=token)
        self.url = self.client.url
        self.http = self.client.http  # for requests no SDK call makes (malformed bodies, odd verbs)

    def post(self, collection: str, body: Any) -> httpx.Response:
        return self.client.response("POST", f"/v1/{collection}", json=body)

    def put(self, collection: str, id: str, body: Any, **headers: str) -> httpx.Response:
        return self.client.response("PUT", f"/v1/{collection}/{id}", json=body, headers=_headers(headers))

    def delete(self, collection: str, id: str, **headers: str) -> httpx.Response:
        return self.client.response("DELETE", f"/v1/{collection}/{id}", headers=_headers(headers))

    def get(self, path: str, **params: Any) -> httpx.Response:
        return self.client.response("GET", path, params=params)

    def ok(self, collection: str, body: Any) -> dict[str, Any]:
        """Create and insist it worked."""
        r = self.post(collection, body)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def find(self, collection: str, tenant: str | None, name: str) -> dict[str, Any] | None:
        params = {"name": name, **({"tenant": tenant} if tenant else {})}
        items = self.get(f"/v1/{collection}", **params).json()["items"]
        return items[0] if items else None

    def revision(self) -> int:
        return self.client.revision()


def _headers(given: dict[str, str]) -> dict[str, str]:
    """``if_match="12"`` -> ``{"If-Match": "12"}``."""
    return {name.replace("_", "-").title(): value for name, value in given.items()}


def unique(prefix: str) -> str:
    """A name no other test (or xdist worker) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorityProcess]:
    """One authority per test worker; tests keep apart by using their own tenants."""
    server = authority_in(tmp_path_factory.mktemp("authority"))
    with server:
        yield server


@pytest.fixture
def opflex_authority(tmp_path: Path) -> Iterator[AuthorityProcess]:
    """An authority of the test's own with the example scenario applied (through the CLI) and a
    keepalive of 0.5 s, so that the OpFlex tests see dead peers quickly."""
    server = authority_in(tmp_path / "authority", extra=["--keepalive", "0.5"])
    try:
        server.start()
        apply_scenario(server)
        yield server
    finally:
        server.kill()


def apply_scenario(server: AuthorityProcess, path: Path = SCENARIOS / "full_model.yaml") -> None:
    """``policyfabric apply -f path`` against ``server``, as an operator would."""
    env = {"POLICYFABRIC_URL": server.url, "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [sys.executable, "-m", "policyfabric", "apply", "-f", str(path)],
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def fresh_authority(
    tmp_path: Path, store_kind: str, request: pytest.FixtureRequest
) -> Iterator[AuthorityProcess]:
    """An authority of the test's own (for restarts and kills), on SQLite, or on a fresh prefix of
    ``etcd_cluster`` when ``store_kind`` says etcd."""
    extra = []
    if store_kind == "etcd":
        cluster: EtcdCluster = request.getfixturevalue("etcd_cluster")
        extra = ["--store", cluster.url + etcd_prefix()]
    server = authority_in(tmp_path / "authority", extra=extra)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture(scope="session", params=STORES)
def inprocess_app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The REST API in this process, on a store of its own (each of ``STORES``: every API test runs
    on SQLite and on etcd): what the API tests need, without a server process (the request path is
    the same FastAPI app the authority serves)."""
    store = open_store(request.param, request, tmp_path_factory.mktemp("api") / "policyfabric.db")
    with TestClient(create_app(Authority(store)), raise_server_exceptions=False) as client:
        yield client
    store.close()


@pytest.fixture
def api(inprocess_app: TestClient) -> Api:
    """Tests keep apart by using their own tenants (``tenant``, ``unique``)."""
    return Api(str(inprocess_app.base_url), inprocess_app)


# The tokens of ``tokens_app``: name -> (token, role, tenant). Tenants acme and beta.
TOKENS = {
    "ops": ("admin-0123456789abcdef", "admin", None),
    "acme": ("member-acme-0123456789", "member", "acme"),
    "beta": ("member-beta-0123456789", "member", "beta"),
    "audit": ("reader-all-0123456789a", "reader", None),
    "acme-ro": ("reader-acme-0123456789", "reader", "acme"),
}


@pytest.fixture(scope="session")
def tokens_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The REST API in this process with ``--tokens`` (``TOKENS``), on a database of its own."""
    tokens = parse_tokens(
        {
            "tokens": [
                {"token": token, "role": role, "name": name, **({"tenant": tenant} if tenant else {})}
                for name, (token, role, tenant) in TOKENS.items()
            ]
        },
        "tokens",
    )
    store = SqliteStore(tmp_path_factory.mktemp("api-tokens") / "policyfabric.db")
    with TestClient(create_app(Authority(store), tokens=tokens), raise_server_exceptions=False) as client:
        yield client
    store.close()


AsToken = Callable[[str], Api]


@pytest.fixture
def as_(tokens_app: TestClient) -> AsToken:
    """``as_("acme")``: an Api on ``tokens_app`` with that token of ``TOKENS`` ("" or "none": no
    token; any other string is sent as an unknown token)."""

    def api_as(name: str) -> Api:
        token = TOKENS[name][0] if name in TOKENS else "" if name in ("", "none") else name
        return Api(str(tokens_app.base_url), tokens_app, token=token)

    return api_as


@pytest.fixture
def tenant(api: Api) -> dict[str, str]:
    """A tenant with vrf1 and bridge domains bd-a (10.1.0.0/24, fd00:1::/64 slaac) and bd-b (10.2.0.0/24)."""
    t = unique("t")
    api.ok("tenants", {"name": t})
    api.ok("l3-contexts", {"name": "vrf1", "tenant": t})
    api.ok("bridge-domains", {"name": "bd-a", "tenant": t, "l3_context": "vrf1"})
    api.ok("bridge-domains", {"name": "bd-b", "tenant": t, "l3_context": "vrf1"})
    api.ok(
        "subnets",
        {"name": "sa", "tenant": t, "bridge_domain": "bd-a", "cidr": "10.1.0.0/24", "gateway_ip": "10.1.0.1"},
    )
    api.ok(
        "subnets",
        {"name": "sa6", "tenant": t, "bridge_domain": "bd-a", "cidr": "fd00:1::/64", "ipv6_ra_mode": "slaac"},
    )
    api.ok("subnets", {"name": "sb", "tenant": t, "bridge_domain": "bd-b", "cidr": "10.2.0.0/24"})
    api.ok("endpoint-groups", {"name": "ga", "tenant": t, "bridge_domain": "bd-a"})
    api.ok("endpoint-groups", {"name": "gb", "tenant": t, "bridge_domain": "bd-b"})
    return {"name": t}


def error(r: httpx.Response) -> dict[str, Any]:
    """The error object of a refused request; asserts the documented shape."""
    body = r.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "field"} <= set(body["error"]), body
    return dict(body["error"])
