"""``rubricate reviews export|next``: the human review decisions, and which answers to score next.

Both read the server's database (never create it); heavy imports stay inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rubricate.cli.serve import DB_HELP, _db_url
from rubricate.serve.reviews import NextOptions
from rubricate.student.active import MEASURES, STRATEGIES

reviews_app = typer.Typer(help="Human review decisions.", no_args_is_help=True)
_NEXT = NextOptions()  #: ``reviews next`` defaults are the library's, never retyped
#: characters of a response's text that ``reviews next`` prints per row
TEXT_PREVIEW_CHARS = 80


@reviews_app.command("export")
def reviews_export(output: Path = typer.Option(..., "--output", "-o", help="Records JSONL to write."),
                   db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Write the human review decisions as labeled records (loader format) for retraining or add-task."""
    from rubricate.serve.reviews import export_reviews

    path, n = export_reviews(_db_url(db), output)
    typer.echo(f"wrote {n} reviewed responses to {path}")


@reviews_app.command("next")
def reviews_next(
    task: str = typer.Option(..., "--task", "-t", help="Task id whose answers to rank."),
    n: int = typer.Option(_NEXT.n, "-n", "--n", min=1, help="How many answers to pick."),
    strategy: str = typer.Option(_NEXT.strategy, "--strategy", help=" | ".join(STRATEGIES) + "."),
    measure: str = typer.Option(_NEXT.selection.measure, "--measure", help="Uncertainty: " + " | ".join(MEASURES)
                                + "."),
    pool_factor: float = typer.Option(_NEXT.selection.pool_factor, "--pool-factor",
                                      help="hybrid: k-center over the pool-factor x n most uncertain answers."),
    seed: int = typer.Option(_NEXT.seed, "--seed"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the picks: .csv (an empty "
                                          "column per label key to fill in) or .jsonl."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
) -> None:
    """The answers of one item a teacher should score next: unscored or pending ones, ranked by the student's
    uncertainty (stored with each score) or by another strategy."""
    from dataclasses import replace

    from rich.console import Console
    from rich.table import Table

    from rubricate.serve.reviews import next_to_score, write_next

    if strategy not in STRATEGIES:
        raise typer.BadParameter(f"use one of {', '.join(STRATEGIES)}", param_hint="--strategy")
    if measure not in MEASURES:
        raise typer.BadParameter(f"use one of {', '.join(MEASURES)}", param_hint="--measure")
    opt = replace(_NEXT, n=n, strategy=strategy, seed=seed,  # type: ignore[arg-type]
                  selection=replace(_NEXT.selection, measure=measure, pool_factor=pool_factor))
    batch = next_to_score(_db_url(db), task, opt)
    t = Table(title=f"{task}: score these next ({strategy}; {batch.n_candidates} unscored, {batch.n_scored} scored)")
    for col in ("#", "response", "review", "confidence", "uncertainty", "student", "text"):
        t.add_column(col)
    for it in batch.items:
        text = it["text"] if len(it["text"]) <= TEXT_PREVIEW_CHARS else it["text"][:TEXT_PREVIEW_CHARS] + "..."
        t.add_row(str(it["rank"]), it["response_id"], str(it["review_id"] or ""), f"{it['confidence']:.3f}",
                  f"{it['uncertainty']:.3f}", str(it["scores"]), text)
    Console().print(t)
    if batch.n_without_student:
        typer.echo(f"{batch.n_without_student} answer(s) of {task} have no student result and were not ranked "
                   "(score them with the server first)")
    if output is not None:
        typer.echo(f"wrote {len(batch.items)} answers to {write_next(batch, output)}")


def register(app: typer.Typer) -> None:
    """Add ``rubricate reviews ...`` to the root app."""
    app.add_typer(reviews_app, name="reviews")
