"""The nftables renderer's deltas in a real kernel: after every change of random sequences, the
table the renderer patched holds what a table written whole from the same view holds (read back
with ``nft -j list table``, in private network namespaces); drift, a failed transaction and a
restart each write the table whole, and then it holds the view again."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from policyfabric.agent.renderers.api import RendererContext
from policyfabric.agent.renderers.nftables.kernel import Nft
from policyfabric.agent.renderers.nftables.renderer import NftablesRenderer
from policyfabric.agent.renderers.nftables.ruleset import TABLE, compile_ruleset
from policyfabric.agent.view import Network
from policyfabric.sh import CommandFailed
from tests.lab_harness import ns_run
from tests.nft_views import Fabric
from tests.test_nftables_incremental_unit import group_of, joined, set_name

pytestmark = pytest.mark.dataplane


@pytest.fixture
def netns() -> Iterator[tuple[str, str]]:
    """Two namespaces: the renderer's, and one for the table written whole."""
    names = (f"pfni-{os.getpid()}-a", f"pfni-{os.getpid()}-b")
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def listed(netns: str) -> dict[str, Any]:
    """The table as the kernel holds it, without what differs between equal tables: handles, the
    order of sets and chains and of set elements. Rules keep their order within a chain."""
    done = ns_run(netns, "nft", "-j", "list", "table", "inet", TABLE)
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = {"set": {}, "map": {}, "chain": {}, "rule": {}}
    for item in json.loads(done.stdout)["nftables"]:
        for kind, value in item.items():
            if kind not in out:
                continue
            value = {k: v for k, v in value.items() if k != "handle"}
            if "elem" in value:
                value["elem"] = sorted(json.dumps(e, sort_keys=True) for e in value["elem"])
            if kind == "rule":
                out["rule"].setdefault(value["chain"], []).append(value["expr"])
            else:
                out[kind][value["name"]] = value
    return out


def written_whole(netns: str, net: Network) -> dict[str, Any]:
    done = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=compile_ruleset(net).text(), text=True
    )
    assert done.returncode == 0
    return listed(netns)


def renderer(netns: str, library: bool = True) -> NftablesRenderer:
    made = NftablesRenderer(RendererContext("test", options={"netns": netns}))
    made.nft = Nft(netns, library=library)
    assert made.nft.in_process == library  # libnftables is there: both ways are tested
    return made


@pytest.mark.parametrize(
    ("seed", "library"), [*((s, True) for s in range(6)), (6, False), (7, False)], ids=str
)
def test_patched_tables_hold_what_whole_tables_hold(netns: tuple[str, str], seed: int, library: bool) -> None:
    """Through libnftables in process, and through ``nft -f`` processes (where it is missing)."""
    ours, whole = netns
    fabric, nft = Fabric.random(seed), renderer(ours, library)
    assert nft.apply(nft.compile(fabric.network())).full
    patched = 0
    for step in range(30):
        what = fabric.change()
        net = fabric.network()
        desired = nft.compile(net)
        if desired == nft.applied:
            continue  # the agent applies only a changed desired state
        applied = nft.apply(desired)
        assert not applied.full
        patched += 1
        assert listed(ours) == written_whole(whole, net), f"step {step}: {what}"
    assert patched >= 15


def test_a_member_joining_is_one_element_in_the_kernel(netns: tuple[str, str]) -> None:
    ours, whole = netns
    nft = renderer(ours)
    net = group_of(2000, 20)
    nft.apply(nft.compile(net))
    more = joined(net, 2001)
    applied = nft.apply(nft.compile(more))
    assert (applied.added, applied.removed, applied.full) == (1, 0, False)
    assert listed(ours) == written_whole(whole, more)
    assert '"10.0.7.209"' in listed(ours)["set"][set_name()]["elem"]


def test_drift_writes_the_table_whole(netns: tuple[str, str]) -> None:
    ours, whole = netns
    nft = renderer(ours)
    seen: list[str] = []
    drifted = threading.Event()

    def on_drift(what: str) -> None:
        seen.append(what)
        drifted.set()

    assert nft.watch(on_drift)
    try:
        net = group_of(100, 5)
        nft.apply(nft.compile(net))
        assert ns_run(ours, "nft", "delete", "table", "inet", TABLE).returncode == 0
        assert drifted.wait(5), "no drift seen"
        desired = nft.compile(net)
        assert desired == nft.applied  # the same view: only the drift makes it apply
        assert nft.apply(desired).full
        assert listed(ours) == written_whole(whole, net)
        nft.apply(nft.compile(joined(net, 101)))  # the renderer's own changes are not drift
        time.sleep(0.3)
        assert len(seen) == 1 and seen[0].startswith(f"table inet {TABLE} deleted (by process ")
    finally:
        nft.unwatch()


def test_after_a_failed_transaction_the_table_is_written_whole(netns: tuple[str, str]) -> None:
    """Someone deleted an element (unwatched): the delta that deletes it fails as a whole, and
    the next apply, of the same view, writes the table whole."""
    ours, whole = netns
    nft = renderer(ours)
    net = group_of(100, 5)
    more = joined(net, 101)
    nft.apply(nft.compile(more))
    gone = ns_run(ours, "nft", "delete", "element", "inet", TABLE, set_name(), "{ 10.0.0.101 }")
    assert gone.returncode == 0, gone.stderr
    with pytest.raises(CommandFailed) as refused:
        nft.apply(nft.compile(net))  # deletes 10.0.0.101 again: the kernel refuses the transaction
    assert nft.applied is None
    assert "Could not process rule: No such file or directory" in str(refused.value)  # nft's words
    assert nft.apply(nft.compile(net)).full
    assert listed(ours) == written_whole(whole, net)


def test_a_restarted_renderer_writes_the_table_whole_then_patches(netns: tuple[str, str]) -> None:
    ours, whole = netns
    net = group_of(100, 5)
    first = renderer(ours)
    first.apply(first.compile(net))
    again = renderer(ours)  # the agent restarted: the table is there, its contents unknown to it
    assert again.apply(again.compile(net)).full
    assert listed(ours) == written_whole(whole, net)
    moved = replace(net, local=tuple(replace(e, ofport=e.ofport + 50) for e in net.local if e.ofport))
    assert not again.apply(again.compile(moved)).full
    assert listed(ours) == written_whole(whole, moved)
