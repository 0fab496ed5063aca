"""``python -m policyfabric``: a daemon (``agent``, ``authority``, ``renderers``) gets the bare
app (``cli.app``), so it never imports the REST client, the lab or the scenario model; anything
else gets the full command line."""

import sys

from policyfabric.cli.app import DAEMONS, new_app


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in DAEMONS:
        new_app()(prog_name="policyfabric")
    else:
        from policyfabric.cli.main import app

        app(prog_name="policyfabric")


if __name__ == "__main__":
    main()
