"""A real OpenStack Keystone on loopback, for the ``--keystone`` tests and benchmark.

``scripts/install-keystone.sh`` installs what it runs: Debian's MariaDB binaries, and Keystone
with PyMySQL and gunicorn in ``.cache/keystone-venv`` (not the project's venv: Keystone brings
its own oslo stack and eventlet). :class:`KeystoneServer` then runs, all in one directory of
its own and stopped by PID:

- a private MariaDB (``mariadb-install-db`` into the directory, ``mariadbd --no-defaults`` on a
  free loopback port and a socket there; Keystone on SQLite fails under concurrency);
- ``keystone-manage db_sync``, ``fernet_setup``, ``credential_setup``, ``bootstrap`` with a
  private ``keystone.conf``;
- ``keystone.wsgi.api:application`` under gunicorn (config from ``OS_KEYSTONE_CONFIG_DIR``;
  gunicorn reads its own options from ``gunicorn.conf.py``, since Keystone parses the command
  line itself).

:meth:`KeystoneServer.setup` creates domains, projects, users and role assignments through
keystoneauth in one Python process of the Keystone venv; tokens are then issued and revoked
over Keystone's REST API (:meth:`token`, :meth:`revoke`). Nothing here imports Keystone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from policyfabric.lab.authority import free_port

ROOT = Path(__file__).resolve().parents[3]
VENV = Path(os.environ.get("POLICYFABRIC_KEYSTONE_VENV", ROOT / ".cache" / "keystone-venv"))
ADMIN_PASSWORD = "admin-secret-0123"
SERVICE_PASSWORD = "policyfabric-secret-0123"
SBIN = ("/usr/sbin", "/usr/local/sbin")


class KeystoneUnavailable(RuntimeError):
    """Keystone or MariaDB is not installed here (scripts/install-keystone.sh installs them)."""


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(name, path=path)


def missing() -> str | None:
    """What is missing to run Keystone here, or None."""
    for tool in ("mariadbd", "mariadb-install-db", "mariadb"):
        if _which(tool) is None:
            return f"{tool} (mariadb-server): run scripts/install-keystone.sh"
    for tool in ("keystone-manage", "gunicorn", "python"):
        if not (VENV / "bin" / tool).exists():
            return f"{VENV}/bin/{tool}: run scripts/install-keystone.sh"
    return None


# Run by the Keystone venv's Python: creates what the JSON on stdin describes, prints the ids.
_SETUP = r"""
import json, sys
from keystoneauth1 import session
from keystoneauth1.identity import v3

spec = json.load(sys.stdin)
auth = v3.Password(auth_url=spec["auth_url"], username="admin", password=spec["admin_password"],
                   project_name="admin", user_domain_name="Default", project_domain_name="Default")
s = session.Session(auth=auth)
ids = {"domains": {}, "projects": {}, "users": {}, "roles": {}}

ep = {"endpoint_override": spec["auth_url"]}

def ensure(collection, key, body, query):
    r = s.post(f"/{collection}", json={key: body}, raise_exc=False, **ep)
    if r.status_code == 409:  # there already (setup run twice)
        return s.get(f"/{collection}", params=query, **ep).json()[collection][0]["id"]
    r.raise_for_status()
    return r.json()[key]["id"]

def put(path):
    s.put(path, **ep)

def role_id(name):
    if name not in ids["roles"]:
        ids["roles"][name] = ensure("roles", "role", {"name": name}, {"name": name})
    return ids["roles"][name]

ids["domains"]["Default"] = "default"
for name in spec.get("domains", []):
    ids["domains"][name] = ensure("domains", "domain", {"name": name}, {"name": name})
for role in spec.get("roles", []):
    role_id(role)
for p in spec.get("projects", []):
    where = p.get("domain", "Default")
    body = {"name": p["name"], "domain_id": ids["domains"][where]}
    ids["projects"][f"{p['name']}@{where}"] = ensure("projects", "project", body, body)
for u in spec.get("users", []):
    domain = ids["domains"][u.get("domain", "Default")]
    uid = ensure("users", "user", {"name": u["name"], "password": u["password"], "domain_id": domain},
                 {"name": u["name"], "domain_id": domain})
    ids["users"][u["name"]] = uid
    for grant in u.get("grants", []):
        role = role_id(grant["role"])
        if grant.get("system"):
            put(f"/system/users/{uid}/roles/{role}")
        else:
            project = ids["projects"][f"{grant['project']}@{grant.get('domain', 'Default')}"]
            put(f"/projects/{project}/users/{uid}/roles/{role}")
print(json.dumps(ids))
"""


# Run by the Keystone venv's Python: `keystone-manage --config-file CONF STEP...` for each step.
_MANAGE = r"""
import json, sys
from keystone.cmd import cli
conf, steps = sys.argv[1], json.loads(sys.argv[2])
for step in steps:
    cli.CONF.reset()
    cli.CONF.clear()
    cli.main(["keystone-manage", "--config-file", conf, *step])
"""


@dataclass
class KeystoneServer:
    """MariaDB and Keystone on loopback, everything in ``workdir``; a context manager."""

    workdir: Path
    token_expiration: int = 3600
    db_port: int = 0
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    @property
    def socket(self) -> Path:
        return self.workdir / "mysqld.sock"

    def __enter__(self) -> KeystoneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> KeystoneServer:
        reason = missing()
        if reason is not None:
            raise KeystoneUnavailable(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_port, self.port = free_port(), free_port()
        try:
            self._timed("mariadb", self._start_mariadb)
            self._timed("keystone-manage", self._manage)
            self._timed("keystone", self._start_keystone)
        except BaseException:
            self.stop()
            raise
        return self

    def _timed(self, what: str, step: Any) -> None:
        start = time.perf_counter()
        step()
        self.timings[what] = round(time.perf_counter() - start, 2)

    def _run(self, cmd: list[str], **kwargs: Any) -> str:
        done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return str(done.stdout)

    def _start_mariadb(self) -> None:
        data = self.workdir / "mariadb"
        user = ["--user=root"] if os.geteuid() == 0 else []
        # its temporary tables in a directory of its own, not the machine's /tmp (where another
        # server, or a cleaner, once removed one while it was being written: the install aborted)
        tmp = self.workdir / "mariadb-tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        if not (data / "mysql").is_dir():
            self._run(
                [
                    str(_which("mariadb-install-db")),
                    "--no-defaults",
                    f"--datadir={data}",
                    f"--tmpdir={tmp}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    *user,
                ]
            )
        log = (self.workdir / "mariadb.log").open("ab")
        self.procs["mariadb"] = subprocess.Popen(
            [
                str(_which("mariadbd")),
                "--no-defaults",
                f"--datadir={data}",
                f"--tmpdir={tmp}",
                f"--port={self.db_port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.socket}",
                f"--pid-file={self.workdir / 'mariadb.pid'}",
                "--skip-log-bin",
                "--innodb-flush-log-at-trx-commit=0",  # a test database: no fsync per commit
                "--innodb-buffer-pool-size=64M",
                *user,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        sql = (
            "CREATE DATABASE IF NOT EXISTS keystone; "
            "CREATE USER IF NOT EXISTS 'keystone'@'127.0.0.1' IDENTIFIED BY 'keystone'; "
            "GRANT ALL ON keystone.* TO 'keystone'@'127.0.0.1';"
        )
        client = [str(_which("mariadb")), "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", sql]
        deadline = time.monotonic() + 30
        while True:
            if subprocess.run(client, capture_output=True).returncode == 0:
                return
            if self.procs["mariadb"].poll() is not None or time.monotonic() > deadline:
                log_text = (self.workdir / "mariadb.log").read_text()[-3000:]
                raise RuntimeError(f"MariaDB did not start:\n{log_text}")
            time.sleep(0.1)

    def _conf(self) -> Path:
        conf = self.workdir / "keystone.conf"
        conf.write_text(
            f"""[DEFAULT]
log_file = {self.workdir / "keystone.log"}
[database]
connection = mysql+pymysql://keystone:keystone@127.0.0.1:{self.db_port}/keystone
[token]
provider = fernet
expiration = {self.token_expiration}
[fernet_tokens]
key_repository = {self.workdir / "fernet-keys"}
[fernet_receipts]
key_repository = {self.workdir / "fernet-keys"}
[credential]
key_repository = {self.workdir / "credential-keys"}
[cache]
enabled = true
backend = dogpile.cache.memory
[identity]
password_hash_rounds = 4
"""
        )
        return conf

    def _manage(self) -> None:
        owner = ["--keystone-user", "root", "--keystone-group", "root"] if os.geteuid() == 0 else []
        for sub in ("fernet-keys", "credential-keys"):
            (self.workdir / sub).mkdir(exist_ok=True)
        steps = [
            ["db_sync"],
            ["fernet_setup", *owner],
            ["credential_setup", *owner],
            [
                "bootstrap",
                "--bootstrap-password",
                ADMIN_PASSWORD,
                "--bootstrap-admin-url",
                self.url,
                "--bootstrap-public-url",
                self.url,
                "--bootstrap-internal-url",
                self.url,
                "--bootstrap-region-id",
                "RegionOne",
            ],
        ]
        # keystone-manage, once per step, in one process: its start (imports) takes seconds
        self._run(
            [str(VENV / "bin" / "python"), "-c", _MANAGE, str(self._conf()), json.dumps(steps)],
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    def _start_keystone(self) -> None:
        (self.workdir / "gunicorn.conf.py").write_text(
            f'wsgi_app = "keystone.wsgi.api:application"\nbind = "127.0.0.1:{self.port}"\n'
            'workers = 1\nworker_class = "gthread"\nthreads = 4\ntimeout = 60\n'
        )
        env = {
            **os.environ,
            "OS_KEYSTONE_CONFIG_DIR": str(self.workdir),
            "OS_KEYSTONE_CONFIG_FILES": "keystone.conf",
            "PYTHONWARNINGS": "ignore",
        }
        log = (self.workdir / "gunicorn.log").open("ab")
        self.procs["keystone"] = subprocess.Popen(
            [str(VENV / "bin" / "gunicorn")],  # no arguments: Keystone parses sys.argv itself
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.procs["keystone"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "Keystone did not start:\n" + (self.workdir / "gunicorn.log").read_text()[-3000:]
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM each process by PID (Keystone first), SIGKILL what outlives 10 s."""
        for name in ("keystone", "mariadb"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ---- what the tests need -------------------------------------------------------------------

    def setup(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Create ``spec``'s domains, roles, projects and users (``grants``: ``{project, role}``
        or ``{system: true, role}``) in one process of the Keystone venv; returns their ids."""
        start = time.perf_counter()
        out = self._run(
            [str(VENV / "bin" / "python"), "-c", _SETUP],
            input=json.dumps({"auth_url": self.url, "admin_password": ADMIN_PASSWORD, **spec}),
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        self.timings["setup"] = round(time.perf_counter() - start, 2)
        return dict(json.loads(out))

    def token(
        self,
        user: str,
        password: str,
        project: str | None = None,
        domain: str = "Default",
        system: bool = False,
        project_domain: str = "Default",
    ) -> str:
        """A token of ``user``: scoped to ``project`` (of ``project_domain``), to the system, to
        ``domain`` when neither is given and ``domain`` is not Default, else unscoped."""
        identity = {
            "methods": ["password"],
            "password": {"user": {"name": user, "domain": {"name": domain}, "password": password}},
        }
        auth: dict[str, Any] = {"identity": identity}
        if system:
            auth["scope"] = {"system": {"all": True}}
        elif project is not None:
            auth["scope"] = {"project": {"name": project, "domain": {"name": project_domain}}}
        r = httpx.post(f"{self.url}/auth/tokens", json={"auth": auth}, timeout=30)
        r.raise_for_status()
        return r.headers["X-Subject-Token"]

    def revoke(self, token: str) -> None:
        """Revoke ``token`` in Keystone (its holder may revoke its own token)."""
        r = httpx.delete(
            f"{self.url}/auth/tokens", headers={"X-Auth-Token": token, "X-Subject-Token": token}, timeout=30
        )
        r.raise_for_status()

    def authority_config(self, path: Path, cache_time: int = 300, mapping: str = "") -> Path:
        """A ``--keystone`` file for an authority, with the ``policyfabric`` service user of
        :data:`SERVICE_SPEC` (created by :meth:`setup`)."""
        path.write_text(
            f"""[keystone_authtoken]
www_authenticate_uri = {self.url}
auth_url = {self.url}
auth_type = password
username = policyfabric
password = {SERVICE_PASSWORD}
user_domain_name = Default
project_name = service
project_domain_name = Default
token_cache_time = {cache_time}
http_connect_timeout = 5

[policyfabric]
{mapping}
"""
        )
        path.chmod(0o600)
        return path


# The authority's own service user: Keystone's policy lets the `service` role validate tokens.
SERVICE_SPEC: dict[str, Any] = {
    "projects": [{"name": "service"}],
    "users": [
        {
            "name": "policyfabric",
            "password": SERVICE_PASSWORD,
            "grants": [{"project": "service", "role": "service"}],
        }
    ],
}
