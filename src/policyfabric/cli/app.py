"""The bare ``policyfabric`` app: its name, help, ``--version`` and the daemon commands, with
nothing else imported.

The daemons (``agent`` above all: one per host, running for months) start through
``python -m policyfabric``, which builds only this app for them (``policyfabric.__main__``).
The full command line (``cli.main``) adds the REST commands, the lab and the demo, whose imports
(the REST client, httpx, the scenario model, the lab, rich tables) cost a daemon about 10 MB of
resident memory it never uses."""

from __future__ import annotations

from typing import Annotated

import typer

from policyfabric import __version__
from policyfabric.cli import daemons
from policyfabric.cli.console import out

CONTEXT = {"help_option_names": ["-h", "--help"]}
HELP = "policyfabric: declare network intent at a Policy Authority; agents enforce it."
DAEMONS = ("authority", "agent", "renderers")


def _show_version(value: bool) -> None:
    if value:
        out.print(f"policyfabric {__version__}")
        raise typer.Exit()


def new_app() -> typer.Typer:
    """The app with its callback and the daemon commands registered, ready for more commands."""
    app = typer.Typer(
        name="policyfabric",
        help=HELP,
        no_args_is_help=True,
        add_completion=True,
        context_settings=CONTEXT,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def main(
        version: Annotated[
            bool,
            typer.Option(
                "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
            ),
        ] = False,
    ) -> None:
        """policyfabric: declare network intent at a Policy Authority; agents enforce it."""

    app.command()(daemons.authority)
    app.command()(daemons.agent)
    app.command()(daemons.renderers)
    return app
