"""The OpFlex client's cache file is encoded a list element at a time (so that the thread writing
it hands the GIL back to the agent's loop between pieces): the same JSON as one ``json.dumps``."""

from __future__ import annotations

import json
from pathlib import Path

from policyfabric.opflex.cache import CacheContents, CacheFile, dumps_in_pieces
from policyfabric.opflex.mo import MO


def test_pieces_read_back_as_the_whole_encoding_does() -> None:
    data = {
        "format": 3,
        "agent": 'h1 "quoted" \\ back\nslash ünïcode',
        "policy": [{"uri": "/a/", "children": ["/a/b/"], "n": 1.5}, {"uri": "/c/", "x": None}],
        "endpoints": [],
        "wanted": {"/a/": "Cls", "/c/": "Other"},
        "followed": ["/a/b/", "/z/"],
        "nested": [[1, 2], {"k": [True, False]}],
    }
    text = dumps_in_pieces(data)
    assert json.loads(text) == json.loads(json.dumps(data)) == data
    assert list(json.loads(text)) == list(data)  # the keys in their order


def test_the_cache_file_written_in_pieces_loads_back(tmp_path: Path) -> None:
    policy = {
        f"/PolicyUniverse/PolicySpace/t{i}/": MO(
            "PolicySpace", f"/PolicyUniverse/PolicySpace/t{i}/", {"name": f"t{i}"}
        )
        for i in range(3)
    }
    cache = CacheFile(tmp_path / "opflex-cache.json", "h1")
    cache.save(CacheContents(7, policy, {}, {"/PolicyUniverse/": "PolicyUniverse"}, {}, ["/x/"]))
    loaded = cache.load()
    assert loaded is not None and loaded.version == 7
    assert {u: m.to_wire() for u, m in loaded.policy.items()} == {u: m.to_wire() for u, m in policy.items()}
    assert loaded.wanted == {"/PolicyUniverse/": "PolicyUniverse"} and loaded.followed == ["/x/"]
