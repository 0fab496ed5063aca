"""The `policyfabric` command line against a real authority."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from policyfabric.lab.authority import AuthorityProcess, free_port
from tests.conftest import Api

pytestmark = pytest.mark.integration  # starts authority processes and the CLI

# every kind of object; the demo (examples/demo.yaml) is the lab-ready subset
EXAMPLE = Path(__file__).parent / "scenarios" / "full_model.yaml"
DEMO = Path(__file__).parent.parent / "examples" / "demo.yaml"


def run(*args: str, url: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if url:
        env["POLICYFABRIC_URL"] = url
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
    assert "16 created" in done.stdout and "0 created, 0 updated, 16 unchanged" in done.stdout
    assert "9 passed, 0 failed" in done.stdout
    web1 = next(line for line in done.stdout.splitlines() if line.startswith("│ web1") and "acme" in line)
    assert "h1" in web1 and "ACTIVE" in web1  # bound and rendered by h1's agent
    assert "demo done" in done.stdout
