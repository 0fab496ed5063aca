#!/usr/bin/env python3
"""policyfabric and OVN side by side, on the workload of bench/converge.py, in one run.

Workload: N endpoints (OVN: logical switch ports) on one host, 4 bridge
domains (logical switches) on one l3_context (joined by one logical router),
groups `web` and `app` (port groups), `app` may reach `web` on tcp/80 and
everything else to those groups is dropped (OVN: allow-related and drop ACLs
on the port groups, whose address sets OVN derives). Every endpoint is a
real OVS port (type internal, `iface-id` set) on a userspace br-int in its
own network namespace, plugged before the intent is applied.

- policyfabric: bench/converge.py's run with --batch (authority on SQLite,
  a real agent; the intent in one POST /v1/batch, one transaction, as OVN
  gets it in one NB transaction; the figures seen on the bridge by an
  OpenFlow monitor).
- OVN (Debian's ovn-central + ovn-host; the setup step installs them if
  missing): private NB and SB ovsdb-servers, ovn-northd, and ovn-controller
  on the chassis. The intent is one `ovn-nbctl --wait=hv` transaction;
  each figure is the wall time of an `ovn-nbctl --wait=hv` command (OVN's
  own "every hypervisor has it" signal, as in ../shared/ANCHORS.md).

Figures per system: converge_s, member_change_s and rule_add_s (the median of
--samples changes, each sequential; with their p99 as *_p99_s), flows, rss_kb
(agent / ovn-controller), and the ratios policyfabric/OVN. OVN's logical
switch ports have port security (MAC + IP), as policyfabric's endpoints have
anti-spoofing. policyfabric's render_s (from the end of the write) is printed
beside its converge_s. The last line is one JSON object:
{"results": {"<N>": {"policyfabric": {...}, "ovn": {...}}}, "ratios": {"<N>": {...}}}.

    sudo .venv/bin/python bench/vs_ovn.py [--n 1000,5000] [--samples 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

import converge  # the policyfabric side (bench/ is on sys.path when a bench runs)
from common import flow_count, netns, report
from policyfabric.lab.ovs import OvsInstance
from policyfabric.sh import CommandFailed, run

console = Console(stderr=True)
KEYS = (
    *("converge_s", "member_change_s", "member_change_p99_s", "rule_add_s", "rule_add_p99_s"),
    *("flows", "rss_kb"),
)
OVN_SCHEMAS = Path("/usr/share/ovn")


def setup() -> None:
    """Install OVN from Debian's packages if it is missing, without starting its system services."""
    if shutil.which("ovn-northd") and shutil.which("ovn-controller"):
        return
    console.print("installing ovn-central and ovn-host (Debian packages)")
    guard = Path("/usr/sbin/policy-rc.d")
    ours = not guard.exists()
    if ours:  # no service may start during the install: this bench runs its own daemons
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "ovn-central", "ovn-host"],
            check=True,
            env=env,
        )
    finally:
        if ours:
            guard.unlink()


class Ovn:
    """NB and SB databases, northd, and one chassis (OVS + ovn-controller) in a namespace."""

    def __init__(self, workdir: Path, netns: str) -> None:
        self.dir, self.netns = workdir, netns
        self.ovs = OvsInstance(workdir / "chassis", netns)
        self.pidfiles: list[Path] = []

    @property
    def nb(self) -> str:
        return f"unix:{self.dir / 'nb.sock'}"

    @property
    def sb(self) -> str:
        return f"unix:{self.dir / 'sb.sock'}"

    def _daemon(
        self, argv: list[str], name: str, netns: str | None = None, env: dict[str, str] | None = None
    ) -> None:
        pid = self.dir / f"{name}.pid"
        self.pidfiles.append(pid)
        ctl = (
            [] if name == "controller" else [f"--unixctl={self.dir / (name + '.ctl')}"]
        )  # it has no such option
        run(
            [*argv, f"--pidfile={pid}", *ctl, f"--log-file={self.dir / (name + '.log')}", "--detach"],
            netns=netns,
            env=env,
        )

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for db in ("nb", "sb"):
            path = self.dir / f"{db}.db"
            run(["ovsdb-tool", "create", str(path), str(OVN_SCHEMAS / f"ovn-{db}.ovsschema")])
            self._daemon(
                ["ovsdb-server", str(path), f"--remote=punix:{self.dir / (db + '.sock')}"], f"{db}-ovsdb"
            )
        self._daemon(["ovn-northd", f"--ovnnb-db={self.nb}", f"--ovnsb-db={self.sb}"], "northd")
        self.ovs.start()
        self.ovs.add_bridge("br-int")
        self.ovs.vsctl(
            "set",
            "open",
            ".",
            "external_ids:system-id=chassis1",
            f"external_ids:ovn-remote={self.sb}",
            "external_ids:ovn-encap-type=geneve",
            "external_ids:ovn-encap-ip=127.0.0.1",
            "external_ids:ovn-bridge=br-int",
            "external_ids:ovn-bridge-datapath-type=netdev",
        )
        env = {**self.ovs.env, "OVN_RUNDIR": str(self.dir)}
        self._daemon(["ovn-controller", self.ovs.ovsdb], "controller", netns=self.netns, env=env)

    def nbctl(self, *args: str, timeout: float = 600) -> float:
        """Seconds an ``ovn-nbctl --wait=hv`` command takes (until every chassis has applied it)."""
        start = time.monotonic()
        run(
            ["ovn-nbctl", f"--db={self.nb}", "--wait=hv", f"--timeout={max(1, int(timeout))}", *args],
            timeout=timeout + 5,
        )
        return time.monotonic() - start

    def controller_pid(self) -> int:
        return int((self.dir / "controller.pid").read_text().strip())

    def stop(self) -> None:
        for pidfile in reversed(self.pidfiles):
            try:
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError):
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.02)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        self.ovs.stop()


def intent(n: int) -> list[str]:
    """The whole workload as ovn-nbctl commands for one transaction."""
    cmds = [["lr-add", "r1"]]
    for b in range(converge.BDS):
        cmds += [
            ["ls-add", f"ls{b}"],
            ["lrp-add", "r1", f"lrp{b}", f"02:00:00:00:0{b}:01", f"10.{b}.0.1/16"],
            ["lsp-add", f"ls{b}", f"ls{b}-r"],
            ["lsp-set-type", f"ls{b}-r", "router"],
            ["lsp-set-addresses", f"ls{b}-r", "router"],
            ["lsp-set-options", f"ls{b}-r", f"router-port=lrp{b}"],
        ]
    web: list[str] = []
    app: list[str] = []
    for i in range(n):
        b = i % converge.BDS
        name = f"ep{i}"
        ip = f"10.{b}.{(i // converge.BDS) // 250}.{(i // converge.BDS) % 250 + 2}"
        mac_ip = f"02:51:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x} {ip}"
        cmds += [
            ["lsp-add", f"ls{b}", name],
            ["lsp-set-addresses", name, mac_ip],
            # anti-spoofing, as policyfabric's endpoints have it: only this MAC and address may leave
            ["lsp-set-port-security", name, mac_ip],
        ]
        (web if i % 2 == 0 else app).append(name)
    cmds += [["pg-add", "pg_web", *web], ["pg-add", "pg_app", *app]]
    cmds += [
        [
            "acl-add",
            "pg_web",
            "to-lport",
            "1002",
            "outport == @pg_web && ip4.src == $pg_app_ip4 && tcp.dst == 80",
            "allow-related",
        ],
        ["acl-add", "pg_web", "to-lport", "1001", "outport == @pg_web && ip", "drop"],
        ["acl-add", "pg_app", "to-lport", "1001", "outport == @pg_app && ip", "drop"],
    ]
    out: list[str] = []
    for c in cmds:
        out += ["--", *c]
    return out


def ovn_run(n: int, workdir: Path, samples: int = 20, timeout: float = 600) -> dict[str, Any]:
    with netns(f"pfovn-{os.getpid()}-{n}") as name:
        ovn = Ovn(workdir / "ovn", name)
        try:
            ovn.start()
            console.print(f"OVN N={n}: plugging {n} ports")
            plug_s = converge.plug_ports(ovn.ovs, n, iface=lambda i: f"ep{i}")
            console.print(f"OVN N={n}: plugged in {plug_s:.1f} s")
            ovn.nbctl("sync")  # northd and the chassis are up
            console.print(f"OVN N={n}: one transaction with the intent")
            try:
                converge_s = ovn.nbctl(*intent(n), timeout=timeout)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:  # a lower bound, no changes timed
                console.print(f"[red]OVN N={n}: not converged after {timeout:.0f} s[/]")
                return {
                    "converge_s_at_least": timeout,
                    "flows": flow_count(ovn.ovs),
                    "rss_kb": converge.rss_kb(ovn.controller_pid()),
                    "plug_s": round(plug_s, 2),
                    "error": f"--wait=hv not done after {timeout:.0f} s: {str(exc)[-200:]}",
                }
            flows = flow_count(ovn.ovs)
            rss = converge.rss_kb(ovn.controller_pid())
            mover = "ep1"  # in pg_app (odd)
            uuid = run(["ovn-nbctl", f"--db={ovn.nb}", "get", "logical_switch_port", mover, "_uuid"]).strip()
            members, rules = [], []
            for k in range(samples):  # back and forth between the groups, as policyfabric's mover
                there, here = ("pg_app", "pg_web") if k % 2 == 0 else ("pg_web", "pg_app")
                move = ["remove", "port_group", there, "ports", uuid]
                move += ["--", "add", "port_group", here, "ports", uuid]
                members.append(ovn.nbctl(*move))
                time.sleep(0.2)
            for k in range(samples):  # one more ACL each time, as policyfabric's contract gains rules
                match = f"outport == @pg_web && ip4.src == $pg_app_ip4 && tcp.dst == {8080 + k}"
                rules.append(ovn.nbctl("acl-add", "pg_web", "to-lport", "1003", match, "allow-related"))
                time.sleep(0.2)
            member_p50, member_p99 = converge.quantiles(members)
            rule_p50, rule_p99 = converge.quantiles(rules)
            return {
                "converge_s": round(converge_s, 3),
                "member_change_s": round(member_p50, 4),
                "member_change_p99_s": round(member_p99, 4),
                "rule_add_s": round(rule_p50, 4),
                "rule_add_p99_s": round(rule_p99, 4),
                "flows": flows,
                "rss_kb": rss,
                "plug_s": round(plug_s, 2),
            }
        finally:
            ovn.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="1000,5000", help="endpoint counts, comma-separated")
    parser.add_argument(
        "--samples", type=int, default=20, help="membership changes and rule adds timed per system (p50, p99)"
    )
    parser.add_argument(
        "--ovn-timeout", type=float, default=600,
        help="seconds OVN may take to converge (past it: converge_s_at_least, no changes timed)",
    )  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        console.print("bench/vs_ovn.py needs root (namespaces, Open vSwitch, installing OVN)")
        return 2
    setup()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    for n in (int(x) for x in args.n.split(",")):
        with tempfile.TemporaryDirectory(prefix="pf-vs-ovn-") as tmp:
            (Path(tmp) / "policyfabric").mkdir()
            try:
                ours = converge.one_run(n, Path(tmp) / "policyfabric", batch=True, samples=args.samples)
            except (converge.ReconnectLoop, TimeoutError) as exc:  # reported; OVN's side still runs
                console.print(f"[red]policyfabric N={n} did not converge: {exc}[/]")
                ours = {"error": str(exc)}
            try:
                theirs = ovn_run(n, Path(tmp), args.samples, args.ovn_timeout)
            except (CommandFailed, subprocess.TimeoutExpired) as exc:  # e.g. --wait=hv past its 600 s
                console.print(f"[red]OVN N={n} failed: {exc}[/]")
                theirs = {"error": str(exc)[-500:]}
        mine = {k: ours[k] for k in KEYS if k in ours}
        results[str(n)] = {
            "policyfabric": mine | ({"render_s": ours["render_s"]} if "render_s" in ours else ours),
            "ovn": theirs,
        }
        ratios[str(n)] = {
            k: round(mine[k] / theirs[k], 2) if theirs.get(k) and k in mine else None for k in KEYS
        }
        if "converge_s_at_least" in theirs and "converge_s" in mine:  # OVN timed out: an upper bound
            ratios[str(n)]["converge_s_at_most"] = round(
                mine["converge_s"] / theirs["converge_s_at_least"], 3
            )
        console.print(f"N={n}: {results[str(n)]}, ratios {ratios[str(n)]}")
    columns = (*KEYS, "render_s", "converge_s_at_least", "converge_s_at_most")
    rows = [
        [n, system, *(figures.get(k, "") for k in columns)]
        for n, r in results.items()
        for system, figures in (("policyfabric", r["policyfabric"]), ("ovn", r["ovn"]), ("ratio", ratios[n]))
    ]
    title = "policyfabric vs OVN (one run; ratio = policyfabric / OVN, < 1 is better for times)"
    summary = {"bench": "vs_ovn", "results": results, "ratios": ratios}
    report(title, ["N", "system", *columns], rows, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
