from policyfabric.cli.main import app

app(prog_name="policyfabric")
