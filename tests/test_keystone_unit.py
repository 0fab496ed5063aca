"""``--keystone`` without a Keystone: the mapping from a Keystone identity to a principal, the
token cache, the configuration file's checks, the REST wiring (a stand-in validator), and what
an unreachable Keystone answers. The real thing: tests/test_keystone.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from policyfabric.authority.api import create_app
from policyfabric.authority.auth import Principal
from policyfabric.authority.keystone import Identity, KeystoneError, Mapping, TokenCache
from policyfabric.authority.server import Settings, StartupError, serve
from policyfabric.authority.service import Authority
from policyfabric.model.errors import Forbidden
from policyfabric.store.sqlite import SqliteStore
from tests.conftest import error


def who(roles: set[str], project: str | None = "acme", domain: str = "Default", **kw: object) -> Identity:
    return Identity(
        user_id="u1",
        user_name="alice",
        user_domain="Default",
        roles=frozenset(roles),
        project_id="0123456789abcdef0123456789abcdef" if project else None,
        project_name=project,
        project_domain_id="default" if domain == "Default" else domain.lower(),
        project_domain_name=domain,
        **kw,  # type: ignore[arg-type]
    )


# ---- the mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("roles", "role", "tenant"),
    [
        ({"reader"}, "reader", "acme"),
        ({"member", "reader"}, "member", "acme"),  # Keystone's implied roles: the highest wins
        ({"admin", "manager", "member", "reader"}, "admin", None),  # admin spans every tenant
        ({"member", "load-balancer_observer"}, "member", "acme"),
    ],
)
def test_the_highest_mapped_role_wins_and_the_project_name_is_the_tenant(
    roles: set[str], role: str, tenant: str | None
) -> None:
    p = Mapping().principal(who(roles))
    assert (p.role, p.tenant) == (role, tenant)
    assert "keystone user alice@Default (u1)" in p.name and "project acme@Default" in p.name


def test_no_mapped_role_is_403() -> None:
    with pytest.raises(Forbidden, match="none of the Keystone roles"):
        Mapping().principal(who({"observer"}))


def test_role_names_are_configurable() -> None:
    mapping = Mapping(admin_roles=frozenset({"cloud-admin"}), member_roles=frozenset({"netops"}))
    with pytest.raises(Forbidden):
        mapping.principal(who({"admin"}))
    assert mapping.principal(who({"netops"})).role == "member"
    assert mapping.principal(who({"cloud-admin"})).role == "admin"


def test_projects_of_other_domains_are_refused_unless_listed() -> None:
    with pytest.raises(Forbidden, match="project_domains"):
        Mapping().principal(who({"member"}, domain="Other"))
    assert Mapping(project_domains=frozenset({"Other"})).principal(who({"member"}, domain="Other")).tenant
    assert Mapping(project_domains=frozenset({"*"})).principal(who({"member"}, domain="Other")).tenant
    assert Mapping(project_domains=frozenset({"other"})).principal(who({"member"}, domain="Other")).tenant


def test_tenant_from_id_takes_the_project_id() -> None:
    p = Mapping(tenant_from="id").principal(who({"member"}))
    assert p.tenant == "0123456789abcdef0123456789abcdef"


def test_a_project_name_that_is_no_tenant_name_is_403_naming_tenant_from() -> None:
    with pytest.raises(Forbidden, match="tenant_from"):
        Mapping().principal(who({"member"}, project="Acme_Corp"))


def test_system_scope_is_admin_or_reader_of_all_and_other_scopes_are_refused() -> None:
    assert Mapping().principal(who({"admin", "reader"}, project=None, system=True)) == Principal(
        str(who({"admin"}, project=None, system=True)), "admin", None
    )
    p = Mapping().principal(who({"member", "reader"}, project=None, system=True))
    assert (p.role, p.tenant) == ("reader", None)
    with pytest.raises(Forbidden, match="scoped to a project"):
        Mapping().principal(who({"member"}, project=None))  # domain-scoped or unscoped


# ---- the token cache ---------------------------------------------------------------------------


def test_the_cache_expires_entries_and_keeps_at_most_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("policyfabric.authority.keystone.monotonic", lambda: now[0])
    cache = TokenCache(size=2)
    cache.set("a", b"1", time=5)
    assert cache.get("a") == b"1"
    now[0] += 5
    assert cache.get("a") is None  # expired
    for key in "bcd":
        cache.set(key, key.encode(), time=60)
    assert len(cache) == 2 and cache.get("b") is None and cache.get("d") == b"d"
    cache.set("e", b"e", time=-1)  # token_cache_time = -1: no caching
    assert cache.get("e") is None


# ---- the configuration file --------------------------------------------------------------------

needs_keystonemiddleware = pytest.mark.skipif(
    importlib.util.find_spec("keystonemiddleware") is None, reason="needs policyfabric[keystone]"
)

GOOD = """[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:9/v3
auth_url = http://127.0.0.1:9/v3
auth_type = password
username = policyfabric
password = secret
user_domain_name = Default
project_name = service
project_domain_name = Default
token_cache_time = 60
http_connect_timeout = 2
"""


@needs_keystonemiddleware
def test_a_good_file_gives_the_mapping_and_the_cache_time(tmp_path: Path) -> None:
    from policyfabric.authority.keystone import KeystoneAuth

    path = tmp_path / "ks.conf"
    path.write_text(GOOD + "[policyfabric]\nmember_roles = member, netops\nproject_domains = *\n")
    auth = KeystoneAuth(path)
    assert auth.mapping.member_roles == {"member", "netops"} and auth.cache_time == 60
    assert auth.mapping.project_domains == {"*"} and auth.mapping.tenant_from == "name"
    assert "token cache 60 s, in process" in str(auth)


@needs_keystonemiddleware
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("auth_type = password\n", ""), "service credentials"),
        (GOOD + "[policyfabric]\ntenant_from = uuid\n", "tenant_from"),
        ("[keystone_authtoken\n", "ks.conf"),
    ],
)
def test_a_wrong_file_is_refused_saying_why(tmp_path: Path, text: str, message: str) -> None:
    from policyfabric.authority.keystone import KeystoneAuth

    path = tmp_path / "ks.conf"
    path.write_text(text)
    with pytest.raises(KeystoneError, match=message):
        KeystoneAuth(path)


@needs_keystonemiddleware
def test_a_missing_file_and_tokens_with_keystone_stop_the_start(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="no such file"):
        serve(Settings(db=tmp_path / "db", keystone=tmp_path / "absent.conf"))
    with pytest.raises(StartupError, match="exclude each other"):
        serve(Settings(db=tmp_path / "db", keystone=tmp_path / "k", tokens=tmp_path / "t"))


# ---- REST, against an unreachable Keystone -----------------------------------------------------


@pytest.fixture
def unreachable(tmp_path: Path) -> TestClient:
    pytest.importorskip("keystonemiddleware")
    from policyfabric.authority.keystone import KeystoneAuth

    path = tmp_path / "ks.conf"
    path.write_text(GOOD)
    store = SqliteStore(tmp_path / "db")
    return TestClient(
        create_app(Authority(store), keystone=KeystoneAuth(path)), raise_server_exceptions=False
    )


def test_no_token_is_401_with_a_keystone_challenge(unreachable: TestClient) -> None:
    r = unreachable.get("/v1/tenants")
    assert r.status_code == 401 and "X-Auth-Token" in error(r)["message"]
    assert r.headers["www-authenticate"] == 'Keystone uri="http://127.0.0.1:9/v3"'
    r = unreachable.get("/v1/tenants", headers={"X-Auth-Token": "x" * 9000})
    assert r.status_code == 401


@pytest.mark.parametrize("header", ["X-Auth-Token", "Authorization"])
def test_keystone_unreachable_is_503(unreachable: TestClient, header: str) -> None:
    value = "gAAAAABsome-token" if header == "X-Auth-Token" else "Bearer gAAAAABsome-token"
    r = unreachable.get("/v1/tenants", headers={header: value})
    assert r.status_code == 503 and error(r)["code"] == "unavailable"


def test_the_openapi_document_names_both_ways_to_send_a_keystone_token(unreachable: TestClient) -> None:
    schemes = unreachable.get("/openapi.json").json()["components"]["securitySchemes"].values()
    assert any(s["type"] == "apiKey" and (s["in"], s["name"]) == ("header", "X-Auth-Token") for s in schemes)
    assert any(s.get("scheme") == "bearer" for s in schemes)
