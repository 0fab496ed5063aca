"""`policyfabric lab`: build a scenario for real (namespaces, Open vSwitch, agents) and probe it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from policyfabric.cli.console import err, out
from policyfabric.cli.explain import explain_json, scenario_catalog
from policyfabric.cli.tables import results_table
from policyfabric.lab import store as lab_store
from policyfabric.lab.dhcp import DHCP_WAIT
from policyfabric.lab.explain import verify_explained
from policyfabric.lab.lab import DEFAULT_STATE, Lab, address_warnings, checked_plan, verify
from policyfabric.lab.plan import Expect, LabError, plan
from policyfabric.lab.probing import ProbeResult
from policyfabric.lab.state import LabState
from policyfabric.model import scenario as sc
from policyfabric.sh import CommandFailed

lab_app = typer.Typer(
    help="Build a scenario file for real on this machine (root needed) and check traffic against `expect`.",
    no_args_is_help=True,
)

StateOpt = Annotated[Path, typer.Option("--state", help="Directory holding the lab's state and logs.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
ExplainOpt = Annotated[
    bool,
    typer.Option(
        "--explain",
        help="Say why each result is what it is, read from the installed flows (ofproto/trace on the "
        'hosts it crosses): each result gets "explain": {"verdict", "by", "hops"} (LAB.md).',
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Where the lab's authority keeps intent: etcd://HOST:PORT,...[/PREFIX] (an etcd cluster; "
        "without /PREFIX the lab uses one of its own and deletes it at `lab down`), or 'etcd' (the lab "
        "starts a 3-member etcd cluster of its own). Default: an SQLite file in the lab's state.",
    ),
]
DhcpWaitOpt = Annotated[
    float,
    typer.Option("--dhcp-wait", help="Seconds a `dhcp: true` endpoint has to get its addresses.", min=0),
]



def endpoints_table(endpoints: list[dict[str, Any]]) -> Table:
    table = Table(title="endpoints (read from their namespaces)")
    for col in ("name", "host", "addresses", "routes", "mtu"):
        table.add_column(col)
    for e in endpoints:
        table.add_row(e["name"], e["host"], "\n".join(e["addresses"]), "\n".join(e["routes"]), str(e["mtu"]))
    return table


def explain_table(results: list[ProbeResult], explained: list[dict[str, Any]]) -> Table:
    table = Table(title="why (read from the installed flows)")
    for col in ("from", "to", "probe", "measured", "explained", "by", "path"):
        table.add_column(col)
    for r, e in zip(results, explained, strict=True):
        path = " → ".join(f"{h['host']} ({h['outcome']})" for h in e.get("hops", []))
        by = e["by"] if e["verdict"] is not None else f"not traced: {e.get('reason', '')}"
        x = r.expect
        table.add_row(x.source, x.target, x.probe, r.measured, str(e["verdict"]), by, path)
    return table


def disagreements(results: list[ProbeResult], explained: list[dict[str, Any]]) -> list[str]:
    """A warning per result whose traced verdict is not what the packets measured (the trace is
    of the flows, the probe of the packets: when they differ, one of them is worth a look)."""
    return [
        f"{r.expect.source} → {r.expect.target} {r.expect.probe}: the packets measured {r.measured}, "
        f"the installed flows say {e['verdict']} ({e['by']})"
        for r, e in zip(results, explained, strict=True)
        if e["verdict"] is not None and e["verdict"] != r.measured
    ]


def report(
    results: list[ProbeResult],
    endpoints: list[dict[str, Any]],
    warnings: list[str],
    as_json: bool,
    explained: list[dict[str, Any]] | None = None,
) -> int:
    """The matrix (or LAB.md's JSON object), with each result's explanation if ``explained``;
    0 if every result is as expected, else 1."""
    passed = sum(r.ok for r in results)
    failed = len(results) - passed
    if explained is not None:
        warnings = [*warnings, *disagreements(results, explained)]
    if as_json:
        items = [
            {**r.to_json(), **({"explain": explained[i]} if explained is not None else {})}
            for i, r in enumerate(results)
        ]
        doc = {
            "results": items,
            "passed": passed,
            "failed": failed,
            "endpoints": endpoints,
            "warnings": warnings,
        }
        print(json.dumps(doc))
    else:
        out.print(results_table(results))
        if explained is not None:
            out.print(explain_table(results, explained))
        if endpoints:
            out.print(endpoints_table(endpoints))
        for line in warnings:
            out.print(f"[yellow]warning: {line}[/]")
        colour = "green" if not failed else "red"
        out.print(f"[{colour}]{passed} passed, {failed} failed[/]")
    return 0 if failed == 0 else 1


def _root() -> None:
    if os.geteuid() != 0:
        err.print("[red]the lab creates network namespaces and Open vSwitch instances: run it as root[/]")
        raise typer.Exit(2)


def _say(as_json: bool):  # type: ignore[no-untyped-def]
    return (lambda s: err.print(f"lab: {s}")) if as_json else (lambda s: out.print(f"lab: {s}"))


@lab_app.command("verify")
def verify_cmd(
    file: Annotated[Path, typer.Argument(help="Scenario file (LAB.md format).")],
    as_json: JsonOpt = False,
    state: StateOpt = DEFAULT_STATE,
    explain: ExplainOpt = False,
    dhcp_wait: DhcpWaitOpt = DHCP_WAIT,
    store: StoreOpt = None,
) -> None:
    """Bring the lab up, probe every `expect` line with real packets, read every endpoint's
    namespace, tear it down.

    Exits 0 only if every measured result matches the expected one."""
    _root()
    explained: list[dict[str, Any]] | None = None
    try:
        if store is not None:  # the same run, with the authority on another store
            explainer = None
            if explain:
                catalog = scenario_catalog(file)
                explainer = lambda lab, x: explain_json(lab, catalog, x)  # noqa: E731
            done = verify(file, state, _say(as_json), dhcp_wait, explainer, store=store)
            explained = done.explained
        elif explain:
            cat = scenario_catalog(file)
            done, explained = verify_explained(
                file, state, lambda lab, x: explain_json(lab, cat, x), _say(as_json), dhcp_wait
            )
        else:
            done = verify(file, state, _say(as_json), dhcp_wait)
    except (LabError, sc.ScenarioError, CommandFailed) as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("lab: interrupted; everything was removed")
        raise typer.Exit(130) from None
    raise typer.Exit(report(done.results, done.endpoints, done.warnings, as_json, explained))


@lab_app.command("up")
def up_cmd(
    file: Annotated[Path, typer.Argument(help="Scenario file (LAB.md format).")],
    state: StateOpt = DEFAULT_STATE,
    authority: Annotated[
        str | None,
        typer.Option(help="Use a running authority: its REST URL (with --opflex: its OpFlex address)."),
    ] = None,
    opflex: Annotated[
        str | None, typer.Option(help="OpFlex HOST:PORT of the --authority, for the lab's agents.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="POLICYFABRIC_TOKEN",
            show_default=False,
            help="REST token for --authority (if it has --tokens).",
        ),
    ] = None,
    dhcp_wait: DhcpWaitOpt = DHCP_WAIT,
    store: StoreOpt = None,
) -> None:
    """Bring the lab up and leave it running (explore it, then `lab probe` and `lab down`)."""
    _root()
    if token:
        os.environ["POLICYFABRIC_TOKEN"] = token  # the lab's REST clients take it from there
    existing: tuple[str, str] | None = None
    if authority:
        url, _, old_opflex = authority.partition(",")  # the older form: --authority URL,OPFLEX
        if not (opflex or old_opflex) or (opflex and old_opflex):
            raise typer.BadParameter("give the REST URL and the OpFlex address: --authority URL --opflex H:P")
        existing = (url, opflex or old_opflex)
    elif opflex:
        raise typer.BadParameter("--opflex goes with --authority (without them the lab starts its own)")
    if authority and store:
        raise typer.BadParameter("--store is for the lab's own authority, not for --authority")
    try:
        scenario = sc.load(file)
        checked_plan(scenario)
        lab_store.check(store)
        lab = Lab.create(file, state, _say(False))
        lab.dhcp_wait = dhcp_wait
        lab.store, lab.detached = store, True
    except (LabError, sc.ScenarioError) as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    try:
        lab.up(scenario, existing)
    except BaseException as exc:
        err.print(f"[red]lab: {exc}; removing what was created[/]")
        lab.down()
        raise typer.Exit(2) from None
    on = f" on {lab.state.store}" if lab.state.store else ""
    out.print(f"lab {lab.state.id} is up; state and logs in {state}; authority at {lab.state.url}{on}")
    out.print(f"  endpoints: {', '.join(lab.state.endpoints)} (namespaces {lab.state.id}-ep-NAME)")
    out.print(f"  next: policyfabric lab probe --state {state}; policyfabric lab down --state {state}")


@lab_app.command("probe")
def probe_cmd(as_json: JsonOpt = False, state: StateOpt = DEFAULT_STATE, explain: ExplainOpt = False) -> None:
    """Probe the `expect` lines of the running lab's scenario again, and read every endpoint's
    namespace."""
    _root()
    try:
        lab = Lab(LabState.load(state))
        expects = plan(sc.load(lab.state.scenario)).expect
    except (LabError, sc.ScenarioError) as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    results = lab.probe(expects)
    endpoints = lab.endpoints()
    explained = None
    if explain:
        cat = scenario_catalog(lab.state.scenario)
        explained = [explain_json(lab, cat, x) for x in expects]
    raise typer.Exit(report(results, endpoints, address_warnings(lab, endpoints), as_json, explained))


@lab_app.command("explain")
def explain_cmd(
    source: Annotated[str, typer.Argument(metavar="FROM", help="An endpoint or external host of the lab.")],
    target: Annotated[
        str, typer.Argument(metavar="TO", help="An endpoint, floating IP, router or external host.")
    ],
    probe: Annotated[str, typer.Argument(metavar="PROBE", help="icmp, tcp/N, udp/N, tcp6/N... (LAB.md).")],
    as_json: JsonOpt = False,
    state: StateOpt = DEFAULT_STATE,
) -> None:
    """Why PROBE from FROM to TO is allowed or denied, read from the flows installed on the hosts
    it crosses (OVS's trace of its first packet), each deciding flow named as the intent object
    that produced it. Sends no packet (but may resolve FROM's next hop: one ping)."""
    _root()
    try:
        lab = Lab(LabState.load(state))
        cat = scenario_catalog(lab.state.scenario)
    except (LabError, sc.ScenarioError) as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    doc = explain_json(lab, cat, Expect(source, target, probe, ""))
    if as_json:
        print(json.dumps(doc))
    elif doc["verdict"] is None:
        err.print(f"[red]lab: not traced: {doc.get('reason')}[/]")
    else:
        out.print(f"{source} → {target} {probe}: [bold]{doc['verdict']}[/] by {doc['by']}")
        for hop in doc["hops"]:
            out.print(f"  host {hop['host']}: {hop['outcome']}")
            for f in hop["flows"]:
                actions = ",".join(f["actions"])
                where = f"{f['match'] or '*'} (priority {f['priority']}, {f['from']})"
                out.print(f"    {f['table']:<16} {where}: {actions}")
    raise typer.Exit(0 if doc["verdict"] is not None else 1)


@lab_app.command("down")
def down_cmd(state: StateOpt = DEFAULT_STATE) -> None:
    """Remove everything the lab created (processes, Open vSwitch instances, namespaces)."""
    _root()
    try:
        lab = Lab(LabState.load(state))
    except LabError as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    left = lab.down()
    if left:
        err.print("[red]lab: could not remove: " + "; ".join(left) + "[/]")
        raise typer.Exit(1)
    out.print(f"lab {lab.state.id} removed")


def _running_host(state: Path, host: str) -> Lab:
    try:
        lab = Lab(LabState.load(state))
    except LabError as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    if host not in lab.state.hosts:
        err.print(f"[red]lab: no host {host!r} (hosts: {', '.join(lab.state.hosts)})[/]")
        raise typer.Exit(2)
    return lab


HostArg = Annotated[str, typer.Argument(help="A lab host's name (hosts: in the scenario).")]


CutOpt = Annotated[
    bool,
    typer.Option(
        "--cut",
        help="Cut the host off instead of killing it: underlay and external links down, agent frozen "
        "(SIGSTOP), so nothing says goodbye and the authority notices by keepalive.",
    ),
]


@lab_app.command("fail")
def fail_cmd(host: HostArg, cut: CutOpt = False, state: StateOpt = DEFAULT_STATE) -> None:
    """Kill a lab host: its agent and Open vSwitch (SIGKILL). A gateway's routers fail over."""
    _root()
    lab = _running_host(state, host)
    lab.fail(host, cut=cut)
    what = "links down and agent frozen" if cut else "agent and Open vSwitch killed"
    out.print(f"host {host}: {what}; bring it back with `policyfabric lab heal {host}`")


@lab_app.command("heal")
def heal_cmd(host: HostArg, state: StateOpt = DEFAULT_STATE) -> None:
    """Bring a failed lab host back: Open vSwitch (bridges and ports kept), underlay, agent."""
    _root()
    lab = _running_host(state, host)
    try:
        lab.heal(host)
    except Exception as exc:
        err.print(f"[red]lab: host {host}: {exc}[/]")
        raise typer.Exit(1) from None
    out.print(f"host {host}: Open vSwitch and agent running again")
