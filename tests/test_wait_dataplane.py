"""``apply --wait`` against a real two-host lab: it returns once both agents have rendered the
write (and real packets then follow the new policy), and it times out naming the agent that is
stopped. Also ``GET /v1/agents``' rendered revision and the endpoint status events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from policyfabric.client import Client
from policyfabric.lab.lab import Lab
from tests.lab_harness import SCENARIOS, AgentLog, measured, paused, running_lab, serving, until

pytestmark = [pytest.mark.dataplane, pytest.mark.integration]
SCENARIO = SCENARIOS / "two_hosts.yaml"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(SCENARIO, tmp_path_factory.mktemp("wait") / "state") as lab:
        yield lab


def apply_wait(lab: Lab, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POLICYFABRIC_URL": lab.state.url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "policyfabric", "apply", "-f", str(path), "--wait", *extra],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def with_port(tmp_path: Path, port: int) -> Path:
    changed = tmp_path / f"port{port}.yaml"
    changed.write_text(SCENARIO.read_text().replace("port: 80}", f"port: {port}}}"))
    return changed


def test_apply_wait_returns_once_every_agent_rendered_it(lab: Lab, tmp_path: Path) -> None:
    with serving(lab, ("web1", "tcp", 8080)):
        assert measured(lab, "app1", "web1", "tcp/8080") == "deny"
        started = time.monotonic()
        done = apply_wait(lab, with_port(tmp_path, 8080))
        took = time.monotonic() - started
        assert done.returncode == 0, done.stdout + done.stderr
        # at once, no retry: the flows are there when apply returns
        assert measured(lab, "app1", "web1", "tcp/8080") == "allow"
    assert "rendered: revision" in done.stdout and "on h1, h2" in done.stdout, done.stdout
    revision = int(done.stdout.split("rendered: revision ")[1].split()[0])
    with Client(lab.state.url) as client:
        agents = {a["name"]: a for a in client.agents()}
    assert all(agents[h]["rendered_revision"] >= revision for h in ("h1", "h2"))
    print(f"apply --wait on 2 hosts: {took:.2f}s with the CLI's start; {done.stdout.splitlines()[-1]}")


def test_apply_wait_returns_for_a_write_no_agent_needs(lab: Lab, tmp_path: Path) -> None:
    """Agents get only what their endpoints need: a group no endpoint is in reaches neither host,
    so neither renders it, and the wait still ends (the authority counts them as done)."""
    idle = tmp_path / "idle.yaml"
    idle.write_text(
        SCENARIO.read_text().replace(
            "      - {name: app, bridge_domain: bd1,",
            "      - {name: idle, bridge_domain: bd1, intra_group: deny}\n"
            "      - {name: app, bridge_domain: bd1,",
        )
    )
    assert "name: idle" in idle.read_text()
    done = apply_wait(lab, idle, "--wait-timeout", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "on h1, h2" in done.stdout, done.stdout


def test_apply_wait_names_the_agent_that_did_not_render(lab: Lab, tmp_path: Path) -> None:
    with paused(lab, "h1"):  # its agent frozen: it renders nothing
        done = apply_wait(lab, with_port(tmp_path, 8081), "--wait-timeout", "3")
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert "not rendered within" in message and "h1 (" in message, message
    assert "h2 (" not in message  # the other agent rendered it
    with Client(lab.state.url) as client:
        written = client.revision()

        def h1_rendered() -> bool:  # once it runs again it catches up, and says so
            found = {a["name"]: a for a in client.agents()}["h1"]
            return bool(found["connected"]) and (found["rendered_revision"] or 0) >= written

        until(h1_rendered, timeout=30)


def test_agent_metrics_and_json_logs(lab: Lab, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from policyfabric.lab.authority import free_port

    port = free_port()
    lab.stop_agent("h2")
    log = AgentLog(lab, "h2")  # from the restart on: every line is one JSON object
    lab.start_agent("h2", ["--metrics-listen", f"127.0.0.1:{port}", "--log-format", "json"])

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    with Client(lab.state.url) as client:
        revision = client.revision()

        def h2() -> dict[str, Any]:
            return {a["name"]: a for a in client.agents()}["h2"]

        until(lambda: h2()["connected"] and (h2()["rendered_revision"] or 0) >= revision, timeout=30)
        before = scrape()
        flows = sum(v for (name, _), v in before.items() if name == "policyfabric_agent_flows")
        assert flows > 0 and flows == h2()["counters"]["flows"]
        assert before[("policyfabric_agent_opflex_connected", ())] == 1
        assert before[("policyfabric_agent_rendered_revision", ())] >= revision
        done = apply_wait(lab, with_port(tmp_path, 8082))
        assert done.returncode == 0, done.stderr
        after = scrape()
    count = ("policyfabric_agent_reconcile_seconds_count", ())
    assert after[count] > before[count]
    applied = ("policyfabric_agent_apply_seconds_count", (("renderer", "openvswitch"),))
    assert after[applied] > before.get(applied, 0)
    lines = [line for line in log.since().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    assert any("renderer openvswitch" in p["message"] for p in parsed), lines[-5:]
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
