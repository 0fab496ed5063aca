"""`policyfabric lab`: verify end to end, errors before anything is created, nothing left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab_harness import SCENARIOS, own_processes

pytestmark = pytest.mark.dataplane


def lab(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "policyfabric", "lab", *args],
        env=env,
        capture_output=True,
        text=True,
        check=check,
    )


def namespaces() -> set[str]:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def lab_namespaces(done: subprocess.CompletedProcess[str]) -> set[str]:
    """The namespaces still there of the lab that ``done`` ran (other tests run labs in parallel)."""
    found = re.search(r"lab (pf[0-9a-f]{6}): ", done.stdout + done.stderr)  # progress: stderr with --json
    assert found, done.stdout + done.stderr
    return {n for n in namespaces() if n.startswith(found.group(1) + "-")}


def test_verify_json_matches_intent_and_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    done = lab("verify", str(SCENARIOS / "two_hosts.yaml"), "--json", "--state", str(state))
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert report["failed"] == 0 and report["passed"] == 10 == len(report["results"])
    first = report["results"][0]
    assert first == {
        "from": "app1",
        "to": "web1",
        "probe": "tcp/80",
        "expected": "allow",
        "measured": "allow",
        "ok": True,
    }
    assert lab_namespaces(done) == set()
    assert not state.exists()
    assert own_processes(str(state)) == []


def test_a_wrong_expectation_fails_with_the_matrix(tmp_path: Path) -> None:
    text = (SCENARIOS / "two_hosts.yaml").read_text()
    wrong = text.replace(
        "{from: app1, to: web1, probe: tcp/22, result: deny}",
        "{from: app1, to: web1, probe: tcp/22, result: allow}",
    )
    assert wrong != text
    (tmp_path / "wrong.yaml").write_text(wrong)
    done = lab("verify", str(tmp_path / "wrong.yaml"), "--state", str(tmp_path / "lab"))
    assert done.returncode == 1
    assert "MISMATCH" in done.stdout and "9 passed, 1 failed" in done.stdout
    assert (tmp_path / "lab" / "h1" / "agent.log").exists()  # logs kept for a failed run
    assert not (tmp_path / "lab" / "state.json").exists()


def test_bad_lab_section_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    text = (
        (SCENARIOS / "two_hosts.yaml")
        .read_text()
        .replace("host: h2, ip: 10.1.0.11", "host: h9, ip: 10.1.0.11")
    )
    (tmp_path / "bad.yaml").write_text(text + "  - {from: app1, to: web1, probe: tcp/http, result: allow}\n")
    done = lab("verify", str(tmp_path / "bad.yaml"), "--state", str(tmp_path / "lab"))
    assert done.returncode == 2
    assert "host 'h9' is not in hosts:" in done.stderr and "probe 'tcp/http'" in done.stderr
    assert (
        "its namespaces" not in done.stdout + done.stderr and not (tmp_path / "lab").exists()
    )  # no lab was made


def test_up_probe_down(tmp_path: Path) -> None:
    state = tmp_path / "lab"
    up = lab("up", str(SCENARIOS / "two_hosts.yaml"), "--state", str(state))
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "is up" in up.stdout
        again = lab("up", str(SCENARIOS / "two_hosts.yaml"), "--state", str(state))
        assert again.returncode == 2 and "already up" in again.stderr
        probe = lab("probe", "--json", "--state", str(state))
        assert probe.returncode == 0 and json.loads(probe.stdout)["failed"] == 0
        # cut h2 off (links down, agent frozen): traffic to and from it stops; heal brings it back
        cut = lab("fail", "h2", "--cut", "--state", str(state))
        assert cut.returncode == 0 and "links down" in cut.stdout, cut.stdout + cut.stderr
        assert json.loads(lab("probe", "--json", "--state", str(state)).stdout)["failed"] > 0
        healed = lab("heal", "h2", "--state", str(state))
        assert healed.returncode == 0, healed.stdout + healed.stderr
        probe = lab("probe", "--json", "--state", str(state))
        assert probe.returncode == 0 and json.loads(probe.stdout)["failed"] == 0
    finally:
        down = lab("down", "--state", str(state))
    assert down.returncode == 0 and "removed" in down.stdout
    assert own_processes(str(state)) == [] and lab_namespaces(up) == set()
    gone = lab("down", "--state", str(state))
    assert gone.returncode == 2 and "no lab is up" in gone.stderr
