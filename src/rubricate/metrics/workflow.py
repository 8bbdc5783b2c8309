"""The ``rubricate report`` workflow as one library call: read gold and predictions, evaluate, write.

:class:`ReportRequest` holds every option of the verb (its defaults are read from the library's own
dataclasses, and the CLI reads its defaults from this one); :func:`run_report` runs

1. read the gold file (:func:`rubricate.data.loaders.load_data`), optionally keep one split;
2. read the predictions (:func:`~rubricate.metrics.inputs.read_predictions`), or rater 2 in human-human mode;
3. :func:`~rubricate.metrics.evaluate` (with the operational-readiness thresholds);
   with where each item's scores came from (:func:`score_sources`: the predictions' ``source`` column);
4. :func:`rubricate.report.write_report` - ``report.json`` / ``.md`` / ``.html`` and plots;
5. with ``against``: :func:`~rubricate.metrics.compare_systems` -> ``comparison.json``;
6. with ``rsmeval_dir``: :func:`~rubricate.metrics.rsmeval.write_rsmeval_inputs`.

A request that cannot run raises :class:`RequestError` naming the field, before anything is read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.metrics.bootstrap import BootstrapConfig
from rubricate.metrics.compare import compare_systems
from rubricate.metrics.evaluate import EvaluationSettings, evaluate
from rubricate.metrics.formulas import ConstantPolicy, SmdMethod
from rubricate.metrics.inputs import Predicted, rater2_as_predictions, read_predictions
from rubricate.metrics.readiness import ReadinessThresholds
from rubricate.metrics.results import Comparison, Report
from rubricate.metrics.rsmeval import write_rsmeval_inputs
from rubricate.report import FORMATS, write_report
from rubricate.tasks import TaskRegistry

_BOOT, _EVAL, _READY = BootstrapConfig(), EvaluationSettings(), ReadinessThresholds()
HUMAN_HUMAN_LABEL = "rater 2"


class RequestError(ValueError):
    """A request that cannot run; ``field`` names the :class:`ReportRequest` field at fault."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class ReportRequest:
    """Everything ``rubricate report`` needs; see the verb's ``--help`` for each field."""

    gold: Path
    out: Path
    format: str = "records"  # a rubricate.data.loaders.LOADERS name
    pred: Path | None = None  # predictions file; None with human_human
    tasks: Path = Path("tasks")
    rater2: tuple[str, ...] = ()  # format "table" only: KEY=COLUMN second-rater columns
    split: Path | None = None
    subset: str = "test"
    group_column: str | None = None
    human_human: bool = False  # rater 2 in the machine's seat
    allow_missing: bool = False  # missing="drop" instead of "error"
    n_boot: int = _BOOT.n_boot
    ci: float = _BOOT.ci
    seed: int = _BOOT.seed
    threshold: float = _EVAL.threshold
    tolerance: int = _EVAL.tolerance
    smd_method: SmdMethod = _EVAL.smd_method
    constant_prediction: ConstantPolicy = _EVAL.constant_prediction
    min_qwk: float = _READY.min_qwk
    max_qwk_drop: float = _READY.max_qwk_drop
    max_abs_smd: float = _READY.max_abs_smd
    against: Path | None = None  # a second scorer: comparison.json
    rsmeval_dir: Path | None = None  # write rsmeval inputs here
    title: str | None = None
    formats: str = ",".join(FORMATS)  # comma-separated rubricate.report.FORMATS
    plots: bool = True


@dataclass
class ReportRun:
    """What :func:`run_report` produced."""

    report: Report
    written: dict[str, Path]
    comparison: Comparison | None = None
    comparison_path: Path | None = None
    rsmeval_files: list[Path] = field(default_factory=list)


def check_request(req: ReportRequest) -> None:
    """Reject option combinations that cannot run (:class:`RequestError` names the field)."""
    from rubricate.data.loaders import LOADERS
    from rubricate.data.splits import SPLITS

    if req.format not in LOADERS:
        raise RequestError(f"unknown format '{req.format}' (formats: {', '.join(LOADERS)})", "format")
    if req.smd_method not in ("pooled", "human"):
        raise RequestError("use 'pooled' or 'human'", "smd_method")
    if req.constant_prediction not in ("zero", "nan"):
        raise RequestError("use 'zero' or 'nan'", "constant_prediction")
    if req.against is not None and (req.pred is None or req.n_boot < 1):
        raise RequestError("needs --pred FILE (the scorer compared) and --n-boot >= 1", "against")
    if req.human_human == (req.pred is not None):
        raise RequestError(
            "give either --pred FILE or --human-human (rater 2 as the scorer), not both/neither", "pred"
        )
    if req.rater2 and req.format != "table":
        raise RequestError("only for --format table (the dataset loaders know their raters)", "rater2")
    if req.split is not None and req.subset not in SPLITS:
        raise RequestError(f"use one of {', '.join(SPLITS)}", "subset")
    rater2_columns(req)


def rater2_columns(req: ReportRequest) -> dict[str, str]:
    """``KEY=COLUMN`` pairs of ``req.rater2`` as a dict."""
    pairs = [r.split("=", 1) for r in req.rater2]
    if any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise RequestError("use KEY=COLUMN, e.g. score=rater2_score", "rater2")
    return dict(pairs)  # type: ignore[arg-type]


def read_gold(req: ReportRequest, registry: TaskRegistry) -> list[Record]:
    """The gold records of the request (one split's subset when ``split`` is given)."""
    from rubricate.data.loaders import load_data
    from rubricate.data.splits import apply_split

    options: dict = {"registry": registry}
    if req.format == "table" and req.group_column:
        options["group_columns"] = [req.group_column]
    if req.rater2:
        options["rater2_columns"] = rater2_columns(req)
    records = load_data(req.format, req.gold, **options)
    if req.split is not None:
        records = apply_split(records, req.split)[req.subset]
    if not records:
        raise InputError(
            "no gold records" + (f" in the '{req.subset}' split" if req.split else ""), file=req.gold
        )
    return records


def _scorer(
    req: ReportRequest, records: list[Record], registry: TaskRegistry
) -> tuple[list[Record], list[Predicted], str, str]:
    """(gold, predictions, machine label, default title): the predictions file, or rater 2."""
    if req.human_human:
        gold, preds = rater2_as_predictions(records)
        if not gold:
            raise InputError("no gold record has a second rater (rater2)", file=req.gold)
        return gold, preds, HUMAN_HUMAN_LABEL, "Human–human agreement (rater 2 vs rater 1)"
    assert req.pred is not None
    return records, read_predictions(req.pred, registry), req.pred.stem, "Reliability report"


def _source(raw: object) -> str:
    """A prediction's score source; a missing or empty one is the default (``trained``)."""
    from rubricate.student.active import DEFAULT_SCORE_SOURCE

    return DEFAULT_SCORE_SOURCE if raw is None or str(raw).strip() == "" else str(raw).strip()


def summarize_sources(pairs: Iterable[tuple[str, str]], task_ids: list[str]) -> dict[str, str]:
    """Per task of ``task_ids``: its one source, or ``mixed (few_shot 3, trained 2)`` when its rows differ."""
    from rubricate.student.active import DEFAULT_SCORE_SOURCE

    counts: dict[str, Counter[str]] = {t: Counter() for t in task_ids}
    for tid, src in pairs:
        if tid in counts:
            counts[tid][src] += 1
    out = {}
    for tid, c in counts.items():
        if len(c) <= 1:
            out[tid] = next(iter(c), DEFAULT_SCORE_SOURCE)
        else:
            out[tid] = "mixed (" + ", ".join(f"{k} {n}" for k, n in sorted(c.items())) + ")"
    return out


def score_sources(path: Path, task_ids: list[str]) -> dict[str, str]:
    """Per task: where its predicted scores came from (``trained``, ``few_shot``, ``zero_shot``).

    Read from the predictions' ``source`` field (JSONL) or column (tables), written by a task-text student;
    a file or row without one is ``trained``. A task whose rows differ says so (:func:`summarize_sources`).
    Any other value is an error naming the file, line and column.
    """
    from rubricate.data.tables import strict_rows
    from rubricate.student.active import SCORE_SOURCES

    pairs = []
    for line, row in strict_rows(path)[1]:
        src = _source(row.get("source"))
        if src not in SCORE_SOURCES:
            raise InputError(f"unknown score source {src!r} (use one of {', '.join(SCORE_SOURCES)})",
                             file=path, line=line, column="source")
        pairs.append((str(row.get("task_id", "")).strip(), src))
    return summarize_sources(pairs, task_ids)


def prediction_sources(predictions: Iterable[object], task_ids: list[str]) -> dict[str, str]:
    """:func:`score_sources` of scorer outputs in memory (``Prediction.source``; none = ``trained``)."""
    return summarize_sources(((str(getattr(p, "task_id")), _source(getattr(p, "source", None)))
                              for p in predictions), task_ids)


def write_comparison(
    req: ReportRequest, gold: list[Record], predictions: list[Predicted], registry: TaskRegistry, label_a: str
) -> tuple[Comparison, Path]:
    """``against``: the paired comparison of the two scorers, written to ``comparison.json``."""
    assert req.against is not None
    cmp = compare_systems(
        gold,
        predictions,
        read_predictions(req.against, registry),
        registry,
        n_boot=req.n_boot,
        ci=req.ci,
        seed=req.seed,
        constant_prediction=req.constant_prediction,
        label_a=label_a,
        label_b=req.against.stem,
    )
    req.out.mkdir(parents=True, exist_ok=True)
    path = req.out / "comparison.json"
    path.write_text(json.dumps(cmp.to_dict(), indent=2), encoding="utf-8")
    return cmp, path


def run_report(req: ReportRequest) -> ReportRun:
    """Run the ``rubricate report`` workflow (module docstring); the JSON is written before anything else."""
    check_request(req)
    registry = TaskRegistry.from_dir(req.tasks)
    gold, predictions, label, default_title = _scorer(req, read_gold(req, registry), registry)
    rep = evaluate(
        gold,
        predictions,
        registry,
        threshold=req.threshold,
        tolerance=req.tolerance,
        smd_method=req.smd_method,
        constant_prediction=req.constant_prediction,
        n_boot=req.n_boot,
        ci=req.ci,
        seed=req.seed,
        group_column=req.group_column,
        missing="drop" if req.allow_missing else "error",
        compare_rater2=not req.human_human,
        readiness=ReadinessThresholds(req.min_qwk, req.max_qwk_drop, req.max_abs_smd),
        title=req.title or default_title,
        machine_label=label,
    )
    rep.settings.update(
        gold=str(req.gold),
        gold_format=req.format,
        predictions=str(req.pred) if req.pred else None,
        human_human=req.human_human,
        split=str(req.split) if req.split else None,
        subset=req.subset if req.split else None,
        tasks=str(req.tasks),
    )
    if req.pred is not None:
        rep.settings["score_sources"] = score_sources(req.pred, [t.task_id for t in rep.tasks])
    fmt_list = [f.strip() for f in req.formats.split(",") if f.strip()]
    run = ReportRun(report=rep, written=write_report(rep, req.out, formats=fmt_list, plots=req.plots))
    if req.rsmeval_dir is not None:
        run.rsmeval_files = write_rsmeval_inputs(
            gold, predictions, registry, req.rsmeval_dir, description=rep.title
        )
    if req.against is not None:
        run.comparison, run.comparison_path = write_comparison(req, gold, predictions, registry, label)
    return run
