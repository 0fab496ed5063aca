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
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.agent.reader import policy_view
from policyfabric.agent.view import Invalid
from policyfabric.authority.opflex.policy_tree import tenant_tree
from policyfabric.authority.service import Authority
from policyfabric.lab.authority import free_port
from policyfabric.model import scenario as sc
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import NO_MEMBER, Cls, Prop
from policyfabric.opflex.mo import MO, Tree, ref
from policyfabric.opflex.modelcheck import check
from policyfabric.opflex.uri import UNIVERSE, child, space
from policyfabric.store.sqlite import SqliteStore

from .harness import BIN, Daemon, ref_env, wait_for

REPO = Path(__file__).resolve().parents[1]


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
    """mock_server serving the sample."""
    with serving(sample) as peer:
        yield peer


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


def test_the_sample_reads_into_our_typed_view_through_its_flood_domains(
    sample: Path, mock_server: tuple[str, int]
) -> None:
    """What our agent renders from is the typed view (``agent/reader.py``): the sample's groups
    point at flood domains, which point at bridge domains, and every group of the view has the
    bridge domain its flood domain names; its contracts keep their rules."""
    mos = sample_mos(sample)
    spaces = sorted(str(mo.properties["name"]) for mo in mos if mo.subject == "PolicySpace")
    client = asyncio.run(_resolve_all(mock_server, spaces))
    problems: list[Invalid] = []
    view = policy_view(client.policy, problems)
    served = {mo.uri: mo for mo in mos}

    def target(uri: str, relation: str) -> str | None:
        rel = served.get(child(uri, relation))
        return rel.properties["target"]["reference_uri"] if rel else None

    via_fd = 0
    for uri, mo in served.items():
        if mo.subject != "GbpEpGroup":
            continue
        network = target(uri, Cls.GBP_EP_GROUP_TO_NETWORK_RSRC)
        if network is None or served.get(network) is None:
            continue
        want = network
        if served[network].subject == Cls.GBP_FLOOD_DOMAIN:
            want = target(network, Cls.GBP_FLOOD_DOMAIN_TO_NETWORK_RSRC) or ""
            via_fd += 1
        assert view.groups[uri].bd == want, uri
    assert via_fd >= 3, "the sample's groups go through flood domains"
    contracts = [c for c in view.contracts.values() if c.rules]
    assert contracts, "no contract with rules read"
    print(f"{len(view.groups)} groups ({via_fd} through a flood domain), {len(contracts)} contracts")


def mirror_of_demo(tmp: Path) -> tuple[Path, dict[str, MO]]:
    """A policy for mock_server written to mirror examples/demo.yaml: what our authority serves for
    it (the model's classes only: mock_server knows no others), with each group pointing at a flood
    domain that points at its bridge domain, as the reference's own policies do. Returns the file
    and our authority's own tree (what the views are compared against)."""
    store = SqliteStore(tmp / "db")
    authority = Authority(store)
    loaded = sc.load(REPO / "examples" / "demo.yaml")
    assert sc.check(loaded) == []  # (parses the specs)
    authority.create_many([(e.kind, e.spec) for e in loaded.in_order() if e.spec is not None])
    objects, numbers = authority.snapshot("acme")
    ours = tenant_tree("acme", objects, numbers)
    store.close()
    mirror = Tree()
    mirror.root(Cls.POLICY_UNIVERSE, UNIVERSE)
    mirror.mos[UNIVERSE].children.append(space("acme"))
    for uri, mo in ours.mos.items():
        if not mo.subject.startswith("Pf"):
            kept = [c for c in mo.children if not ours.mos[c].subject.startswith("Pf")]
            mirror.mos[uri] = MO(
                mo.subject,
                uri,
                dict(mo.properties),
                kept,
                mo.parent_subject,
                mo.parent_uri,
                mo.parent_relation,
            )
    for uri, mo in list(mirror.mos.items()):
        if mo.subject != Cls.GBP_EP_GROUP:
            continue
        relation = mirror.mos[child(uri, Cls.GBP_EP_GROUP_TO_NETWORK_RSRC)]
        bd = relation.properties[Prop.TARGET]["reference_uri"]
        name = bd.rstrip("/").rsplit("/", 1)[-1]
        fd = child(space("acme"), Cls.GBP_FLOOD_DOMAIN, f"fd-{name}")
        if fd not in mirror.mos:
            mirror.add(space("acme"), Cls.GBP_FLOOD_DOMAIN, f"fd-{name}", name=f"fd-{name}")
            mirror.add(fd, Cls.GBP_FLOOD_DOMAIN_TO_NETWORK_RSRC, target=ref(Cls.GBP_BRIDGE_DOMAIN, bd))
        relation.properties[Prop.TARGET] = ref(Cls.GBP_FLOOD_DOMAIN, fd)
    assert check(mirror.mos.values()) == []  # the reference's dialect through and through
    path = tmp / "demo-mirror.json"
    path.write_text(json.dumps([mo.to_wire() for mo in mirror.mos.values()]))
    return path, ours.mos


def test_a_mirror_of_the_demo_reads_into_the_view_our_authority_gives(tmp_path: Path) -> None:
    """The same policy, served by the reference's repository (through flood domains) and by ours,
    reads into the same groups, contracts and bridge domains (less our extensions: MTU and DHCP);
    security groups keep their rules, with the remote group's members as plain remote prefixes
    (our hint is not in the mirror)."""
    path, ours = mirror_of_demo(tmp_path)
    with serving(path) as peer:
        client = asyncio.run(_resolve_all(peer, ["acme"]))
    theirs = policy_view(client.policy)
    own = policy_view(ours)
    assert theirs.groups == own.groups and len(own.groups) == 3
    assert theirs.contracts == own.contracts and own.contracts
    # the mirror has none of our extensions (Pf*): the bridge domains' MTU and what hosts answer by
    # DHCP and router advertisements are ours (SLAAC prefixes are the model's own flag: the same)
    assert theirs.bds == {u: dataclasses.replace(bd, mtu=0, dhcp=(), ipv6=()) for u, bd in own.bds.items()}
    assert own.bds and all(bd.mtu for bd in own.bds.values())
    assert any(bd.dhcp for bd in own.bds.values()) and any(bd.ipv6 for bd in own.bds.values())
    assert set(theirs.security_groups) == set(own.security_groups)
    for uri, sg in own.security_groups.items():
        mine = sorted((r.order, r.protocol, r.ports) for r in sg.rules)
        assert sorted({(r.order, r.protocol, r.ports) for r in theirs.security_groups[uri].rules}) == mine
        for rule in sg.rules:
            if rule.remote_group is not None:  # the mirror: each member (and the placeholder) a prefix
                got = {
                    str(r.remote_prefix) for r in theirs.security_groups[uri].rules if r.order == rule.order
                }
                want = {f"{a}/32" for a in own.address_sets[rule.remote_group]} | {f"{NO_MEMBER}/32"}
                assert got == want


@contextlib.contextmanager
def serving(policy: Path) -> Iterator[tuple[str, int]]:
    """mock_server serving ``policy`` on a free port. It binds 0.0.0.0 (no option to narrow it) and
    ignores SIGTERM: it is killed by its PID."""
    port = free_port()
    d = Daemon(
        "mock_server",
        [
            str(BIN / "mock_server"),
            "--policy",
            str(policy),
            "--server_port",
            str(port),
            "--peer",
            f"127.0.0.1:{port}",
            "--level",
            "info",
        ],
        policy.parent / "mock_server.log",
        env=ref_env(),
        sigkill_only=True,
    ).start()
    try:
        wait_for("mock_server to listen", lambda: _listening(port), 10)
        yield ("127.0.0.1", port)
    finally:
        d.stop()
