"""The agent's policy cache: how updates change it, and its file (pure, no sessions)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path

from policyfabric.opflex.cache import CacheContents, CacheFile, apply_policy_update, held
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.mo import MO, ref

ROOT = "/PolicyUniverse/PolicySpace/acme/"


def mo(uri: str, *children: str, parent: str | None = ROOT, **props: object) -> MO:
    if parent is None:
        return MO("X", uri, dict(props), list(children))
    return MO("X", uri, dict(props), list(children), "PolicySpace", parent, "X")


def cache() -> dict[str, MO]:
    a, b = ROOT + "A/a/", ROOT + "A/a/B/b/"
    return {ROOT: mo(ROOT, a, parent=None), a: mo(a, b, name="a"), b: mo(b, parent=a, name="b")}


def test_replace_drops_the_children_it_no_longer_lists() -> None:
    policy = cache()
    changed = apply_policy_update(policy, [mo(ROOT + "A/a/", name="a2")], [], [])
    assert ROOT + "A/a/B/b/" not in policy and policy[ROOT + "A/a/"].properties == {"name": "a2"}
    assert changed == {ROOT + "A/a/", ROOT + "A/a/B/b/"}


def test_merge_adds_children_once_and_makes_a_new_object() -> None:
    policy = cache()
    before = policy[ROOT + "A/a/"]
    new_child = ROOT + "A/a/B/c/"
    apply_policy_update(policy, [], [mo(ROOT + "A/a/", ROOT + "A/a/B/b/", new_child, extra=1)], [])
    after = policy[ROOT + "A/a/"]
    assert after is not before and before.children == [ROOT + "A/a/B/b/"]  # never mutated
    assert after.children == [ROOT + "A/a/B/b/", new_child]
    assert after.properties == {"name": "a", "extra": 1}


def test_delete_takes_the_subtree_and_unlinks_it_from_its_parent() -> None:
    policy = cache()
    changed = apply_policy_update(policy, [], [], [ROOT + "A/a/"])
    assert set(policy) == {ROOT} and policy[ROOT].children == []
    assert changed == {ROOT, ROOT + "A/a/", ROOT + "A/a/B/b/"}  # the parent lost a child: it changed
    assert apply_policy_update(policy, [], [], [ROOT + "A/a/"]) == set()  # already gone: no change


def test_the_file_round_trips_and_an_unreadable_one_is_ignored(tmp_path: Path) -> None:
    file = CacheFile(tmp_path / "cache.json", "h1")
    assert file.load() is None
    file.save(CacheContents(7, cache(), {}, {ROOT: "PolicySpace"}, {}))
    loaded = file.load()
    assert loaded is not None and loaded.version == 7 and loaded.policy == cache()
    assert loaded.wanted == {ROOT: "PolicySpace"}
    (tmp_path / "cache.json").write_text('{"version": "seven"')
    assert file.load() is None


def test_the_cache_is_written_less_often_the_more_a_write_costs(tmp_path: Path) -> None:
    """Each write is the whole cache: after one that took 50 ms the next waits a second (at most
    5% of the time), written in a thread from a copy; stop waits for it and writes what is last."""
    client = PolicyClient("h1", [("127.0.0.1", 1)], state_dir=tmp_path)
    assert client.cache_file is not None
    writes: list[float] = []
    real = client.cache_file.save

    def slow(contents: CacheContents) -> None:
        writes.append(time.monotonic())
        time.sleep(0.05)
        real(contents)

    client.cache_file.save = slow  # type: ignore[method-assign]

    async def go() -> None:
        for i in range(60):
            client.policy[f"/PolicyUniverse/X/{i}/"] = MO("X", f"/PolicyUniverse/X/{i}/", {})
            client._changed({f"/PolicyUniverse/X/{i}/"})
            await asyncio.sleep(0.05)  # 3 s of changes
        await client.stop()

    asyncio.run(go())
    assert 3 <= len(writes) <= 5, writes  # every 0.5 s would be 6-7
    # the first gap is shorter (the second write is planned while the first is still going), the
    # last write is the one on stop: the others are a second or more apart
    gaps = [b - a for a, b in itertools.pairwise(writes[1:-1])]
    assert gaps and all(g >= 0.9 for g in gaps), writes
    loaded = CacheFile(tmp_path / "opflex-cache.json", "h1").load()
    assert loaded is not None and len(loaded.policy) == 60  # the last write has everything


def test_held_objects_share_one_string_per_uri_and_read_as_parsed() -> None:
    """What the cache keeps: every copy of a URI (an object's own, its parent's children, the
    references to it) is one string, and the object equals what the plain parse gives."""
    group = "/PolicyUniverse/PolicySpace/t/GbpEpGroup/" + "web" * 3 + "/"
    space = "/PolicyUniverse/PolicySpace/t/"
    wire = [
        MO("GbpEpGroup", group, {"name": "web"}, [group + "Ctx/"], "PolicySpace", space).to_wire(),
        MO("PfEndpoint", "/ep/1/", {"epg": ref("GbpEpGroup", group), "ip": ["10.0.0.1"]}).to_wire(),
        MO("PfEndpoint", "/ep/2/", {"groups": [ref("GbpEpGroup", group)]}).to_wire(),
    ]
    a, b, c = (held(json.loads(json.dumps(m))) for m in wire)
    assert [a, b, c] == [MO.from_wire(m) for m in wire]
    assert b.properties["epg"]["reference_uri"] is a.uri is c.properties["groups"][0]["reference_uri"]
    assert held(json.loads(json.dumps(wire[0]))).children[0] is a.children[0]
