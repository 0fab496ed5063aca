#!/usr/bin/env python3
"""The OpenFlow channel against ovs-ofctl: a small change, encoding, and a full sync.

Workload: the security-group bench's fabric (bench/secgroups.py) at N=3000 members, 50 of them
local: ~9.5k flows, compiled by the agent's own compiler, on a private Open vSwitch (ovsdb-server
+ ovs-vswitchd, userspace datapath, own network namespace, stopped by PID).

Figures, all methods in the same run:
- two-flow change (a new member's L2 flow and its address-set clause), added then removed again
  (so every round is a real change), median and p99 of --rounds: through the channel (one bundle
  on the persistent connection: open + 2 flow mods + barrier, then commit) and through
  ``ovs-ofctl bundle`` as the applier did before (one process, temporary file);
- encoding: µs per flow for the whole ~9.5k-flow set and for every scenario's flows
  (tests/scenarios, examples/demo.yaml), memo cleared (cold) and memoised (what a recompile's
  unchanged flows cost);
- full sync: ``ovs-ofctl --bundle replace-flows`` against one channel bundle (delete every flow
  with the agent's cookie, add them all), into an empty bridge and with nothing changed, median of
  --repeat. The applier keeps replace-flows for full syncs unless the channel wins here.
The last line is one JSON object.

    sudo .venv/bin/python bench/ofchannel.py [--rounds 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import flow_count, private_ovs, report
from policyfabric.agent.renderers.ovs import ofwire
from policyfabric.agent.renderers.ovs.applier import TLV_MAP, FlowApplier, bundled
from policyfabric.agent.renderers.ovs.flowmods import AddFlow, DeleteFlow, ReplaceFlows
from policyfabric.agent.renderers.ovs.flows import COOKIE_MASK, COOKIE_TAG, Flow
from policyfabric.agent.renderers.ovs.ofchannel import Bundled, OfChannel
from policyfabric.agent.renderers.ovs.pipeline import compile_pipeline
from policyfabric.agent.renderers.ovs.tables import ARP
from secgroups import TUNNEL_PORT, joined, network

sys.path.insert(0, str(Path(__file__).parents[1]))
from tests.scenario_flows import every_scenario

N, LOCAL = 3000, 50
AGENT_COOKIE, AGENT_COOKIE_MASK = COOKIE_TAG, COOKIE_MASK  # every flow the agent owns (flows.py)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def encode_us(flows: list[Flow], cold: bool) -> float:
    """µs per flow to encode ``flows`` as the applier does (parse + bytes), memo cleared or warm."""
    if cold:
        ofwire.clear_caches()
    else:
        bundled([AddFlow(f) for f in flows])
    t = timed(lambda: bundled([AddFlow(f) for f in flows]))
    return t / len(flows) * 1e6


def full_sync_channel(channel: OfChannel, flows: list[Flow]) -> None:
    """A full sync over the channel: one bundle deleting the agent's flows and adding all again."""
    wipe = Bundled(ofwire.OFPT_FLOW_MOD, ofwire.delete_cookie_body(AGENT_COOKIE, AGENT_COOKIE_MASK), "wipe")
    channel.send([wipe, *bundled([AddFlow(f) for f in flows])])


def run(rounds: int, repeat: int) -> dict[str, Any]:
    net = network(N, LOCAL)
    flows = list(dict.fromkeys(compile_pipeline(net, TUNNEL_PORT)))
    after = compile_pipeline(joined(net, N), TUNNEL_PORT)
    change = [f for f in set(after) - set(flows) if f.table != ARP]  # L2 flow + address-set clause
    assert len(change) == 2, change
    scenario_flows = [f for fs in every_scenario().values() for f in dict.fromkeys(fs)]
    with tempfile.TemporaryDirectory() as tmp, private_ovs(Path(tmp) / "ovs", f"pfofc-{os.getpid()}") as ovs:
        target = ovs.mgmt("br-int")
        ovs.ofctl("add-tlv-map", target, TLV_MAP)
        ofctl = FlowApplier(target, ovs.env, channel=False)
        via_channel = FlowApplier(target, ovs.env, channel_max=1 << 20)
        assert via_channel.channel is not None
        ofctl.execute([ReplaceFlows(tuple(flows))])
        assert flow_count(ovs) == len(flows)

        # a two-flow change, both ways, interleaved
        adds = [AddFlow(f) for f in change]
        dels = [DeleteFlow(f) for f in change]
        times: dict[str, list[float]] = {"channel": [], "ofctl": []}
        via_channel.execute(adds)  # connect (and warm the memo) outside the timing
        via_channel.execute(dels)
        for _ in range(rounds):
            for name, applier in (("channel", via_channel), ("ofctl", ofctl)):
                times[name].append(timed(lambda a=applier: a.execute(adds)))  # type: ignore[misc]
                times[name].append(timed(lambda a=applier: a.execute(dels)))  # type: ignore[misc]
        assert via_channel.channel_down is None
        assert flow_count(ovs) == len(flows)

        # full syncs
        channel = via_channel.channel
        full: dict[str, list[float]] = {
            k: [] for k in ("ofctl_empty", "ofctl_same", "channel_empty", "channel_same")
        }
        for _ in range(repeat):
            ovs.ofctl("del-flows", target)
            full["ofctl_empty"].append(timed(lambda: ofctl.execute([ReplaceFlows(tuple(flows))])))
            full["ofctl_same"].append(timed(lambda: ofctl.execute([ReplaceFlows(tuple(flows))])))
            ovs.ofctl("del-flows", target)
            ofwire.clear_caches()
            full["channel_empty"].append(timed(lambda: full_sync_channel(channel, flows)))
            full["channel_same"].append(timed(lambda: full_sync_channel(channel, flows)))
            assert flow_count(ovs) == len(flows)

    two = {name: (statistics.median(v), p99(v)) for name, v in times.items()}
    full_med = {k: statistics.median(v) for k, v in full.items()}
    return {
        "flows": len(flows),
        "rounds": rounds,
        "change_channel_median_ms": ms(two["channel"][0]),
        "change_channel_p99_ms": ms(two["channel"][1]),
        "change_ofctl_median_ms": ms(two["ofctl"][0]),
        "change_ofctl_p99_ms": ms(two["ofctl"][1]),
        "change_ofctl_vs_channel": round(two["ofctl"][0] / two["channel"][0], 1),
        "encode_us_per_flow_cold": round(encode_us(flows, cold=True), 2),
        "encode_us_per_flow_warm": round(encode_us(flows, cold=False), 2),
        "encode_scenarios_us_per_flow_cold": round(encode_us(scenario_flows, cold=True), 2),
        "scenario_flows": len(scenario_flows),
        **{f"full_{k}_ms": ms(v) for k, v in full_med.items()},
        "full_channel_vs_ofctl_empty": round(full_med["channel_empty"] / full_med["ofctl_empty"], 2),
        "full_channel_vs_ofctl_same": round(full_med["channel_same"] / full_med["ofctl_same"], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rounds", type=int, default=200, help="two-flow changes per method (each add + remove)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="full syncs per method")
    args = parser.parse_args()
    r = run(args.rounds, args.repeat)
    rows = [
        ["two-flow change, channel", r["change_channel_median_ms"], r["change_channel_p99_ms"], ""],
        ["two-flow change, ovs-ofctl bundle", r["change_ofctl_median_ms"], r["change_ofctl_p99_ms"], ""],
        ["  ovs-ofctl / channel (median)", "", "", r["change_ofctl_vs_channel"]],
        ["full sync, empty bridge, replace-flows", r["full_ofctl_empty_ms"], "", ""],
        [
            "full sync, empty bridge, channel bundle",
            r["full_channel_empty_ms"],
            "",
            r["full_channel_vs_ofctl_empty"],
        ],
        ["full sync, nothing changed, replace-flows", r["full_ofctl_same_ms"], "", ""],
        [
            "full sync, nothing changed, channel bundle",
            r["full_channel_same_ms"],
            "",
            r["full_channel_vs_ofctl_same"],
        ],
        ["encode µs/flow, cold (9.5k set)", r["encode_us_per_flow_cold"], "", ""],
        ["encode µs/flow, memoised", r["encode_us_per_flow_warm"], "", ""],
        [
            f"encode µs/flow, cold (scenarios, {r['scenario_flows']} flows)",
            r["encode_scenarios_us_per_flow_cold"],
            "",
            "",
        ],
    ]
    report(
        f"OpenFlow channel vs ovs-ofctl ({r['flows']} flows on the bridge)",
        ["what", "median ms / µs", "p99 ms", "ratio"],
        rows,
        {"bench": "ofchannel", "results": r},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
