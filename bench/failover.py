"""Gateway HA: how long SNAT traffic stops when the active gateway host dies.

A lab (bench/failover.yaml: one compute host, gateways gw1 and gw2, one
external host) runs a ping stream (every 20 ms) from an endpoint without a
floating IP to the external host, through SNAT. Each round kills the active
gateway host (agent and Open vSwitch, SIGKILL) and measures the time from
the kill to the first reply through the standby, then heals the host and
checks whether the role moves back (it does not: no preemption).

Baseline, in the same run: the same failure with one gateway host listed
(no standby), recovered by restarting it at once — what a router without HA
gets at best.

    sudo .venv/bin/python bench/failover.py [--rounds 5] [--baseline-rounds 3] [--how kill|cut]

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report
from policyfabric.client import Client
from policyfabric.lab.lab import Lab
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc

SCENARIO = Path(__file__).parent / "failover.yaml"
ROUTER = "acme/r1"
REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from")


def active_gateway(lab: Lab, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = lab.active_gateway(ROUTER)
        if found:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"no active gateway for {ROUTER} after {timeout:.0f} s")


class PingStream:
    """ping -D every 20 ms in the endpoint's namespace; reply timestamps collected as they come."""

    def __init__(self, lab: Lab, src: str, dst: str) -> None:
        netns = lab.state.endpoints[src].netns
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "ping", "-n", "-D", "-i", "0.02", "-W", "1", lab.address_of(dst)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.replies: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = REPLY.match(line)
            if m:
                self.replies.append(float(m.group(1)))

    def first_after(self, t: float, timeout: float) -> float | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            later = [r for r in self.replies if r > t]
            if later:
                return later[0]
            time.sleep(0.01)
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def outage(lab: Lab, action: Callable[[], None], timeout: float = 30.0) -> float:
    """Seconds from the start of ``action`` to the first reply that could only have come after it."""
    stream = PingStream(lab, "app1", "internet1")
    try:
        if stream.first_after(time.time(), 10) is None:
            raise RuntimeError("no SNAT traffic before the failure")
        time.sleep(0.5)
        t0 = time.time()
        action()
        done = time.time()  # the host is dead now: later replies came through another path
        first = stream.first_after(done, timeout)
        if first is None:
            raise RuntimeError(f"SNAT traffic did not recover within {timeout:.0f} s")
        return first - t0
    finally:
        stream.stop()


def set_gateway_hosts(lab: Lab, hosts: list[str]) -> None:
    with Client(lab.state.url) as client:
        router = client.list(k.ROUTER, tenant="acme", name="r1")[0]
        body = {f: router[f] for f in ("name", "tenant", "l3_context", "interfaces", "external_gateway")}
        body["external_gateway"] = {**body["external_gateway"], "hosts": hosts}
        client.replace(k.ROUTER, router["id"], body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="failovers to measure (median reported)")
    ap.add_argument("--baseline-rounds", type=int, default=3, help="restart-only recoveries (no standby)")
    ap.add_argument(
        "--how",
        choices=("kill", "cut"),
        default="kill",
        help="kill: SIGKILL agent and OVS (the OpFlex session closes at once); cut: links down and the "
        "agent frozen (the authority notices by keepalive, 4 x 0.5 s in the lab)",
    )
    args = ap.parse_args()
    rows, failovers, baseline, moved_back = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="pf-failover-") as tmp:
        lab = Lab.create(SCENARIO, Path(tmp) / "state", print)
        try:
            lab.up(sc.load(SCENARIO))
            for i in range(args.rounds):
                victim = active_gateway(lab)
                seconds = outage(lab, lambda v=victim: lab.fail(v, cut=args.how == "cut"))  # type: ignore[misc]
                standby = active_gateway(lab)
                lab.heal(victim)
                time.sleep(3)  # the healed host is back; does the role move back to it?
                back = active_gateway(lab) == victim
                failovers.append(seconds)
                moved_back.append(back)
                rows.append(
                    (f"failover {i + 1}", f"{victim} → {standby}", f"{seconds:.3f}", "yes" if back else "no")
                )
                print(
                    f"round {i + 1}: {victim} killed, SNAT through {standby} after {seconds:.3f} s",
                    flush=True,
                )
            for i in range(args.baseline_rounds):
                only = active_gateway(lab)
                set_gateway_hosts(lab, [only])

                def restart(host: str = only) -> None:
                    lab.fail(host)
                    lab.heal(host)

                seconds = outage(lab, restart)
                baseline.append(seconds)
                rows.append((f"baseline {i + 1}", f"{only} restarted", f"{seconds:.3f}", "-"))
                print(
                    f"baseline {i + 1}: only gateway {only} restarted, SNAT back after {seconds:.3f} s",
                    flush=True,
                )
                set_gateway_hosts(lab, ["gw1", "gw2"])
        finally:
            lab.down()
    median = statistics.median(failovers)
    base = statistics.median(baseline) if baseline else None
    summary = {
        "failover_s": {"median": round(median, 3), "min": round(min(failovers), 3),
                       "max": round(max(failovers), 3), "rounds": len(failovers)},
        "moves_back": any(moved_back),
        "move_back_s": None,  # no preemption: a healed gateway stays standby
        "baseline_restart_s": round(base, 3) if base is not None else None,
        "ratio_vs_restart": round(median / base, 3) if base else None,
        "how": args.how,
        "target_s": 3.0,
        "met": median < 3.0,
    }  # fmt: skip
    report("gateway failover (SNAT ping stream, 20 ms interval)", ("round", "what", "outage s", "moved back"),
           rows, summary)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
