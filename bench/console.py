"""How soon the web console shows the topology, at N endpoints, and how much it downloads.

Starts an authority on loopback, creates one tenant (one bridge domain, one /16 subnet, an
endpoint group per 100 endpoints, 20 hosts) with N endpoints, then opens the console in Debian's
headless Chromium (selenium) --samples times per N: a fresh page load each time. Reported per N
(medians and p99, in ms, from the browser's performance clock, navigation start = 0):

- ``first_topology_ms``: until the first topology with every endpoint is drawn (data fetched,
  parsed and the SVG built): what an operator waits for;
- ``render_ms``: the drawing alone (groups of more than 24 collapsed, as the page starts);
- ``expand_all_ms``: drawing again with every group expanded (every endpoint as a chip), until
  painted;
- ``search_ms``: finding one endpoint by name, expanding its group and drawing (from the page
  as it starts);
- ``page_bytes`` (HTML, script, stylesheet) and ``data_bytes`` (the /v1 answers), as sent.

The first N given is the baseline: the other sizes' first render is also given as a ratio to it,
measured in the same run. Prints one JSON line.
Run: python bench/console.py [--n 10,1000,10000] [--samples 5]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
import tempfile
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", default="10,1000,10000", help="endpoint counts, comma-separated (first: baseline)"
    )
    parser.add_argument("--samples", type=int, default=5, help="page loads per size")
    parser.add_argument(
        "--screenshots", type=Path, help="save the topology at each size here (topology-N.png)"
    )
    args = parser.parse_args()

    import httpx
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from policyfabric.lab.authority import authority_in

    sizes = [int(x) for x in args.n.split(",")]
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    results: dict[str, Any] = {"samples": args.samples}
    with tempfile.TemporaryDirectory() as tmp, authority_in(Path(tmp) / "authority") as server:
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            for n in sizes:
                tenant = f"t{n}"
                with httpx.Client(base_url=server.url, timeout=300) as http:
                    items = intent(tenant, n)
                    for at in range(0, len(items), 2000):  # under the default --max-body of 1 MiB
                        done = http.post("/v1/batch", json={"items": items[at : at + 2000]})
                        assert done.status_code == 200, done.text
                first, render, expand, search = [], [], [], []
                page_bytes = data_bytes = 0
                for _ in range(args.samples):
                    driver.get("about:blank")
                    driver.get(f"{server.url}/ui?tenant={tenant}#topology")
                    WebDriverWait(driver, 120, 0.02).until(
                        lambda d: d.execute_script("return window.pfFirstTopology")
                    )
                    mark = driver.execute_script("return window.pfFirstTopology")
                    assert mark["endpoints"] == n, mark
                    first.append(mark["at"])
                    if args.screenshots and not render:
                        args.screenshots.mkdir(parents=True, exist_ok=True)
                        driver.save_screenshot(str(args.screenshots / f"topology-{n}.png"))
                    render.append(
                        float(
                            driver.execute_script(
                                "return +document.getElementById('topology').dataset.renderMs"
                            )
                        )
                    )
                    # each timed until the frame after it is painted (the next animation frame, then
                    # the task after it): layout and paint of the new SVG are counted
                    painted = (
                        "const done = arguments[arguments.length - 1]; const t0 = performance.now();"
                        "%s; requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0))"
                    )
                    t = driver.execute_async_script(
                        painted
                        % (
                            "const s = document.getElementById('search'); s.value = arguments[0];"
                            "s.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter'}))"
                        ),
                        f"ep{n - 1}",
                    )
                    search.append(float(t))
                    t = driver.execute_async_script(painted % "document.getElementById('expand-all').click()")
                    expand.append(float(t))
                    entries = driver.execute_script(
                        "return performance.getEntriesByType('navigation').concat("
                        "performance.getEntriesByType('resource')).map(e => [e.name, e.encodedBodySize])"
                    )
                    page_bytes = sum(size for name, size in entries if "/v1/" not in name)
                    data_bytes = sum(size for name, size in entries if "/v1/" in name)
                row: dict[str, Any] = {
                    "render_ms": {"median": statistics.median(render), "p99": pct(render, 0.99)},
                    "expand_all_ms": {"median": statistics.median(expand), "p99": pct(expand, 0.99)},
                    "search_ms": {"median": statistics.median(search), "p99": pct(search, 0.99)},
                    "page_bytes": page_bytes,
                    "data_bytes": data_bytes,
                }
                row["first_topology_ms"] = {"median": statistics.median(first), "p99": pct(first, 0.99)}
                results[str(n)] = row
                print(f"N={n}: {json.dumps(row)}", file=sys.stderr)
        finally:
            driver.quit()
    base = results[str(sizes[0])]["first_topology_ms"]["median"]
    for n in sizes[1:]:
        mine = results[str(n)]["first_topology_ms"]["median"]
        results[str(n)]["first_topology_vs_baseline"] = round(mine / base, 2)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
