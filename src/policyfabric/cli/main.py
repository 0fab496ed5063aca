"""The `policyfabric` command line: the app, and the commands that talk to the authority's REST
API (check, apply, get, delete). The daemons (authority, agent) are in ``cli.daemons``, the lab
in ``cli.lab``, the demo in ``cli.demo``; this module registers them all.

Conventions (as kubectl and the OpenStack CLI have them): ``-h``/``--help`` everywhere,
``--version``, shell completion (``--install-completion``), ``-o json|yaml|wide|name`` on what
lists (``--json`` kept as ``-o json``), ``-f -`` for standard input, ``--authority`` is always
the REST URL, and an option that does not apply to what was asked is an error, not ignored.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from policyfabric import __version__
from policyfabric.cli import migrate
from policyfabric.cli.app import new_app
from policyfabric.cli.console import err, fail, out
from policyfabric.cli.logs import logs as logs_command
from policyfabric.cli.tables import (
    agents_table,
    changes_table,
    dump,
    faults_table,
    objects_table,
    watch_line,
)
from policyfabric.client import DEFAULT_URL, ApiError, Client, Unreachable
from policyfabric.client import apply as applying
from policyfabric.client.events import ServerEvent, follow
from policyfabric.client.wait import Waited, wait_rendered, written_tenants
from policyfabric.model import kinds as k
from policyfabric.model import scenario as sc

app = new_app()
AuthorityUrl = Annotated[
    str,
    typer.Option(
        "--authority",
        envvar="POLICYFABRIC_URL",
        help="REST URL of the Policy Authority (http(s)://HOST:PORT).",
    ),
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
FileArg = Annotated[
    Path, typer.Option("-f", "--file", help="Scenario file (YAML, see docs/scenario.md); - reads stdin.")
]


class Output(StrEnum):
    table = "table"
    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"


OutputOpt = Annotated[
    Output | None,
    typer.Option(
        "-o", "--output", help="table (default), wide (every field), json, yaml, or name (kind/tenant/name)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Same as -o json.")]


def _output(output: Output | None, as_json: bool) -> Output:
    if as_json and output not in (None, Output.json):
        raise fail(f"--json and -o {output.value if output else ''} disagree: give one of them")
    return Output.json if as_json else (output or Output.table)


app.command()(logs_command)
app.command()(migrate.migrate)


@contextmanager
def connected(url: str, token: str | None) -> Iterator[Client]:
    """A client of the authority at ``url``; what cannot reach it, or is refused, is one red line."""
    try:
        with Client(url, token=token or "") as client:
            yield client
    except (Unreachable, ApiError) as exc:
        raise fail(str(exc)) from None


@app.command()
def version() -> None:
    """Print the version."""
    out.print(f"policyfabric {__version__}")


def _load(path: Path) -> sc.Scenario:
    try:
        return sc.load(path)
    except sc.ScenarioError as exc:
        raise fail(str(exc)) from None


def _load_checked(path: Path) -> sc.Scenario:
    scenario = _load(path)
    problems = sc.check(scenario)
    if problems:
        for problem in problems:
            err.print(problem.render(str(path)), highlight=False, soft_wrap=True)
        raise fail(f"{path}: {len(problems)} problem(s); nothing was changed")
    return scenario


@app.command()
def check(file: FileArg) -> None:
    """Validate a scenario file offline, with the authority's own validator.

    Prints every problem of the file in one pass as FILE:LINE: PATH: MESSAGE (the intent, duplicate
    keys, and the lab sections: hosts, endpoints' hosts, external_hosts, expect) and exits 1 if
    there is any.
    """
    scenario = _load_checked(file)
    out.print(f"{file}: OK ({len(scenario.entries)} objects)")


def _label(kind: k.Kind, body: dict[str, Any]) -> str:
    return f"{kind} {body.get('tenant')}/{body['name']}" if kind.scoped else f"{kind} {body['name']}"


def _refused(path: Path, exc: applying.Refused, what: str) -> typer.Exit:
    """The authority's refusal, at the line of the object it names."""
    step, error = exc.step, exc.error
    if step is None:
        return fail(f"the authority refused {what}: {error}; nothing was changed")
    field = f"{error.field}: " if error.field else ""
    line = step.entry.line(error.field)
    err.print(
        f"{path}:{line}: {step.entry.path}: {_label(step.entry.kind, step.body)}: {field}{error.message} "
        f"[{error.status} {error.code}]",
        highlight=False,
        soft_wrap=True,
    )
    if isinstance(exc, applying.Changed):
        return fail("it changed at the authority after apply read it; nothing was applied: run apply again")
    return fail(f"the authority refused {what}; nothing was changed")


def _owner(file: Path, owner: str | None) -> str | None:
    """Who the objects apply creates belong to (``applied_by``): --owner, else the file's path."""
    if owner is not None:
        return owner
    return None if str(file) == sc.STDIN else f"file:{file.resolve()}"


def _summary(result: applying.Result, prune: bool, verb: tuple[str, str, str, str]) -> str:
    text = ", ".join(
        f"{result.total(a)} {w}" for a, w in zip(("create", "update", "unchanged"), verb, strict=False)
    )
    return text + (f", {result.total('delete')} {verb[3]}" if prune else "")


def _leaves(value: Any, path: str) -> dict[str, Any]:
    """``{"rules[0].classifier.port": 80, ...}``: a nested value by its leaves' paths."""
    if isinstance(value, dict) and value:
        return {p: v for key, item in value.items() for p, v in _leaves(item, f"{path}.{key}").items()}
    if isinstance(value, list) and value and any(isinstance(x, (dict, list)) for x in value):
        return {p: v for i, item in enumerate(value) for p, v in _leaves(item, f"{path}[{i}]").items()}
    return {path: value}


def _field_changes(change: dict[str, Any], created: bool) -> list[str]:
    """One line per leaf that differs: ``rules[0].classifier.port: 80 -> 8080``."""
    before = {} if created else _leaves(change["from"], change["field"])
    after = _leaves(change["to"], change["field"])
    lines = []
    for path in [*after, *(p for p in before if p not in after)]:
        old, new = before.get(path), after.get(path)
        if created:
            lines.append(f"{path}: {_show(new)}")
        elif old != new:
            lines.append(f"{path}: {_show(old)} -> {_show(new)}")
    return lines


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


def _print_diff(result: applying.Result, steps: list[applying.Step]) -> None:
    """Each object that would change, with each field: + created, ~ updated, - deleted."""
    lines = {(s.entry.kind.collection, s.body.get("tenant"), s.body["name"]): s for s in steps}
    marks = {"created": ("+", "green"), "updated": ("~", "yellow"), "deleted": ("-", "red")}
    for item in result.items:
        if item["action"] not in marks:
            continue
        mark, colour = marks[item["action"]]
        kind = k.lookup(item["kind"])
        name = f"{item['tenant']}/{item['name']}" if item.get("tenant") else item["name"]
        step = lines.get((item["kind"], item.get("tenant"), item["name"]))
        where = f"  (line {step.entry.line(None)})" if step else "  (no longer in the file: pruned)"
        out.print(f"[{colour}]{mark} {kind or item['kind']} {name}[/]{where}", highlight=False)
        for change in item["changes"]:
            for line in _field_changes(change, item["action"] == "created"):
                out.print(f"    {line}", highlight=False)


@app.command("apply")
def apply_(
    file: FileArg,
    diff: Annotated[
        bool,
        typer.Option(
            "--diff", help="Show what would change, field by field (the authority's dry run); write nothing."
        ),
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Also delete the objects this file created (applied_by) that it no longer declares; "
            "objects created by hand or by another file are never pruned.",
        ),
    ] = False,
    owner: Annotated[
        str | None,
        typer.Option(
            help="The identity recorded on the objects this apply creates (applied_by) and that --prune "
            "deletes by. Default: file:ABSOLUTE-PATH of the file (needed with -f - and --prune).",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Then wait until every agent with endpoints in the tenants it changed has rendered it "
            "(its flows reflect the write's revision); exit 1 naming those that did not in time.",
        ),
    ] = False,
    wait_timeout: Annotated[
        float, typer.Option(help="--wait: seconds to wait at most.", min=0.1, show_default=True)
    ] = 30.0,
    output: OutputOpt = None,
    authority: AuthorityUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create or update, by name, every object a scenario file declares: ONE transaction, all or nothing.

    The file is checked offline first; nothing is sent if it has problems. Every object carries
    the revision apply read: one changed meanwhile is refused (409), and nothing is applied.
    Objects the file no longer declares stay, unless --prune. A file applied twice changes nothing.
    """
    if output not in (None, Output.table, Output.json, Output.yaml):
        raise fail(f"-o {output.value if output else ''}: apply prints a table, json or yaml")
    who = _owner(file, owner)
    if prune and who is None:
        raise fail("--prune with -f - needs --owner: the identity the objects were applied with")
    if wait and diff:
        raise fail("--wait waits for a write; --diff writes nothing")
    scenario = _load_checked(file)
    waited = None
    with connected(authority, token) as client:
        steps = applying.plan(scenario, client)
        try:
            result = applying.execute(steps, client, dry_run=diff, owner=who, prune=prune)
        except applying.Refused as exc:
            raise _refused(file, exc, "a change") from None
        tenants = written_tenants(result.items)
        if wait and tenants and result.revision is not None:
            waited = wait_rendered(client, result.revision, tenants, wait_timeout)
    if output in (Output.json, Output.yaml):
        answer: dict[str, Any] = {"items": result.items, "revision": result.revision, "dry_run": diff}
        if waited is not None:
            answer["wait"] = {"agents": waited.agents, "missing": waited.missing, "seconds": waited.seconds}
            answer["wait"]["unconfirmed"] = waited.unconfirmed
        print(dump(answer, output.value))
        _waited(waited, quiet=True)
        return
    if diff:
        _print_diff(result, steps)
        verbs = ("to create", "to update", "unchanged", "to delete")
        out.print(
            _summary(result, prune, verbs)
            + f" (a dry run at revision {result.revision}: nothing was written)"
        )
        return
    table = Table(title=f"{file} -> {authority} (revision {result.revision})")
    columns = ("kind", "created", "updated", "unchanged", *(("deleted",) if prune else ()))
    for column in columns:
        table.add_column(column, justify="left" if column == "kind" else "right")
    for kind in k.ORDER:
        counts = result.counts.get(kind.name)
        if counts:
            actions = ("create", "update", "unchanged", *(("delete",) if prune else ()))
            table.add_row(kind.collection, *(str(counts[a]) for a in actions))
    out.print(table)
    out.print(_summary(result, prune, ("created", "updated", "unchanged", "deleted (pruned)")))
    if wait and waited is None:
        out.print("nothing to wait for: the write changed no tenant's policy")
    _waited(waited)


def _waited(waited: Waited | None, quiet: bool = False) -> None:
    """``apply --wait``'s verdict: a line when every agent concerned rendered the write, else an
    error naming those that did not."""
    if waited is None:
        return
    if waited.unconfirmed:
        err.print(
            f"not confirmed: {', '.join(waited.unconfirmed)} never report what they have rendered "
            "(reference OpFlex agents): not waited for",
            highlight=False,
        )
    if waited.missing:
        late = "; ".join(f"{name} ({state})" for name, state in sorted(waited.missing.items()))
        raise fail(
            f"not rendered within {waited.seconds:.1f}s: revision {waited.revision} is not yet on {late}"
        )
    if not quiet:
        confirmed = [a for a in waited.agents if a not in waited.unconfirmed]
        agents = ", ".join(confirmed) or "no agent that reports has endpoints in the tenants changed"
        out.print(
            f"rendered: revision {waited.revision} in {waited.seconds:.2f}s on {agents}", highlight=False
        )


SPECIAL = ("agents", "faults", "changes")  # what `get` shows besides stored objects


def _kind(text: str) -> k.Kind:
    kind = k.lookup(text)
    if kind is None:
        known = ", ".join((*(x.collection for x in k.ORDER), *SPECIAL))
        raise fail(f"unknown kind {text!r}; one of: {known}")
    return kind


def _name_of(kind: k.Kind, item: dict[str, Any]) -> str:
    return (
        f"{kind.collection}/{item['tenant']}/{item['name']}"
        if kind.scoped
        else f"{kind.collection}/{item['name']}"
    )


@app.command()
def get(
    kind: Annotated[
        str,
        typer.Argument(
            help="e.g. tenants, bridge-domains, endpoints (or bd, epg, sg, fip); agents, faults, changes"
        ),
    ],
    name: Annotated[str | None, typer.Argument(help="only this object (agents, faults: this agent)")] = None,
    tenant: Annotated[str | None, typer.Option(help="only objects of this tenant")] = None,
    since: Annotated[
        int | None, typer.Option(help="changes: only those after this revision (default 0)", min=0)
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "-w",
            "--watch",
            help="After the list, print each change as it arrives (objects: created, updated, deleted, "
            "endpoint status; agents: connected, rendered revision) until interrupted.",
        ),
    ] = False,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
    authority: AuthorityUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show stored objects of one kind, or the agents, their faults, the change log."""
    fmt = _output(output, as_json)
    special = kind.strip().lower()
    if watch and special in ("faults", "changes"):
        raise fail(f"-w applies to objects and agents, not {special}")
    if special in SPECIAL:
        if tenant is not None:
            raise fail(f"--tenant does not apply to {special}: they span every tenant")
        if since is not None and special != "changes":
            raise fail(f"--since applies to changes, not {special}")
        if name is not None and special == "changes":
            raise fail("changes have no name: use --since REVISION")
        _get_special(special, name, since or 0, fmt, authority, token)
        if watch:
            _watch(None, name, None, fmt, authority, token, None)
        return
    which = _kind(kind)
    if since is not None:
        raise fail(f"--since applies to changes, not {which.collection}")
    if tenant is not None and not which.scoped:
        raise fail(f"--tenant does not apply to {which.collection}: they belong to no tenant")
    with connected(authority, token) as client:
        params = {key: v for key, v in (("tenant", tenant), ("name", name)) if v is not None}
        listed = client.request("GET", f"/v1/{which.collection}", params=params)
        items, revision = list(listed["items"]), int(listed["revision"])
    if name is not None and not items and not watch:
        raise fail(f"no {which} named {name!r}" + (f" in tenant {tenant!r}" if tenant else ""))
    if fmt in (Output.json, Output.yaml):
        print(dump(items if name is None else items[0] if len(items) == 1 else items, fmt.value))
    elif fmt is Output.name:
        for item in items:
            print(_name_of(which, item))
    else:
        out.print(objects_table(which, items, wide=fmt is Output.wide))
    if watch:
        _watch(which, name, tenant, fmt, authority, token, revision)


def _watch(
    kind: k.Kind | None,
    name: str | None,
    tenant: str | None,
    fmt: Output,
    url: str,
    token: str | None,
    since: int | None,
) -> None:
    """``get -w``: each event about ``kind`` (None: agents) after ``since``, in ``fmt``, until
    Ctrl-C. A stream cut for falling behind is resumed from the revision it names."""
    try:
        with connected(url, token) as client:
            while True:
                with follow(client, since, read_timeout=None) as events:
                    for event in events:
                        if event.name == "cut":
                            since = int(event.data["revision"])
                            break
                        if event.id is not None:
                            since = event.id
                        if watched(event, kind, name, tenant):
                            print_event(event, kind, fmt)
                    else:
                        return
    except KeyboardInterrupt:
        return


def watched(event: ServerEvent, kind: k.Kind | None, name: str | None, tenant: str | None) -> bool:
    """Whether ``get -w`` shows ``event``."""
    data = event.data
    if kind is None:
        return event.name == "agent" and name in (None, data.get("name"))
    if event.name not in ("change", "status") or data.get("kind") != kind.name:
        return False
    return name in (None, data.get("name")) and tenant in (None, data.get("tenant"))


def print_event(event: ServerEvent, kind: k.Kind | None, fmt: Output) -> None:
    data = event.data
    if fmt in (Output.json, Output.yaml):
        body = {"event": event.name, **data}
        print(json.dumps(body, separators=(",", ":")) if fmt is Output.json else "---\n" + dump(body, "yaml"))
    elif fmt is Output.name:
        print(f"agents/{data['name']}" if kind is None else _name_of(kind, data))
    else:
        print(watch_line(event, kind), flush=True)
    sys.stdout.flush()


def _get_special(what: str, name: str | None, since: int, fmt: Output, url: str, token: str | None) -> None:
    with connected(url, token) as client:
        if what == "changes":
            page = client.changes(since)
            items: list[dict[str, Any]] = page["changes"]
            faults: list[dict[str, Any]] = []
        else:
            faults = client.faults()
            items = client.agents() if what == "agents" else faults
    if name is not None:
        key = "name" if what == "agents" else "agent"
        items = [i for i in items if i.get(key) == name]
        if what == "agents" and not items:
            raise fail(f"no agent named {name!r}")
    if fmt in (Output.json, Output.yaml):
        print(dump(items, fmt.value))
    elif fmt is Output.name:
        for item in items:
            print(
                f"{what}/{item.get('name', item.get('agent'))}"
                if what != "changes"
                else f"changes/{item['revision']}"
            )
    elif what == "agents":
        out.print(agents_table(items, faults, wide=fmt is Output.wide))
    elif what == "faults":
        out.print(faults_table(items))
    else:
        out.print(changes_table(items))


@app.command()
def delete(
    kind: Annotated[str | None, typer.Argument(help="e.g. endpoints, subnets", show_default=False)] = None,
    name: Annotated[str | None, typer.Argument(help="the object's name", show_default=False)] = None,
    tenant: Annotated[
        str | None, typer.Option(help="its tenant (not for tenants and external networks)")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "-f",
            "--file",
            help="Delete every object this scenario file declares (one transaction); - reads stdin.",
        ),
    ] = None,
    authority: AuthorityUrl = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Delete one object (KIND NAME), or every object of a file (-f FILE) in one transaction.

    Refused while other objects use it (unless the same file deletes those too), or if it
    changes while this runs."""
    if file is not None:
        if kind is not None or name is not None or tenant is not None:
            raise fail("delete -f FILE takes no KIND, NAME or --tenant: the file names the objects")
        _delete_file(file, authority, token)
        return
    if kind is None or name is None:
        raise fail("say what to delete: KIND NAME [--tenant T], or -f FILE")
    which = _kind(kind)
    if which.scoped and tenant is None:
        raise fail(f"a {which} lives in a tenant: add --tenant")
    if not which.scoped and tenant is not None:
        raise fail(f"--tenant does not apply to {which.collection}: they belong to no tenant")
    with connected(authority, token) as client:
        found = client.list(which, tenant if which.scoped else None, name)
        if not found:
            raise fail(f"no {which} named {name!r}" + (f" in tenant {tenant!r}" if tenant else ""))
        # the revision just read: an object changed in between is not deleted unseen
        result = client.delete(which, found[0]["id"], found[0]["revision"])
    out.print(f"deleted {which} {name!r} (revision {result['revision']})")


def _delete_file(file: Path, url: str, token: str | None) -> None:
    scenario = _load_checked(file)
    with connected(url, token) as client:
        steps = applying.plan_delete(scenario, client)
        try:
            result = applying.execute(steps, client)
        except applying.Refused as exc:
            raise _refused(file, exc, "a deletion") from None
    for item in result.items:
        kind = k.lookup(item["kind"])
        name = f"{item['tenant']}/{item['name']}" if item.get("tenant") else item["name"]
        out.print(f"deleted {kind or item['kind']} {name}", highlight=False)
    absent = result.total("absent")
    out.print(
        f"{result.total('delete')} deleted, {absent} not found (revision {result.revision})",
        highlight=False,
    )


from policyfabric.cli.explain import explain_command  # noqa: E402
from policyfabric.cli.lab import lab_app  # noqa: E402  (after app: the sub-app registers on it)

app.add_typer(lab_app, name="lab")
app.command("explain")(explain_command)


@app.command()
def demo(
    file: Annotated[Path, typer.Argument(help="scenario to apply")] = Path("examples/demo.yaml"),
    state_dir: Annotated[
        Path | None,
        typer.Option(help="keep the database, the lab's state and logs here (default: a temporary dir)"),
    ] = None,
) -> None:
    """Build a real lab on THIS machine, as root, and probe it: an authority on SQLite, check and
    apply the scenario, then network namespaces, an Open vSwitch and an agent per host, Geneve
    between them, real packets for every `expect` line, intent vs measured, and all torn down.

    Needs root, Open vSwitch and iproute2; it changes nothing outside its namespaces and temporary
    Open vSwitch instances, and removes them at the end (also on failure or Ctrl-C)."""
    from policyfabric.cli.demo import run_demo

    raise typer.Exit(run_demo(file, state_dir, out, err))
