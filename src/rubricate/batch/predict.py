"""Batch scoring of large files (``rubricate predict``): streamed, bounded in memory, resumable.

Input: CSV, TSV, JSONL or Parquet, read by the one table reader (:mod:`rubricate.data.tables`) in chunks of
``chunk_size`` rows - a million rows never sit in memory. Output: CSV, TSV, JSONL or Parquet with, per row,
the decoded scores, per-label probabilities, confidence, the needs-review flag
(``confidence < review_confidence``), the gate weights, the model id and version (:mod:`rubricate.batch.outputs`).

**Resuming.** After each chunk the output (and the problems file) are flushed and fsynced, *then* a
sidecar ``<output>.progress.json`` records the input :class:`~rubricate.data.tables.Position` (byte offset,
or rows read for Parquet) and the output's committed size. A rerun after a kill truncates the output back to
the committed size and continues from the recorded input position, so nothing is lost and nothing is written
twice. Parquet output is written as numbered part files and merged into the final file at the end.

**Problem rows** are not scored and not dropped: each goes to ``<output>.errors.jsonl`` with its line (row,
for Parquet), field and message, and the summary counts them. They are what the table reader reports
(undecodable bytes, bad JSON, a wrong field count, an unterminated quote - which never takes the next row
with it) and what :func:`row_problem` finds (unknown or missing task, a text that is missing, not a string,
holds a NUL or is blank by :func:`rubricate.data.text.is_blank` - the server's rules). A missing required
column fails before any output or progress file is created.

:func:`score_rows` is the same validation and scoring for rows already in memory (the server's upload).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rubricate.batch import outputs as o
from rubricate.data.tables import FORMATS, Position, Row, Table, detect_format, open_table, require_columns
from rubricate.data.text import text_problem
from rubricate.errors import InputError
from rubricate.serve.settings import REVIEW_CONFIDENCE

PROGRESS_VERSION = 1


@dataclass
class PredictOptions:
    """Knobs of :func:`predict_file` (all exposed by the CLI, which reads its defaults from here)."""

    chunk_size: int = 1000  #: rows read, scored and committed together (memory bound and resume granularity)
    #: rows per model forward pass. 8 by measurement (trained ten-item student, ONNX int8, 2 cores, 3,000 ASAP-SAS
    #: rows): batch 4 / 8 / 16 / 32 / 64 gave 146 / 177 / 133 / 138 / 118 rows/s at 194 / 239 / 314 / 521 / 754 MB
    #: peak RSS - the longest rows' activations (token-wise experts run densely) set the peak, and small batches pad less
    batch_size: int = 8
    review_confidence: float = REVIEW_CONFIDENCE  #: needs_review = confidence < this (the server's default)
    task_column: str = "task_id"
    text_column: str = "text"
    id_column: str = "response_id"  #: when the column is absent, ids are "line-<n>" ("row-<n>" for Parquet)
    task: str | None = None  #: score every row for this task (ignores the task column)
    input_format: str | None = None
    output_format: str | None = None
    overwrite: bool = False  #: start again even when a finished or partial output exists
    progress: bool = True


@dataclass
class InputRow:
    """One row to score, as :func:`score_rows` takes it."""

    line: int  #: physical line (CSV/TSV/JSONL, 1-based) or row number (Parquet, 1-based)
    task_id: str | None
    text: Any  #: as read: a non-string is a problem row, never converted
    response_id: str
    problem: tuple[str, str] | None = None  #: (field, message) found while reading


@dataclass
class PredictSummary:
    input: str
    output: str
    errors: str
    scored: int = 0
    problems: int = 0
    resumed_from_rows: int = 0
    seconds: float = 0.0
    responses_per_s: float = 0.0
    complete: bool = False
    problem_examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# input: table rows -> InputRow chunks
# --------------------------------------------------------------------------------------------------------
def _cell(row: dict[str, Any], col: str) -> str | None:
    v = row.get(col)
    if v is None or (isinstance(v, float) and v != v):  # NaN from Parquet/pandas
        return None
    return str(v)


def input_row(row: Row, opt: PredictOptions, id_prefix: str = "line") -> InputRow:
    """A table row as a row to score; the reader's problem, if any, is kept with its field."""
    d = row.values
    rid = _cell(d, opt.id_column)
    rid = rid if rid is not None and rid.strip() else f"{id_prefix}-{row.line}"
    problem = None
    if row.problem is not None:
        default = {"json": "<json>", "encoding": opt.text_column}.get(row.problem.kind, "<row>")
        problem = (row.problem.column or default, row.problem.message)
    return InputRow(row.line, opt.task or _cell(d, opt.task_column), d.get(opt.text_column), rid, problem)


def check_columns(path: Path, header: Sequence[str] | None, opt: PredictOptions) -> None:
    """The required columns of a table with a header (JSONL rows are checked one by one instead)."""
    if header is not None:
        require_columns(path, header, [opt.text_column] + ([] if opt.task else [opt.task_column]),
                        hint="; use --text-column/--task-column or --task")


def _open_input(path: Path, fmt: str | None, state: dict[str, Any], opt: PredictOptions) -> Table:
    """The input table positioned at ``state``, its required columns checked."""
    table = open_table(path, fmt, start=Position.from_dict(state), batch_rows=opt.chunk_size,
                       columns=[opt.task_column, opt.text_column, opt.id_column])
    try:
        check_columns(path, table.columns, opt)
    except InputError:
        table.close()
        raise
    return table


def _chunks(table: Table, opt: PredictOptions) -> Iterator[tuple[list[InputRow], dict[str, int]]]:
    prefix = "row" if table.format == "parquet" else "line"
    rows: list[InputRow] = []
    end = table.start
    with table:
        for row in table.rows():
            rows.append(input_row(row, opt, prefix))
            end = row.end
            if len(rows) >= opt.chunk_size:
                yield rows, end.to_dict()
                rows = []
        if rows:
            yield rows, end.to_dict()


def read_chunks(path: str | Path, state: dict[str, Any], opt: PredictOptions, format: str | None = None
                ) -> Iterator[tuple[list[InputRow], dict[str, int]]]:
    """``(rows, position after them)`` per chunk of ``opt.chunk_size`` rows, from the position ``state``."""
    path = Path(path)
    return _chunks(_open_input(path, format or opt.input_format, state, opt), opt)


#: A chunk reader per input format (all the one table reader).
READERS: dict[str, Callable[..., Iterator[tuple[list[InputRow], dict[str, int]]]]] = {
    fmt: partial(read_chunks, format=fmt) for fmt in FORMATS}


# --------------------------------------------------------------------------------------------------------
# validation and scoring of rows
# --------------------------------------------------------------------------------------------------------
def row_problem(row: InputRow, known: set[str], task_field: str = "task_id",
                text_field: str = "text") -> tuple[str, str] | None:
    """``(field, message)`` when ``row`` cannot be scored (the server's rules), else None."""
    if row.problem:
        return row.problem
    if row.task_id is None or not row.task_id.strip():
        return (task_field, "missing task id")
    if row.task_id not in known:
        return (task_field, f"unknown task '{row.task_id}'")
    if row.text is None:
        return (text_field, "missing text")
    bad = text_problem(row.text, "response text")
    return (text_field, bad) if bad else None


def score_rows(scorer: Any, rows: Sequence[InputRow], *, batch_size: int = PredictOptions.batch_size,
               review_confidence: float = PredictOptions.review_confidence, task_field: str = "task_id",
               text_field: str = "text") -> tuple[list[dict[str, Any]], list[tuple[InputRow, str, str]]]:
    """Validate and score ``rows``: (one result per good row, in input order; ``(row, field, message)`` per
    problem row). A result holds response_id, task_id, line, scores, probs, score_distribution, confidence,
    needs_review, gate_weights, model_id, model_version and source (trained / few_shot / zero_shot)."""
    known = set(scorer.tasks.ids)
    good: list[InputRow] = []
    bad: list[tuple[InputRow, str, str]] = []
    for r in rows:
        prob = row_problem(r, known, task_field, text_field)
        if prob:
            bad.append((r, *prob))
        else:
            good.append(r)
    if not good:
        return [], bad
    preds = scorer.predict([r.task_id for r in good], [r.text for r in good], batch_size=batch_size,
                           response_ids=[r.response_id for r in good])
    records = []
    for r, p in zip(good, preds):
        conf = float(p.confidence)
        records.append({"response_id": r.response_id, "task_id": r.task_id, "line": r.line,
                        "scores": dict(p.scores), "probs": dict(p.probs),
                        "score_distribution": dict(p.score_distribution), "confidence": conf,
                        "needs_review": conf < review_confidence, "gate_weights": p.gate_weights,
                        "model_id": str(p.model_id or scorer.model_id),
                        "model_version": str(p.model_version or scorer.model_version),
                        "source": str(getattr(p, "source", "trained"))})
    return records, bad


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------
def _fresh_state() -> dict[str, Any]:
    return {"in": {}, "out_bytes": 0, "out_parts": 0, "err_bytes": 0, "scored": 0, "problems": 0, "rows": 0,
            "done": False}


def _load_state(out: Path, meta: dict[str, Any], opt: PredictOptions) -> dict[str, Any] | None:
    """The state to continue from (None: start afresh); refuses foreign outputs. Writes nothing."""
    prog_path, err_path, parts_dir = o.sidecar_paths(out)
    if prog_path.exists() and not opt.overwrite:
        prev = json.loads(prog_path.read_text(encoding="utf-8"))
        keys = ("fingerprint", "model_version", "output_format", "columns")
        if {k: prev.get("meta", {}).get(k) for k in keys} != {k: meta[k] for k in keys}:
            raise InputError("a partial output from a different input, model or format exists; rerun with "
                             "--overwrite to start again", file=out)
        return prev["state"]
    if (out.exists() or err_path.exists() or parts_dir.exists()) and not opt.overwrite:
        raise InputError("output exists (use --overwrite to replace it)", file=out)
    return None


def _prepare_outputs(out: Path, out_fmt: str, state: dict[str, Any] | None, cols: o.Columns) -> dict[str, Any]:
    """Start afresh (state None) or roll the outputs back to what the last progress record committed."""
    prog_path, err_path, parts_dir = o.sidecar_paths(out)
    if state is None:
        for p in (out, err_path, prog_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(parts_dir, ignore_errors=True)
        state = _fresh_state()
    if out_fmt == "parquet":
        o.drop_parts_from(parts_dir, state["out_parts"])
    elif state["out_bytes"] == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        header = o.header_bytes(cols, out_fmt)
        out.write_bytes(header)
        state["out_bytes"] = len(header)
    else:
        o.truncate(out, state["out_bytes"])
    if state["err_bytes"]:
        o.truncate(err_path, state["err_bytes"])
    else:
        err_path.write_bytes(b"")
    return state


def _commit(out: Path, out_fmt: str, inp: Path, in_fmt: str, cols: o.Columns, state: dict[str, Any],
            records: list[dict[str, Any]], bad: list[tuple[InputRow, str, str]]) -> None:
    """1) output, 2) problems; the caller then writes 3) progress - a crash between steps is undone on resume."""
    _, err_path, parts_dir = o.sidecar_paths(out)
    if records:
        if out_fmt == "parquet":
            o.write_part(parts_dir, state["out_parts"], [cols.flat(x) for x in records], cols)
            state["out_parts"] += 1
        else:
            state["out_bytes"] = o.fsync_append(out, o.encode(records, cols, out_fmt))
    if bad:
        state["err_bytes"] = o.fsync_append(err_path, problem_lines(inp, in_fmt, bad))


def problem_lines(inp: Path, in_fmt: str, bad: Sequence[tuple[InputRow, str, str]]) -> bytes:
    """The problems file's JSONL lines for ``bad`` rows of ``inp`` (``row`` instead of ``line`` for Parquet)."""
    where = "row" if in_fmt == "parquet" else "line"
    return "".join(json.dumps({where: r.line, "response_id": r.response_id, "task_id": r.task_id, "field": f,
                               "error": msg, "file": str(inp)}, ensure_ascii=False) + "\n"
                   for r, f, msg in bad).encode("utf-8")


def first_problems(err_path: Path, n: int) -> list[dict[str, Any]]:
    out = []
    with err_path.open(encoding="utf-8") as f:
        for _, line in zip(range(n), f):
            d = json.loads(line)
            out.append({"line": d.get("line", d.get("row")), "field": d["field"], "error": d["error"]})
    return out


def predict_file(scorer: Any, input_path: str | Path, output_path: str | Path,
                 options: PredictOptions | None = None) -> PredictSummary:
    """Score every row of ``input_path`` into ``output_path``; resumes a partial run (see module docs)."""
    opt = options or PredictOptions()
    if opt.chunk_size < 1 or opt.batch_size < 1:
        raise InputError("chunk_size and batch_size must be >= 1")
    inp, out = Path(input_path), Path(output_path)
    in_fmt, out_fmt = detect_format(inp, opt.input_format), detect_format(out, opt.output_format)
    if out_fmt not in (*o.OUTPUT_SEPARATORS, "jsonl", "parquet"):
        raise InputError(f"cannot write {out_fmt} output", file=out)
    if not inp.is_file():
        raise InputError("input file not found", file=inp)
    cols = o.Columns(scorer)
    meta = {"version": PROGRESS_VERSION, "input": str(inp.resolve()), "fingerprint": o.fingerprint(inp),
            "input_format": in_fmt, "output_format": out_fmt, "model_id": str(scorer.model_id),
            "model_version": str(scorer.model_version), "columns": cols.header,
            "options": {k: v for k, v in asdict(opt).items() if k not in ("progress", "overwrite")}}
    summary = PredictSummary(str(inp), str(out), str(o.sidecar_paths(out)[1]))
    prev = _load_state(out, meta, opt)
    if prev is not None and prev.get("done"):
        summary.scored, summary.problems, summary.complete = prev["scored"], prev["problems"], True
        return summary
    table = _open_input(inp, in_fmt, (prev or {}).get("in", {}), opt)  # a missing column fails here, before writing
    with table:
        state = _prepare_outputs(out, out_fmt, prev, cols)
        summary.resumed_from_rows = state["rows"]
        _run(scorer, table, inp, in_fmt, out, out_fmt, cols, meta, state, opt, summary)
    if not summary.problem_examples and state["problems"]:
        summary.problem_examples = first_problems(Path(summary.errors), 5)
    return summary


def _run(scorer: Any, table: Table, inp: Path, in_fmt: str, out: Path, out_fmt: str, cols: o.Columns,
         meta: dict[str, Any], state: dict[str, Any], opt: PredictOptions, summary: PredictSummary) -> None:
    """Score chunk by chunk, committing each; fills ``summary``."""
    prog_path, _, parts_dir = o.sidecar_paths(out)
    o.write_json_atomic(prog_path, {"meta": meta, "state": state})
    unit = "rows" if in_fmt == "parquet" else "pos"
    total = table.num_rows if table.num_rows is not None else meta["fingerprint"]["size"]
    bar = o.Progress(opt.progress, total, int(state["in"].get(unit, 0)))
    t0, scored_now = time.perf_counter(), 0
    try:
        for rows, position in _chunks(table, opt):
            records, bad = score_rows(scorer, rows, batch_size=opt.batch_size,
                                      review_confidence=opt.review_confidence, task_field=opt.task_column,
                                      text_field=opt.text_column)
            _commit(out, out_fmt, inp, in_fmt, cols, state, records, bad)
            if len(summary.problem_examples) < 5:
                summary.problem_examples += [{"line": r.line, "field": f, "error": msg}
                                             for r, f, msg in bad][: 5 - len(summary.problem_examples)]
            state["in"] = position
            state["scored"] += len(records)
            state["problems"] += len(bad)
            state["rows"] += len(rows)
            scored_now += len(records)
            o.write_json_atomic(prog_path, {"meta": meta, "state": state})
            bar.update(position[unit], scored_now / max(time.perf_counter() - t0, 1e-9))
        if out_fmt == "parquet":
            o.merge_parts(parts_dir, state["out_parts"], out, cols)
        state["done"] = True
        o.write_json_atomic(prog_path, {"meta": meta, "state": state})
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.scored, summary.problems, summary.complete = state["scored"], state["problems"], True
    summary.responses_per_s = scored_now / summary.seconds if summary.seconds > 0 else 0.0
