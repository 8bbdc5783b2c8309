"""``rubricate data validate | split | convert``: load a data file strictly, split it, export records."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from rubricate.cli import default_of
from rubricate.data.loaders import load_table
from rubricate.data.splits import DEFAULT_FRACTIONS, DEFAULT_SEED

data_app = typer.Typer(help="Check data files against task files; make persisted train/validation/test splits.",
                       no_args_is_help=True)

_FORMAT_HELP = ("asap-sas | asap-aes | asap-pp | table (CSV/TSV/JSONL/Parquet + column mapping) | records (native JSONL) | "
                "semeval-2way (folder training/2way) | mohler (CSV) | saf (folder of XMLs): the last three make their "
                "own tasks")


def _pairs(values: list[str] | None, option: str) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for v in values:
        key, sep, col = v.partition("=")
        if not sep or not key or not col:
            raise typer.BadParameter(f"expected LABEL=COLUMN, got '{v}'", param_hint=option)
        out[key.strip()] = col.strip()
    return out


def _load(
    input: Path, format: str, tasks: Path | None, sets: str | None, task_id: str | None, task_column: str,
    id_column: str, text_column: str, label: list[str] | None, rater2: list[str] | None, group: list[str] | None,
    aes: Path | None,
) -> tuple[list, Any]:
    """Load records with the chosen loader; shows a spinner because ASAP files take a second or two."""
    from rich.console import Console

    from rubricate.data.loaders import LOADERS, load_data
    from rubricate.data.new_items import CONVERTERS
    from rubricate.tasks import TaskRegistry

    if format in CONVERTERS:
        if tasks:
            raise typer.BadParameter(f"the {format} format makes its own tasks: drop --tasks", param_hint="--tasks")
        with Console(stderr=True).status(f"converting {input} ({format})"):
            new_tasks, records = CONVERTERS[format](input)
        return records, TaskRegistry(new_tasks)
    if format not in LOADERS:
        known = ", ".join([*LOADERS, *CONVERTERS])
        raise typer.BadParameter(f"unknown format '{format}' ({known})", param_hint="--format")
    registry = TaskRegistry.from_dir(tasks) if tasks else None
    opts: dict[str, Any] = {"registry": registry}
    if format in ("asap-sas", "asap-aes", "asap-pp"):
        if sets:
            opts["sets"] = [int(s) for s in sets.replace(" ", "").split(",") if s]
        if format == "asap-pp" and aes:
            opts["aes_tsv"] = aes
    elif format == "table":
        opts.update(task_id=task_id, task_column=task_column, id_column=id_column, text_column=text_column,
                    label_columns=_pairs(label, "--label"), rater2_columns=_pairs(rater2, "--rater2"),
                    group_columns=group or None)
    with Console(stderr=True).status(f"loading {input} ({format})"):
        records = load_data(format, input, **opts)
    return records, registry


# Options shared by the three verbs (typer needs them spelled out per command).
_FMT = typer.Option("table", "--format", "-f", help=_FORMAT_HELP)
_TASKS = typer.Option(None, "--tasks", "-t", help="Task folder: validates task ids and label ranges.")
_SETS = typer.Option(None, "--sets", help="ASAP formats: comma-separated set numbers (default: all).")
_TASK_ID = typer.Option(None, "--task-id", help="table: one task id for every row.")
_TASK_COL = typer.Option(default_of(load_table, "task_column"), "--task-column", help="table: column holding the task id.")
_ID_COL = typer.Option(default_of(load_table, "id_column"), "--id-column", help="table: column holding the response id.")
_TEXT_COL = typer.Option(default_of(load_table, "text_column"), "--text-column", help="table: column holding the response text.")
_LABEL = typer.Option(None, "--label", help="table: LABEL=COLUMN (repeatable); default: columns named like the "
                      "task's label keys.")
_RATER2 = typer.Option(None, "--rater2", help="table: LABEL=COLUMN of a second rater (repeatable).")
_GROUP = typer.Option(None, "--group", help="table: group column copied to metadata (repeatable).")
_AES = typer.Option(None, "--aes", help="asap-pp: path of ASAP-AES training_set_rel3.tsv (default: next to it).")


@data_app.command("validate")
def validate(
    input: Path = typer.Argument(..., help="Data file."),
    format: str = _FMT, tasks: Optional[Path] = _TASKS, sets: Optional[str] = _SETS, task_id: Optional[str] = _TASK_ID,
    task_column: str = _TASK_COL, id_column: str = _ID_COL, text_column: str = _TEXT_COL,
    label: Optional[List[str]] = _LABEL, rater2: Optional[List[str]] = _RATER2, group: Optional[List[str]] = _GROUP,
    aes: Optional[Path] = _AES,
) -> None:
    """Load a data file strictly (every error names file, line and column) and summarise it per task."""
    from rich.console import Console
    from rich.table import Table

    records, _ = _load(input, format, tasks, sets, task_id, task_column, id_column, text_column, label, rater2,
                       group, aes)
    by_task: dict[str, list] = {}
    for r in records:
        by_task.setdefault(r.task_id, []).append(r)
    t = Table(title=f"{input}: {len(records)} records, {len(by_task)} task(s)")
    for col in ("task", "records", "labelled", "second rater", "label keys"):
        t.add_column(col)
    for tid, recs in by_task.items():
        keys = sorted({k for r in recs for k in r.labels})
        t.add_row(tid, str(len(recs)), str(sum(bool(r.labels) for r in recs)),
                  str(sum(bool(r.rater2) for r in recs)), ", ".join(keys))
    Console().print(t)
    if records and not any(r.labels for r in records):
        typer.secho("note: no labels were read; pass --tasks DIR (label columns named like the task's label keys) "
                    "or --label KEY=COLUMN", fg="yellow", err=True)


@data_app.command("split")
def split(
    input: Path = typer.Argument(..., help="Data file."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the split file (JSON)."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Random seed (the split is a pure function of data + seed)."),
    fractions: str = typer.Option(",".join(map(str, DEFAULT_FRACTIONS)), "--fractions", help="train,validation,test fractions."),
    no_stratify: bool = typer.Option(False, "--no-stratify", help="Do not stratify on the primary score."),
    format: str = _FMT, tasks: Optional[Path] = _TASKS, sets: Optional[str] = _SETS, task_id: Optional[str] = _TASK_ID,
    task_column: str = _TASK_COL, id_column: str = _ID_COL, text_column: str = _TEXT_COL,
    label: Optional[List[str]] = _LABEL, rater2: Optional[List[str]] = _RATER2, group: Optional[List[str]] = _GROUP,
    aes: Optional[Path] = _AES,
) -> None:
    """Make a deterministic stratified per-task train/validation/test split and save it as a file of ids."""
    from rich.console import Console
    from rich.table import Table

    from rubricate.data.splits import SPLITS, make_split, save_split

    try:
        fr = [float(x) for x in fractions.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected three numbers like 0.8,0.1,0.1, got '{fractions}'",
                                 param_hint="--fractions") from None
    records, registry = _load(input, format, tasks, sets, task_id, task_column, id_column, text_column, label,
                              rater2, group, aes)
    try:
        sp = make_split(records, fractions=fr, seed=seed, registry=registry,
                        stratify="none" if no_stratify else "auto", source=f"{format}:{input}")
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--fractions") from None
    save_split(sp, out)
    t = Table(title=f"split written to {out} (seed {seed})")
    t.add_column("task")
    for s in SPLITS:
        t.add_column(s, justify="right")
    for tid, c in sp.counts().items():
        t.add_row(tid, *(str(c[s]) for s in SPLITS))
    Console().print(t)


@data_app.command("convert")
def convert(
    input: Path = typer.Argument(..., help="Data file."),
    out: Path = typer.Option(..., "--out", "-o", help="Native records JSONL to write."),
    format: str = _FMT, tasks: Optional[Path] = _TASKS, sets: Optional[str] = _SETS, task_id: Optional[str] = _TASK_ID,
    task_column: str = _TASK_COL, id_column: str = _ID_COL, text_column: str = _TEXT_COL,
    label: Optional[List[str]] = _LABEL, rater2: Optional[List[str]] = _RATER2, group: Optional[List[str]] = _GROUP,
    aes: Optional[Path] = _AES,
    tasks_out: Optional[Path] = typer.Option(None, "--tasks-out", help="semeval-2way / mohler / saf: folder to write "
                                             "the task files to (one YAML per question)."),
) -> None:
    """Load any supported format and write native records JSONL (what other commands read fastest)."""
    from rubricate.data.new_items import CONVERTERS, write_task_files
    from rubricate.data.records import write_records

    if tasks_out is not None and format not in CONVERTERS:
        raise typer.BadParameter(f"only {', '.join(CONVERTERS)} make task files", param_hint="--tasks-out")
    records, registry = _load(input, format, tasks, sets, task_id, task_column, id_column, text_column, label,
                              rater2, group, aes)
    write_records(records, out)
    typer.echo(f"{len(records)} records written to {out}")
    if tasks_out is not None:
        paths = write_task_files(list(registry), tasks_out)
        typer.echo(f"{len(paths)} task files written to {tasks_out}")


def register(app: typer.Typer) -> None:
    """Add ``rubricate data ...`` to the root app."""
    app.add_typer(data_app, name="data")
