"""policyfabric's OpFlex client against the reference policy repository (``mock_server``).

The reverse direction of test_reference_agent.py: ``mock_server`` serves the
reference's sample policy (``--sample``), and our client resolves from it the
way our agent does (``agent/subscriptions.py``: the universe, then each
policy space, following references). The sample is also the reference's own
dialect, so the model checker must find nothing in it: a check of the checker
against real reference output, and of modelgbp.json against the build.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.lab.authority import free_port
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls
from policyfabric.opflex.mo import MO
from policyfabric.opflex.modelcheck import check
from policyfabric.opflex.uri import UNIVERSE, space

from .harness import BIN, Daemon, ref_env, wait_for


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference's sample policy (mock_server --sample), as a file of wire-form MOs."""
    run = tmp_path_factory.mktemp("mock")
    out = run / "sample.json"
    d = Daemon(
        "mock_server --sample",
        [str(BIN / "mock_server"), "--sample", str(out)],
        run / "sample.log",
        env=ref_env(),
        sigkill_only=True,
    ).start()
    assert d.proc is not None
    d.proc.wait(30)
    assert out.exists(), d.text()
    return out


@pytest.fixture(scope="module")
def mock_server(sample: Path) -> Iterator[tuple[str, int]]:
    """mock_server on a free port, serving the sample. It binds 0.0.0.0 (no option to narrow it)
    and ignores SIGTERM: it is killed by its PID."""
    port = free_port()
    d = Daemon(
        "mock_server",
        [
            str(BIN / "mock_server"),
            "--policy",
            str(sample),
            "--server_port",
            str(port),
            "--peer",
            f"127.0.0.1:{port}",
            "--level",
            "info",
        ],
        sample.parent / "mock_server.log",
        env=ref_env(),
        sigkill_only=True,
    ).start()
    try:
        wait_for("mock_server to listen", lambda: "Watching policy" in d.text() or _listening(port), 10)
        yield ("127.0.0.1", port)
    finally:
        d.stop()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def sample_mos(path: Path) -> list[MO]:
    return [MO.from_wire(item) for item in json.loads(path.read_text())]


def test_the_reference_sample_passes_the_model_check(sample: Path) -> None:
    """The reference's own objects break none of modelcheck's rules (enum names, RSrc naming...)."""
    mos = sample_mos(sample)
    assert len(mos) > 100
    # Two hand-written quirks of the sample (agent-ovs cmd/test/Policies.cpp): its SPAN relations
    # are added with the target's *name* as the naming value (``addSpanSrcGrpToFltGrpRSrc(
    # fltGrp1->getName())``), where the generated code and every Gbp relation use the target URI.
    quirks = ("SpanSrcGrpToFltGrpRSrc", "GbpEpGroupToSpanSessionRSrc")
    violations = check(mos)
    assert [v for v in violations if not any(f"uri form: {q} " in v for q in quirks)] == []
    assert len(violations) == 2


async def _resolve_all(peer: tuple[str, int], spaces: list[str]) -> PolicyClient:
    client = PolicyClient("interop-client", [peer], domain="openstack", backoff=(0.1, 1.0))
    task = asyncio.create_task(client.run())
    try:
        await asyncio.wait_for(client.ready.wait(), 10)
        client.resolve(Cls.POLICY_UNIVERSE, UNIVERSE)
        for name in spaces:
            client.resolve(Cls.POLICY_SPACE, space(name))
        assert await client.settled(timeout=10)
    finally:
        await client.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return client


def test_our_client_resolves_the_sample_policy(sample: Path, mock_server: tuple[str, int]) -> None:
    mos = sample_mos(sample)
    spaces = sorted(str(mo.properties["name"]) for mo in mos if mo.subject == "PolicySpace")
    client = asyncio.run(_resolve_all(mock_server, spaces))
    got = client.policy
    served = {mo.uri: mo for mo in mos}
    # every EPG, contract and classifier of every space arrived, with its properties as served
    for subject in ("GbpEpGroup", "GbpContract", "GbpeL24Classifier", "GbpBridgeDomain", "GbpSubnet"):
        want = {u for u, mo in served.items() if mo.subject == subject}
        assert want and want <= set(got), f"{subject}: missing {sorted(want - set(got))[:3]}"
        for uri in want:
            assert got[uri].properties == served[uri].properties, uri
    print(f"resolved {len(got)} of the sample's {len(served)} objects")
