"""``rubricate tasks validate|show|new|template``: check, read and make task files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from rubricate.cli import TASKS_DIR
from rubricate.task_authoring import NewTask

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


_NEW = NewTask(id="", title="", question="")  #: ``tasks new`` defaults are the library's, never retyped


@tasks_app.command("new")
def new(
    id: str = typer.Option(..., "--id", help="Task id (letters, digits, '_', '.', '-')."),
    title: str = typer.Option(..., "--title", help="Short human name."),
    question: str = typer.Option(..., "--question", help="What students were asked (markdown), or @FILE."),
    out: Path = typer.Option(..., "--out", "-o", help="Task file to write (.yaml)."),
    reference: List[str] = typer.Option([], "--reference", "-r", help="A reference answer (repeat for "
                                        "several), or @FILE."),
    levels: Optional[str] = typer.Option(_NEW.levels, "--levels", help="Ordinal or 2-way rubric: one "
                                         "'score: description' line per score, or @FILE."),
    criteria: Optional[str] = typer.Option(_NEW.criteria, "--criteria", help="Analytic rubric: one "
                                           "'id: description' line per criterion, or @FILE."),
    context: Optional[str] = typer.Option(_NEW.context, "--context", help="Reading passage (markdown), or @FILE."),
    grade: Optional[str] = typer.Option(_NEW.grade, "--grade"),
    subject: Optional[str] = typer.Option(_NEW.subject, "--subject"),
    notes: Optional[str] = typer.Option(_NEW.notes, "--notes", help="Rubric notes (key elements), or @FILE."),
    scale_id: str = typer.Option(_NEW.scale_id, "--scale-id", help="Label key of the levels' scale."),
    scale_name: Optional[str] = typer.Option(_NEW.scale_name, "--scale-name"),
    scale_min: Optional[int] = typer.Option(_NEW.scale_min, "--min", help="Scale minimum (default: lowest level)."),
    scale_max: Optional[int] = typer.Option(_NEW.scale_max, "--max", help="Scale maximum (default: highest level)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Make a task file from question + reference answers + rubric text; it is validated before it is written."""
    from rubricate.task_authoring import write_new_task

    req = NewTask(id=id, title=title, question=question, references=list(reference), levels=levels,
                  criteria=criteria, context=context, grade=grade, subject=subject, notes=notes, scale_id=scale_id,
                  scale_name=scale_name, scale_min=scale_min, scale_max=scale_max)
    task = write_new_task(req, out, overwrite=force)
    parts = [f"{len(task.criteria)} criteria"] if task.criteria else []
    parts += [f"{s.id} {s.min}-{s.max}" for s in task.scales]
    n_refs = len(getattr(task, "reference_answers", None) or [])
    typer.echo(f"wrote {out}: {task.id} ({', '.join(parts)}; {n_refs} reference answer(s))")


@tasks_app.command("template")
def template(out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write it here (default: print it).")
             ) -> None:
    """The documented task-file template for a new item (every field commented)."""
    from rubricate.task_authoring import TEMPLATE

    text = TEMPLATE.read_text(encoding="utf-8")
    if out is None:
        typer.echo(text, nl=False)
        return
    if out.exists():
        raise typer.BadParameter(f"{out} exists", param_hint="--out")
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add ``rubricate tasks ...`` to the root app."""
    app.add_typer(tasks_app, name="tasks")
