"""The ``rubricate`` command: a thin layer; every verb calls one library function.

Each area registers its own verbs from its own module (``cli/tasks.py``, ``cli/student.py``, ...), so
the commands of one area are found next to each other. Heavy imports (torch, transformers, llama.cpp)
stay inside the command functions so that ``rubricate --help`` is instant.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any, Callable

import typer

from rubricate import __version__
from rubricate.errors import RubricateError

app = typer.Typer(
    name="rubricate",
    help="Score students' written answers against rubrics, and measure how reliably.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rubricate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """rubricate: tasks and rubrics, a compact multi-task student, LLM agents, reliability reports."""


#: where ``--tasks`` looks by default: the ``tasks`` folder of the current directory (a checkout links it to the
#: shipped task files, ``rubricate.resources``).
TASKS_DIR = Path("tasks")


def default_of(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of a library function, for options that have no argument dataclass."""
    return inspect.signature(fn).parameters[name].default


def _register() -> None:
    from rubricate.cli import agents, data, demo, report, reviews, serve, student, tasks

    for module in (tasks, data, report, student, agents, serve, reviews, demo):
        module.register(app)
    # One verb, two homes: distilling an LLM scorer is a way to make a teacher file (``teach agents``)
    # and an agents feature (``agents teach``); both run the same function.
    student.teach_app.command("agents")(agents.teach)


_register()


def main() -> None:
    """Console-script entry point: user errors print one clear line and exit 2, no traceback."""
    try:
        app()
    except RubricateError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
