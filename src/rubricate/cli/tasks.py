"""``rubricate tasks validate`` and ``rubricate tasks show``: check and read task files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List

import typer

from rubricate.cli import TASKS_DIR

#: characters of a task's context passage that ``tasks show`` prints without --full
CONTEXT_PREVIEW_CHARS = 1200

tasks_app = typer.Typer(help="Validate and show task files (question + rubric).", no_args_is_help=True)


def _collect(paths: list[Path]) -> tuple[list[Path], list[str]]:
    from rubricate.tasks import TASK_SUFFIXES

    files: list[Path] = []
    problems: list[str] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TASK_SUFFIXES)
            if not found:
                problems.append(f"{p}: no task files (*.yaml, *.yml, *.json) found")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    return files, problems


@tasks_app.command("validate")
def validate(
    paths: List[Path] = typer.Argument(..., help="Task files or folders of task files (searched recursively)."),
) -> None:
    """Validate task files; print every problem (file + field) and exit 1 if there is any."""
    from rich.console import Console

    from rubricate.errors import TaskFileError
    from rubricate.tasks import load_task

    console = Console()
    files, problems = _collect(paths)
    seen: dict[str, Path] = {}
    ok = 0
    for f in files:
        try:
            task = load_task(f)
        except TaskFileError as e:
            problems.append(str(e))
            continue
        if task.id in seen:
            problems.append(f"{f}: task id '{task.id}' already defined in {seen[task.id]}")
            continue
        seen[task.id] = f
        ok += 1
        kinds = []
        if task.criteria:
            kinds.append(f"{len(task.criteria)} criteria")
        for s in task.scales:
            kinds.append(f"{s.id} {s.min}-{s.max}")
        if task.components:
            kinds.append(f"{len(task.components)} components")
        if task.rubric.scoring_rules:
            kinds.append(f"{len(task.rubric.scoring_rules)} rule(s)")
        console.print(f"[green]ok[/green] {f}  [bold]{task.id}[/bold] ({', '.join(kinds)})", highlight=False)
    for p in problems:
        console.print(f"[red]error[/red] {p}", highlight=False)
    console.print(f"{ok} valid, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@tasks_app.command("show")
def show(
    task_id: str = typer.Argument(..., help="Task id, e.g. asap-sas-2 (or a task file path)."),
    tasks: Path = typer.Option(TASKS_DIR, "--tasks", "-t", help="Task folder (or file) to look in."),
    full: bool = typer.Option(False, "--full", help="Print the whole context passage instead of its start."),
) -> None:
    """Render a task: question, context, rubric, components, scoring rules and the student's label encoding."""
    from rich.console import Console

    from rubricate.tasks import TaskRegistry, load_task

    task = load_task(task_id) if Path(task_id).is_file() else TaskRegistry.from_dir(tasks).get(task_id)
    console = Console()
    _print_question(console, task, full)
    _print_rubric(console, task)
    _print_encoding(console, task)


def _print_question(console: Any, task: Any, full: bool) -> None:
    """The question and (the start of) the context passage, as Markdown."""
    from rich.markdown import Markdown
    from rich.panel import Panel

    meta = " · ".join(str(x) for x in (task.subject, f"grade {task.grade}" if task.grade else None) if x)
    console.print(Panel(Markdown(task.question), title=f"[bold]{task.id}[/bold] - {task.title}", subtitle=meta or None))
    if task.context:
        short = full or len(task.context) <= CONTEXT_PREVIEW_CHARS
        ctx = task.context if short else task.context[:CONTEXT_PREVIEW_CHARS] + "\n\n*... (--full shows all)*"
        console.print(Panel(Markdown(ctx), title="context"))


def _print_rubric(console: Any, task: Any) -> None:
    """Criteria, scales, components, scoring rules and notes, one table each."""
    from rich.markdown import Markdown
    from rich.panel import Panel
    from rich.table import Table

    if task.criteria:
        t = Table(title="Analytic criteria (binary)")
        t.add_column("id", style="bold")
        t.add_column("description")
        t.add_column("perspective")
        for c in task.criteria:
            t.add_row(c.id, c.description, c.perspective or "")
        console.print(t)
    for s in task.scales:
        t = Table(title=f"Scale '{s.id}'{f' ({s.name})' if s.name else ''}: {s.min}-{s.max}")
        t.add_column("score", justify="right", style="bold")
        t.add_column("description")
        for score in s.scores:
            lv = s.level(score)
            t.add_row(str(score), lv.description if lv else "[dim](no description)[/dim]")
        console.print(t)
    if task.components:
        t = Table(title="Components (evidence for the LLM path)")
        t.add_column("id", style="bold")
        t.add_column("type")
        t.add_column("description")
        for c in task.components:
            t.add_row(c.id, c.type, c.description)
        console.print(t)
    for rule in task.rubric.scoring_rules:
        t = Table(title=f"Scoring rule ({rule.kind}) -> '{rule.scale}'")
        if rule.kind == "cases":
            t.add_column("score", justify="right")
            t.add_column("when")
            for case in rule.cases:
                t.add_row(str(case.score), case.when)
            t.add_row(str(rule.default), "[dim]otherwise[/dim]")
        else:
            t.add_column("count of " + ", ".join(rule.count))
            t.add_column("score", justify="right")
            for key, score in rule.map.items():
                t.add_row(key, str(score))
            t.add_row("[dim]otherwise[/dim]", str(rule.default))
        console.print(t)
    if task.rubric.notes:
        console.print(Panel(Markdown(task.rubric.notes), title="notes"))


def _print_encoding(console: Any, task: Any) -> None:
    """The student's binary targets for the task (rubricate.labels)."""
    from rich.table import Table

    from rubricate.labels import LabelEncoding

    enc = LabelEncoding.from_task(task)
    t = Table(title=f"Label encoding: {enc.n_labels} binary targets for the student")
    t.add_column("#", justify="right")
    t.add_column("label")
    t.add_column("meaning")
    for i, spec in enumerate(enc.specs):
        meaning = (f"criterion {spec.source} present" if spec.kind == "criterion"
                   else f"{spec.source} >= {spec.threshold} (cumulative)")
        t.add_row(str(i), spec.name, meaning)
    console.print(t)


def register(app: typer.Typer) -> None:
    """Add ``rubricate tasks ...`` to the root app."""
    app.add_typer(tasks_app, name="tasks")
