"""A tenant of 100,000 endpoints resolves through a real OpFlex session.

Its PolicySpace lists every endpoint as a child: alone it encodes to some 8 MiB, twice the frame
limit, and the whole answer to some 40 MB. The authority (a real process, over TCP) sends the
PolicySpace in pieces (``merge_children``) and the rest in parts, paced by how fast the agent
reads; the agent's cache (our client library) must then hold every endpoint, and the PolicySpace
must list them all. A write to one endpoint afterwards reaches the agent as a small push.

The endpoints are written straight into the store (one transaction, as a restore would), not
through the service's validation: 100,000 creates through it take minutes, and what is tested
here is the OpFlex side. Figures (printed, ``-s``): the authority's start (its first build), the
resolve, the push, the authority's RSS.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from policyfabric.authority.service import Authority
from policyfabric.lab.authority import authority_in
from policyfabric.model import objects as o
from policyfabric.model.kinds import BY_NAME as K
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, uri_of
from policyfabric.opflex.uri import space
from policyfabric.store.base import Record
from policyfabric.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration  # a real authority process, an agent over real TCP

N = 100_000
T = "big"


def populate(db: Path, n: int) -> None:
    authority = Authority(SqliteStore(db, sync="normal"))
    authority.create_many(
        [
            (K["tenant"], o.Tenant(name=T)),
            (K["l3_context"], o.L3Context(name="vrf", tenant=T)),
            (K["bridge_domain"], o.BridgeDomain(name="bd", tenant=T, l3_context="vrf")),
            (K["subnet"], o.Subnet(name="s", tenant=T, bridge_domain="bd", cidr="10.0.0.0/8")),
            (K["endpoint_group"], o.EndpointGroup(name="web", tenant=T, bridge_domain="bd")),
            (K["endpoint_group"], o.EndpointGroup(name="app", tenant=T, bridge_domain="bd")),
        ]
    )
    with authority.store.write() as txn:
        revision = txn.next_revision()
        for i in range(n):
            spec = o.Endpoint(
                name=f"ep{i}",
                tenant=T,
                epg="web",
                ip=[f"10.{i // 62500 + 1}.{i // 250 % 250}.{i % 250 + 2}"],
                mac=f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            )
            data = {**spec.model_dump(mode="json"), "status": "DOWN"}
            txn.put(Record("endpoint", str(uuid.uuid4()), T, spec.name, revision, data), None, "create")
    authority.store.close()


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of process ``pid``, in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def test_a_tenant_of_100000_endpoints_resolves_and_takes_pushes(tmp_path: Path) -> None:
    process = authority_in(tmp_path / "authority", sync="normal")
    populate(process.db, N)
    started = time.monotonic()
    with process:
        up = time.monotonic() - started
        assert process.proc is not None
        pid = process.proc.pid

        async def go() -> dict[str, float]:
            client = PolicyClient("h1", [process.opflex], backoff=(0.1, 1.0), keepalive=5.0)
            task = asyncio.create_task(client.run())
            top = space(T)
            endpoints = {endpoint_uri(T, f"ep{i}") for i in range(N)}

            def complete() -> bool:
                root = client.policy.get(top)
                return (
                    root is not None
                    and len(root.children) >= N
                    and endpoints <= set(root.children)
                    and all(u in client.policy for u in endpoints)
                )

            began = time.monotonic()
            client.resolve(Cls.POLICY_SPACE, top)
            while not complete():
                assert time.monotonic() - began < 300, "the tenant did not resolve in 5 minutes"
                await asyncio.sleep(0.2)
            resolved = time.monotonic() - began
            assert client.connects == 1  # one session all along: no frame too large, no reconnect
            web = uri_of(T, Cls.GBP_EP_GROUP, "web")
            assert client.policy[endpoint_uri(T, "ep99999")].properties[Prop.EPG]["reference_uri"] == web

            async with httpx.AsyncClient(base_url=process.url, timeout=30) as rest:
                [ep] = (await rest.get("/v1/endpoints", params={"tenant": T, "name": "ep7"})).json()["items"]
                body = {
                    k: v for k, v in ep.items() if k not in ("id", "revision", "status", "host", "interface")
                }
                began = time.monotonic()
                answer = await rest.put(f"/v1/endpoints/{ep['id']}", json={**body, "epg": "app"})
                assert answer.status_code == 200, answer.text
                app = uri_of(T, Cls.GBP_EP_GROUP, "app")
                while client.policy[endpoint_uri(T, "ep7")].properties[Prop.EPG]["reference_uri"] != app:
                    assert time.monotonic() - began < 30, "the push did not arrive"
                    await asyncio.sleep(0.001)
                pushed = time.monotonic() - began
            await client.stop()
            task.cancel()
            return {"resolved": resolved, "pushed": pushed}

        figures = asyncio.run(go())
        rss, peak = rss_kb(pid)
    print(
        f"\n{N} endpoints: authority up in {up:.1f} s, PolicySpace resolved in {figures['resolved']:.1f} s, "
        f"a group change pushed in {figures['pushed'] * 1000:.0f} ms (REST write included); "
        f"authority RSS {rss / 1024:.0f} MB (peak {peak / 1024:.0f} MB)"
    )
