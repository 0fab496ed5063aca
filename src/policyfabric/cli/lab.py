"""`policyfabric lab`: build a scenario for real (namespaces, Open vSwitch, agents) and probe it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from policyfabric.cli.console import err, out
from policyfabric.cli.tables import results_table
from policyfabric.lab.dhcp import DHCP_WAIT
from policyfabric.lab.lab import DEFAULT_STATE, Lab, address_warnings, checked_plan, verify
from policyfabric.lab.plan import LabError, plan
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
        help="Say why each result is what it is, from the rendered dataplane. NOT IMPLEMENTED YET: "
        'accepted (LAB.md), each JSON result gets "explain": null and a warning says so.',
    ),
]
DhcpWaitOpt = Annotated[
    float,
    typer.Option("--dhcp-wait", help="Seconds a `dhcp: true` endpoint has to get its addresses.", min=0),
]

# --explain needs the verdict read back from the flows (cookies naming intent objects): not here yet
EXPLAIN_MISSING = (
    "--explain is not implemented yet: no verdict is read from the rendered dataplane, "
    'so every result has "explain": null'
)


def endpoints_table(endpoints: list[dict[str, Any]]) -> Table:
    table = Table(title="endpoints (read from their namespaces)")
    for col in ("name", "host", "addresses", "routes", "mtu"):
        table.add_column(col)
    for e in endpoints:
        table.add_row(e["name"], e["host"], "\n".join(e["addresses"]), "\n".join(e["routes"]), str(e["mtu"]))
    return table


def report(
    results: list[ProbeResult],
    endpoints: list[dict[str, Any]],
    warnings: list[str],
    as_json: bool,
    explain: bool = False,
) -> int:
    """The matrix (or LAB.md's JSON object); 0 if every result is as expected, else 1."""
    passed = sum(r.ok for r in results)
    failed = len(results) - passed
    if explain:
        warnings = [*warnings, EXPLAIN_MISSING]
    if as_json:
        items = [{**r.to_json(), **({"explain": None} if explain else {})} for r in results]
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
) -> None:
    """Bring the lab up, probe every `expect` line with real packets, read every endpoint's
    namespace, tear it down.

    Exits 0 only if every measured result matches the expected one."""
    _root()
    try:
        done = verify(file, state, _say(as_json), dhcp_wait)
    except (LabError, sc.ScenarioError, CommandFailed) as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err.print("lab: interrupted; everything was removed")
        raise typer.Exit(130) from None
    raise typer.Exit(report(done.results, done.endpoints, done.warnings, as_json, explain))


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
    try:
        scenario = sc.load(file)
        checked_plan(scenario)
        lab = Lab.create(file, state, _say(False))
        lab.dhcp_wait = dhcp_wait
    except (LabError, sc.ScenarioError) as exc:
        err.print(f"[red]lab: {exc}[/]")
        raise typer.Exit(2) from None
    try:
        lab.up(scenario, existing)
    except BaseException as exc:
        err.print(f"[red]lab: {exc}; removing what was created[/]")
        lab.down()
        raise typer.Exit(2) from None
    out.print(f"lab {lab.state.id} is up; state and logs in {state}; authority at {lab.state.url}")
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
    raise typer.Exit(report(results, endpoints, address_warnings(lab, endpoints), as_json, explain))


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
