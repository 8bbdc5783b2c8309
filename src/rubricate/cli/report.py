"""``rubricate report``: score predictions (or a second human rater) against gold labels.

Thin layer over :func:`rubricate.metrics.workflow.run_report`: the options are the fields of
:class:`~rubricate.metrics.workflow.ReportRequest` and take their defaults from it; this module only
prints the summary tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer

from rubricate.metrics.workflow import ReportRequest as R


def report(
    gold: Path = typer.Option(..., "--gold", "-g", help="Gold-labelled data file (see --format)."),
    format: str = typer.Option(
        R.format,
        "--format",
        "-f",
        help="Gold file format: asap-sas, asap-aes, asap-pp, table (CSV/TSV/JSONL/Parquet "
        "with task_id, response_id, text and one column per label key) or records.",
    ),
    pred: Path | None = typer.Option(
        R.pred,
        "--pred",
        "-p",
        help="Predictions: JSONL {task_id, response_id, scores, probs} or CSV "
        "task_id,response_id,<scale id>... Not used with --human-human.",
    ),
    tasks: Path = typer.Option(R.tasks, "--tasks", "-t", help="Task folder (or file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for report.json/.md/.html and plots/."),
    rater2: list[str] = typer.Option(
        list(R.rater2),
        "--rater2",
        help="--format table only: second-rater column per label key, KEY=COLUMN (repeatable), "
        "e.g. --rater2 score=rater2_score.",
    ),
    split: Path | None = typer.Option(
        R.split,
        "--split",
        help="Split file (rubricate data split): evaluate only the gold responses of --subset.",
    ),
    subset: str = typer.Option(R.subset, "--subset", help="Which split of --split to evaluate."),
    group_column: str | None = typer.Option(
        R.group_column, "--group-column", help="Metadata column for a subgroup breakdown (e.g. essay_set)."
    ),
    human_human: bool = typer.Option(
        R.human_human,
        "--human-human",
        help="Report rater 2 vs rater 1 (gold records' rater2) as 'the machine'.",
    ),
    allow_missing: bool = typer.Option(
        R.allow_missing,
        "--allow-missing",
        help="Leave out gold without prediction / prediction without gold "
        "(counted in the report notes) instead of failing.",
    ),
    n_boot: int = typer.Option(
        R.n_boot, "--n-boot", min=0, help="Bootstrap resamples for the CIs (0: no CIs)."
    ),
    ci: float = typer.Option(R.ci, "--ci", min=0.5, max=0.999, help="Confidence level of the intervals."),
    seed: int = typer.Option(R.seed, "--seed", help="Base bootstrap seed (rubricate.metrics.bootstrap)."),
    threshold: float = typer.Option(
        R.threshold,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Probability threshold for the binary label metrics.",
    ),
    tolerance: int = typer.Option(
        R.tolerance, "--tolerance", min=0, help="Adjacent agreement: |machine - human| <= this."
    ),
    smd_method: str = typer.Option(
        R.smd_method, "--smd", help="SMD denominator: pooled (RSMTool) or human SD."
    ),
    constant_prediction: str = typer.Option(
        R.constant_prediction,
        "--constant-prediction",
        help="κ for a constant prediction: zero (its exact value) or nan.",
    ),
    min_qwk: float = typer.Option(
        R.min_qwk, "--min-qwk", help="Operational readiness: QWK must be at least this."
    ),
    max_qwk_drop: float = typer.Option(
        R.max_qwk_drop,
        "--max-qwk-drop",
        help="Operational readiness: human–human QWK minus machine–human QWK must be at most this.",
    ),
    max_abs_smd: float = typer.Option(
        R.max_abs_smd, "--max-abs-smd", help="Operational readiness: |SMD| at most this."
    ),
    against: Path | None = typer.Option(
        R.against,
        "--against",
        help="A second scorer's predictions (same formats as --pred): also write comparison.json with the "
        "QWK differences (--pred minus --against) and their paired bootstrap intervals.",
    ),
    rsmeval_dir: Path | None = typer.Option(
        R.rsmeval_dir,
        "--rsmeval-dir",
        help="Also write, per task and scale, a predictions CSV and a config JSON for RSMTool's rsmeval.",
    ),
    title: str | None = typer.Option(R.title, "--title", help="Report title."),
    formats: str = typer.Option(R.formats, "--formats", help="Comma-separated: json, md, html."),
    plots: bool = typer.Option(R.plots, "--plots/--no-plots", help="Draw confusion-matrix PNGs."),
) -> None:
    """Write a reliability report (JSON + Markdown + HTML with confusion matrices) for predictions vs gold."""
    options = dict(locals())  # exactly the ReportRequest fields
    from rubricate.metrics.workflow import RequestError, run_report

    request = R(**{**options, "rater2": tuple(rater2)})
    try:
        run = run_report(request)
    except RequestError as e:
        raise typer.BadParameter(str(e), param_hint=_option(e.field)) from None
    _print_summary(run)


def _option(field: str) -> str:
    """The CLI option of a ReportRequest field, from the typer declaration (for the error's hint)."""
    import inspect

    decls = getattr(inspect.signature(report).parameters[field].default, "param_decls", None) or [field]
    return decls[0]


def _print_summary(run) -> None:  # noqa: ANN001 - a ReportRun
    """The per-(task, scale) table, the written paths, and the comparison table with --against."""
    from rich.console import Console
    from rich.table import Table

    rep = run.report
    table = Table(title=rep.title)
    for col in ("task / scale", "n", "QWK", "exact", "SMD"):
        table.add_column(col, justify="right" if col != "task / scale" else "left")

    def fmt(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.4f}"

    for t in rep.tasks:
        for s in t.scales:
            table.add_row(
                f"{t.task_id} / {s.scale_id}",
                str(s.machine.n),
                fmt(s.machine.qwk),
                fmt(s.machine.exact),
                fmt(s.machine.smd),
            )
    a = rep.across.machine
    table.add_row("mean / Fisher-z", "", f"{fmt(a.mean)} / {fmt(a.fisher_z)}", "", "")
    Console().print(table)
    console = Console(stderr=True)
    if rep.readiness is not None and rep.readiness.items:
        console.print(
            f"operational readiness: {rep.readiness.n_pass} of {len(rep.readiness.items)} items pass "
            "all three"
        )
    for k, p in run.written.items():
        console.print(f"wrote {k}: {p}")
    if run.rsmeval_files:
        console.print(
            f"wrote rsmeval inputs: {len(run.rsmeval_files) // 2} experiments in "
            f"{run.rsmeval_files[0].parent}"
        )
    if run.comparison is not None:
        _print_comparison(run.comparison)
        console.print(f"wrote comparison: {run.comparison_path}")


def _print_comparison(cmp) -> None:  # noqa: ANN001 - a Comparison
    """``--against``: the paired comparison of the two scorers."""
    from rich.console import Console
    from rich.table import Table

    level = int(round(next(iter(cmp.ci.values())).level * 100)) if cmp.ci else ""
    table = Table(title=f"QWK: {cmp.label_a} minus {cmp.label_b} (paired bootstrap, {level}% CI)")
    for col in ("task / scale", "n", cmp.label_a, cmp.label_b, "A − B", "CI", "P(A > B)"):
        table.add_column(col, justify="left" if col == "task / scale" else "right")
    rows = [
        (f"{e.task_id} / {e.scale_id}", str(e.n), e.qwk_a, e.qwk_b, e.diff, e.ci, e.share_a_better)
        for e in cmp.entries
    ]
    rows += [
        (name, "", v["a"], v["b"], v["diff"], cmp.ci[key], v["share_a_better"])
        for key, name in (("mean", "mean"), ("fisher_z", "Fisher-z"))
        for v in [cmp.across[key]]
    ]
    for name, n, a, b, d, iv, share in rows:
        table.add_row(
            name, n, f"{a:.4f}", f"{b:.4f}", f"{d:+.4f}", f"[{iv.low:+.4f}, {iv.high:+.4f}]", f"{share:.3f}"
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``rubricate report`` to the root app."""
    app.command("report")(report)
