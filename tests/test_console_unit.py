"""The web console without a browser: the connectivity matrix and its reasons (pure, against the
expectations the scenarios verify with real packets), and the routes the authority serves for it
(the page, its assets, local Swagger UI, ``/v1/matrix``) with the REST API's token scoping."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from policyfabric.authority.api import create_app
from policyfabric.authority.auth import parse_tokens
from policyfabric.authority.console.matrix import Intent, Probe, explain, family_of, matrix
from policyfabric.authority.service import Authority
from policyfabric.model import scenario as sc
from policyfabric.store.sqlite import SqliteStore

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "examples" / "demo.yaml"
SCENARIOS = sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))
ADMIN, MEMBER, READER = "admin-token-0123456789", "member-acme-0123456789", "reader-all-0123456789"


def intents(path: Path) -> dict[str, Intent]:
    """Each tenant's intent as a scenario file declares it."""
    by: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for entry in sc.load(path).entries:
        if isinstance(entry.data, dict) and entry.data.get("tenant"):
            by[str(entry.data["tenant"])][entry.kind.name].append(entry.data)
    return {tenant: Intent.of(tenant, objects) for tenant, objects in by.items()}


def expectations() -> Iterator[tuple[str, Intent, dict[str, Any]]]:
    """Every ``expect`` of the scenarios between two endpoints of one tenant with a probe the
    intent can judge (tcp/udp/icmp): the lab verifies these with real packets."""
    for path in [DEMO, *SCENARIOS]:
        found = intents(path)
        for x in sc.load(path).raw.get("expect") or []:
            tenants = {t for t, i in found.items() if x["from"] in i.endpoints and x["to"] in i.endpoints}
            if len(tenants) != 1:
                continue
            tenant = tenants.pop()
            try:
                Probe.parse(x["probe"])
            except ValueError:
                continue
            yield f"{path.name}:{x['from']}->{x['to']}:{x['probe']}", found[tenant], x


CASES = list(expectations())


def test_the_scenarios_give_enough_cases_to_judge_the_matrix() -> None:
    files = {name.partition(":")[0] for name, _, _ in CASES}
    assert len(CASES) >= 30 and {"demo.yaml", "secgroups.yaml", "two_hosts.yaml"} <= files


@pytest.mark.parametrize(("name", "intent", "expect"), CASES, ids=[c[0] for c in CASES])
def test_explain_agrees_with_what_the_dataplane_tests_verify(
    name: str, intent: Intent, expect: dict[str, Any]
) -> None:
    src, dst = intent.endpoints[expect["from"]], intent.endpoints[expect["to"]]
    got = explain(intent, src.name, dst.name, Probe.parse(expect["probe"], family_of(src, dst)))
    assert got.verdict == expect["result"], got.reasons
    assert got.reasons and got.reasons[-1].startswith(got.verdict)


def test_the_demo_explanations_name_the_rule_that_decides() -> None:
    acme = intents(DEMO)["acme"]
    allowed = explain(acme, "app1", "web1", Probe.parse("tcp/80"))
    assert allowed.reasons[0] == "allow: contract http, rule web-in (consumer -> provider)"
    assert allowed.layers == ("group policy", "security groups")  # app1 has a security group
    refused = explain(acme, "app1", "web1", Probe.parse("tcp/22"))
    assert refused.verdict == "deny" and "default deny" in refused.reasons[0]
    intra = explain(acme, "app2", "app1", Probe.parse("icmp"))
    assert intra.reasons == ("deny: endpoint group app: intra_group deny",)
    assert explain(acme, "web2", "web1", Probe.parse("udp/53")).to_json()["from"] == "intent"


def test_the_demo_matrix_cells() -> None:
    m = matrix(intents(DEMO)["acme"])
    cells = {(c["source"], c["destination"]): c for c in m["epg_cells"]}
    assert m["epgs"] == ["api", "app", "web"] and len(cells) == 9
    assert cells["app", "web"]["verdict"] == "partial"
    assert [(e["protocol"], e["port"], e["by"]) for e in cells["app", "web"]["entries"]] == [
        ("tcp", "80", "contract http, rule web-in (consumer -> provider)")
    ]
    assert cells["web", "app"]["verdict"] == "deny"  # providers do not open to consumers
    assert cells["web", "web"]["verdict"] == "allow" and cells["app", "app"]["verdict"] == "deny"
    assert cells["api", "web"]["verdict"] == "partial"  # the IPv6 tier consumes http too
    assert cells["web", "api"]["verdict"] == cells["api", "app"]["verdict"] == "deny"
    assert m["members"]["web"] == ["web1", "web2", "web3"] and m["members"]["sg:ssh-from-app"] == ["app1"]


def test_security_group_cells_in_plain_mode() -> None:
    m = matrix(intents(ROOT / "tests" / "scenarios" / "secgroups.yaml")["acme"])
    cells = {(c["source"], c["destination"]): c for c in m["sg_cells"]}
    assert m["epgs"] == [] and m["security_groups"] == ["ssh", "web", "web-client"]
    ssh = [e["by"] for e in cells["ssh", "ssh"]["entries"]]
    assert ssh[0].startswith("security group ssh, rule 0 (ingress ipv4 tcp/22, remote group ssh)")
    assert "if its address is in 10.3.0.0/28" in ssh[1]
    assert cells["web-client", "ssh"]["verdict"] == "deny"  # egress tcp/80 only, and ssh admits it nothing
    assert cells["web-client", "web"]["verdict"] == "partial"  # web admits tcp/80 from anyone
    assert "egress limited by security group web-client" in cells["web-client", "web"]["note"]


def test_a_drop_rule_wins_over_an_allow_rule() -> None:
    epg = {"tenant": "t", "bridge_domain": "bd"}
    intent = Intent.of(
        "t",
        {
            "endpoint_group": [
                {**epg, "name": "a", "consumes": ["c"]},
                {**epg, "name": "b", "provides": ["c"]},
            ],
            "contract": [
                {
                    "tenant": "t",
                    "name": "c",
                    "rules": [
                        {"name": "all-tcp", "classifier": {"protocol": "tcp"}},
                        {"name": "no-ssh", "classifier": {"protocol": "tcp", "port": 22}, "action": "drop"},
                        {"name": "back", "classifier": {"protocol": "udp", "direction": "out"}},
                    ],
                }
            ],
            "endpoint": [
                {"tenant": "t", "name": "x", "epg": "a", "ip": "10.0.0.1"},
                {"tenant": "t", "name": "y", "epg": "b", "ip": "10.0.0.2"},
            ],
        },
    )
    no_ssh = "deny: contract c, rule no-ssh (consumer -> provider) drops it"
    assert explain(intent, "x", "y", Probe.parse("tcp/22")).reasons == (no_ssh,)
    assert explain(intent, "x", "y", Probe.parse("tcp/443")).verdict == "allow"
    assert explain(intent, "x", "y", Probe.parse("udp/53")).verdict == "deny"  # "out": provider -> consumer
    assert explain(intent, "y", "x", Probe.parse("udp/53")).verdict == "allow"
    cell = {(c["source"], c["destination"]): c for c in matrix(intent)["epg_cells"]}["a", "b"]
    assert [e["action"] for e in cell["entries"]] == ["allow", "deny"]


@pytest.mark.parametrize("text", ["tcp", "tcp/0", "udp/70000", "icmp/8", "any", "sctp/9"])
def test_a_probe_that_means_nothing_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Probe.parse(text)


# ---- the routes ----------------------------------------------------------------------------


@pytest.fixture
def console(tmp_path: Path) -> Iterator[TestClient]:
    """The REST app in-process with three tokens, the demo applied and a second tenant."""
    tokens = parse_tokens(
        {
            "tokens": [
                {"token": ADMIN, "role": "admin"},
                {"token": MEMBER, "role": "member", "tenant": "acme"},
                {"token": READER, "role": "reader"},
            ]
        },
        "test",
    )
    store = SqliteStore(tmp_path / "pf.db")
    with TestClient(create_app(Authority(store), tokens=tokens)) as client:
        items = [{"op": "create", "kind": e.kind.name, "object": e.data} for e in sc.load(DEMO).in_order()]
        beta = [
            ("tenant", {"name": "beta"}),
            ("l3_context", {"tenant": "beta", "name": "v"}),
            ("bridge_domain", {"tenant": "beta", "name": "b", "l3_context": "v"}),
            ("endpoint_group", {"tenant": "beta", "name": "db", "bridge_domain": "b"}),
        ]
        items += [{"op": "create", "kind": kind, "object": obj} for kind, obj in beta]
        r = client.post("/v1/batch", json={"items": items}, headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200, r.text
        yield client
    store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_page_and_its_assets_are_served_without_a_token(console: TestClient) -> None:
    for path in ("/", "/ui", "/ui/"):
        r = console.get(path)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        assert '<script src="/ui/static/app.js">' in r.text
    for asset, kind in (("app.js", "javascript"), ("app.css", "text/css")):
        r = console.get(f"/ui/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    assert console.get("/ui/static/nothing.js").status_code == 404
    assert console.get("/v1/endpoints").status_code == 401  # the data is not public


def test_nothing_is_loaded_from_elsewhere(console: TestClient) -> None:
    """Every URL the page, its script and stylesheet, and /docs name is local (no CDN)."""
    texts = [console.get(p).text for p in ("/", "/ui/static/app.js", "/ui/static/app.css", "/docs")]
    urls = [u for t in texts for u in re.findall(r"""(?:src|href)=["']([^"']+)""", t)]
    urls += [u for t in texts for u in re.findall(r"url\(([^)]+)\)", t)]
    assert urls and all(u.startswith(("/", "#", "data:")) for u in urls), urls
    assert not [t for t in texts if re.search(r"https?://(?!www\.w3\.org/2000/svg)", t)]
    for path in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css"):
        assert console.get(path).status_code == 200
    assert console.get("/redoc").status_code == 404  # FastAPI's ReDoc page would load a CDN


def test_the_matrix_is_scoped_like_the_rest_api(console: TestClient) -> None:
    r = console.get("/v1/matrix", params={"tenant": "acme"}, headers=bearer(MEMBER))
    assert r.status_code == 200 and r.json()["epgs"] == ["api", "app", "web"]
    other = console.get("/v1/matrix", params={"tenant": "beta"}, headers=bearer(MEMBER))
    missing = console.get("/v1/matrix", params={"tenant": "nosuch"}, headers=bearer(MEMBER))
    assert other.status_code == missing.status_code == 404  # another tenant does not exist for it
    assert other.json()["error"]["message"] == "no tenant 'beta'"
    assert console.get("/v1/matrix", params={"tenant": "beta"}, headers=bearer(READER)).json()["epgs"] == [
        "db"
    ]
    assert console.get("/v1/matrix", params={"tenant": "acme"}).status_code == 401


def test_explain_route(console: TestClient) -> None:
    q = {"tenant": "acme", "source": "app1", "destination": "web1", "probe": "tcp/80"}
    r = console.get("/v1/matrix/explain", params=q, headers=bearer(MEMBER))
    assert r.status_code == 200 and r.json()["verdict"] == "allow"
    assert "contract http, rule web-in" in r.json()["reasons"][0]
    bad = console.get("/v1/matrix/explain", params={**q, "probe": "tcp"}, headers=bearer(MEMBER))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "probe"
    gone = console.get("/v1/matrix/explain", params={**q, "destination": "nope"}, headers=bearer(MEMBER))
    assert gone.status_code == 404 and gone.json()["error"]["field"] == "destination"
    beta = console.get("/v1/matrix/explain", params={**q, "tenant": "beta"}, headers=bearer(MEMBER))
    assert beta.status_code == 404


def test_the_payload_stays_small(console: TestClient) -> None:
    """The whole page (HTML, script, stylesheet) as sent: under 64 KiB uncompressed."""
    sizes = {p: len(console.get(p).content) for p in ("/", "/ui/static/app.js", "/ui/static/app.css")}
    assert sum(sizes.values()) < 64 * 1024, sizes


def test_the_wheel_ships_every_asset_of_the_page() -> None:
    """Each file the page is made of matches the package-data patterns pyproject gives setuptools
    (an installed authority has no source tree to serve them from)."""
    import fnmatch
    import tomllib

    from policyfabric.authority.console.web import STATIC

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = data["policyfabric.authority.console"]
    assets = [p.relative_to(STATIC.parent).as_posix() for p in STATIC.iterdir()]
    assert sorted(assets) == ["static/app.css", "static/app.js", "static/index.html"]
    assert all(any(fnmatch.fnmatch(a, p) for p in patterns) for a in assets)


def test_the_page_and_the_api_json_are_sent_gzipped(console: TestClient) -> None:
    """Compressed for a client that accepts gzip (every browser does), as is for one that does not;
    each compressed body decodes to the very bytes sent uncompressed."""
    import gzip

    for path, headers in (
        ("/ui/static/app.js", {}),
        ("/ui/static/app.css", {}),
        ("/v1/endpoints?tenant=acme", bearer(ADMIN)),
        ("/v1/matrix?tenant=acme", bearer(ADMIN)),
    ):
        plain = console.get(path, headers={**headers, "Accept-Encoding": "identity"})
        assert plain.status_code == 200 and "content-encoding" not in plain.headers, path
        with console.stream("GET", path, headers={**headers, "Accept-Encoding": "gzip"}) as packed:
            sent = b"".join(packed.iter_raw())  # as on the wire, before httpx decodes it
            assert packed.headers["content-encoding"] == "gzip", path
            assert "accept-encoding" in packed.headers["vary"].lower()
        assert gzip.decompress(sent) == plain.content
        assert len(sent) < len(plain.content) / 2, (path, len(sent), len(plain.content))
    small = console.get("/v1/tenants?name=beta", headers={**bearer(ADMIN), "Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers  # a few hundred bytes: not worth a gzip header
