"""OpenStack Keystone tokens for the REST API: ``--keystone FILE``, instead of ``--tokens``.

A request carries ``X-Auth-Token: TOKEN`` (what OpenStack clients send) or ``Authorization:
Bearer TOKEN``. keystonemiddleware's ``auth_token`` validates it against Keystone, with the
authority's own service credentials, exactly as it does in front of Nova or Neutron; the token's
project and roles then become the same :class:`~policyfabric.authority.auth.Principal` a
``--tokens`` entry gives, so scoping, write checks and audit lines are those of ``auth.py``:

- the project is the tenant: by its *name* (policyfabric tenants are names; ``tenant_from =
  id`` takes the project id instead), and only projects of the domains in ``project_domains``
  (``Default``) count, since two domains may each hold a project of the same name;
- Keystone roles map to ``admin``/``member``/``reader`` (``admin_roles``, ``member_roles``,
  ``reader_roles``), the highest one the token holds wins; none of them: 403. ``admin`` spans
  every tenant, as the role ``admin`` does in Neutron. A system-scoped token is an admin with
  an admin role, else a reader of every tenant; a domain-scoped or unscoped one: 403;
- no token, an invalid, expired or revoked one: 401; Keystone unreachable (or refusing the
  service credentials) while the token is not cached: 503.

The file is an oslo.config file, as an OpenStack operator writes for any service:

.. code-block:: ini

    [keystone_authtoken]        # keystonemiddleware's own options, unchanged
    www_authenticate_uri = http://keystone:5000
    auth_url = http://keystone:5000
    auth_type = password
    username = policyfabric
    password = ...
    user_domain_name = Default
    project_name = service
    project_domain_name = Default
    token_cache_time = 300      # seconds a validated token is trusted without asking again

    [policyfabric]              # the mapping (these are the defaults)
    tenant_from = name
    project_domains = Default
    admin_roles = admin
    member_roles = member
    reader_roles = reader

Validated tokens are cached (``token_cache_time``, 300 s by default): a token revoked in
Keystone keeps working here until its entry expires. Without ``memcached_servers`` the cache
is one in this process (:class:`TokenCache`, bounded); with it, keystonemiddleware's memcached
pool. Only this module imports keystonemiddleware (an optional dependency:
``policyfabric[keystone]``), and only when ``--keystone`` is given.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import Any, Literal

from starlette.concurrency import run_in_threadpool

from policyfabric.authority.auth import Principal, Role
from policyfabric.model.errors import Forbidden, PolicyError, Unauthorized
from policyfabric.model.types import check_label

log = logging.getLogger(__name__)

AUTHTOKEN = "keystone_authtoken"  # keystonemiddleware's section
MAPPING = "policyfabric"  # ours
ANY_DOMAIN = "*"
MAX_TOKEN = 8192  # Fernet tokens are ~200 characters; a longer header is not sent to Keystone
_ENV_CACHE = "policyfabric.token_cache"  # the environ key keystonemiddleware's `cache` option names


class KeystoneError(Exception):
    """The --keystone file is unreadable or wrong, or keystonemiddleware is not installed."""


class Unavailable(PolicyError):
    """Keystone could not be asked (unreachable, or it refused the authority's credentials)."""

    status = 503
    code = "unavailable"


class KeystoneUnauthorized(Unauthorized):
    """401 whose challenge names Keystone, as keystonemiddleware's own 401 does."""

    def __init__(self, message: str, uri: str | None) -> None:
        super().__init__(message)
        challenge = f'Keystone uri="{uri}"' if uri else 'Keystone realm="policyfabric"'
        self.headers = {"WWW-Authenticate": challenge}  # type: ignore[misc]


@dataclass(frozen=True)
class Identity:
    """What a valid Keystone token says about who holds it."""

    user_id: str
    user_name: str
    user_domain: str | None
    roles: frozenset[str]
    project_id: str | None = None  # None: not project-scoped
    project_name: str | None = None
    project_domain_id: str | None = None
    project_domain_name: str | None = None
    system: bool = False  # system-scoped

    def __str__(self) -> str:
        user = f"{self.user_name}@{self.user_domain}" if self.user_domain else self.user_name
        if self.system:
            where = "system scope"
        elif self.project_id is not None:
            where = f"project {self.project_name}@{self.project_domain_name} ({self.project_id})"
        else:
            where = "no project"
        return f"keystone user {user} ({self.user_id}), {where}"


@dataclass(frozen=True)
class Mapping:
    """How a Keystone identity becomes a policyfabric principal (the ``[policyfabric]`` section)."""

    tenant_from: Literal["name", "id"] = "name"
    project_domains: frozenset[str] = frozenset({"Default"})  # names or ids; "*": any
    admin_roles: frozenset[str] = frozenset({"admin"})
    member_roles: frozenset[str] = frozenset({"member"})
    reader_roles: frozenset[str] = frozenset({"reader"})

    def role(self, roles: Iterable[str]) -> Role | None:
        """The highest policyfabric role that the Keystone roles map to (None: none)."""
        have = set(roles)
        ranked: tuple[tuple[Role, frozenset[str]], ...] = (
            ("admin", self.admin_roles),
            ("member", self.member_roles),
            ("reader", self.reader_roles),
        )
        return next((role for role, names in ranked if have & names), None)

    def principal(self, who: Identity) -> Principal:
        """The principal of a validated identity; 403 (Forbidden) when it maps to none."""
        role = self.role(who.roles)
        if role is None:
            mapped = ", ".join(sorted(self.admin_roles | self.member_roles | self.reader_roles))
            raise Forbidden(f"{who} holds none of the Keystone roles this authority maps ({mapped})")
        if who.system:
            return Principal(str(who), "admin" if role == "admin" else "reader", None)
        if who.project_id is None:
            raise Forbidden(f"{who}: a Keystone token scoped to a project (or to the system) is needed")
        if ANY_DOMAIN not in self.project_domains and not (
            {who.project_domain_name, who.project_domain_id} & self.project_domains
        ):
            raise Forbidden(
                f"{who}: projects of domain {who.project_domain_name!r} are not tenants of this authority "
                "([policyfabric] project_domains)"
            )
        if role == "admin":
            return Principal(str(who), "admin", None)
        tenant = who.project_name if self.tenant_from == "name" else who.project_id
        try:
            check_label(tenant)
        except ValueError:
            raise Forbidden(
                f"{who}: the project's {self.tenant_from} {tenant!r} is not a valid tenant name "
                "(1-63 lowercase letters, digits and '-'); see [policyfabric] tenant_from"
            ) from None
        assert tenant is not None
        return Principal(str(who), role, tenant)


class TokenCache:
    """keystonemiddleware's token cache in this process, shared by every thread: the memcached
    subset it calls (``get``, ``set`` with a lifetime), at most ``size`` tokens, oldest first out.
    (keystonemiddleware's own in-process cache keeps one dict per pooled client, so concurrent
    requests miss each other's entries, and it scans every entry on each lookup.)"""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def get(self, key: str) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            if found[0] <= monotonic():
                del self._items[key]
                return None
            return found[1]

    def set(self, key: str, value: Any, time: float = 0, **_: Any) -> bool:
        if time <= 0:  # token_cache_time -1 (or 0): no caching
            return True
        with self._lock:
            self._items[key] = (monotonic() + time, value)
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._items)


def _settings(path: Path) -> tuple[Any, Mapping]:
    """The oslo.config object of ``path`` (keystonemiddleware reads its section from it) and our
    mapping; a KeystoneError says what is wrong."""
    try:
        from keystonemiddleware import auth_token
        from oslo_config import cfg
    except ImportError:
        raise KeystoneError(
            "--keystone needs keystonemiddleware: pip install 'policyfabric[keystone]'"
        ) from None
    if not path.is_file():
        raise KeystoneError(f"cannot read the Keystone configuration {path}: no such file")
    conf = cfg.ConfigOpts()
    for group, opts in auth_token.list_opts():
        conf.register_opts(opts, group=group)
    conf.register_opts(
        [
            cfg.StrOpt("tenant_from", default="name", choices=("name", "id")),
            cfg.ListOpt("project_domains", default=["Default"]),
            cfg.ListOpt("admin_roles", default=["admin"]),
            cfg.ListOpt("member_roles", default=["member"]),
            cfg.ListOpt("reader_roles", default=["reader"]),
        ],
        group=MAPPING,
    )
    try:
        conf([], project="policyfabric", default_config_files=[str(path)], default_config_dirs=[])
        section = conf[MAPPING]
        mapping = Mapping(
            tenant_from=section.tenant_from,
            project_domains=frozenset(section.project_domains),
            admin_roles=frozenset(section.admin_roles),
            member_roles=frozenset(section.member_roles),
            reader_roles=frozenset(section.reader_roles),
        )
        auth_type = conf[AUTHTOKEN].auth_type
    except (cfg.Error, ValueError) as exc:
        raise KeystoneError(f"{path}: {exc}") from None
    if not auth_type:
        raise KeystoneError(
            f"{path}: [{AUTHTOKEN}] needs the authority's service credentials: auth_type = password, "
            "auth_url, username, password, project_name, user_domain_name, project_domain_name"
        )
    if not (mapping.admin_roles | mapping.member_roles | mapping.reader_roles):
        raise KeystoneError(f"{path}: [{MAPPING}] maps no Keystone role")
    return conf, mapping


class KeystoneAuth:
    """Validates Keystone tokens with keystonemiddleware and maps them to principals.

    keystonemiddleware's ``AuthProtocol`` is WSGI middleware; it is called here as one, on a
    WSGI environ holding only the token, in a worker thread (it blocks on Keystone when the
    token is not cached), with an inner application that takes the validated identity
    (``keystone.token_auth``, the middleware's documented environ key)."""

    def __init__(self, path: Path) -> None:
        conf, self.mapping = _settings(path)
        from keystonemiddleware.auth_token import AuthProtocol

        section = conf[AUTHTOKEN]
        self.path = path
        self.auth_url: str = getattr(section, "auth_url", None) or section.www_authenticate_uri or "?"
        self.www_authenticate_uri: str | None = section.www_authenticate_uri
        self.cache_time: int = section.token_cache_time
        self.cache: TokenCache | None = None if section.memcached_servers else TokenCache()
        overrides = {
            "oslo_config_config": conf,
            "delay_auth_decision": "false",  # this module decides: 401 or 503, never a pass-through
            "include_service_catalog": "false",  # not needed: smaller answers and cache entries
            "cache": _ENV_CACHE,
            "log_name": "policyfabric.keystone",
        }
        try:
            self._middleware: Callable[..., Iterable[bytes]] = AuthProtocol(_inner, overrides)
        except Exception as exc:  # keystonemiddleware's ConfigurationError, keystoneauth's loaders
            raise KeystoneError(f"{path}: {exc}") from None
        import webob

        self._blank = webob.Request.blank

    def __str__(self) -> str:
        cache = f"{self.cache_time} s" if self.cache_time > 0 else "off"
        where = "in process" if self.cache is not None else "memcached"
        return f"Keystone tokens via {self.auth_url} ({self.path}; token cache {cache}, {where})"

    def identify(self, token: str) -> Identity:
        """Validate ``token`` (blocking); 401 if Keystone does not vouch for it, 503 if it cannot
        be asked."""
        if not token:
            raise KeystoneUnauthorized(
                "this authority needs a Keystone token: send X-Auth-Token: TOKEN (`openstack token issue`) "
                "or Authorization: Bearer TOKEN",
                self.www_authenticate_uri,
            )
        if len(token) > MAX_TOKEN:
            raise KeystoneUnauthorized("the token is not one Keystone issued", self.www_authenticate_uri)
        environ = self._blank("/", headers={"X-Auth-Token": token}).environ
        if self.cache is not None:
            environ[_ENV_CACHE] = self.cache
        got: list[str] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            got.append(status)

        body = self._middleware(environ, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
        status = int(got[0].split()[0]) if got else 500
        auth = environ.get("keystone.token_auth")
        user = getattr(auth, "user", None)
        if status >= 500:
            raise Unavailable(
                "cannot validate the token: Keystone is unreachable or refuses this authority's service "
                "credentials (see the authority's log); retry later"
            )
        if status >= 300 or user is None or environ.get("HTTP_X_IDENTITY_STATUS") != "Confirmed":
            raise KeystoneUnauthorized(
                "the token is not valid: Keystone does not know it, or it has expired or been revoked",
                self.www_authenticate_uri,
            )
        return Identity(
            user_id=user.user_id,
            user_name=user.username,
            user_domain=user.user_domain_name,
            roles=frozenset(user.role_names or ()),
            project_id=user.project_id if user.project_scoped else None,
            project_name=user.project_name,
            project_domain_id=user.project_domain_id,
            project_domain_name=user.project_domain_name,
            system=bool(user.system_scoped),
        )

    def principal_of(self, token: str) -> Principal:
        return self.mapping.principal(self.identify(token))

    async def principal(self, token: str) -> Principal:
        """The principal of a presented token, validated in a worker thread."""
        return await run_in_threadpool(self.principal_of, token)


def _inner(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The application behind the middleware: reached only with a valid token."""
    start_response("204 No Content", [])
    return []
