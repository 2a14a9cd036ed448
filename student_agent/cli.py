"""m2kt-student: the student agent's commands."""

import typer

app = typer.Typer(help="The M2KT student agent.", no_args_is_help=True, add_completion=False)


@app.command()
def version() -> None:
    """Print the version."""
    from importlib.metadata import version as _version

    typer.echo(_version("m2kt"))
