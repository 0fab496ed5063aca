"""The web console in real browsers: Debian's headless Chromium driven by selenium (through
Debian's chromedriver) and Debian's Firefox ESR driven over WebDriver BiDi (``console_bidi``, no
geckodriver), both installed by scripts/install-browser.sh, nothing downloaded at test time. Every
test runs in each browser, against a real authority process of its own run with ``--tokens``,
the demo intent applied with the CLI and a second tenant beside it.

Each view's screenshot is saved under the test run's temporary directory (its path is printed);
with ``POLICYFABRIC_SCREENSHOTS=DIR`` they are copied there too, as ``console-VIEW.png`` from
Chromium and ``console-firefox-VIEW.png`` from Firefox (the README's
docs/img/console-topology.png and console-matrix.png are made that way).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from policyfabric.agent.dryrun import DryRunAgent
from policyfabric.lab.authority import AuthorityProcess, authority_in, free_port
from policyfabric.model import scenario as sc
from policyfabric.opflex.client import PolicyClient
from policyfabric.opflex.gbp import Cls, Prop, endpoint_uri, external_network_uri
from policyfabric.opflex.mo import MO

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from tests.console_bidi import FIREFOX, Browser, Firefox  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console-browser")]

ROOT = Path(__file__).parent.parent
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ADMIN, MEMBER = "admin-token-0123456789", "member-acme-0123456789"
WAIT = 10.0
DEMO_ACME = sorted(  # the demo's endpoints in tenant acme, all drawn
    e.data["name"]
    for e in sc.load(ROOT / "examples" / "demo.yaml").in_order()
    if e.kind.name == "endpoint" and e.data["tenant"] == "acme"
)


@pytest.fixture(scope="module", params=["chromium", "firefox"])
def browser(request: pytest.FixtureRequest) -> str:
    """Which browser the module's tests run in: each runs all of them, against its own authority."""
    return str(request.param)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory, browser: str) -> Iterator[AuthorityProcess]:
    """An authority with two tokens (admin; member of acme), the demo and a tenant beta: one per
    browser, so that each starts from the same state (the tests add tenants and endpoints)."""
    where = tmp_path_factory.mktemp(f"console-authority-{browser}")
    tokens = where / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{token: {ADMIN}, role: admin, name: admin}}\n"
        f"  - {{token: {MEMBER}, role: member, tenant: acme, name: acme-member}}\n"
    )
    tokens.chmod(0o600)
    server = authority_in(where, extra=["--tokens", str(tokens)], token=ADMIN)
    with server:
        env = {**os.environ, "POLICYFABRIC_URL": server.url, "POLICYFABRIC_TOKEN": ADMIN}
        subprocess.run(
            [sys.executable, "-m", "policyfabric", "apply", "-f", str(ROOT / "examples" / "demo.yaml")],
            env=env,
            check=True,
            capture_output=True,
        )
        beta = [
            ("tenants", {"name": "beta"}),
            ("l3-contexts", {"tenant": "beta", "name": "vb"}),
            ("bridge-domains", {"tenant": "beta", "name": "bdb", "l3_context": "vb"}),
            ("subnets", {"tenant": "beta", "name": "sb", "bridge_domain": "bdb", "cidr": "10.9.0.0/24"}),
            ("endpoint-groups", {"tenant": "beta", "name": "db", "bridge_domain": "bdb"}),
            ("endpoints", {"tenant": "beta", "name": "secret-db", "epg": "db", "ip": "10.9.0.5"}),
        ]
        with httpx.Client(base_url=server.url, headers=auth(ADMIN)) as http:
            for collection, body in beta:
                assert http.post(f"/v1/{collection}", json=body).status_code == 201
        yield server


T = TypeVar("T")


class Fabric:
    """Agents without a dataplane (OpFlex clients that declare endpoints and report on them, as
    the real agent does), on an event loop in a thread of their own beside the browser."""

    def __init__(self, authority: AuthorityProcess) -> None:
        self.peers = [authority.opflex]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: dict[str, PolicyClient] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def agent(self, host: str, endpoints: list[str]) -> None:
        client = PolicyClient(host, self.peers, backoff=(0.05, 0.5), keepalive=0.5)
        dry = DryRunAgent(client, [(e.split("/")[0], e.split("/")[1]) for e in endpoints])
        client.on_change = lambda _: dry.sync()
        self.tasks.append(asyncio.create_task(client.run()))
        for e in endpoints:
            client.resolve("PfEndpoint", endpoint_uri(*e.split("/", 1)))
        assert await client.settled(10)
        dry.sync()
        assert await client.settled(10)
        self.clients[host] = client

    async def report(self, host: str, *observables: MO) -> None:
        await self.clients[host].report(list(observables))

    async def stop(self) -> None:
        for client in self.clients.values():
            await client.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)  # let them finish cancelling

    def close(self) -> None:
        self.run(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def status(endpoint: str, value: str) -> MO:
    return MO(
        "PfEndpointStatus",
        f"/PfEndpointStatus/{endpoint.replace('/', '%2f')}/",
        {"endpoint": endpoint, "status": value},
    )


@pytest.fixture(scope="module")
def fabric(authority: AuthorityProcess) -> Iterator[Fabric]:
    """The demo's hosts h1 and h2 with their endpoints, and gateway gw1: web1, app1 and app2
    ACTIVE, web2 still BUILD with a fault on it; h1 counts 42 flows and has rendered revision 5."""
    fabric = Fabric(authority)
    try:
        fabric.run(fabric.agent("h1", ["acme/web1", "acme/app2"]))
        fabric.run(fabric.agent("h2", ["acme/web2", "acme/app1"]))
        fabric.run(fabric.agent("gw1", []))
        fault = {"code": "port-missing", "severity": "major", "description": "tap of web2 not on br-int",
                 "uri": endpoint_uri("acme", "web2")}  # fmt: skip
        counters = MO("PfAgentCounters", "/PfAgentCounters/", {"flows": 42})
        fabric.run(fabric.report("h1", status("acme/web1", "ACTIVE"), status("acme/app2", "ACTIVE"),
                                 counters, rendered(5)))  # fmt: skip
        fabric.run(fabric.report("h2", status("acme/app1", "ACTIVE"), MO("PfFault", "/PfFault/port/", fault)))
        ports = {Prop.TUNNEL_IP: "192.0.2.31", Prop.EXTERNAL_NETWORKS: [external_network_uri("public")]}
        fabric.run(fabric.report("gw1", MO(Cls.PF_GATEWAY_PORTS, "/PfGatewayPorts/", ports)))
        yield fabric
    finally:
        fabric.close()


def rendered(revision: int) -> MO:
    """What an agent reports after a reconcile that installed a new revision's flows."""
    return MO(Cls.PF_RENDERED_REVISION, f"/{Cls.PF_RENDERED_REVISION}/", {Prop.REVISION: revision})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory, browser: str) -> Path:
    where = tmp_path_factory.mktemp(f"console-screenshots-{browser}")
    print(f"console screenshots ({browser}): {where}")
    return where


def shoot(driver: Browser, where: Path, name: str) -> None:
    path = where / f"{name}.png"
    assert driver.save_screenshot(str(path)), path
    assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    copy_to = os.environ.get("POLICYFABRIC_SCREENSHOTS")
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        prefix = "console-" if isinstance(driver, webdriver.Chrome) else "console-firefox-"
        shutil.copy(path, Path(copy_to) / f"{prefix}{path.name}")


@pytest.fixture(scope="module")
def driver(browser: str) -> Iterator[Browser]:
    if browser == "firefox":
        if not FIREFOX.exists():
            pytest.skip("needs Debian's firefox-esr (scripts/install-browser.sh)")
        firefox = Firefox()
        try:
            yield firefox
        finally:
            firefox.quit()
        return
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (scripts/install-browser.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900", "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)
    chrome = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield chrome
    finally:
        chrome.quit()


def wait(driver: Browser, condition: str, *args: object, timeout: float = WAIT) -> object:
    """Wait until the JavaScript expression ``condition`` (given ``arguments``) is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {condition}", *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {condition} {args}")
        time.sleep(0.05)


def open_console(driver: Browser, url: str, token: str, view: str = "topology", query: str = "") -> None:
    """Open the page in a fresh tab state and give the token through its form, as a person would."""
    driver.get(f"{url}/ui{query}#{view}")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait(driver, "!document.getElementById('login').hidden")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait(
        driver,
        "document.getElementById('login').hidden && document.getElementById('tenant').options.length > 0",
    )


def tenants(driver: Browser) -> list[str]:
    return list(
        driver.execute_script("return [...document.getElementById('tenant').options].map(o => o.value)")
    )


def chip(driver: Browser, endpoint: str) -> str:
    """The class of an endpoint's chip in the topology: its status, and "fault"."""
    js = "return document.querySelector(`[data-ep='${arguments[0]}'] rect`).getAttribute('class')"
    return str(driver.execute_script(js, endpoint))


def choose(driver: Browser, select: str, value: str) -> None:
    """Pick ``value`` in the <select> ``select``, as a person would (its change event fires)."""
    js = "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
    js += "s.dispatchEvent(new Event('change'))"
    driver.execute_script(js, select, value)


PLACEMENT = """
const boxes = [...document.querySelectorAll('#topology [data-group]')]
  .map(g => [g.dataset.group, g.querySelector('rect').getBBox()]);
return Object.fromEntries([...document.querySelectorAll('#topology [data-ep]')].map(e => {
  const b = e.querySelector('rect').getBBox();
  const inside = boxes.find(([, r]) => b.x >= r.x && b.y >= r.y && b.x + b.width <= r.x + r.width
    && b.y + b.height <= r.y + r.height);
  return [e.dataset.ep, inside ? inside[0] : null];
}));
"""


def placement(driver: Browser) -> dict[str, str | None]:
    """Which group's box (``epg:web``, ``host:h1``) each endpoint's chip is drawn inside."""
    return dict(driver.execute_script(PLACEMENT))


def test_the_topology_shows_every_endpoint(
    authority: AuthorityProcess, fabric: Fabric, driver: Browser, screenshots: Path
) -> None:
    with httpx.Client(base_url=authority.url, headers=auth(ADMIN)) as http:
        for _ in range(100):  # statuses are written just after the report is answered
            items = http.get("/v1/endpoints", params={"tenant": "acme"}).json()["items"]
            if {e["name"]: e["status"] for e in items}["app1"] == "ACTIVE":
                break
    open_console(driver, authority.url, ADMIN)
    with httpx.Client(base_url=authority.url, headers=auth(ADMIN)) as http:
        names = [e["name"] for e in http.get("/v1/endpoints", params={"tenant": "acme"}).json()["items"]]
    assert sorted(names) == DEMO_ACME and len(DEMO_ACME) >= 4
    wait(driver, "document.querySelectorAll('#topology [data-ep]').length === arguments[0]", len(names))
    shown = driver.execute_script(
        "return [...document.querySelectorAll('#topology [data-ep]')].map(e => e.dataset.ep)"
    )
    assert sorted(shown) == [f"acme/{n}" for n in sorted(names)]
    text = driver.find_element(By.ID, "topology").text
    for part in ("vrf1", "bd1", "net4 10.1.0.0/24", "r1", "public", "fip-web1 203.0.113.10", "web", "app"):
        assert part in text, part
    assert tenants(driver) == ["acme", "beta"]
    with httpx.stream("GET", f"{authority.url}/v1/events", headers=auth(ADMIN), timeout=10) as events:
        follows = "live (events)" if events.status_code == 200 else "live (polling)"  # 404: no stream
    wait(driver, "document.getElementById('live').textContent === arguments[0]", follows)
    assert (
        chip(driver, "acme/web1") == "chip st ACTIVE" and chip(driver, "acme/web2") == "chip st BUILD fault"
    )
    assert "gateway public SNAT" in text and "active: gw1" in text  # the election's choice
    shoot(driver, screenshots, "topology")
    # endpoints placed on their hosts: each chip drawn inside its host's box
    choose(driver, "group-by", "host")
    wait(driver, "document.querySelector('[data-group=\"host:h1\"]') !== null")
    demo = [e.data for e in sc.load(ROOT / "examples" / "demo.yaml").in_order() if e.kind.name == "endpoint"]
    hosts_of = {f"acme/{e['name']}": f"host:{e['host']}" for e in demo if e["tenant"] == "acme"}
    assert placement(driver) == hosts_of
    assert placement(driver)["acme/web1"] == "host:h1"  # (the demo places it there)
    hosts = driver.execute_script(
        "return [...document.querySelectorAll('#topology [data-group]')].map(g => g.textContent)"
    )
    assert any(h.startswith("gw1") and "active gateway of acme/r1" in h for h in hosts), hosts
    shoot(driver, screenshots, "hosts")
    choose(driver, "group-by", "epg")
    groups_of = {f"acme/{e['name']}": f"epg:{e['epg']}" for e in demo if e["tenant"] == "acme"}
    assert placement(driver) == groups_of
    # a status reported by an agent shows without reload
    fabric.run(fabric.report("h2", status("acme/web2", "ACTIVE")))
    wait(
        driver,
        "document.querySelector(`[data-ep='${arguments[0]}'] rect`).classList.contains('ACTIVE')",
        "acme/web2",
        timeout=8,
    )
    # search: finds an endpoint by address, highlights it and shows its details
    search = driver.find_element(By.ID, "search")
    search.send_keys("10.1.0.21\n")
    wait(driver, "document.querySelector('#topology .ep.found') !== null")
    assert (
        driver.execute_script("return document.querySelector('#topology .ep.found').dataset.ep")
        == "acme/app2"
    )
    assert "endpoint app2" in driver.find_element(By.ID, "details").text
    search.clear()


def test_a_matrix_cell_explains_with_the_rule(
    authority: AuthorityProcess, driver: Browser, screenshots: Path
) -> None:
    open_console(driver, authority.url, ADMIN, "matrix")
    wait(driver, "document.getElementById('cell-epg-app-web') !== null")
    cells = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('td.cell')].map(c => [c.id, c.className]))"
    )
    assert "allow" in cells["cell-epg-web-web"] and "deny" in cells["cell-epg-web-app"]
    assert "partial" in cells["cell-epg-app-web"] and "cell-sg-ssh-from-app-ssh-from-app" in cells
    driver.find_element(By.ID, "cell-epg-app-web").click()
    wait(driver, "document.querySelector('#explain-answer .reasons') !== null")
    answer = driver.find_element(By.ID, "explain").text
    assert "app1 → web1 tcp/80: allow" in answer
    assert "contract http, rule web-in (consumer -> provider)" in answer
    assert "From the intent" in answer
    shoot(driver, screenshots, "matrix")
    # another probe for the same pair: the default deny
    probe = driver.find_element(By.ID, "explain-probe")
    probe.clear()
    probe.send_keys("tcp/22\n")
    wait(driver, "document.getElementById('explain-answer').textContent.includes('tcp/22')")
    assert "default deny" in driver.find_element(By.ID, "explain-answer").text
    driver.find_element(By.ID, "cell-epg-app-app").click()
    wait(driver, "document.getElementById('explain-answer')?.textContent.includes('intra_group deny')")
    # the matrix follows a change of the contract, without reload
    driver.execute_script("window.notReloaded = true")
    with httpx.Client(base_url=authority.url, headers=auth(ADMIN)) as http:
        [http_contract] = http.get("/v1/contracts", params={"tenant": "acme", "name": "http"}).json()["items"]
        body = {f: http_contract[f] for f in ("tenant", "name", "rules")}
        body["rules"][0]["classifier"]["port"] = 8080
        assert http.put(f"/v1/contracts/{http_contract['id']}", json=body).status_code == 200
        try:
            wait(driver, "document.getElementById('cell-epg-app-web').textContent === 'tcp/8080'", timeout=5)
            assert driver.execute_script("return window.notReloaded === true")
        finally:
            body["rules"][0]["classifier"]["port"] = 80
            assert http.put(f"/v1/contracts/{http_contract['id']}", json=body).status_code == 200


def test_a_change_through_the_api_shows_without_reload(
    authority: AuthorityProcess, driver: Browser
) -> None:
    open_console(driver, authority.url, ADMIN)
    wait(driver, "document.querySelectorAll('#topology [data-ep]').length === arguments[0]", len(DEMO_ACME))
    driver.execute_script("window.notReloaded = true")
    body = {"tenant": "acme", "name": "web9", "epg": "web", "ip": "10.1.0.19", "host": "h1"}
    with httpx.Client(base_url=authority.url, headers=auth(ADMIN)) as http:
        made = http.post("/v1/endpoints", json=body)
        assert made.status_code == 201, made.text
        wait(driver, "document.querySelector('[data-ep=\"acme/web9\"]') !== null", timeout=5)
        assert http.delete(f"/v1/endpoints/{made.json()['id']}").status_code == 200
    wait(driver, "document.querySelector('[data-ep=\"acme/web9\"]') === null", timeout=5)
    assert driver.execute_script("return window.notReloaded === true")


def test_a_member_token_sees_only_its_tenant(authority: AuthorityProcess, driver: Browser) -> None:
    # an unknown token: the form stays, with the authority's reason
    driver.get(f"{authority.url}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()
    wait(driver, "!document.getElementById('login').hidden")
    driver.find_element(By.ID, "token").send_keys("not-a-token-0123456789\n")
    wait(
        driver, "document.getElementById('login-error').textContent.includes('not one this authority knows')"
    )
    assert not driver.find_element(By.ID, "login").get_attribute("hidden")
    open_console(driver, authority.url, MEMBER)
    wait(driver, "document.querySelectorAll('#topology [data-ep]').length === arguments[0]", len(DEMO_ACME))
    assert tenants(driver) == ["acme"]
    assert "secret-db" not in driver.page_source
    driver.get(f"{authority.url}/ui#agents")  # a new page load: the token stays for the tab
    wait(driver, "document.getElementById('agents-note').textContent.length > 0")
    assert "span every tenant" in driver.find_element(By.ID, "agents-note").text
    assert driver.find_element(By.ID, "login").get_attribute("hidden") is not None


def test_agents_view_and_swagger_served_locally(
    authority: AuthorityProcess, fabric: Fabric, driver: Browser, screenshots: Path
) -> None:
    open_console(driver, authority.url, ADMIN, "agents")
    wait(driver, "document.getElementById('gateways').textContent.includes('acme/r1')")
    rows = driver.execute_script(
        "return [...document.querySelectorAll('#agents tr')].slice(1)"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    by_host = {row[0]: row for row in rows}
    assert sorted(by_host) == ["gw1", "h1", "h2"]
    assert by_host["h1"][2].startswith("connected") and by_host["h1"][4] == "42" and by_host["h1"][5] == "2"
    assert by_host["gw1"][7] == "acme/r1"
    assert "acme/r1 public gw1, gw2 gw1" in driver.find_element(By.ID, "gateways").text
    faults = driver.find_element(By.ID, "faults").text
    assert "major h2 port-missing tap of web2 not on br-int" in faults
    # last reconcile: when the agent last reported a new rendered revision (h1 did, h2 not yet)
    assert re.fullmatch(r".+ \(\d+ s ago\)", by_host["h1"][6]), by_host["h1"]
    assert by_host["h2"][6].startswith("not reported; last report "), by_host["h2"]
    driver.execute_script("window.notReloaded = true")
    before = time.time()
    fabric.run(fabric.report("h2", rendered(7)))
    wait(driver, "document.querySelectorAll('#agents tr')[2]?.cells[6].textContent.endsWith('s ago)')")
    assert driver.execute_script("return window.notReloaded === true")
    with httpx.Client(base_url=authority.url, headers=auth(ADMIN)) as http:
        h2 = next(a for a in http.get("/v1/agents").json()["items"] if a["name"] == "h2")
    assert h2["rendered_revision"] >= 7 and before <= h2["rendered_at"] <= time.time()
    shoot(driver, screenshots, "agents")
    driver.get(f"{authority.url}/docs")  # Swagger UI from the package's files: renders offline
    wait(driver, "document.querySelector('.swagger-ui .info .title')?.textContent.includes('policyfabric')")
    wait(driver, "document.querySelectorAll('.opblock').length > 20")
    shoot(driver, screenshots, "docs")


def test_a_thousand_endpoints_stay_readable(
    authority: AuthorityProcess, driver: Browser, screenshots: Path
) -> None:
    """1,000 endpoints in 10 groups: the groups start collapsed (a summary each, no chips), and a
    search opens the one group that holds the endpoint and marks it."""
    objs: list[tuple[str, dict[str, Any]]] = [
        ("tenant", {"name": "big"}),
        ("l3_context", {"tenant": "big", "name": "v"}),
        ("bridge_domain", {"tenant": "big", "name": "bd", "l3_context": "v"}),
        ("subnet", {"tenant": "big", "name": "s", "bridge_domain": "bd", "cidr": "10.50.0.0/16"}),
        *[("endpoint_group", {"tenant": "big", "name": f"g{g}", "bridge_domain": "bd"}) for g in range(10)],
        *[
            (
                "endpoint",
                {
                    "tenant": "big",
                    "name": f"ep{i}",
                    "epg": f"g{i // 100}",
                    "ip": f"10.50.{i // 200}.{i % 200 + 10}",
                },
            )
            for i in range(1000)
        ],
    ]
    with httpx.Client(base_url=authority.url, headers=auth(ADMIN), timeout=60) as http:
        done = http.post(
            "/v1/batch", json={"items": [{"op": "create", "kind": k, "object": o} for k, o in objs]}
        )
        assert done.status_code == 200, done.text
    open_console(driver, authority.url, ADMIN, query="?tenant=big")  # ?tenant= opens that tenant
    wait(driver, "document.getElementById('topology').dataset.endpoints === '1000'")
    assert driver.execute_script("return document.querySelectorAll('#topology [data-ep]').length") == 0
    summaries = driver.execute_script(
        "return [...document.querySelectorAll('#topology [data-group]')].map(g => g.textContent)"
    )
    assert len(summaries) == 10 and all("100 endpoints ▸" in t for t in summaries), summaries
    search = driver.find_element(By.ID, "search")
    search.send_keys("ep777\n")
    wait(driver, "document.querySelector('#topology .ep.found') !== null")
    assert driver.execute_script("return document.querySelectorAll('#topology [data-ep]').length") == 100
    assert placement(driver)["big/ep777"] == "epg:g7"
    shoot(driver, screenshots, "big")
    search.clear()


NO_ROUTE = {"error": {"code": "not_found", "message": "no such resource: /v1/explain", "field": None}}


class EventFeed:
    """A ``GET /v1/events`` of the test's own in front of the real REST app (same process): it
    streams what the test puts, in the events contract's format, and records the Authorization
    header each stream came with. It tests the page's streaming reader, not the authority's feed.

    Likewise ``GET /v1/explain``: it answers ``explain`` (status, body) as the dataplane explain's
    contract says, or, while that is None, the 404 of a route the authority does not have (an
    authority without dataplane explain), and records each query. It tests what the page does with
    each answer, not the authority's explain."""

    def __init__(self) -> None:
        self.pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.authorization: list[str | None] = []
        self.explain: tuple[int, dict[str, Any]] | None = None
        self.explained: list[dict[str, str]] = []

    def put(self, event: str, data: dict[str, Any]) -> None:
        self.pending.put(f"event: {event}\ndata: {json.dumps(data)}\n\n")

    def app(self, inner: FastAPI) -> FastAPI:
        outer = FastAPI()

        @outer.get("/v1/events")
        async def events(request: Request) -> StreamingResponse:
            self.authorization.append(request.headers.get("authorization"))

            async def stream() -> AsyncIterator[bytes]:
                yield b": the test's feed\n\n"
                while not await request.is_disconnected():
                    try:
                        yield self.pending.get_nowait().encode()
                    except queue.Empty:
                        await asyncio.sleep(0.02)

            return StreamingResponse(stream(), media_type="text/event-stream")

        @outer.get("/v1/explain")
        async def explain(request: Request) -> JSONResponse:
            self.explained.append(dict(request.query_params))
            status, body = self.explain or (404, NO_ROUTE)
            return JSONResponse(body, status_code=status)

        outer.mount("/", inner)
        return outer


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory, browser: str) -> Iterator[tuple[str, EventFeed]]:
    """The REST app with the demo and the admin token, behind an ``EventFeed``, served by uvicorn
    on loopback from a thread: (its URL, the feed)."""
    from policyfabric.authority.api import create_app
    from policyfabric.authority.auth import parse_tokens
    from policyfabric.authority.service import Authority
    from policyfabric.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path_factory.mktemp(f"console-feed-{browser}") / "pf.db")
    authority = Authority(store)
    tokens = parse_tokens({"tokens": [{"token": ADMIN, "role": "admin"}]}, "test")
    events = EventFeed()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            events.app(create_app(authority, tokens=tokens)),
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        items = [
            {"op": "create", "kind": e.kind.name, "object": e.data}
            for e in sc.load(ROOT / "examples" / "demo.yaml").in_order()
        ]
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        with httpx.Client(base_url=url, headers=auth(ADMIN)) as http:
            assert http.post("/v1/batch", json={"items": items}).status_code == 200
        yield url, events
    finally:
        server.should_exit = True
        thread.join(10)
        store.close()


def test_the_page_follows_the_events_stream(driver: Browser, feed: tuple[str, EventFeed]) -> None:
    url, events = feed
    open_console(driver, url, ADMIN)
    wait(driver, "document.getElementById('live').textContent === 'live (events)'")
    assert events.authorization[-1] == f"Bearer {ADMIN}"  # fetch() sends it; EventSource could not
    ghost = {"id": "x-ghost", "revision": 99, "tenant": "acme", "name": "ghost", "epg": "web",
             "ip": ["10.1.0.99"], "host": "h1", "status": "ACTIVE", "security_groups": []}  # fmt: skip
    # only the stream knows this endpoint: the store never had it
    events.put(
        "change",
        {
            "revision": 99,
            "kind": "endpoint",
            "tenant": "acme",
            "name": "ghost",
            "op": "create",
            "object": ghost,
        },
    )
    wait(
        driver,
        "document.querySelector(`[data-ep='acme/ghost'] rect`)?.classList.contains('ACTIVE')",
        timeout=5,
    )
    assert driver.find_element(By.ID, "revision").text == "revision 99"
    # a status event, cut in two chunks mid-JSON: the reader puts it back together
    text = json.dumps(
        {
            "revision": 100,
            "kind": "endpoint",
            "tenant": "acme",
            "name": "web1",
            "status": "BUILD",
            "host": "h1",
        }
    )
    events.pending.put(f"event: status\ndata: {text[:20]}")
    threading.Event().wait(0.2)
    events.pending.put(f"{text[20:]}\n\n")
    wait(
        driver, "document.querySelector(`[data-ep='acme/web1'] rect`).classList.contains('BUILD')", timeout=5
    )
    events.put(
        "change",
        {
            "revision": 101,
            "kind": "endpoint",
            "tenant": "acme",
            "name": "ghost",
            "op": "delete",
            "object": None,
        },
    )
    wait(driver, "document.querySelector(`[data-ep='acme/ghost']`) === null", timeout=5)
    # another tenant's change is not drawn in this one
    events.put(
        "change",
        {
            "revision": 102,
            "kind": "endpoint",
            "tenant": "beta",
            "name": "other",
            "op": "create",
            "object": {**ghost, "tenant": "beta", "name": "other"},
        },
    )
    events.put(
        "change",
        {
            "revision": 103,
            "kind": "endpoint",
            "tenant": "acme",
            "name": "late",
            "op": "create",
            "object": {**ghost, "name": "late"},
        },
    )
    wait(driver, "document.querySelector(`[data-ep='acme/late']`) !== null", timeout=5)
    assert driver.execute_script("return document.querySelector(`[data-ep='beta/other']`)") is None
    driver.get("about:blank")  # closes the stream, so the server stops at once


DATAPLANE = {
    "verdict": "allow",
    "by": "contract http, rule web-in (consumer -> provider)",
    "source": "dataplane",
    "hops": [
        {"host": "h2", "renderer": "ovs", "outcome": "to the tunnel, towards 192.0.2.11", "flows": [
            {"table": "policy", "match": "reg0=0x2,reg1=0x1,tcp,tp_dst=80", "priority": 300,
             "from": "contract http, rule web-in", "actions": ["resubmit(,route)"]}]},
        {"host": "h1", "renderer": "ovs", "outcome": "output to web1's port", "flows": [
            {"table": "deliver", "match": "reg7=0x5", "priority": 100, "from": "endpoint acme/web1",
             "actions": ["output:5"]}]},
    ],
}  # fmt: skip


def test_a_matrix_cell_explains_from_the_dataplane_or_says_it_is_the_intent(
    driver: Browser, feed: tuple[str, EventFeed]
) -> None:
    url, stub = feed
    stub.explain, stub.explained[:] = None, []
    open_console(driver, url, ADMIN, "matrix")
    wait(driver, "document.getElementById('cell-epg-app-web') !== null")
    # no dataplane explain on this authority (404, no field): the matrix's, from the intent, says so
    driver.find_element(By.ID, "cell-epg-app-web").click()
    wait(driver, "document.getElementById('explain-answer')?.dataset.source === 'intent'")
    answer = driver.find_element(By.ID, "explain-answer").text
    assert "app1 → web1 tcp/80: allow" in answer and "contract http, rule web-in" in answer
    assert "From the intent" in answer and "does not explain from the dataplane" in answer
    assert stub.explained == [{"from": "acme/app1", "to": "acme/web1", "probe": "tcp/80"}]
    explain_again = "document.getElementById('explain-answer').innerHTML = ''; "
    explain_again += "document.querySelector('#explain-form button').click()"
    # the dataplane's answer: the hops, each host's flows, and the rule that decided
    stub.explain = (200, DATAPLANE)
    driver.execute_script(explain_again)
    wait(driver, "document.getElementById('explain-answer').dataset.source === 'dataplane'")
    answer = driver.find_element(By.ID, "explain-answer").text
    assert "app1 → web1 tcp/80: allow" in answer
    assert "decided by contract http, rule web-in (consumer -> provider)" in answer
    hops = driver.execute_script(
        "return [...document.querySelectorAll('#explain-answer .hops > li')].map(li => li.textContent)"
    )
    assert len(hops) == 2 and hops[0].startswith("host h2 (ovs): to the tunnel, towards 192.0.2.11")
    assert "reg0=0x2,reg1=0x1,tcp,tp_dst=80" in hops[0] and "output:5" in hops[1]
    assert "From the dataplane" in answer and "From the intent" not in answer
    # the route answered, but from the intent (the host could not trace): said, with its reason
    stub.explain = (200, {"verdict": "deny", "by": "deny: default deny", "hops": [], "source": "intent",
                          "reason": "host h2 cannot trace"})  # fmt: skip
    driver.execute_script(explain_again)
    wait(driver, "document.getElementById('explain-answer').dataset.source === 'intent'")
    answer = driver.find_element(By.ID, "explain-answer").text
    assert "From the intent" in answer and "host h2 cannot trace" in answer and "deny" in answer
    # the route's own 404 (an endpoint it does not know) is an answer, not a missing route
    unknown = {"code": "not_found", "message": "no endpoint 'acme/web1'", "field": "to"}
    stub.explain = (404, {"error": unknown})
    driver.execute_script(explain_again)
    wait(driver, "document.querySelector('#explain-answer .error') !== null")
    assert driver.find_element(By.ID, "explain-answer").text == "no endpoint 'acme/web1'"
    # a pair with no IPv4 address between them is asked in IPv6
    stub.explain = (200, DATAPLANE)
    driver.find_element(By.ID, "cell-epg-api-web").click()
    choose(driver, "explain-to", "web3")
    driver.execute_script(explain_again)
    wait(driver, "document.getElementById('explain-answer').dataset.source === 'dataplane'")
    for _ in range(100):
        if stub.explained[-1]["to"] == "acme/web3":
            break
        time.sleep(0.05)
    assert stub.explained[-1] == {"from": "acme/api1", "to": "acme/web3", "probe": "tcp6/80"}
