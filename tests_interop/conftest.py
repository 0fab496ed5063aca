"""Fixtures for the interoperability tests: the reference OpFlex stack against policyfabric.

Not collected by ``make test`` (pytest's testpaths is ``tests``); ``make
interop-test`` builds the reference (scripts/build-opflex-ref.sh) and runs
this directory. Without the build the whole directory is skipped, saying so.

One stack per module (starting the reference agent and letting it resolve is
the slow part): an authority with examples/demo.yaml applied through REST, a
``FrameTap`` recording the OpFlex session, and ``opflex_agent`` named ``h2``
(the demo's host of ``web2`` and ``app1``) with one endpoint file for each.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from policyfabric.client import Client
from policyfabric.client import apply as applying
from policyfabric.lab.authority import AuthorityProcess, authority_in
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc

from .harness import (
    BIN,
    REPO,
    Daemon,
    FrameTap,
    agent_config,
    endpoint_file,
    fault_file,
    ref_env,
    save_frames,
    wait_for,
)

DEMO = REPO / "examples" / "demo.yaml"
TENANT = "acme"
AGENT = "h2"  # the demo puts web2 and app1 on h2
DOMAIN = "policyfabric"
# demo endpoint -> (group, interface, security groups)
ENDPOINTS = {"app1": ("app", "tap-app1", ["ssh-from-app"]), "web2": ("web", "tap-web2", [])}
# a host-agent fault file (written with that endpoint's): the agent reports it in a state_report
FAULTY, FAULT_UUID, FAULT_CODE = "app1", "6f1c1c8e-0b1e-4a3c-9d1e-000000000001", 7


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip everything, saying why, when the reference stack is not built."""
    missing = [b for b in ("opflex_agent", "gbp_inspect", "mock_server") if not (BIN / b).is_file()]
    if missing:
        skip = pytest.mark.skip(
            reason=f"interop: the reference OpFlex stack is not built ({', '.join(missing)} missing "
            f"under {BIN}); run `make interop-test`"
        )
        for item in items:
            item.add_marker(skip)


@dataclass
class Stack:
    """The running pieces, for the tests to poke at."""

    run: Path
    authority: AuthorityProcess
    client: Client
    tap: FrameTap
    agent: Daemon
    inspector: Path
    endpoints: dict[str, dict[str, object]]  # demo endpoint name -> its REST record at start


def apply_demo(client: Client) -> None:
    """examples/demo.yaml through REST, as ``policyfabric apply`` does."""
    scenario = sc.load(DEMO)
    assert sc.check(scenario) == []
    applying.execute(applying.plan(scenario, client), client, lambda step: None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run = tmp_path_factory.mktemp("interop")
    server = authority_in(run / "authority")
    tap = FrameTap(server.opflex).start()
    # the agent dials the tap; the authority advertises the tap too, or the agent would also
    # connect to the advertised address directly, past the recorder
    server.extra = ["--keepalive", "2", "--opflex-advertise", f"127.0.0.1:{tap.port}"]
    agent: Daemon | None = None
    client = Client(server.url, token="")
    try:
        server.start()
        apply_demo(client)
        records = {}
        eps = run / "endpoints"
        eps.mkdir()
        (run / "services").mkdir()
        (run / "faults").mkdir()
        for name, (epg, iface, sgs) in ENDPOINTS.items():
            [rec] = client.list(k.ENDPOINT, TENANT, name)
            records[name] = rec
            ips = [ip for ip in rec["ip"] if ip != "slaac"]
            body = endpoint_file(f"{TENANT}/{name}", TENANT, epg, iface, rec["mac"], ips, sgs)
            (eps / f"{name}.ep").write_text(json.dumps(body, indent=2))
            if name == FAULTY:
                # a platform fault: an endpoint's fault (with ep_uuid) crashed opflex_agent d83a8c53
                # here (general protection fault in libstdc++ once its group resolved)
                fault = fault_file(FAULT_UUID, FAULT_CODE, "interop: a fault the reference agent reports")
                (run / "faults" / f"{name}.fs").write_text(json.dumps(fault, indent=2))
        inspector = run / "inspector.sock"
        config = agent_config(run, AGENT, DOMAIN, ("127.0.0.1", tap.port), eps, inspector)
        (run / "agent.conf").write_text(json.dumps(config, indent=2))
        agent = Daemon(
            "opflex_agent",
            [str(BIN / "opflex_agent"), "-c", str(run / "agent.conf"), "--log", str(run / "agent.log")],
            run / "agent.out",
            env=ref_env(),
        ).start()
        wait_for("the agent's inspector socket", inspector.exists, 15)
        # settled: the agent has been told its EPGs (or asked for them and got an answer)
        wait_for(
            "the agent to resolve its endpoint groups",
            lambda: sum(1 for f in tap.snapshot() if f.direction == "authority->agent") > 5,
            15,
        )
        yield Stack(run, server, client, tap, agent, inspector, records)
    finally:
        if agent is not None:
            agent.stop()
        tap.close()
        # the session as recorded (JSON lines), beside the logs; INTEROP_SAVE_FRAMES=DIR keeps a copy
        save_frames(tap.snapshot(), run / "frames.jsonl")
        if os.environ.get("INTEROP_SAVE_FRAMES"):
            keep = Path(os.environ["INTEROP_SAVE_FRAMES"])
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(run / "frames.jsonl", keep / "reference-agent-session.jsonl")
            for name in ("agent.log", "agent.conf"):
                if (run / name).exists():
                    shutil.copy(run / name, keep / name)
        server.stop()
        client.close()
