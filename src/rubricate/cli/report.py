"""``rubricate report``: score predictions (or a second human rater) against gold labels.

Thin layer over :func:`rubricate.metrics.evaluate` and :func:`rubricate.report.write_report`; the gold file
is read with the data loaders (``rubricate.data.loaders``), the predictions with
:func:`rubricate.report.read_predictions`.
"""

from __future__ import annotations

import math
from pathlib import Path

import typer


def report(
    gold: Path = typer.Option(..., "--gold", "-g", help="Gold-labelled data file (see --format)."),
    format: str = typer.Option(
        "records",
        "--format",
        "-f",
        help="Gold file format: asap-sas, asap-aes, asap-pp, table (CSV/TSV/JSONL/Parquet "
        "with task_id, response_id, text and one column per label key) or records.",
    ),
    pred: Path | None = typer.Option(
        None,
        "--pred",
        "-p",
        help="Predictions: JSONL {task_id, response_id, scores, probs} or CSV "
        "task_id,response_id,<scale id>... Not used with --human-human.",
    ),
    tasks: Path = typer.Option(Path("tasks"), "--tasks", "-t", help="Task folder (or file)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for report.json/.md/.html and plots/."),
    rater2: list[str] = typer.Option(
        [],
        "--rater2",
        help="--format table only: second-rater column per label key, KEY=COLUMN (repeatable), "
        "e.g. --rater2 score=rater2_score.",
    ),
    split: Path | None = typer.Option(
        None,
        "--split",
        help="Split file (rubricate data split): evaluate only the gold responses of --subset.",
    ),
    subset: str = typer.Option("test", "--subset", help="Which split of --split to evaluate."),
    group_column: str | None = typer.Option(
        None, "--group-column", help="Metadata column for a subgroup breakdown (e.g. essay_set)."
    ),
    human_human: bool = typer.Option(
        False, "--human-human", help="Report rater 2 vs rater 1 (gold records' rater2) as 'the machine'."
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Leave out gold without prediction / prediction without gold "
        "(counted in the report notes) instead of failing.",
    ),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples for the CIs (0: no CIs)."),
    ci: float = typer.Option(0.95, "--ci", min=0.5, max=0.999, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    threshold: float = typer.Option(
        0.5, "--threshold", min=0.0, max=1.0, help="Probability threshold for the binary label metrics."
    ),
    tolerance: int = typer.Option(
        1, "--tolerance", min=0, help="Adjacent agreement: |machine - human| <= this."
    ),
    smd_method: str = typer.Option("pooled", "--smd", help="SMD denominator: pooled (RSMTool) or human SD."),
    constant_prediction: str = typer.Option(
        "zero", "--constant-prediction", help="κ for a constant prediction: zero (its exact value) or nan."
    ),
    against: Path | None = typer.Option(
        None,
        "--against",
        help="A second scorer's predictions (same formats as --pred): also write comparison.json with the "
        "QWK differences (--pred minus --against) and their paired bootstrap intervals.",
    ),
    title: str | None = typer.Option(None, "--title", help="Report title."),
    formats: str = typer.Option("json,md,html", "--formats", help="Comma-separated: json, md, html."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw confusion-matrix PNGs."),
) -> None:
    """Write a reliability report (JSON + Markdown + HTML with confusion matrices) for predictions vs gold."""
    from rich.console import Console
    from rich.table import Table

    from rubricate.data.loaders import LOADERS, load_data
    from rubricate.errors import InputError
    from rubricate.metrics import evaluate, rater2_as_predictions
    from rubricate.report import read_predictions, write_report
    from rubricate.tasks import TaskRegistry

    console = Console(stderr=True)
    if format not in LOADERS:
        raise typer.BadParameter(
            f"unknown format '{format}' (formats: {', '.join(LOADERS)})", param_hint="--format"
        )
    if smd_method not in ("pooled", "human"):
        raise typer.BadParameter("use 'pooled' or 'human'", param_hint="--smd")
    if constant_prediction not in ("zero", "nan"):
        raise typer.BadParameter("use 'zero' or 'nan'", param_hint="--constant-prediction")
    fmt_list = [f.strip() for f in formats.split(",") if f.strip()]
    if against is not None and (pred is None or n_boot < 1):
        raise typer.BadParameter("needs --pred FILE (the scorer compared) and --n-boot >= 1",
                                 param_hint="--against")
    if human_human == (pred is not None):
        raise typer.BadParameter(
            "give either --pred FILE or --human-human (rater 2 as the scorer), not both/neither",
            param_hint="--pred",
        )
    registry = TaskRegistry.from_dir(tasks)
    options: dict = {"registry": registry}
    if format == "table" and group_column:
        options["group_columns"] = [group_column]
    if rater2:
        if format != "table":
            raise typer.BadParameter(
                "only for --format table (the dataset loaders know their raters)", param_hint="--rater2"
            )
        pairs = [r.split("=", 1) for r in rater2]
        if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
            raise typer.BadParameter("use KEY=COLUMN, e.g. score=rater2_score", param_hint="--rater2")
        options["rater2_columns"] = dict(pairs)
    with console.status(f"reading {gold}"):
        records = load_data(format, gold, **options)
    if split is not None:
        from rubricate.data.splits import SPLITS, apply_split

        if subset not in SPLITS:
            raise typer.BadParameter(f"use one of {', '.join(SPLITS)}", param_hint="--subset")
        records = apply_split(records, split)[subset]
    if not records:
        raise InputError("no gold records" + (f" in the '{subset}' split" if split else ""), file=gold)
    if human_human:
        records, predictions = rater2_as_predictions(records)
        if not records:
            raise InputError("no gold record has a second rater (rater2)", file=gold)
        label, default_title, compare = "rater 2", "Human–human agreement (rater 2 vs rater 1)", False
    else:
        predictions = read_predictions(pred, registry)  # type: ignore[arg-type]
        label, default_title, compare = (pred.stem if pred else "machine"), "Reliability report", True
    with console.status("computing metrics"):
        rep = evaluate(
            records,
            predictions,
            registry,
            threshold=threshold,
            tolerance=tolerance,
            smd_method=smd_method,
            constant_prediction=constant_prediction,  # type: ignore[arg-type]
            n_boot=n_boot,
            ci=ci,
            seed=seed,
            group_column=group_column,
            missing="drop" if allow_missing else "error",
            compare_rater2=compare,
            title=title or default_title,
            machine_label=label,
        )
    rep.settings.update(
        gold=str(gold),
        gold_format=format,
        predictions=str(pred) if pred else None,
        human_human=human_human,
        split=str(split) if split else None,
        subset=subset if split else None,
        tasks=str(tasks),
    )
    with console.status("writing report"):
        written = write_report(rep, out, formats=fmt_list, plots=plots)

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
    for k, p in written.items():
        console.print(f"wrote {k}: {p}")
    if against is not None:
        _write_comparison(records, predictions, against, registry, out, n_boot=n_boot, ci=ci, seed=seed,
                          constant_prediction=constant_prediction, label_a=label)


def _write_comparison(records: list, predictions: list, against: Path, registry, out: Path, *, n_boot: int,
                      ci: float, seed: int, constant_prediction: str, label_a: str) -> None:
    """``--against``: the paired comparison of the two scorers, printed and written to comparison.json."""
    import json

    from rich.console import Console
    from rich.table import Table

    from rubricate.metrics import compare_systems
    from rubricate.report import read_predictions

    cmp = compare_systems(records, predictions, read_predictions(against, registry), registry, n_boot=n_boot,
                          ci=ci, seed=seed, constant_prediction=constant_prediction,  # type: ignore[arg-type]
                          label_a=label_a, label_b=against.stem)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "comparison.json"
    path.write_text(json.dumps(cmp.to_dict(), indent=2), encoding="utf-8")
    table = Table(title=f"QWK: {cmp.label_a} minus {cmp.label_b} (paired bootstrap, {int(ci * 100)}% CI)")
    for col in ("task / scale", "n", cmp.label_a, cmp.label_b, "A − B", "CI", "P(A > B)"):
        table.add_column(col, justify="left" if col == "task / scale" else "right")
    rows = [(f"{e.task_id} / {e.scale_id}", str(e.n), e.qwk_a, e.qwk_b, e.diff, e.ci, e.share_a_better)
            for e in cmp.entries]
    rows += [(name, "", v["a"], v["b"], v["diff"], cmp.ci[key], v["share_a_better"])
             for key, name in (("mean", "mean"), ("fisher_z", "Fisher-z")) for v in [cmp.across[key]]]
    for name, n, a, b, d, iv, share in rows:
        table.add_row(name, n, f"{a:.4f}", f"{b:.4f}", f"{d:+.4f}", f"[{iv.low:+.4f}, {iv.high:+.4f}]",
                      f"{share:.3f}")
    Console().print(table)
    Console(stderr=True).print(f"wrote comparison: {path}")


def register(app: typer.Typer) -> None:
    """Add ``rubricate report`` to the root app."""
    app.command("report")(report)
