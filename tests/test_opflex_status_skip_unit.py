"""A tenant's model is not caught up with endpoints' status reports (no tree holds a status): the
flush rebuilds no tree for them, and the next rebuild for a real change reads that change alone,
not every status reported since. Why: a host's start reports 10,000 statuses, and the first
change after it read, parsed and compared all 10,000 endpoints on its way (~0.5 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.tenant_model import read_changes
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from tests.test_opflex_roles import authority_with_a_router


def test_a_rebuild_after_status_reports_reads_only_the_real_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []  # records each rebuild read, by call
    real = read_changes

    def counted(*args: Any) -> Any:
        news = real(*args)
        read.append(sum(len(r) for r in news.records.values()) if news is not None else -1)
        return news

    monkeypatch.setattr("policyfabric.authority.opflex.repository.read_changes", counted)

    async def go() -> tuple[list[int], str]:
        authority = authority_with_a_router(tmp_path)
        server = OpflexServer(authority)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "acme"}, push=False)
        authority.listeners.append(server._on_commit)  # what start() does
        for status in ("BUILD", "ACTIVE", "BUILD", "ACTIVE", "BUILD", "ACTIVE"):
            assert authority.set_endpoint_state("acme", "web1", status=status)
        await asyncio.sleep(0)  # the listener's call_soon_threadsafe (none for statuses)
        assert not server.policy.take_dirty()  # statuses rebuild nothing
        authority.create(K["contract"], o.Contract(name="c", tenant="acme"))
        await asyncio.sleep(0)
        dirty = server.policy.take_dirty()
        assert dirty == {"acme"}
        await server.policy.rebuild(dirty, push=False)
        tree = server.policy.trees["acme"]
        await server.stop()
        return read, str(any("/GbpContract/c/" in uri for uri in tree.mos))

    read, has_contract = asyncio.run(go())
    assert has_contract == "True"
    assert read == [1]  # the contract alone, not the endpoint of the 6 status writes as well
