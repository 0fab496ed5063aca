"""``explain`` in the lab: the lab's packets and traces (``lab/explain.py``) judged and named by
the agent layer's explainer (``agent/explain.py``); the CLI is the one layer that sees both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from policyfabric.agent.explain import Catalog, Explanation, catalog, explain
from policyfabric.lab import explain as lab_explain
from policyfabric.lab.lab import Lab
from policyfabric.lab.plan import Expect, LabError
from policyfabric.model import scenario as sc
from policyfabric.sh import CommandFailed


def scenario_catalog(path: Path | str) -> Catalog:
    """The catalog of the scenario's intent (its tenants, endpoints and external networks)."""
    raw = sc.load(Path(path)).raw
    return catalog(raw.get("tenants") or (), raw.get("endpoints") or (), raw.get("external_networks") or ())


def explain_expect(lab: Lab, cat: Catalog, x: Expect) -> Explanation:
    """Trace the probe's first packet through the hosts it crosses; raises LabError if it cannot."""
    why_not = lab_explain.traceable(lab.state, x)
    if why_not is not None:
        raise LabError(why_not)
    host, flow = lab_explain.probe_flow(lab.state, x)
    state = lab.state
    underlay = lab_explain.underlay(state)
    result = explain(host, flow, lambda h, f: lab_explain.trace(state, h, f), underlay, cat)
    for hop in result.hops:  # Open vSwitch only forwards there: its trace is not the verdict
        renderer = state.hosts[hop.host].renderer
        if renderer != "ovs":
            raise LabError(f"the path crosses {hop.host}, which renders with {renderer}: not traced yet")
    return result


def explain_json(lab: Lab, cat: Catalog, x: Expect) -> dict[str, Any]:
    """LAB.md's ``"explain"`` object of one result: ``{"verdict", "by", "hops"}``, or, when the
    path cannot be traced, ``{"verdict": null, "by": null, "hops": [], "reason": ...}``. A packet
    that no host of the fabric receives (an external host's next hop nobody answers for) is a
    deny by ``no route``, with no hops."""
    try:
        return explain_expect(lab, cat, x).to_json(cat)
    except lab_explain.NoPath as exc:  # decided before the fabric: still a verdict, and why
        return {"verdict": "deny", "by": f"no route ({exc})", "hops": []}
    except (LabError, CommandFailed) as exc:
        return {"verdict": None, "by": None, "hops": [], "reason": str(exc)}
