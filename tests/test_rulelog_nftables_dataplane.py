"""Rule logging on an nftables host: the logging rules' packets read back from the netfilter log
(NFLOG, in the host's namespace) give the same lines as on Open vSwitch. Real TCP connections."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from policyfabric.lab.lab import Lab
from tests.lab_harness import SCENARIOS, running_lab, serving
from tests.test_rulelog_dataplane import connect, settle_lines

pytestmark = [pytest.mark.dataplane, pytest.mark.xdist_group("rulelog")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("rulelog-nft")
    text = (SCENARIOS / "rulelog.yaml").read_text()
    old = "hosts: [{name: h1}]"
    assert old in text
    scenario = base / "rulelog-nft.yaml"
    scenario.write_text(text.replace(old, "hosts: [{name: h1, renderer: nftables}]"))
    with running_lab(scenario, Path(base) / "state") as lab:
        yield lab


def test_allowed_and_dropped_connections_are_logged_by_nftables(lab: Lab) -> None:
    with serving(lab, ("web1", "tcp", 80), ("web1", "tcp", 23), ("vm1", "tcp", 22), ("vm1", "tcp", 80)):
        assert connect(lab, "app1", "web1", 80, 42001) == "connected"
        assert connect(lab, "app1", "web1", 23, 42002).startswith("failed")
        assert connect(lab, "vm2", "vm1", 22, 42003) == "connected"
        assert connect(lab, "vm2", "vm1", 80, 42004).startswith("failed")
        found = {sport: settle_lines(lab, sport) for sport in (42001, 42002, 42003, 42004)}
    by = {sport: [(v["verdict"], v["by"]) for v in lines] for sport, lines in found.items()}
    assert by == {
        42001: [("allowed", "contract acme/http rule web-in")],
        42002: [("dropped", "contract acme/http rule telnet")],
        42003: [("allowed", "security-group acme/ssh rule 0")],
        42004: [("dropped", "default deny (security groups of acme/vm1, ingress)")],
    }
    v = found[42001][0]
    assert (v["src_endpoint"], v["dst_endpoint"], v["dport"]) == ("acme/app1", "acme/web1", 80)
