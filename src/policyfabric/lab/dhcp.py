"""``dhcp: true`` endpoints: a real DHCP client in the namespace, as a booting VM runs one.

ISC's ``dhclient`` (Debian's isc-dhcp-client, installed by scripts/bootstrap.sh) with Debian's own
``dhclient-script``, which applies what the server says: the address, the router, classless static
routes (option 121), the MTU (option 26), the name servers. ``dhclient -6`` runs beside it where
one of the endpoint's IPv6 subnets hands out addresses (dhcpv6-stateful) or only options
(dhcpv6-stateless: ``-S``, information-request). Router advertisements are accepted by the kernel
(``plumbing.plug`` sets ``accept_ra`` and ``autoconf``).

Each client runs in the endpoint's namespace with a UTS namespace of its own (``unshare
--uts``: dhclient-script may set the host name) and an ``/etc/netns/NS/resolv.conf``, which
``ip netns exec`` mounts over /etc/resolv.conf, so what it writes stays the endpoint's. Leases,
pid files and logs live in the lab's directory; the pids are in the lab's state (``dhclient:NAME``,
``dhclient6:NAME``), so ``lab down`` stops them with the rest.

``wait`` then gives every DHCP endpoint a bounded time to hold its intent addresses and says,
for each one that does not, what is missing: the lab reports it and goes on (its probes then
measure what they measure), it never hangs and never pretends.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from policyfabric.lab import readback
from policyfabric.lab.plan import LabError
from policyfabric.lab.ports import PortConfig
from policyfabric.lab.state import LabState
from policyfabric.sh import CommandFailed, run

DHCP_WAIT = 10.0  # seconds a DHCP endpoint has to come up with its intent addresses
LINK_LOCAL_WAIT = 5.0  # dhclient -6 exits if its link-local address is still tentative
NETNS_ETC = Path("/etc/netns")


def dhclient() -> str:
    found = shutil.which("dhclient") or shutil.which("dhclient", path="/sbin:/usr/sbin")
    if found is None:
        raise LabError("dhcp: true needs ISC's dhclient: install isc-dhcp-client (scripts/bootstrap.sh does)")
    return found


def netns_etc(netns: str) -> Path:
    """The files ``ip netns exec`` mounts over /etc inside ``netns``."""
    return NETNS_ETC / netns


def start(state: LabState, name: str, cfg: PortConfig, directory: Path) -> None:
    """The endpoint's DHCP client(s), in the background, recorded in the lab state."""
    program = dhclient()
    ep = state.endpoints[name]
    etc = netns_etc(ep.netns)
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").touch()
    runs = [("dhclient", ["-4"])]
    if cfg.dhcpv6 is not None:
        _link_local_ready(ep.netns)
        runs.append(("dhclient6", ["-6", *(["-S"] if cfg.dhcpv6 == "stateless" else [])]))
    directory.mkdir(parents=True, exist_ok=True)
    for role, family in runs:
        base = directory / f"{name}.{role}"
        cmd = ["ip", "netns", "exec", ep.netns, "unshare", "--uts", program, "-d", "-v", *family,
               "-lf", f"{base}.leases", "-pf", f"{base}.pid", readback.DEVICE]  # fmt: skip
        with open(f"{base}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        state.pids[f"{role}:{name}"] = proc.pid
        state.save()


def _link_local_ready(netns: str) -> None:
    """Until eth0's link-local address has passed duplicate detection (bounded)."""
    deadline = time.monotonic() + LINK_LOCAL_WAIT
    while time.monotonic() < deadline:
        text = run(["ip", "-6", "addr", "show", "dev", readback.DEVICE, "scope", "link"], netns=netns)
        if "inet6 fe80" in text and "tentative" not in text:
            return
        time.sleep(0.1)


def wait(state: LabState, configs: Mapping[str, PortConfig], timeout: float = DHCP_WAIT) -> dict[str, str]:
    """Until every endpoint in ``configs`` holds all its intent addresses, at most ``timeout``
    seconds; returns a warning line for each endpoint that does not, naming what it lacks."""
    deadline = time.monotonic() + timeout
    lacking: dict[str, list[str]] = {}
    while True:
        lacking = {}
        for name, cfg in configs.items():
            try:
                ns = readback.read(state.endpoints[name].netns)
            except CommandFailed:
                ns = readback.Namespace()
            absent = [ip for ip in cfg.addresses if not ns.holds(ip)]
            if absent:
                lacking[name] = absent
        if not lacking or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return {
        name: warning(name, configs[name], absent, timeout, state.directory)
        for name, absent in lacking.items()
    }


def warning(name: str, cfg: PortConfig, absent: list[str], timeout: float, directory: str) -> str:
    leased = [ip for ip in absent if ip not in cfg.learnt]
    learnt = [ip for ip in absent if ip in cfg.learnt]
    parts = []
    if leased:
        parts.append(f"did not get a DHCP lease within {timeout:g} s ({', '.join(leased)} not configured)")
    if learnt:
        parts.append(
            f"has no SLAAC address within {timeout:g} s ({', '.join(learnt)}: no router advertisement taken)"
        )
    return f"endpoint {name} " + " and ".join(parts) + f"; client log: {directory}/dhcp/{name}.dhclient*.log"


def configuration_warnings(
    configs: Mapping[str, PortConfig], endpoints: list[dict[str, Any]]
) -> dict[str, str]:
    """For each DHCP endpoint in ``endpoints`` (as ``readback.endpoints`` read them) that holds its
    addresses, what else of its intent it lacks: the MTU that fits the overlay, the default route
    via its subnet's gateway (LAB.md: a booting endpoint comes up with all three)."""
    out = {}
    for entry in endpoints:
        cfg = configs.get(entry["name"])
        held = {a.split("/")[0] for a in entry["addresses"]}
        if cfg is None or not cfg.dhcp or not set(cfg.addresses) <= held:
            continue
        wrong = []
        # an IPv6-only endpoint's MTU comes from router advertisements, which set the IPv6 MTU only
        v6_only = all(":" in a for a in cfg.addresses)
        key = "mtu6" if v6_only else "mtu"
        if cfg.mtu is not None and entry.get(key) != cfg.mtu:
            what = "IPv6 MTU" if v6_only else "MTU"
            wrong.append(f"{what} {entry.get(key)}, not its bridge domain's {cfg.mtu}")
        if cfg.gateway is not None and f"default via {cfg.gateway}" not in entry["routes"]:
            wrong.append(f"no default route via {cfg.gateway}")
        if wrong:
            out[entry["name"]] = (
                f"endpoint {entry['name']} got its addresses by DHCP but has " + " and ".join(wrong)
            )
    return out


def forget(netns: str) -> None:
    """Remove the /etc/netns entry of a deleted namespace (``ip netns del`` leaves it)."""
    shutil.rmtree(netns_etc(netns), ignore_errors=True)
