#!/usr/bin/env python3
"""Endpoint declarations through the registry: what checking them against the intent costs.

Workload: one tenant of N endpoints (one bridge domain, two EPGs, each endpoint pinned to one of H
hosts), in an authority on SQLite, with its OpFlex server in process (no sockets: the figure is
the server's own work per declaration). Each host's agent declares each of its endpoints as a
policyfabric agent does: one ``endpoint_declare`` with the endpoint's EprL2Ep and its EprL3Ep,
built by ``agent.endpoints.declaration`` from the tenant's tree.

Figures (medians of R rounds, every endpoint declared once per round, as after an authority restart):
- declarations/s through the server's dispatcher (parse, check, store, bind);
- the content check alone (``declaration_check.check``), per second;
- the rebuild of the tenant after one endpoint's address changes (with the checks: the index
  rebuilt too, and that endpoint's declarations re-checked and withdrawn);
- building the tenant's intent index alone.
Run the same script on a tree without the checks for the baseline (``PYTHONPATH=OLD/src``): the
figures that need the checks are then absent. The last line is one JSON object.

    .venv/bin/python bench/declarations.py [--endpoints 1000] [--hosts 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from common import report
from policyfabric.agent.endpoints import declaration
from policyfabric.authority.opflex import OpflexServer
from policyfabric.authority.opflex.peers import Peer
from policyfabric.authority.service import Authority
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.mo import MO
from policyfabric.opflex.rpc import Session
from policyfabric.store.sqlite import SqliteStore


class _Writer:
    """A session's writer with no socket behind it: the bench measures the server, not TCP."""

    transport: Any = None

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 8009)


def authority(path: Path, endpoints: int, hosts: int) -> Authority:
    a = Authority(SqliteStore(path / "db", sync="normal"))
    a.create_many(
        [
            (K["tenant"], o.Tenant(name="bench")),
            (K["l3_context"], o.L3Context(name="vrf", tenant="bench")),
            (K["bridge_domain"], o.BridgeDomain(name="bd", tenant="bench", l3_context="vrf")),
            (K["subnet"], o.Subnet(name="s", tenant="bench", bridge_domain="bd", cidr="10.0.0.0/16")),
            (K["endpoint_group"], o.EndpointGroup(name="web", tenant="bench", bridge_domain="bd")),
            (K["endpoint_group"], o.EndpointGroup(name="app", tenant="bench", bridge_domain="bd")),
            *(
                (
                    K["endpoint"],
                    o.Endpoint(
                        name=f"ep{i}",
                        tenant="bench",
                        epg="web" if i % 2 else "app",
                        ip=[f"10.0.{(i + 10) // 250}.{(i + 10) % 250 + 1}"],
                        host=f"h{i % hosts}",
                    ),
                )
                for i in range(endpoints)
            ),
        ]
    )
    return a


async def run(endpoints: int, hosts: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        auth = authority(Path(tmp), endpoints, hosts)
        server = OpflexServer(auth)
        server.loop = asyncio.get_running_loop()
        await server.policy.rebuild({None, "bench"}, push=False)
        sessions = {}
        for h in range(hosts):
            session = Session(asyncio.StreamReader(), _Writer(), server._handle, label=f"h{h}")  # type: ignore[arg-type]
            server.peers[session] = Peer("127.0.0.1:8009")
            server._identity(
                session, [{"name": f"h{h}", "domain": "policyfabric", "my_role": ["policy_element"]}]
            )
            sessions[f"h{h}"] = session
        tree = server.policy.trees["bench"].mos
        work: list[tuple[Any, list[dict[str, Any]]]] = []
        for i in range(endpoints):
            decl = declaration(tree, "bench", f"ep{i}", f"tap{i}", f"192.0.2.{i % hosts + 1}")
            assert decl is not None
            work.append(
                (sessions[f"h{i % hosts}"], [{"endpoint": [m.to_wire() for m in decl.all], "prr": 600}])
            )
        per_round = []
        for _ in range(rounds):
            start = time.perf_counter()
            for session, params in work:
                await server._handle(session, "endpoint_declare", params)
            per_round.append(time.perf_counter() - start)
            await server.flush()
        stored = len(server.registry.declarations)
        out: dict[str, Any] = {
            "endpoints": endpoints,
            "hosts": hosts,
            "stored": stored,
            "declare_per_s": round(endpoints / statistics.median(per_round)),
        }
        rebuilds = []
        for n in range(rounds):  # one endpoint's address changes, n times: rebuild (and re-check)
            [record], _ = auth.list(K["endpoint"], "bench", "ep1")
            spec = o.Endpoint(
                name="ep1", tenant="bench", epg="web", ip=[f"10.0.9.{n + 1}"], host=record["host"]
            )
            auth.replace(K["endpoint"], record["id"], spec)
            start = time.perf_counter()
            await server.policy.rebuild({"bench"}, push=True)
            rebuilds.append(time.perf_counter() - start)
        out["rebuild_after_change_ms"] = round(statistics.median(rebuilds) * 1000, 1)
        out["withdrawn"] = stored - len(server.registry.declarations)
        try:
            from policyfabric.authority.opflex.declaration_check import check
            from policyfabric.authority.opflex.intent_index import tenant_endpoints
        except ImportError:  # the baseline tree: no checks
            return out
        mos = [MO.from_wire(m) for _, params in work[2:] for m in params[0]["endpoint"]]  # ep1's changed
        tops = [
            (m, [c for c in mos if c.parent_uri == m.uri]) for m in mos if m.subject in ("EprL2Ep", "EprL3Ep")
        ]
        index = server.policy.intent
        checks = []
        for _ in range(rounds):
            start = time.perf_counter()
            for mo, children in tops:
                check(mo, children, index)
            checks.append(time.perf_counter() - start)
        out["check_per_s"] = round(len(tops) / statistics.median(checks))
        builds = []
        for _ in range(rounds):
            start = time.perf_counter()
            tenant_endpoints("bench", server.policy.trees["bench"])
            builds.append(time.perf_counter() - start)
        out["index_build_ms"] = round(statistics.median(builds) * 1000, 2)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run(args.endpoints, args.hosts, args.rounds))
    rows = [(k, v) for k, v in result.items()]
    report(f"endpoint declarations, a {args.endpoints}-endpoint tenant", ["figure", "value"], rows, result)


if __name__ == "__main__":
    main()
