"""How soon the web console shows the topology, at N endpoints, and how much it downloads.

Starts an authority on loopback, creates one tenant (one bridge domain, one /16 subnet, an
endpoint group per 100 endpoints, 20 hosts) with N endpoints, then opens the console --samples
times per N and per pass: a fresh page load each time. The passes, all in the same run:

- ``chromium``: Debian's headless Chromium (selenium), gzip accepted (as every browser does);
  every pass bypasses the browser's cache: each load is a first visit;
- ``chromium-identity``: the same with ``Accept-Encoding: identity`` (set through DevTools):
  the page as it was before the authority compressed anything;
- ``chromium-10mbit`` and ``chromium-identity-10mbit``: both over a link DevTools limits to
  10 Mbit/s down and up, 2 ms latency (a far-away or busy control network), where the bytes count;
- ``firefox``: Debian's Firefox ESR over WebDriver BiDi (tests/console_bidi.py), gzip accepted.

Reported per N and pass (medians and p99, in ms, from the browser's performance clock,
navigation start = 0):

- ``first_topology_ms``: until the first topology with every endpoint is drawn (data fetched,
  parsed and the SVG built): what an operator waits for;
- ``page_bytes`` (HTML, script, stylesheet) and ``data_bytes`` (the /v1 answers) as sent, and
  ``page_decoded_bytes``/``data_decoded_bytes`` once decompressed;
- in the ``chromium`` pass only: ``render_ms`` (the drawing alone, groups of more than 24
  collapsed, as the page starts), ``expand_all_ms`` (drawing again with every group expanded,
  until painted) and ``search_ms`` (finding one endpoint by name, expanding its group, drawing).

Ratios, all within the run: each N's first render against the first N's (same pass), and each
pass's first render against the ``chromium`` pass's (same N).
Prints one JSON line.
Run: python bench/console.py [--n 10,1000,10000] [--samples 5] [--passes chromium,firefox,...]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PER_GROUP, HOSTS = 100, 20


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def intent(tenant: str, n: int) -> list[dict[str, Any]]:
    """Batch items: a tenant with ``n`` endpoints in groups of PER_GROUP."""
    groups = max(1, -(-n // PER_GROUP))
    objs: list[tuple[str, dict[str, Any]]] = [
        ("tenant", {"name": tenant}),
        ("l3_context", {"tenant": tenant, "name": "vrf"}),
        ("bridge_domain", {"tenant": tenant, "name": "bd", "l3_context": "vrf"}),
        ("subnet", {"tenant": tenant, "name": "net", "bridge_domain": "bd", "cidr": "10.64.0.0/16"}),
    ]
    objs += [
        ("endpoint_group", {"tenant": tenant, "name": f"g{g}", "bridge_domain": "bd"}) for g in range(groups)
    ]
    base = ipaddress.ip_address("10.64.1.0")
    objs += [
        (
            "endpoint",
            {
                "tenant": tenant,
                "name": f"ep{i}",
                "epg": f"g{i // PER_GROUP}",
                "ip": str(base + i),
                "host": f"h{i % HOSTS}",
            },
        )
        for i in range(n)
    ]
    return [{"op": "create", "kind": kind, "object": obj} for kind, obj in objs]


PASSES = ("chromium", "chromium-identity", "chromium-10mbit", "chromium-identity-10mbit", "firefox")
MBIT = 10
# each timed until the frame after it is painted (the next animation frame, then the task after
# it): layout and paint of the new SVG are counted. A promise: both drivers wait for it.
PAINTED = (
    "return new Promise(done => { const t0 = performance.now(); %s;"
    " requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0)); })"
)
SIZES = (
    "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))"
    ".map(e => [e.name, e.encodedBodySize, e.decodedBodySize])"
)


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,900"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def configure(driver: Any, name: str) -> None:
    """Set the browser's network state for the pass ``name``. Every pass bypasses the cache (a
    first visit): otherwise a pass without gzip would revalidate the page's assets (same ETag) and
    be handed the compressed copies the pass before it cached."""
    if not name.startswith("chromium"):
        driver.command("network.setCacheBehavior", cacheBehavior="bypass")  # Firefox, over BiDi
        return
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    extra = {"Accept-Encoding": "identity"} if "identity" in name else {}
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": extra})
    rate = MBIT * 1_000_000 / 8 if "mbit" in name else -1  # bytes/s; -1: no limit
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 2 if "mbit" in name else 0,
         "downloadThroughput": rate, "uploadThroughput": rate},
    )  # fmt: skip


def wait_for(driver: Any, script: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        time.sleep(0.02)


def measure(driver: Any, name: str, url: str, n: int, samples: int, shots: Path | None) -> dict[str, Any]:
    first: list[float] = []
    render: list[float] = []
    expand: list[float] = []
    search: list[float] = []
    sizes: list[list[Any]] = []
    full = name == "chromium"
    for _ in range(samples):
        # the last page's events stream ended first: under DevTools throttling a stream left open
        # across navigations held up later page loads by up to a minute now and then
        driver.execute_script("if (typeof stopLive === 'function') stopLive()")
        driver.get("about:blank")
        driver.get(url)
        mark = wait_for(driver, "return window.pfFirstTopology", 120)
        assert mark["endpoints"] == n, mark
        first.append(float(mark["at"]))
        if shots and not render and full:
            shots.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(shots / f"topology-{n}.png"))
        sizes = driver.execute_script(SIZES)
        if not full:
            continue
        drawn = driver.execute_script("return +document.getElementById('topology').dataset.renderMs")
        render.append(float(drawn))
        find = "const s = document.getElementById('search'); s.value = arguments[0];"
        find += "s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}))"
        search.append(float(driver.execute_script(PAINTED % find, f"ep{n - 1}")))
        expand.append(float(driver.execute_script(PAINTED % "document.getElementById('expand-all').click()")))
    row: dict[str, Any] = {"first_topology_ms": {"median": statistics.median(first), "p99": pct(first, 0.99)}}
    for what, values in (("render_ms", render), ("expand_all_ms", expand), ("search_ms", search)):
        if values:
            row[what] = {"median": statistics.median(values), "p99": pct(values, 0.99)}
    for part, is_data in (("page", False), ("data", True)):
        mine = [(sent, whole) for where, sent, whole in sizes if ("/v1/" in where) == is_data]
        row[f"{part}_bytes"] = sum(sent for sent, _ in mine)
        row[f"{part}_decoded_bytes"] = sum(whole for _, whole in mine)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", default="10,1000,10000", help="endpoint counts, comma-separated (first: baseline)"
    )
    parser.add_argument("--samples", type=int, default=5, help="page loads per size and pass")
    parser.add_argument("--passes", default=",".join(PASSES), help=f"some of {', '.join(PASSES)}")
    parser.add_argument(
        "--screenshots", type=Path, help="save the topology at each size here (topology-N.png)"
    )
    args = parser.parse_args()

    import httpx

    sys.path.insert(0, str(ROOT))  # the BiDi client of the console's tests
    from tests.console_bidi import Firefox

    from policyfabric.lab.authority import authority_in

    sizes = [int(x) for x in args.n.split(",")]
    passes = [p for p in args.passes.split(",") if p]
    assert passes and set(passes) <= set(PASSES), passes
    results: dict[str, Any] = {"samples": args.samples, "passes": passes}
    with tempfile.TemporaryDirectory() as tmp, authority_in(Path(tmp) / "authority") as server:
        drivers: dict[str, Any] = {}
        try:
            if any(p.startswith("chromium") for p in passes):
                drivers["chromium"] = chromium()
            if "firefox" in passes:
                drivers["firefox"] = Firefox()
            for n in sizes:
                tenant = f"t{n}"
                with httpx.Client(base_url=server.url, timeout=300) as http:
                    items = intent(tenant, n)
                    for at in range(0, len(items), 2000):  # under the default --max-body of 1 MiB
                        done = http.post("/v1/batch", json={"items": items[at : at + 2000]})
                        assert done.status_code == 200, done.text
                results[str(n)] = {}
                for name in passes:  # interleaved per size: the machine's load hits every pass alike
                    driver = drivers[name.split("-")[0]]
                    configure(driver, name)
                    url = f"{server.url}/ui?tenant={tenant}#topology"
                    row = measure(driver, name, url, n, args.samples, args.screenshots)
                    results[str(n)][name] = row
                    print(f"N={n} {name}: {json.dumps(row)}", file=sys.stderr)
        finally:
            for driver in drivers.values():
                driver.quit()
    def first(n: int, name: str) -> float:
        return float(results[str(n)][name]["first_topology_ms"]["median"])

    for n in sizes:
        for name in passes:
            row = results[str(n)][name]
            row["first_topology_vs_smallest_n"] = round(first(n, name) / first(sizes[0], name), 2)
            if "chromium" in passes and name != "chromium":
                row["first_topology_vs_chromium"] = round(first(n, name) / first(n, "chromium"), 2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
