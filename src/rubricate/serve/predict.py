"""Batch scoring of large files (``rubricate predict``): streamed, bounded in memory, resumable.

Input: CSV, JSONL or Parquet, read in chunks of ``chunk_size`` rows (csv module over a byte stream,
JSON lines one by one, ``pyarrow.ParquetFile.iter_batches``) - a million rows never sit in memory.
Output: CSV, JSONL or Parquet with, per row, the decoded scores, per-label probabilities, confidence, the
needs-review flag (``confidence < review_confidence``), the gate weights, the model id and version.

**Resuming.** After each chunk the output (and the problems file) are flushed and fsynced, *then* a
sidecar ``<output>.progress.json`` records the input position (byte offset, or row count for Parquet)
and the output's committed size. A rerun after a kill truncates the output back to the committed size
and continues from the recorded input position, so nothing is lost and nothing is written twice.
Parquet output is written as numbered part files (a Parquet file cannot be appended to after a crash)
and merged into the final file at the end, also chunk by chunk.

**Problem rows** (unknown task, empty or missing text, undecodable bytes, bad JSON) are not scored and
not dropped: each goes to ``<output>.errors.jsonl`` with its line (row, for Parquet) and field, and the
summary counts them.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from rubricate.errors import InputError
from rubricate.labels import LabelEncoding

Format = Literal["csv", "jsonl", "parquet"]
FORMATS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
                              ".parquet": "parquet", ".pq": "parquet"}
PROGRESS_VERSION = 1


def detect_format(path: Path, explicit: str | None = None) -> Format:
    if explicit:
        if explicit not in ("csv", "jsonl", "parquet"):
            raise InputError(f"unknown format '{explicit}' (csv, jsonl, parquet)", file=path)
        return explicit  # type: ignore[return-value]
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format from the extension '{path.suffix}' (use .csv, .jsonl, .parquet "
                         "or --format)", file=path)
    return fmt


@dataclass
class PredictOptions:
    """Knobs of :func:`predict_file` (all exposed by the CLI)."""

    chunk_size: int = 1000  #: rows read, scored and committed together (memory bound and resume granularity)
    batch_size: int = 64  #: rows per model forward pass
    review_confidence: float = 0.6  #: needs_review = confidence < this
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
    line: int  # physical line (CSV/JSONL, 1-based) or row number (Parquet, 1-based)
    task_id: str | None
    text: str | None
    response_id: str
    problem: tuple[str, str] | None = None  # (field, message) found while reading


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
# readers: yield (rows, position after the chunk)
# --------------------------------------------------------------------------------------------------------
def _decode(raw: bytes) -> tuple[str, bool]:
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), False


class _LineStream:
    """Binary lines with byte positions and line numbers, seekable between rows (what makes resume exact)."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("rb")
        self.pos = 0
        self.line = 0
        self.bad_lines: set[int] = set()

    def __iter__(self) -> Iterator[str]:
        while True:
            raw = self.f.readline()
            if not raw:
                return
            self.pos += len(raw)
            self.line += 1
            text, ok = _decode(raw)
            if not ok:
                self.bad_lines.add(self.line)
            if self.line == 1:
                text = text.lstrip("\ufeff")
            yield text

    def seek(self, pos: int, line: int) -> None:
        self.f.seek(pos)
        self.pos, self.line = pos, line

    def close(self) -> None:
        self.f.close()


def _cell(row: dict[str, Any], col: str) -> str | None:
    v = row.get(col)
    if v is None:
        return None
    if isinstance(v, float) and v != v:  # NaN from Parquet/pandas
        return None
    return str(v)


def _make_row(line: int, d: dict[str, Any], opt: PredictOptions, id_prefix: str) -> InputRow:
    task = opt.task if opt.task else _cell(d, opt.task_column)
    rid = _cell(d, opt.id_column)
    rid = rid if rid is not None and rid.strip() else f"{id_prefix}-{line}"
    return InputRow(line, task, _cell(d, opt.text_column), rid)


def _read_csv(path: Path, state: dict[str, Any], opt: PredictOptions) -> Iterator[tuple[list[InputRow], dict]]:
    stream = _LineStream(path)
    try:
        reader = csv.reader(iter(stream))
        try:
            header = next(reader)
        except StopIteration:
            return
        _check_columns(path, header, opt)
        if state.get("pos"):
            stream.seek(state["pos"], state["line"])
        rows: list[InputRow] = []
        while True:
            start = stream.line + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise InputError(f"malformed CSV: {e}", file=path, line=start) from None
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            row = _make_row(start, dict(zip(header, values)), opt, "line")
            if len(values) != len(header):
                row.problem = ("<row>", f"{len(values)} fields but the header has {len(header)}")
            elif any(n in stream.bad_lines for n in range(start, stream.line + 1)):
                row.problem = (opt.text_column, "undecodable bytes (not UTF-8)")
            rows.append(row)
            if len(rows) >= opt.chunk_size:
                yield rows, {"pos": stream.pos, "line": stream.line}
                rows = []
        if rows:
            yield rows, {"pos": stream.pos, "line": stream.line}
    finally:
        stream.close()


def _read_jsonl(path: Path, state: dict[str, Any], opt: PredictOptions) -> Iterator[tuple[list[InputRow], dict]]:
    stream = _LineStream(path)
    try:
        if state.get("pos"):
            stream.seek(state["pos"], state["line"])
        rows: list[InputRow] = []
        for text in stream:
            n = stream.line
            if not text.strip():
                continue
            try:
                d = json.loads(text)
                if not isinstance(d, dict):
                    raise ValueError("not a JSON object")
                row = _make_row(n, d, opt, "line")
                if n in stream.bad_lines:
                    row.problem = (opt.text_column, "undecodable bytes (not UTF-8)")
            except ValueError as e:
                row = InputRow(n, None, None, f"line-{n}", ("<json>", f"invalid JSON: {e}"))
            rows.append(row)
            if len(rows) >= opt.chunk_size:
                yield rows, {"pos": stream.pos, "line": stream.line}
                rows = []
        if rows:
            yield rows, {"pos": stream.pos, "line": stream.line}
    finally:
        stream.close()


def _read_parquet(path: Path, state: dict[str, Any], opt: PredictOptions) -> Iterator[tuple[list[InputRow], dict]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(path))
    names = pf.schema_arrow.names
    _check_columns(path, names, opt)
    cols = [c for c in (opt.task_column, opt.text_column, opt.id_column) if c in names]
    skip = int(state.get("rows", 0))
    seen = 0
    for batch in pf.iter_batches(batch_size=opt.chunk_size, columns=cols):
        if seen + batch.num_rows <= skip:
            seen += batch.num_rows
            continue
        data = batch.to_pylist()
        first = max(0, skip - seen)
        rows = [_make_row(seen + i + 1, d, opt, "row") for i, d in enumerate(data) if i >= first]
        seen += batch.num_rows
        yield rows, {"rows": seen}


def _check_columns(path: Path, header: list[str], opt: PredictOptions) -> None:
    need = [opt.text_column] + ([] if opt.task else [opt.task_column])
    missing = [c for c in need if c not in header]
    if missing:
        raise InputError(f"missing column(s) {missing} (columns: {header}; use --text-column/--task-column or "
                         "--task)", file=path, line=1, column=missing[0])


READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}


# --------------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------------
class _Columns:
    """The flat output columns: fixed ones plus the union of every task's label keys and label names."""

    def __init__(self, scorer: Any) -> None:
        keys: dict[str, None] = {}
        names: dict[str, None] = {}
        for t in scorer.tasks:
            keys.update(dict.fromkeys(t.label_keys))
            names.update(dict.fromkeys(LabelEncoding.from_task(t).names))
        self.score_keys = list(keys)
        self.label_names = list(names)
        self.header = (["response_id", "task_id", "line"] + [f"score.{k}" for k in self.score_keys]
                       + [f"prob.{n}" for n in self.label_names]
                       + ["confidence", "needs_review", "gate_weights", "model_id", "model_version"])

    def flat(self, rec: dict[str, Any]) -> dict[str, Any]:
        out = {"response_id": rec["response_id"], "task_id": rec["task_id"], "line": rec["line"]}
        out.update({f"score.{k}": rec["scores"].get(k) for k in self.score_keys})
        out.update({f"prob.{n}": rec["probs"].get(n) for n in self.label_names})
        out.update({"confidence": rec["confidence"], "needs_review": rec["needs_review"],
                    "gate_weights": json.dumps(rec["gate_weights"]), "model_id": rec["model_id"],
                    "model_version": rec["model_version"]})
        return out

    def arrow_schema(self):
        import pyarrow as pa

        fields = [pa.field("response_id", pa.string()), pa.field("task_id", pa.string()), pa.field("line", pa.int64())]
        fields += [pa.field(f"score.{k}", pa.int64()) for k in self.score_keys]
        fields += [pa.field(f"prob.{n}", pa.float64()) for n in self.label_names]
        fields += [pa.field("confidence", pa.float64()), pa.field("needs_review", pa.bool_()),
                   pa.field("gate_weights", pa.string()), pa.field("model_id", pa.string()),
                   pa.field("model_version", pa.string())]
        return pa.schema(fields)


def _fsync_append(path: Path, data: bytes) -> int:
    """Append and fsync; returns the new size (the committed offset)."""
    with path.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def _truncate(path: Path, size: int) -> None:
    if path.exists():
        with path.open("r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
    elif size:
        raise InputError(f"the progress file says {size} bytes were written but the file is gone; rerun with "
                         "--overwrite", file=path)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    with path.open("rb") as f:
        head = f.read(65536)
    import hashlib

    return {"size": st.st_size, "head_sha256": hashlib.sha256(head).hexdigest()}


def sidecar_paths(output: Path) -> tuple[Path, Path, Path]:
    """(progress file, problems file, Parquet parts folder) that belong to ``output``."""
    return (output.with_name(output.name + ".progress.json"), output.with_name(output.name + ".errors.jsonl"),
            output.with_name(output.name + ".parts"))


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------
def _row_problem(row: InputRow, known: set[str]) -> tuple[str, str] | None:
    if row.problem:
        return row.problem
    if row.task_id is None or not row.task_id.strip():
        return ("task_id", "missing task id")
    if row.task_id not in known:
        return ("task_id", f"unknown task '{row.task_id}'")
    if row.text is None:
        return ("text", "missing text")
    if not row.text.strip():
        return ("text", "empty response text")
    return None


def predict_file(scorer: Any, input_path: str | Path, output_path: str | Path,
                 options: PredictOptions | None = None) -> PredictSummary:
    """Score every row of ``input_path`` into ``output_path``; resumes a partial run (see module docs)."""
    opt = options or PredictOptions()
    if opt.chunk_size < 1 or opt.batch_size < 1:
        raise InputError("chunk_size and batch_size must be >= 1")
    inp, out = Path(input_path), Path(output_path)
    if not inp.exists():
        raise InputError("input file not found", file=inp)
    in_fmt = detect_format(inp, opt.input_format)
    out_fmt = detect_format(out, opt.output_format)
    prog_path, err_path, parts_dir = sidecar_paths(out)
    cols = _Columns(scorer)
    fp = _fingerprint(inp)
    meta = {"version": PROGRESS_VERSION, "input": str(inp.resolve()), "fingerprint": fp, "input_format": in_fmt,
            "output_format": out_fmt, "model_id": str(scorer.model_id), "model_version": str(scorer.model_version),
            "columns": cols.header, "options": {k: v for k, v in asdict(opt).items() if k not in ("progress",
                                                                                              "overwrite")}}
    state: dict[str, Any] = {"in": {}, "out_bytes": 0, "out_parts": 0, "err_bytes": 0, "scored": 0, "problems": 0,
                             "rows": 0, "done": False}
    summary = PredictSummary(str(inp), str(out), str(err_path))
    if prog_path.exists() and not opt.overwrite:
        prev = json.loads(prog_path.read_text(encoding="utf-8"))
        same = {k: prev.get("meta", {}).get(k) for k in ("fingerprint", "model_version", "output_format", "columns")}
        want = {k: meta[k] for k in same}
        if same != want:
            raise InputError("a partial output from a different input, model or format exists; rerun with "
                             "--overwrite to start again", file=out)
        state = prev["state"]
        if state.get("done"):
            summary.scored, summary.problems, summary.complete = state["scored"], state["problems"], True
            return summary
    elif (out.exists() or err_path.exists() or parts_dir.exists()) and not opt.overwrite:
        raise InputError("output exists (use --overwrite to replace it)", file=out)
    else:
        for p in (out, err_path, prog_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(parts_dir, ignore_errors=True)

    # roll the outputs back to what the last progress record committed
    if out_fmt == "parquet":
        parts_dir.mkdir(parents=True, exist_ok=True)
        for p in parts_dir.glob("part-*.parquet"):
            if int(p.stem.split("-")[1]) >= state["out_parts"]:
                p.unlink()
    else:
        if state["out_bytes"] == 0:
            out.parent.mkdir(parents=True, exist_ok=True)
            header = ",".join(_csv_quote(c) for c in cols.header) + "\n" if out_fmt == "csv" else ""
            out.write_bytes(header.encode("utf-8"))
            state["out_bytes"] = len(header.encode("utf-8"))
        else:
            _truncate(out, state["out_bytes"])
    if state["err_bytes"]:
        _truncate(err_path, state["err_bytes"])
    else:
        err_path.write_bytes(b"")
    summary.resumed_from_rows = state["rows"]
    _write_json_atomic(prog_path, {"meta": meta, "state": state})

    known = set(scorer.tasks.ids)
    t0 = time.perf_counter()
    scored_now = 0
    total_units = fp["size"] if in_fmt != "parquet" else _parquet_rows(inp)
    bar = _Progress(opt.progress, total_units, state["in"].get("pos", state["in"].get("rows", 0)))
    try:
        for rows, position in READERS[in_fmt](inp, state["in"], opt):
            good, bad = [], []
            for r in rows:
                prob = _row_problem(r, known)
                (bad if prob else good).append((r, prob))
            records: list[dict[str, Any]] = []
            if good:
                preds = scorer.predict([r.task_id for r, _ in good], [r.text for r, _ in good],
                                       batch_size=opt.batch_size, response_ids=[r.response_id for r, _ in good])
                for (r, _), p in zip(good, preds):
                    conf = float(p.confidence)
                    records.append({"response_id": r.response_id, "task_id": r.task_id, "line": r.line,
                                    "scores": dict(p.scores), "probs": dict(p.probs),
                                    "score_distribution": dict(p.score_distribution), "confidence": conf,
                                    "needs_review": conf < opt.review_confidence, "gate_weights": p.gate_weights,
                                    "model_id": str(p.model_id or scorer.model_id),
                                    "model_version": str(p.model_version or scorer.model_version)})
            # 1) output, 2) problems, 3) progress: a crash between steps is undone by the truncation above
            if records:
                if out_fmt == "parquet":
                    _write_part(parts_dir, state["out_parts"], [cols.flat(x) for x in records], cols)
                    state["out_parts"] += 1
                else:
                    state["out_bytes"] = _fsync_append(out, _encode(records, cols, out_fmt))
            if bad:
                lines = "".join(json.dumps({"line" if in_fmt != "parquet" else "row": r.line,
                                            "response_id": r.response_id, "task_id": r.task_id, "field": f,
                                            "error": msg, "file": str(inp)}, ensure_ascii=False) + "\n"
                                for r, (f, msg) in bad)
                state["err_bytes"] = _fsync_append(err_path, lines.encode("utf-8"))
                if len(summary.problem_examples) < 5:
                    summary.problem_examples += [{"line": r.line, "field": f, "error": msg}
                                                 for r, (f, msg) in bad][: 5 - len(summary.problem_examples)]
            state["in"] = position
            state["scored"] += len(records)
            state["problems"] += len(bad)
            state["rows"] += len(rows)
            scored_now += len(records)
            _write_json_atomic(prog_path, {"meta": meta, "state": state})
            bar.update(position.get("pos", position.get("rows", 0)), scored_now / max(time.perf_counter() - t0, 1e-9))
        if out_fmt == "parquet":
            _merge_parts(parts_dir, state["out_parts"], out, cols)
        state["done"] = True
        _write_json_atomic(prog_path, {"meta": meta, "state": state})
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    summary.scored, summary.problems, summary.complete = state["scored"], state["problems"], True
    summary.responses_per_s = scored_now / summary.seconds if summary.seconds > 0 else 0.0
    if not summary.problem_examples and state["problems"]:
        with err_path.open(encoding="utf-8") as f:
            for _, line in zip(range(5), f):
                d = json.loads(line)
                summary.problem_examples.append({"line": d.get("line", d.get("row")), "field": d["field"],
                                                 "error": d["error"]})
    return summary


def _csv_quote(v: Any) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([v])
    return buf.getvalue()


def _encode(records: list[dict[str, Any]], cols: _Columns, fmt: Format) -> bytes:
    import io

    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols.header, lineterminator="\n")
    for r in records:
        w.writerow(cols.flat(r))
    return buf.getvalue().encode("utf-8")


def _write_part(parts_dir: Path, index: int, rows: list[dict[str, Any]], cols: _Columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=cols.arrow_schema())
    tmp = parts_dir / f".part-{index:06d}.tmp"
    pq.write_table(table, str(tmp))
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, parts_dir / f"part-{index:06d}.parquet")


def _merge_parts(parts_dir: Path, n_parts: int, out: Path, cols: _Columns) -> None:
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".tmp")
    with pq.ParquetWriter(str(tmp), cols.arrow_schema()) as w:
        for i in range(n_parts):
            w.write_table(pq.read_table(str(parts_dir / f"part-{i:06d}.parquet")))
    os.replace(tmp, out)
    shutil.rmtree(parts_dir, ignore_errors=True)


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(str(path)).metadata.num_rows


class _Progress:
    """A rich progress bar over input bytes (rows for Parquet) that shows responses/s."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.p = Progress(TextColumn("scoring"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                          TextColumn("{task.fields[rate]:>7.1f} responses/s"), TimeElapsedColumn(),
                          TimeRemainingColumn(), transient=False)
        self.p.start()
        self.task = self.p.add_task("scoring", total=max(total, 1), completed=start, rate=0.0)

    def update(self, completed: int, rate: float) -> None:
        if self.p is not None:
            self.p.update(self.task, completed=completed, rate=rate)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
