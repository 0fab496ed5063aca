"""Helpers for tests that build a real lab: namespaces, private Open vSwitch per host, agents."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policyfabric.client import Client
from policyfabric.lab.lab import Lab
from policyfabric.lab.plan import Expect
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc

SCENARIOS = Path(__file__).parent / "scenarios"


def ns_run(netns: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *cmd], capture_output=True, text=True, timeout=timeout
    )


def measured(lab: Lab, src: str, dst: str, probe: str) -> str:
    return lab.probe_one(Expect(src, dst, probe, "allow")).measured


def serve(lab: Lab, endpoint: str, proto: str, port: int) -> subprocess.Popen[str]:
    """A probe server in the endpoint's namespace (stop it with .kill())."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.state.endpoints[endpoint].netns, sys.executable, "-m",
         "policyfabric.lab.probe", "serve", proto, str(port)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@contextlib.contextmanager
def serving(lab: Lab, *listeners: tuple[str, str, int]) -> Iterator[None]:
    """Probe servers (endpoint, proto, port) for the duration: a deny must never be a closed port."""
    procs = []
    try:
        for ep, proto, port in listeners:
            procs.append(serve(lab, ep, proto, port))
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def running_lab(scenario: Path, directory: Path) -> Iterator[Lab]:
    """A lab up on ``scenario`` for the duration; afterwards nothing of it may be left."""
    lab = Lab.create(scenario, directory)
    try:
        lab.up(sc.load(scenario))
        yield lab
    finally:
        assert lab.down(keep_logs=True) == []
        assert own_processes(lab.state.directory) == [], "the lab left processes behind"


@contextlib.contextmanager
def paused(lab: Lab, host: str) -> Iterator[None]:
    """The host's agent frozen (SIGSTOP) for the duration: what is changed by hand meanwhile stays
    so (a running agent repairs drift at once)."""
    pid = lab.state.pids[f"agent:{host}"]
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def lab_fixture(scenario: Path) -> Any:
    """A module-scoped ``lab`` fixture: the lab of ``scenario``, up for the module's tests."""

    @pytest.fixture(scope="module")
    def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
        with running_lab(scenario, tmp_path_factory.mktemp(scenario.stem) / "state") as lab:
            yield lab

    return lab


def until(condition: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> float:
    """Poll until ``condition()`` is truthy; return the seconds it took (fail on timeout)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


class AgentLog:
    """A host's agent log, read from where it stood when this was made: ``synced()`` says whether
    the agent (a restarted one, say) has put its flows on the bridge since."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.path = lab.dir / host / "agent.log"
        self.mark = self.path.stat().st_size if self.path.exists() else 0

    def since(self) -> str:
        return self.path.read_bytes()[self.mark :].decode(errors="replace")

    def synced(self) -> bool:
        return "renderer openvswitch:" in self.since() and "full sync" in self.since()


def endpoint(lab: Lab, name: str, tenant: str = "acme") -> dict[str, Any]:
    with Client(lab.state.url) as client:
        return client.list(k.ENDPOINT, tenant=tenant, name=name)[0]


def flows_with_age(lab: Lab, host: str) -> dict[str, float]:
    """Every flow on the host's br-int (match and actions) with its age in seconds."""
    rundir = lab.state.hosts[host].rundir
    text = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", f"unix:{rundir}/br-int.mgmt"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out = {}
    for line in text.splitlines():
        if "duration=" not in line:
            continue
        fields = [f.strip() for f in line.split(",")]
        age = float(next(f for f in fields if f.startswith("duration="))[9:-1])
        key = ",".join(
            f for f in fields if not f.startswith(("duration=", "n_packets=", "n_bytes=", "idle_age="))
        )
        out[key] = age
    return out


def own_processes(marker: str) -> list[str]:
    """Command lines of running processes that mention ``marker`` (a lab's state directory)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def settled(read: Callable[[], int], quiet: float = 2.5) -> int:
    """A counter's value once it has stopped moving (OVS refreshes flow statistics lazily)."""
    last, stable_since = read(), time.monotonic()
    while time.monotonic() - stable_since < quiet:
        time.sleep(0.25)
        now = read()
        if now != last:
            last, stable_since = now, time.monotonic()
    return last
