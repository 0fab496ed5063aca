"""The `policyfabric` command line: the app, and the commands that talk to the authority's REST
API (check, apply, get, delete). The daemons (authority, agent) are in ``cli.daemons``, the lab
in ``cli.lab``, the demo in ``cli.demo``; this module registers them all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from policyfabric import __version__
from policyfabric.cli import daemons
from policyfabric.cli.console import err, fail, out
from policyfabric.cli.tables import objects_table
from policyfabric.client import DEFAULT_URL, ApiError, Client, Unreachable
from policyfabric.client import apply as applying
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc

app = typer.Typer(
    name="policyfabric",
    help="policyfabric: declare network intent at a Policy Authority; agents enforce it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
AuthorityUrl = Annotated[
    str,
    typer.Option("--authority", envvar="POLICYFABRIC_URL", help="REST URL of the Policy Authority."),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="POLICYFABRIC_TOKEN",
        show_default=False,
        help="Bearer token for an authority run with --tokens (prefer the environment variable: "
        "a command line is visible to other users).",
    ),
]
FileArg = Annotated[Path, typer.Option("-f", "--file", help="Scenario file (YAML, see docs/scenario.md).")]


app.command()(daemons.authority)
app.command()(daemons.agent)
app.command()(daemons.renderers)


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"policyfabric {__version__}")


def _load_checked(path: Path) -> sc.Scenario:
    try:
        scenario = sc.load(path)
    except sc.ScenarioError as exc:
        raise fail(str(exc)) from None
    problems = sc.check(scenario)
    if problems:
        for problem in problems:
            err.print(problem.render(str(path)), highlight=False, soft_wrap=True)
        raise fail(f"{path}: {len(problems)} problem(s); nothing was changed")
    return scenario


@app.command()
def check(file: FileArg) -> None:
    """Validate a scenario file offline, with the authority's own validator.

    Prints every problem as FILE:LINE: PATH: MESSAGE and exits 1 if there is any.
    """
    scenario = _load_checked(file)
    out.print(f"{file}: OK ({len(scenario.entries)} objects)")


@app.command("apply")
def apply_(file: FileArg, authority: AuthorityUrl = DEFAULT_URL, token: Token = None) -> None:
    """Create or update, by name, every object a scenario file declares (idempotent).

    The file is checked offline first; nothing is sent if it has problems.
    Objects are never deleted by apply. An object someone changes while apply
    runs is not overwritten: apply stops and says so; run it again.
    """
    scenario = _load_checked(file)
    with Client(authority, token=token or "") as client:
        try:
            steps = applying.plan(scenario, client)
            with Progress(
                TextColumn("[bold]applying[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.description}"),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task("", total=len(steps))

                def progress(step: applying.Step) -> None:
                    bar.update(
                        task, advance=1, description=f"{step.action} {step.entry.kind} {step.body['name']}"
                    )

                result = applying.execute(steps, client, progress)
            revision = client.revision()
        except Unreachable as exc:
            raise fail(str(exc)) from None
        except applying.Changed as exc:
            raise fail(f"{exc}. Objects before it were applied, none after: run apply again") from None
        except ApiError as exc:
            raise fail(f"the authority refused a change: {exc}") from None
    table = Table(title=f"{file} -> {authority} (revision {revision})")
    for column in ("kind", "created", "updated", "unchanged"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind in k.ORDER:
        counts = result.counts.get(kind.name)
        if counts:
            table.add_row(kind.collection, *(str(counts[a]) for a in ("create", "update", "unchanged")))
    out.print(table)
    out.print(
        f"{result.total('create')} created, {result.total('update')} updated, "
        f"{result.total('unchanged')} unchanged"
    )


def _kind(text: str) -> k.Kind:
    kind = k.lookup(text)
    if kind is None:
        raise fail(f"unknown kind {text!r}; one of: {', '.join(x.collection for x in k.ORDER)}")
    return kind


@app.command()
def get(
    kind: Annotated[
        str, typer.Argument(help="e.g. tenants, bridge-domains, endpoints (or bd, epg, sg, fip)")
    ],
    name: Annotated[str | None, typer.Argument(help="only this object")] = None,
    tenant: Annotated[str | None, typer.Option(help="only objects of this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    authority: AuthorityUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show stored objects of one kind."""
    which = _kind(kind)
    with Client(authority, token=token or "") as client:
        try:
            items = client.list(which, tenant, name)
        except (Unreachable, ApiError) as exc:
            raise fail(str(exc)) from None
    if name is not None and not items:
        raise fail(f"no {which} named {name!r}" + (f" in tenant {tenant!r}" if tenant else ""))
    if as_json:
        print(json.dumps(items if name is None else items[0] if len(items) == 1 else items, indent=2))
    else:
        out.print(objects_table(which, items))


@app.command()
def delete(
    kind: Annotated[str, typer.Argument(help="e.g. endpoints, subnets")],
    name: Annotated[str, typer.Argument(help="the object's name")],
    tenant: Annotated[
        str | None, typer.Option(help="its tenant (not for tenants and external networks)")
    ] = None,
    authority: AuthorityUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Delete one object; refused while other objects use it, or if it changes while this runs."""
    which = _kind(kind)
    if which.scoped and tenant is None:
        raise fail(f"a {which} lives in a tenant: add --tenant")
    with Client(authority, token=token or "") as client:
        try:
            found = client.list(which, tenant if which.scoped else None, name)
            if not found:
                raise fail(f"no {which} named {name!r}" + (f" in tenant {tenant!r}" if tenant else ""))
            # the revision just read: an object changed in between is not deleted unseen
            result = client.delete(which, found[0]["id"], found[0]["revision"])
        except (Unreachable, ApiError) as exc:
            raise fail(str(exc)) from None
    out.print(f"deleted {which} {name!r} (revision {result['revision']})")


from policyfabric.cli.lab import lab_app  # noqa: E402  (after app: the sub-app registers on it)

app.add_typer(lab_app, name="lab")


@app.command()
def demo(
    file: Annotated[Path, typer.Argument(help="scenario to apply")] = Path("examples/demo.yaml"),
    state_dir: Annotated[
        Path | None,
        typer.Option(help="keep the database, the lab's state and logs here (default: a temporary dir)"),
    ] = None,
) -> None:
    """Intent to packets in one go (root): an authority on SQLite, apply the scenario, build its lab
    for real, probe every expectation with packets, show intent vs measured, tear it all down."""
    from policyfabric.cli.demo import run_demo

    raise typer.Exit(run_demo(file, state_dir, out, err))
