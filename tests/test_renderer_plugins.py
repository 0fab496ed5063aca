"""The renderer plug-in API and its example: the firewall configuration file renderer.

Discovery is tested the way a third party would plug in: a distribution on
sys.path whose entry_points.txt names its class in ``policyfabric.renderers``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from policyfabric.agent.renderers import api
from policyfabric.agent.renderers.configfile import ConfigFileRenderer, compile_config
from policyfabric.agent.view import Network
from tests.fabric import network
from tests.test_pipeline_unit import APP, APP1, APP2, BD, HTTP, WEB, WEB1, WEB2_REMOTE
from tests.test_secgroups_unit import GROUPS, VM1, VM2, VM3


def contracts_view() -> Network:
    return network(
        local=[WEB1, APP1, APP2], remote=[WEB2_REMOTE], groups=[WEB, APP], contracts=[HTTP], bds=[BD]
    )


def test_contracts_become_access_lists_over_group_object_groups() -> None:
    text = compile_config(contracts_view(), "h1")
    assert (
        "ip access-list extended acme-web1-groups-in\n permit ip object-group epg-web host 10.0.0.1\n"
        " permit tcp object-group epg-app host 10.0.0.1 eq 80\n deny ip any any\n" in text
    )
    # the provider's members, local and remote, are one object group; app's likewise
    assert "object-group network epg-web\n host 10.0.0.1\n host 10.0.0.4\n!" in text
    assert "object-group network epg-app\n host 10.0.0.2\n host 10.0.0.3\n!" in text
    assert " permit tcp host 10.0.0.2 object-group epg-web eq 80\n deny ip any any" in text  # app1 → web
    assert "ip access-list extended acme-app1-groups-in\n deny ip any any" in text  # app: intra deny


def test_security_groups_name_address_sets_never_expanded() -> None:
    eps = (VM1, VM2, VM3)
    net = network(local=eps, bds=[BD], security_groups=GROUPS.values())
    text = compile_config(net, "h1")
    assert "object-group network sg-ssh\n host 10.0.0.1\n host 10.0.0.2\n!" in text
    assert " permit tcp object-group sg-ssh host 10.0.0.1 eq 22" in text
    assert " permit icmp 10.0.0.0/30 host 10.0.0.1" in text
    assert "ip access-list extended acme-vm1-sg-out\n permit ip any any" in text  # no egress rules: open
    assert "ip access-list extended acme-vm3-sg-in\n deny ip any any" in text  # no groups: admits nothing
    # each member address appears once, in its set, not once per rule and port
    assert text.splitlines().count(" host 10.0.0.2") == 1


def test_apply_replaces_the_file_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "fw" / "pf.conf"
    renderer = api.load("configfile", api.RendererContext("h1", options={"path": str(path)}))
    assert isinstance(renderer, ConfigFileRenderer)
    first = renderer.apply(renderer.compile(contracts_view()))
    assert first.added > 0 and path.read_text().startswith(
        "! policyfabric: firewall configuration for host h1"
    )
    again = renderer.apply(renderer.compile(contracts_view()))  # unchanged: nothing written
    assert (again.added, again.removed, again.detail) == (0, 0, "") and again.seconds < 1
    smaller = network(local=[WEB1], groups=[WEB, APP], contracts=[HTTP], bds=[BD])
    changed = renderer.apply(renderer.compile(smaller))
    assert changed.removed > 0 and "acme-app1" not in path.read_text()
    assert "object-group network epg-web\n host 10.0.0.1\n!" in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["pf.conf"]  # no temporary file left


def test_a_third_party_renderer_is_found_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme_fw.py").write_text(
        textwrap.dedent(
            """
            from policyfabric.agent.renderers.api import Applied, Renderer

            class AcmeFirewall(Renderer[int]):
                OPTIONS = {"mgmt": "address of the firewall"}

                def compile(self, net):
                    return len(net.local)

                def apply(self, desired):
                    return Applied(desired, 0, 0.0, self.context.options["mgmt"])

            class NotARenderer:
                pass
            """
        )
    )
    dist = tmp_path / "acme_fw-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-fw\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[policyfabric.renderers]\nacme = acme_fw:AcmeFirewall\nbroken = acme_fw:NotARenderer\n"
        "missing = acme_fw_gone:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert {"acme", "configfile"} <= set(api.installed())
    renderer = api.load("acme", api.RendererContext("h1", options={"mgmt": "192.0.2.99"}))
    assert renderer.apply(renderer.compile(contracts_view())) == api.Applied(3, 0, 0.0, "192.0.2.99")
    with pytest.raises(api.RendererError, match=r"unknown option\(s\) colour \(known: mgmt\)"):
        api.load("acme", api.RendererContext("h1", options={"colour": "red"}))
    with pytest.raises(api.RendererError, match="not a policyfabric Renderer subclass"):
        api.load("broken", api.RendererContext("h1"))
    with pytest.raises(api.RendererError, match="failed to load: No module named 'acme_fw_gone'"):
        api.load("missing", api.RendererContext("h1"))
    with pytest.raises(api.RendererError, match=r"no renderer named 'nope' is installed \(installed: .*acme"):
        api.load("nope", api.RendererContext("h1"))
    sys.modules.pop("acme_fw", None)
