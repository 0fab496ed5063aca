"""``explain``: ``policyfabric explain`` against a running fabric (the authority's
``GET /v1/explain``, which asks the agents), and in the lab: the lab's packets and traces
(``lab/explain.py``) judged and named by the agent layer's explainer (``agent/explain.py``); the
CLI is the one layer that sees both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from policyfabric.agent.explain import Catalog, Explanation, catalog, explain
from policyfabric.cli.console import fail, out
from policyfabric.client import DEFAULT_URL, ApiError, Client, Unreachable
from policyfabric.lab import explain as lab_explain
from policyfabric.lab.lab import Lab
from policyfabric.lab.plan import Expect, LabError
from policyfabric.model import scenario as sc
from policyfabric.sh import CommandFailed


def scenario_catalog(path: Path | str) -> Catalog:
    """The catalog of the scenario's intent (its tenants, endpoints and external networks)."""
    raw = sc.load(Path(path)).raw
    return catalog(raw.get("tenants") or (), raw.get("endpoints") or (), raw.get("external_networks") or ())


def explain_expect(lab: Lab, cat: Catalog, x: Expect) -> dict[str, Any]:
    """Trace the probe's first packet through the hosts it crosses; raises LabError if it cannot.
    A path that starts on, or crosses, an nftables host is asked of the lab's authority instead
    (its agents evaluate their installed rulesets: ``lab_explain.fabric_explain``)."""
    why_not = lab_explain.traceable(lab.state, x)
    if why_not is not None:
        raise LabError(why_not)
    state = lab.state
    src = state.endpoints.get(x.source)
    if src is not None and lab_explain.on_nftables(state, [src.host]):
        return lab_explain.fabric_explain(state, x)
    host, flow = lab_explain.probe_flow(state, x)
    underlay = lab_explain.underlay(state)
    result: Explanation = explain(host, flow, lambda h, f: lab_explain.trace(state, h, f), underlay, cat)
    if lab_explain.on_nftables(state, [hop.host for hop in result.hops]):
        if src is None:
            raise LabError(
                f"the path from {x.source} crosses an nftables host: explained from endpoints only"
            )
        return lab_explain.fabric_explain(state, x)
    return result.to_json(cat)


def explain_json(lab: Lab, cat: Catalog, x: Expect) -> dict[str, Any]:
    """LAB.md's ``"explain"`` object of one result: ``{"verdict", "by", "hops"}``, or, when the
    path cannot be traced, ``{"verdict": null, "by": null, "hops": [], "reason": ...}``. A packet
    that no host of the fabric receives (an external host's next hop nobody answers for) is a
    deny by ``no route``, with no hops."""
    try:
        return explain_expect(lab, cat, x)
    except lab_explain.NoPath as exc:  # decided before the fabric: still a verdict, and why
        return {"verdict": "deny", "by": f"no route ({exc})", "hops": []}
    except (LabError, CommandFailed, ApiError, Unreachable) as exc:
        return {"verdict": None, "by": None, "hops": [], "reason": str(exc)}


# ---- against a running fabric: GET /v1/explain ------------------------------------------------


def print_explanation(doc: dict[str, Any], source: str, target: str, probe: str) -> None:
    """The verdict, what decided it, and each host's flows (or nftables rules), for humans. What
    the authority and the agents answer is printed as it is (``markup=False``: an IPv6 ``[fd00::2]``
    or a flow's ``[/]`` is text, not rich markup); a member's answer has no hops."""
    where = (
        "" if doc.get("source", "dataplane") == "dataplane" else f" (from the intent: {doc.get('reason')})"
    )
    head = f"{escape(source)} → {escape(target)} {escape(probe)}: "
    by = escape(f"{doc['by']}{where}")
    out.print(f"{head}[bold]{escape(str(doc['verdict']))}[/] by {by}", highlight=False)
    for hop in doc.get("hops") or ():
        renderer = f" ({hop['renderer']})" if hop.get("renderer") else ""
        out.print(f"  host {hop['host']}{renderer}: {hop['outcome']}", highlight=False, markup=False)
        for f in hop["flows"]:
            actions = ",".join(f["actions"])
            prio = f"priority {f['priority']}, " if f.get("priority") is not None else ""
            line = f"    {f['table']:<16} {f['match'] or '*'} ({prio}{f['from']}): {actions}"
            out.print(line, highlight=False, markup=False)


def explain_command(
    source: Annotated[
        str, typer.Argument(metavar="FROM", help="The endpoint that opens the connection: TENANT/NAME.")
    ],
    target: Annotated[str, typer.Argument(metavar="TO", help="An endpoint (TENANT/NAME) or an IP address.")],
    probe: Annotated[
        str, typer.Argument(metavar="PROBE", help="icmp, icmpv6, tcp/N, udp/N, tcp6/N, udp6/N (LAB.md).")
    ],
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="json for the answer as the API gives it.")
    ] = None,
    authority: Annotated[
        str, typer.Option("--authority", envvar="POLICYFABRIC_URL", help="REST URL of the Policy Authority.")
    ] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="POLICYFABRIC_TOKEN", show_default=False, help="Bearer token."),
    ] = None,
) -> None:
    """Why PROBE from FROM to TO is allowed or denied on the running fabric: read from what the
    hosts installed (OVS's trace of the probe's first packet on the source's host, then on the
    host it tunnels to; the nftables ruleset on nftables hosts), each deciding flow or rule named
    as the intent object that produced it. Sends no packet."""
    if output not in (None, "json"):
        raise fail(f"-o {output}: explain prints its hops, or json")
    try:
        with Client(authority, token=token or "") as client:
            doc = client.request("GET", "/v1/explain", params={"from": source, "to": target, "probe": probe})
    except (Unreachable, ApiError) as exc:
        raise fail(str(exc)) from None
    if output == "json":
        print(json.dumps(doc))
    else:
        print_explanation(doc, source, target, probe)
