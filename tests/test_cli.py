"""The `policyfabric` command line against a real authority."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme
import yaml

from policyfabric.lab.authority import AuthorityProcess, authority_in, free_port
from tests.conftest import Api

pytestmark = pytest.mark.integration  # starts authority processes and the CLI

# every kind of object; the demo (examples/demo.yaml) is the lab-ready subset
EXAMPLE = Path(__file__).parent / "scenarios" / "full_model.yaml"
DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"


def run(
    *args: str, url: str | None = None, check: bool = True, token: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {key: v for key, v in os.environ.items() if key != "POLICYFABRIC_TOKEN"}
    env.update({"COLUMNS": "200", **extra})
    if url:
        env["POLICYFABRIC_URL"] = url
    if token:
        env["POLICYFABRIC_TOKEN"] = token
    done = subprocess.run(
        [sys.executable, "-m", "policyfabric", *args], env=env, capture_output=True, text=True, check=False
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_apply_twice_is_a_no_op(fresh_authority: AuthorityProcess) -> None:
    api = Api(fresh_authority.url)
    first = run("apply", "-f", str(EXAMPLE), url=fresh_authority.url)
    assert "18 created, 0 updated, 0 unchanged" in first.stdout
    revision = api.revision()
    snapshot = {c: api.get(f"/v1/{c}").json()["items"] for c in ("endpoints", "subnets", "floating-ips")}
    second = run("apply", "-f", str(EXAMPLE), url=fresh_authority.url)
    assert "0 created, 0 updated, 18 unchanged" in second.stdout
    assert api.revision() == revision
    assert {
        c: api.get(f"/v1/{c}").json()["items"] for c in snapshot
    } == snapshot  # MACs kept, nothing rewritten
    api.http.close()


def test_apply_updates_what_changed_only(fresh_authority: AuthorityProcess, tmp_path: Path) -> None:
    run("apply", "-f", str(EXAMPLE), url=fresh_authority.url)
    changed = tmp_path / "changed.yaml"
    changed.write_text(EXAMPLE.read_text().replace("port: 80}", "port: 8080}"))
    done = run("apply", "-f", str(changed), url=fresh_authority.url)
    assert "0 created, 1 updated, 17 unchanged" in done.stdout
    api = Api(fresh_authority.url)
    assert api.find("contracts", "acme", "http")["rules"][0]["classifier"]["port"] == 8080  # type: ignore[index]
    api.http.close()


def test_apply_handles_security_groups_that_name_each_other(
    fresh_authority: AuthorityProcess, tmp_path: Path
) -> None:
    f = tmp_path / "sg.yaml"
    f.write_text("""
tenants:
  - name: acme
    security_groups:
      - {name: a, rules: [{direction: ingress, protocol: tcp, port: 22, remote_group: b}]}
      - {name: b, rules: [{direction: ingress, protocol: tcp, port: 22, remote_group: a}]}
""")
    assert "3 created" in run("apply", "-f", str(f), url=fresh_authority.url).stdout
    api = Api(fresh_authority.url)
    assert api.find("security-groups", "acme", "a")["rules"][0]["remote_group"] == "b"  # type: ignore[index]
    assert "0 created, 0 updated, 3 unchanged" in run("apply", "-f", str(f), url=fresh_authority.url).stdout
    api.http.close()


BAD = """\
tenants:
  - name: acme
    l3_contexts:
      - name: vrf1
    bridge_domains:
      - {name: bd, l3_context: vrf9}
    subnets:
      - name: s1
        bridge_domain: bd
        cidr: 10.1.0.0/24
        gateway_ip: 10.9.0.1
    contracts:
      - name: http
        rules:
          - {name: r, classifier: {protocol: icmp, port: 80}}
endpoints:
  - {name: e1, tenant: acme, epg: nope, ip: 10.1.0.5}
"""


def test_check_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    done = run("check", "-f", str(f), check=False)
    assert done.returncode == 1
    lines = done.stderr
    assert f"{f}:6: tenants[0].bridge_domains[0].l3_context: no l3_context named 'vrf9'" in lines
    assert f"{f}:11: tenants[0].subnets[0].gateway_ip: 10.9.0.1 is not inside 10.1.0.0/24" in lines
    assert (
        f"{f}:15: tenants[0].contracts[0].rules[0].classifier.port: a port needs protocol tcp or udp" in lines
    )
    assert f"{f}:17: endpoints[0].epg: no endpoint group named 'nope'" in lines


def test_check_accepts_the_example() -> None:
    assert "OK (18 objects)" in run("check", "-f", str(EXAMPLE)).stdout


def test_check_and_the_authority_agree(fresh_authority: AuthorityProcess, tmp_path: Path) -> None:
    """A file the checker accepts, the authority accepts; a clash the authority
    refuses (duplicate address), the checker refuses too."""
    f = tmp_path / "dup.yaml"
    f.write_text(EXAMPLE.read_text().replace("ip: 10.2.0.20", "ip: 10.2.0.30"))
    done = run("check", "-f", str(f), check=False)
    assert (
        done.returncode == 1
        and "address 10.2.0.30 in l3_context 'vrf1' is already taken by endpoint 'app1'" in done.stderr
    )
    # apply refuses it before sending anything
    done = run("apply", "-f", str(f), url=fresh_authority.url, check=False)
    assert done.returncode == 1
    assert Api(fresh_authority.url).revision() == 0


def test_get_and_delete(fresh_authority: AuthorityProcess) -> None:
    url = fresh_authority.url
    run("apply", "-f", str(EXAMPLE), url=url)
    table = run("get", "endpoints", url=url).stdout
    assert "web1" in table and "10.1.0.10" in table
    one = json.loads(run("get", "bd", "bd-web", "--tenant", "acme", "--json", url=url).stdout)
    assert one["name"] == "bd-web" and one["l3_context"] == "vrf1"
    refused = run("delete", "epg", "web", "--tenant", "acme", url=url, check=False)
    assert refused.returncode == 1 and "in use by endpoint 'web1'" in refused.stderr
    assert (
        "deleted floating IP 'fip-web1'"
        in run("delete", "fip", "fip-web1", "--tenant", "acme", url=url).stdout
    )
    missing = run("delete", "fip", "fip-web1", "--tenant", "acme", url=url, check=False)
    assert missing.returncode == 1 and "no floating IP named 'fip-web1'" in missing.stderr
    unknown = run("get", "gizmos", url=url, check=False)
    assert unknown.returncode == 1 and "unknown kind 'gizmos'" in unknown.stderr


def test_unreachable_authority_is_a_clear_error() -> None:
    done = run("get", "tenants", "--authority", f"http://127.0.0.1:{free_port()}", check=False)
    assert done.returncode == 1 and "cannot reach the authority" in done.stderr


@pytest.mark.parametrize(
    "args", [["--help"], ["apply", "--help"], ["authority", "--help"], ["check", "--help"]]
)
def test_help_explains(args: list[str]) -> None:
    assert "Usage" in run(*args).stdout


def test_authority_startup_problems_are_clear_errors(tmp_path: Path) -> None:
    missing = run("authority", "--db", str(tmp_path / "no" / "such" / "x.db"), check=False)
    assert missing.returncode == 1 and "directory" in missing.stderr and "does not exist" in missing.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_text("this is not a database, just some text that is long enough" * 20)
    bad = run("authority", "--db", str(garbage), check=False)
    assert bad.returncode == 1 and "file is not a database" in bad.stderr and "Traceback" not in bad.stderr
    listen = run("authority", "--listen", "nonsense:xx", check=False)
    assert listen.returncode == 1 and "not HOST:PORT" in listen.stderr
    forget = run("authority", "--db", str(tmp_path / "f.db"), "--forget-agents-after", "0", check=False)
    assert forget.returncode == 1 and "--forget-agents-after must be positive" in forget.stderr


def test_authority_refuses_a_port_in_use(fresh_authority: AuthorityProcess, tmp_path: Path) -> None:
    clash = run(
        "authority",
        "--db",
        str(tmp_path / "x.db"),
        "--listen",
        f"127.0.0.1:{fresh_authority.port}",
        check=False,
    )
    assert clash.returncode != 0 and "address already in use" in clash.stderr


@pytest.mark.dataplane
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    done = run("demo", str(DEMO), "--state-dir", str(tmp_path / "demo"))
    assert "22 created" in done.stdout and "0 created, 0 updated, 22 unchanged" in done.stdout
    assert "13 passed, 0 failed" in done.stdout
    web1 = next(line for line in done.stdout.splitlines() if line.startswith("│ web1") and "acme" in line)
    assert "h1" in web1 and "ACTIVE" in web1  # bound and rendered by h1's agent
    assert "demo done" in done.stdout


# ---- exposure and tokens ------------------------------------------------------------------------

ADMIN, MEMBER = "admin-0123456789abcdef", "member-acme-0123456789"


def tokens_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "tokens.yaml"
    path.write_text(
        text
        or f"tokens:\n  - {{token: {ADMIN}, role: admin, name: ops}}\n"
        f"  - {{token: {MEMBER}, role: member, tenant: acme, name: ci}}\n"
    )
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def running(args: list[str], url: str, log: Path, **client: object) -> Iterator[subprocess.Popen[bytes]]:
    """``policyfabric authority ARGS``, until it answers GET /openapi.json at ``url``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policyfabric", "authority", *args], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/openapi.json", timeout=2, **client).raise_for_status()  # type: ignore[arg-type]
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)


def test_rest_beyond_loopback_needs_tokens_or_insecure(tmp_path: Path) -> None:
    port = free_port()
    base = ["--db", str(tmp_path / "x.db"), "--opflex-listen", "off", "--listen", f"0.0.0.0:{port}"]
    refused = run("authority", *base, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"REST would listen on 0.0.0.0:{port} without --tokens" in refused.stderr
    assert "--insecure" in refused.stderr
    log = tmp_path / "insecure.log"
    with running([*base, "--insecure"], f"http://127.0.0.1:{port}", log):
        pass
    assert f"INSECURE: REST on 0.0.0.0:{port} without --tokens" in log.read_text()
    log = tmp_path / "tokens.log"
    with running([*base, "--tokens", str(tokens_file(tmp_path))], f"http://127.0.0.1:{port}", log):
        assert httpx.get(f"http://127.0.0.1:{port}/v1/tenants").status_code == 401
    assert "tokens cross the network in clear" in log.read_text()


def test_opflex_beyond_loopback_needs_tls_or_insecure(tmp_path: Path) -> None:
    args = ["--db", str(tmp_path / "x.db"), "--listen", f"127.0.0.1:{free_port()}"]
    refused = run("authority", *args, "--opflex-listen", f"0.0.0.0:{free_port()}", check=False)
    assert refused.returncode == 1 and "OpFlex would listen on 0.0.0.0:" in refused.stderr
    assert "--tls-cert" in refused.stderr and "--insecure" in refused.stderr


def test_a_wrong_tokens_file_is_refused_naming_the_entry_and_never_the_token(tmp_path: Path) -> None:
    secret = "this-is-the-secret-0123456789"
    path = tokens_file(
        tmp_path, f"tokens:\n  - {{token: {secret}, role: admin}}\n  - {{token: {secret}x, role: member}}\n"
    )
    done = run("authority", "--db", str(tmp_path / "x.db"), "--tokens", str(path), check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{path}: tokens[1].tenant: a member token needs the tenant" in done.stderr.replace("\n", "")
    assert secret not in done.stderr + done.stdout


def test_the_cli_sends_its_token(tmp_path: Path) -> None:
    server = authority_in(tmp_path / "authority", extra=["--tokens", str(tokens_file(tmp_path))], token=ADMIN)
    with server:
        url = server.url
        assert (
            "1 created" in run("apply", "-f", str(tenant_file(tmp_path, "acme")), url=url, token=ADMIN).stdout
        )
        anonymous = run("get", "tenants", url=url, check=False)
        assert anonymous.returncode == 1 and "needs a token" in anonymous.stderr and "401" in anonymous.stderr
        assert "acme" in run("get", "tenants", "--token", MEMBER, url=url).stdout  # the option
        member = run("apply", "-f", str(tenant_file(tmp_path, "other")), url=url, token=MEMBER, check=False)
        assert member.returncode == 1 and "the authority refused a change" in member.stderr
        assert "only an admin token may change them" in member.stderr
        made = run("apply", "-f", str(contract_file(tmp_path)), url=url, token=MEMBER)  # the environment
        assert "1 created" in made.stdout
        assert (
            "deleted contract 'web'"
            in run("delete", "contract", "web", "--tenant", "acme", url=url, token=MEMBER).stdout
        )
        wrong = run("get", "tenants", "--token", "not-a-token-we-know-0000", url=url, check=False)
        assert wrong.returncode == 1 and "not one this authority knows" in wrong.stderr
        log = server.log.read_text()
    assert "INFO policyfabric.audit: member 'ci' (tenant acme): DELETE contract acme/web" in log
    assert ADMIN not in log and MEMBER not in log


def tenant_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"tenants:\n  - name: {name}\n")
    return path


def contract_file(tmp_path: Path) -> Path:
    path = tmp_path / "contract.yaml"
    path.write_text("tenants:\n  - name: acme\n    contracts:\n      - {name: web}\n")
    return path


def test_rest_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "rest.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    args = ["--db", str(tmp_path / "x.db"), "--opflex-listen", "off", "--listen", f"127.0.0.1:{port}"]
    args += ["--rest-tls-cert", str(tmp_path / "rest.pem"), "--rest-tls-key", str(tmp_path / "rest.pem")]
    url = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with running(args, url, tmp_path / "tls.log", verify=trusted):
        assert run("get", "tenants", url=url, check=False).returncode == 1  # no CA: refused
        assert "tenants" in run("get", "tenants", url=url, SSL_CERT_FILE=str(tmp_path / "ca.pem")).stdout
        assert httpx.get(f"{url}/v1/revision", verify=trusted).json() == {"revision": 0}
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/v1/revision")  # no plain HTTP on it
    bad = run("authority", *args[:-2], check=False)
    assert bad.returncode == 1 and "--rest-tls-cert and --rest-tls-key go together" in bad.stderr


# ---- safe apply: one transaction, --diff, --prune, delete -f ---------------------------------------


def test_apply_diff_shows_each_field_and_writes_nothing(
    fresh_authority: AuthorityProcess, tmp_path: Path
) -> None:
    url = fresh_authority.url
    f = tmp_path / "s.yaml"
    f.write_text(EXAMPLE.read_text())
    run("apply", "-f", str(f), url=url)
    api = Api(url)
    revision = api.revision()
    f.write_text(EXAMPLE.read_text().replace("port: 80}", "port: 8080}"))
    done = run("apply", "-f", str(f), "--diff", url=url)
    assert "~ contract acme/http" in done.stdout
    assert "rules[0].classifier.port: 80 -> 8080" in done.stdout
    assert "0 to create, 1 to update, 17 unchanged" in done.stdout and "nothing was written" in done.stdout
    assert api.revision() == revision
    assert api.find("contracts", "acme", "http")["rules"][0]["classifier"]["port"] == 80  # type: ignore[index]
    as_json = json.loads(run("apply", "-f", str(f), "--diff", "-o", "json", url=url).stdout)
    assert as_json["dry_run"] is True and as_json["revision"] == revision
    api.http.close()


def test_apply_is_one_transaction_and_names_the_failing_object_at_its_line(
    fresh_authority: AuthorityProcess, tmp_path: Path
) -> None:
    url = fresh_authority.url
    run("apply", "-f", str(EXAMPLE), url=url)
    api = Api(url)
    tenant = api.find("endpoints", "acme", "web1")
    assert tenant is not None
    # by hand: an endpoint holding the address the file is about to give to a new one
    api.ok("endpoints", {"name": "by-hand", "tenant": "acme", "epg": "web", "ip": "10.1.0.77"})
    revision = api.revision()
    text = EXAMPLE.read_text().replace("port: 80}", "port: 8080}")
    newcomer = "  - {name: newcomer, tenant: acme, epg: web, host: h1, ip: 10.1.0.77}\n"
    text = text.replace("endpoints:\n", "endpoints:\n" + newcomer, 1)
    f = tmp_path / "s.yaml"
    f.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "newcomer" in x)
    done = run("apply", "-f", str(f), url=url, check=False)
    assert done.returncode == 1
    assert f"{f}:{line}: endpoints[0]: endpoint acme/newcomer: ip[0]: address 10.1.0.77" in done.stderr
    assert "already taken by endpoint 'by-hand'" in done.stderr and "[409 conflict]" in done.stderr
    assert api.revision() == revision  # the contract's change before it was not committed either
    assert api.find("contracts", "acme", "http")["rules"][0]["classifier"]["port"] == 80  # type: ignore[index]
    api.http.close()


def test_prune_removes_only_what_this_file_created(fresh_authority: AuthorityProcess, tmp_path: Path) -> None:
    url = fresh_authority.url
    base = "tenants:\n  - name: acme\n    contracts:\n"
    mine, other = tmp_path / "mine.yaml", tmp_path / "other.yaml"
    mine.write_text(base + "      - {name: a}\n      - {name: b}\n")
    other.write_text(base + "      - {name: theirs}\n")
    run("apply", "-f", str(mine), url=url)
    run("apply", "-f", str(other), url=url)
    api = Api(url)
    api.ok("contracts", {"name": "by-hand", "tenant": "acme"})
    assert api.find("contracts", "acme", "a")["applied_by"] == f"file:{mine.resolve()}"  # type: ignore[index]
    mine.write_text(base + "      - {name: b}\n")  # a leaves the file
    diff = run("apply", "-f", str(mine), "--diff", "--prune", url=url).stdout
    assert "- contract acme/a  (no longer in the file: pruned)" in diff and "1 to delete" in diff
    assert api.find("contracts", "acme", "a") is not None
    done = run("apply", "-f", str(mine), "--prune", url=url)
    assert "0 created, 0 updated, 2 unchanged, 1 deleted (pruned)" in done.stdout
    names = {c["name"] for c in api.get("/v1/contracts").json()["items"]}
    assert names == {"b", "theirs", "by-hand"}  # the tenant stays too: the file still declares it
    # the tenant was created by mine.yaml; other.yaml's --prune never touches it nor b
    run("apply", "-f", str(other), "--prune", url=url)
    assert api.find("contracts", "acme", "b") is not None
    # stdin: the same file identity must be given
    piped = subprocess.run(
        [sys.executable, "-m", "policyfabric", "apply", "-f", "-", "--prune", "--authority", url],
        input=mine.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert piped.returncode == 1 and "--prune with -f - needs --owner" in piped.stderr
    piped = subprocess.run(
        [
            sys.executable,
            "-m",
            "policyfabric",
            "apply",
            "-f",
            "-",
            "--owner",
            f"file:{mine.resolve()}",
            "--prune",
            "--authority",
            url,
        ],
        input=base + "      - {name: c}\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert piped.returncode == 0 and "1 created, 0 updated, 1 unchanged, 1 deleted (pruned)" in piped.stdout
    assert api.find("contracts", "acme", "b") is None and api.find("contracts", "acme", "by-hand") is not None
    api.http.close()


def test_delete_file_removes_what_the_file_declares_in_one_transaction(
    fresh_authority: AuthorityProcess,
) -> None:
    url = fresh_authority.url
    run("apply", "-f", str(EXAMPLE), url=url)
    api = Api(url)
    revision = api.revision()
    done = run("delete", "-f", str(EXAMPLE), url=url)
    assert "18 deleted, 0 not found" in done.stdout and "deleted tenant acme" in done.stdout
    assert api.revision() == revision + 1
    assert api.get("/v1/tenants").json()["items"] == []
    assert "0 deleted, 18 not found" in run("delete", "-f", str(EXAMPLE), url=url).stdout
    both = run("delete", "tenants", "acme", "-f", str(EXAMPLE), url=url, check=False)
    assert both.returncode == 1 and "takes no KIND, NAME or --tenant" in both.stderr
    api.http.close()


# ---- conventions ----------------------------------------------------------------------------------


def test_output_formats_and_stdin(fresh_authority: AuthorityProcess) -> None:
    url = fresh_authority.url
    piped = subprocess.run(
        [sys.executable, "-m", "policyfabric", "apply", "-f", "-", "--authority", url],
        input=EXAMPLE.read_text(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert piped.returncode == 0 and "18 created" in piped.stdout, piped.stderr
    names = run("get", "endpoints", "-o", "name", url=url).stdout.split()
    assert "endpoints/acme/web1" in names
    as_yaml = yaml.safe_load(run("get", "bd", "bd-web", "--tenant", "acme", "-o", "yaml", url=url).stdout)
    assert as_yaml["l3_context"] == "vrf1" and as_yaml["name"] == "bd-web"
    assert json.loads(run("get", "bd", "bd-web", "--tenant", "acme", "--json", url=url).stdout) == as_yaml
    wide = run("get", "endpoints", "-o", "wide", url=url, COLUMNS="400").stdout
    assert "applied_by" in wide and "revision" in wide
    changes = json.loads(run("get", "changes", "--since", "0", "-o", "json", url=url).stdout)
    assert {c["name"] for c in changes} >= {"web1", "acme"}
    clash = run("get", "bd", "-o", "yaml", "--json", url=url, check=False)
    assert clash.returncode == 1 and "disagree" in clash.stderr


def test_options_that_do_not_apply_are_errors() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # never reached: refused before
    for args, message in (
        (["get", "tenants", "--tenant", "acme"], "--tenant does not apply to tenants"),
        (["get", "agents", "--tenant", "acme"], "--tenant does not apply to agents"),
        (["get", "endpoints", "--since", "3"], "--since applies to changes, not endpoints"),
        (["delete", "ext-net", "public", "--tenant", "acme"], "--tenant does not apply to external-networks"),
        (["get", "changes", "web1"], "changes have no name"),
    ):
        done = run(*args, url=url, check=False)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)


def test_help_version_and_completion() -> None:
    assert "Usage" in run("get", "-h").stdout
    assert run("--version").stdout.strip().startswith("policyfabric ")
    assert "--install-completion" in run("--help").stdout


def test_a_url_without_scheme_or_a_stranger_server_is_one_clear_line(tmp_path: Path) -> None:
    no_scheme = run("get", "tenants", "--authority", "127.0.0.1:8700", check=False)
    assert no_scheme.returncode == 1 and "'127.0.0.1:8700' is not a REST URL" in no_scheme.stderr
    port = free_port()
    (tmp_path / "index.html").write_text("<html><body>" + "hello " * 500 + "</body></html>")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        done = run("get", "tenants", "--authority", f"http://127.0.0.1:{port}", check=False)
    finally:
        server.terminate()
        server.wait(5)
    assert done.returncode == 1 and "is not a policyfabric authority" in done.stderr
    assert "<html" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2


def test_daemon_option_errors_are_one_line(tmp_path: Path) -> None:
    bad = run("authority", "--db", str(tmp_path / "x.db"), "--log-level", "verbose", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "--log-level 'verbose': use one of debug, info, warning, error" in bad.stderr
    both = run("agent", "--host", "h1", "--opflex", "127.0.0.1:1", "--authority", "127.0.0.1:1", check=False)
    assert both.returncode == 1 and "give only --opflex" in both.stderr
    assert "--opflex" in run("agent", "--help").stdout


def test_get_agents_shows_health_and_human_times(fresh_authority: AuthorityProcess, tmp_path: Path) -> None:
    url = fresh_authority.url
    run("apply", "-f", str(EXAMPLE), url=url)
    opflex = "{}:{}".format(*fresh_authority.opflex)
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "policyfabric",
            "agent",
            "--host",
            "h1",
            "--authority",
            opflex,
            "--dry-run",
            "--endpoint",
            "acme/web1",
            "--state-dir",
            str(tmp_path / "agent"),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            agents = json.loads(run("get", "agents", "-o", "json", url=url).stdout)
            if agents:
                break
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.2)
        table = run("get", "agents", url=url).stdout
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
    row = next(line for line in table.splitlines() if "h1" in line)
    assert "healthy" in row and "s ago" in row
    assert "deprecated" in (tmp_path / "agent.log").read_text()  # the old spelling still works, warned
