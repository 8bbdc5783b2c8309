"""Batch scoring on a Ray cluster (``rubricate predict --engine ray``): Ray Data reads, an actor pool scores.

Why Ray and not a scheduler of our own: Ray Data already streams blocks from read tasks to an actor pool with
back-pressure, restarts a killed actor and retries its block (``max_restarts``/``max_task_retries``), and
runs the same on a laptop and on a cluster. What it does not give is exactly-once *output* across a crashed
run; that is the part this module adds, keyed by input block:

* **Plan.** The input (one file, a folder, or a glob of CSV/TSV/JSONL/Parquet) is cut into blocks of
  ``chunk_size`` rows - the local engine's chunks, so both engines run the very same forward passes and give
  identical rows. A block is (file, start position, rows); its id is the file's name, a hash of its path and
  its first row (:func:`block_id`), the same in every run. Planning reads each file once with the one table
  reader (one Ray task per file) and is saved in ``<output>/_plan.json`` with the input fingerprints and
  the model version; a rerun reuses it and refuses a changed input, model or format (``--overwrite``).
* **Read.** A Ray Data datasource with one read task per block reads it with the table reader (physical
  line numbers, problem rows as data) and applies :func:`~rubricate.batch.predict.row_problem`.
* **Score and commit.** Each actor loads the Scorer once (ONNX int8 by default, ``threads_per_actor`` ONNX
  Runtime threads) and, per block, writes ``part-<id>.<fmt>`` and the block's problem rows under temporary
  names, renames them, and writes the commit record ``_blocks/<id>.json`` last. A block is done exactly when
  its record exists: a rerun reads only the others, and a block redone (a retried task, a rerun after a
  crash) replaces its own files, so every response id appears exactly once.
* **Finish.** The problem rows of all blocks are merged, in input order, into ``<output>/_problems.jsonl``
  (the lines of the local engine's ``.errors.jsonl``); totals come from the commit records.

The output folder holds only ``part-*`` data files next to ``_``-prefixed metadata, which Parquet/CSV
dataset readers (pyarrow, pandas, Spark, DuckDB) skip; :func:`read_parts` returns the rows in input order.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import resource
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from rubricate.batch import outputs as o
from rubricate.batch.predict import (InputRow, PredictOptions, PredictSummary, first_problems, problem_lines,
                                     read_chunks, row_problem, score_rows)
from rubricate.data.tables import SUFFIX_FORMATS, detect_format
from rubricate.errors import InputError

PLAN_VERSION = 1
#: ``predict --engine``: the first is the default (today's single-process path).
ENGINES = ("local", "ray")
#: Characters of a file's name kept in its block ids (the rest of the id is a hash and a row number).
BLOCK_NAME_CHARS = 40
#: Output formats a part file can have.
PART_FORMATS = ("parquet", "csv", "tsv", "jsonl")


@dataclass
class RayPredictOptions:
    """How ``predict --engine ray`` uses the cluster (the CLI reads its defaults from here)."""

    address: str | None = None  #: "auto", "host:6379", "ray://host:10001"; None: $RAY_ADDRESS or a local Ray
    workers: int = 2  #: scoring actors (each holds one Scorer)
    threads_per_actor: int = 1  #: ONNX Runtime (or torch) intra-op threads of each actor's Scorer
    cpus_per_actor: float | None = None  #: CPUs Ray reserves per actor; None = threads_per_actor
    #: CPUs Ray reserves per block read: 0 lets reads run beside a pool that holds every CPU (a read is light
    #: next to scoring the block), with ``reads_per_actor`` bounding how many run at once
    read_cpus: float = 0.0
    reads_per_actor: int = 2  #: block reads in flight per actor (keeps each actor one block ahead)
    backend: str = "onnx"  #: Scorer backend in the actors: ONNX is torch-free (less memory per actor)
    quantize: bool = True  #: the int8 graph (``rubricate export --int8``)
    output_format: str = "parquet"  #: part files: parquet | csv | tsv | jsonl
    tasks: str | None = None  #: task files a task-text checkpoint also scores (``Scorer.from_pretrained(tasks=)``)


@dataclass
class Block:
    """One unit of work and of commit: ``rows`` rows of ``file`` from position ``start``."""

    id: str
    file: str
    format: str
    start: dict[str, int]
    first_row: int
    rows: int


@dataclass
class RaySummary(PredictSummary):
    """:class:`PredictSummary` plus the block and actor accounting of a Ray run."""

    blocks: int = 0
    skipped_blocks: int = 0  #: already committed by an earlier run
    actors: list[dict[str, Any]] = field(default_factory=list)  #: pid, node, start-up seconds, peak RSS (MB)


# --------------------------------------------------------------------------------------------------------
# input files and the plan
# --------------------------------------------------------------------------------------------------------
def input_files(spec: str | Path, fmt: str | None = None) -> tuple[Path, list[Path]]:
    """``(root, files)``: a file, the table files of a folder (by suffix, sorted), or a glob's matches."""
    path = Path(spec)
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_"))
                       and (fmt is not None or p.suffix.lower() in SUFFIX_FORMATS))
        root = path
    else:
        files = sorted(Path(p) for p in glob.glob(str(spec)) if Path(p).is_file())
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else path.parent
    if not files:
        raise InputError("no input files (a CSV, TSV, JSONL or Parquet file, a folder of them, or a glob)",
                         file=path)
    return root, files


def block_id(rel: str, first_row: int) -> str:
    """``<name>-<hash of the path>-<first row>``: the same block gets the same id in every run."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", Path(rel).stem)[:BLOCK_NAME_CHARS] or "input"
    return f"{stem}-{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:8]}-{first_row:010d}"


def plan_file(path: str, rel: str, fmt: str, opt: PredictOptions) -> list[Block] | dict[str, Any]:
    """The blocks of one file (the local engine's chunks), or an :class:`InputError` as a dict."""
    blocks: list[Block] = []
    start: dict[str, int] = {}
    first = 0
    try:
        for rows, end in read_chunks(path, {}, opt, fmt):
            blocks.append(Block(block_id(rel, first), path, fmt, start, first, len(rows)))
            first += len(rows)
            start = end
    except InputError as e:  # as data: the driver raises it again with file, line and column intact
        return {"message": e.reason, "file": e.file, "line": e.line, "column": e.column}
    return blocks


def _plan(files: list[tuple[Path, str, str]], opt: PredictOptions) -> list[Block]:
    """One Ray task per file (Ray's default of one CPU each: no actor holds CPUs yet)."""
    import ray

    task = ray.remote(plan_file)
    out: list[Block] = []
    for res in ray.get([task.remote(str(p), rel, fmt, opt) for p, rel, fmt in files]):
        if isinstance(res, dict):
            raise InputError(res["message"], file=res["file"], line=res["line"], column=res["column"])
        out += res
    return out


def _meta(files: list[tuple[Path, str, str]], doc: dict[str, Any], header: list[str], part_fmt: str,
          opt: PredictOptions) -> dict[str, Any]:
    """What a saved plan must match to be resumed (input, model, columns, format, the row-shaping options)."""
    options = {k: v for k, v in asdict(opt).items() if k not in ("progress", "overwrite", "output_format")}
    fingerprints = [{"path": rel, "format": fmt, **o.fingerprint(p)} for p, rel, fmt in files]
    return {"version": PLAN_VERSION, "files": fingerprints,
            "model_version": str(doc.get("model_version", "")), "columns": header, "output_format": part_fmt,
            "options": options}


def _owned(out: Path) -> list[Path]:
    """The files of a Ray output folder that this engine wrote (all that ``--overwrite`` may remove)."""
    return [p for p in out.iterdir() if p.name.startswith(("part-", "_plan.json", "_problems.jsonl", "_blocks"))
            or (p.name.startswith(".") and p.name.endswith(".tmp"))]


def _load_or_plan(out: Path, meta: dict[str, Any], files: list[tuple[Path, str, str]], opt: PredictOptions
                  ) -> list[Block]:
    plan_path = out / "_plan.json"
    if plan_path.exists() and not opt.overwrite:
        saved = json.loads(plan_path.read_text(encoding="utf-8"))
        if saved["meta"] != meta:
            raise InputError("a partial output from a different input, model, format or options exists; rerun "
                             "with --overwrite to start again", file=out)
        return [Block(**b) for b in saved["blocks"]]
    if out.exists() and any(out.iterdir()) and not (opt.overwrite and plan_path.exists()):
        raise InputError("output folder exists and is not empty (use --overwrite to replace a Ray output)",
                         file=out)
    blocks = _plan(files, opt)  # a missing column fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    for p in _owned(out):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    (out / "_blocks").mkdir()
    o.write_json_atomic(plan_path, {"meta": meta, "blocks": [asdict(b) for b in blocks]})
    return blocks


# --------------------------------------------------------------------------------------------------------
# read side: one Ray Data read task per block
# --------------------------------------------------------------------------------------------------------
def read_block(block: Block, opt: PredictOptions, known: frozenset[str]) -> list[Any]:
    """The block's rows as one Arrow table; rows that cannot be scored carry their (field, message)."""
    import pyarrow as pa

    chunks = read_chunks(block.file, block.start, opt, block.format)
    try:
        rows, _ = next(chunks)
    finally:
        chunks.close()
    if len(rows) != block.rows:
        raise InputError(f"block {block.id}: {len(rows)} rows where the plan has {block.rows}; the input "
                         "changed during the run (rerun with --overwrite)", file=block.file)
    probs = [row_problem(r, known, opt.task_column, opt.text_column) for r in rows]  # type: ignore[arg-type]
    return [pa.table({
        "block": [block.id] * len(rows), "block_rows": [block.rows] * len(rows),
        "file": [block.file] * len(rows), "format": [block.format] * len(rows),
        "line": [r.line for r in rows], "response_id": [r.response_id for r in rows],
        "task_id": [r.task_id for r in rows], "text": [None if p else r.text for r, p in zip(rows, probs)],
        "problem_field": [p[0] if p else None for p in probs], "problem": [p[1] if p else None for p in probs]},
        schema=pa.schema([("block", pa.string()), ("block_rows", pa.int64()), ("file", pa.string()),
                          ("format", pa.string()), ("line", pa.int64()), ("response_id", pa.string()),
                          ("task_id", pa.string()), ("text", pa.string()), ("problem_field", pa.string()),
                          ("problem", pa.string())]))]


def _datasource(blocks: list[Block], opt: PredictOptions, known: frozenset[str]) -> Any:
    """A Ray Data datasource whose read tasks are the plan's blocks (ray is imported only when used)."""
    from functools import partial

    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    class RubricateBlocks(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[Any]:
            return [ReadTask(partial(read_block, b, opt, known),
                             BlockMetadata(num_rows=b.rows, size_bytes=None, exec_stats=None, input_files=[b.file]))
                    for b in blocks]

    return RubricateBlocks()


# --------------------------------------------------------------------------------------------------------
# score side: the actor and the per-block commit
# --------------------------------------------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    """Write under a name unique to this writer, fsync, rename: readers see the whole file or none."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def encode_part(records: list[dict[str, Any]], cols: o.Columns, fmt: str) -> bytes:
    """A whole part file: Parquet (the local engine's schema), or CSV/TSV with a header, or JSONL."""
    if fmt != "parquet":
        return o.header_bytes(cols, fmt) + o.encode(records, cols, fmt)
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist([cols.flat(r) for r in records], schema=cols.arrow_schema()), sink)
    return sink.getvalue().to_pybytes()


def commit_block(out: Path, block: str, fmt: str, data: bytes, problems: bytes, record: dict[str, Any]) -> None:
    """1) the part, 2) its problem rows, 3) the commit record: the block counts as done only after 3)."""
    write_atomic(out / f"part-{block}.{fmt}", data)
    write_atomic(out / "_blocks" / f"{block}.errors.jsonl", problems)
    write_atomic(out / "_blocks" / f"{block}.json", json.dumps(record).encode("utf-8"))


class BlockScorer:
    """A Ray Data actor: loads the Scorer once, then scores and commits whole blocks."""

    def __init__(self, model_dir: str, out_dir: str, part_fmt: str, opt: PredictOptions,
                 ray_opt: RayPredictOptions) -> None:
        import socket

        from rubricate.student.scorer import Scorer

        t0 = time.perf_counter()
        self.scorer = Scorer.from_pretrained(model_dir, backend=ray_opt.backend,  # type: ignore[arg-type]
                                             quantize=ray_opt.quantize, num_threads=ray_opt.threads_per_actor,
                                             tasks=ray_opt.tasks)
        self.cols = o.Columns(self.scorer)
        self.out, self.fmt, self.opt = Path(out_dir), part_fmt, opt
        self.startup_s = time.perf_counter() - t0
        self.node = socket.gethostname()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        d = batch.to_pydict()
        order = list(dict.fromkeys(d["block"]))
        summaries = []
        for b in order:
            idx = [i for i, x in enumerate(d["block"]) if x == b]
            if len(idx) != d["block_rows"][idx[0]]:  # a block must be committed whole, never in pieces
                raise RuntimeError(f"Ray Data split block {b} ({len(idx)} of {d['block_rows'][idx[0]]} rows)")
            summaries.append(self._block(b, d, idx))
        return pa.Table.from_pylist(summaries)

    def _block(self, b: str, d: dict[str, list[Any]], idx: list[int]) -> dict[str, Any]:
        t0 = time.perf_counter()
        rows = [InputRow(d["line"][i], d["task_id"][i], d["text"][i], d["response_id"][i],
                         (d["problem_field"][i], d["problem"][i]) if d["problem"][i] is not None else None)
                for i in idx]
        opt = self.opt
        records, bad = score_rows(self.scorer, rows, batch_size=opt.batch_size,
                                  review_confidence=opt.review_confidence, task_field=opt.task_column,
                                  text_field=opt.text_column)
        file, in_fmt = d["file"][idx[0]], d["format"][idx[0]]
        rec = {"block": b, "file": file, "rows": len(rows), "scored": len(records), "problems": len(bad),
               "seconds": 0.0, "pid": os.getpid(), "node": self.node, "startup_s": self.startup_s,
               "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        rec["seconds"] = time.perf_counter() - t0
        commit_block(self.out, b, self.fmt, encode_part(records, self.cols, self.fmt),
                     problem_lines(Path(file), in_fmt, bad), rec)
        return rec


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------
def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (``$RAY_ADDRESS`` or a new local Ray when None); no-op when joined."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level="warning")


def _model(model_dir: Path, ray_opt: RayPredictOptions) -> tuple[dict[str, Any], Any]:
    """The checkpoint's document and tasks, read without loading the model; the ONNX graph must exist."""
    from types import SimpleNamespace

    from rubricate.student.checkpoint import load_tasks, read_document

    graph = model_dir / "onnx" / ("model.int8.onnx" if ray_opt.quantize else "model.onnx")
    if ray_opt.backend == "onnx" and not graph.exists():
        raise InputError(f"no ONNX export at {graph}: run `rubricate export {model_dir}"
                         f"{' --int8' if ray_opt.quantize else ''}` first, or pass --backend torch", file=model_dir)
    doc = read_document(model_dir)
    registry, _ = load_tasks(doc)
    return doc, SimpleNamespace(tasks=registry)


def predict_on_ray(model_dir: str | Path, input_spec: str | Path, output_dir: str | Path,
                   options: PredictOptions | None = None, ray_options: RayPredictOptions | None = None
                   ) -> RaySummary:
    """Score every row of the input file(s) into a folder of part files on Ray; resumes (module docs)."""
    opt, ray_opt = options or PredictOptions(), ray_options or RayPredictOptions()
    if opt.chunk_size < 1 or opt.batch_size < 1 or ray_opt.workers < 1 or ray_opt.threads_per_actor < 1:
        raise InputError("chunk_size, batch_size, workers and threads_per_actor must be >= 1")
    part_fmt = opt.output_format or ray_opt.output_format
    out, model_dir = Path(output_dir), Path(model_dir)
    if part_fmt not in PART_FORMATS:
        raise InputError(f"cannot write {part_fmt} part files (use one of {', '.join(PART_FORMATS)})", file=out)
    root, paths = input_files(input_spec, opt.input_format)
    files = [(p, p.relative_to(root).as_posix(), detect_format(p, opt.input_format)) for p in paths]
    doc, tasks = _model(model_dir, ray_opt)
    cols = o.Columns(tasks)
    meta = _meta(files, doc, cols.header, part_fmt, opt)
    connect(ray_opt.address)
    blocks = _load_or_plan(out, meta, files, opt)
    done = {p.stem for p in (out / "_blocks").glob("*.json")}
    todo = [b for b in blocks if b.id not in done]
    summary = RaySummary(str(input_spec), str(out), str(out / "_problems.jsonl"), blocks=len(blocks),
                         skipped_blocks=len(blocks) - len(todo))
    summary.resumed_from_rows = sum(b.rows for b in blocks if b.id in done)
    t0 = time.perf_counter()
    fresh = _score(model_dir, out, part_fmt, todo, opt, ray_opt, frozenset(tasks.tasks.ids)) if todo else []
    summary.seconds = time.perf_counter() - t0
    _finish(out, blocks, summary)
    scored_now = sum(r["scored"] for r in fresh)
    summary.responses_per_s = scored_now / summary.seconds if summary.seconds > 0 else 0.0
    summary.actors = _actor_stats(fresh)
    return summary


def _score(model_dir: Path, out: Path, part_fmt: str, todo: list[Block], opt: PredictOptions,
           ray_opt: RayPredictOptions, known: frozenset[str]) -> list[dict[str, Any]]:
    """Run the Ray Data pipeline over the blocks still to do; returns their commit records."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = opt.progress
    # one output block per read task: asking for as many blocks as there are tasks stops Ray Data from
    # splitting a block's output to reach its default parallelism (a block is committed whole)
    ds = ray.data.read_datasource(_datasource(todo, opt, known), override_num_blocks=len(todo),
                                  num_cpus=ray_opt.read_cpus,
                                  concurrency=ray_opt.workers * ray_opt.reads_per_actor)
    ds = ds.map_batches(BlockScorer, batch_size=None, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=ray_opt.workers),
                        num_cpus=ray_opt.cpus_per_actor or ray_opt.threads_per_actor,
                        fn_constructor_kwargs={"model_dir": str(model_dir), "out_dir": str(out),
                                               "part_fmt": part_fmt, "opt": opt, "ray_opt": ray_opt})
    return list(ds.iter_rows())


def _finish(out: Path, blocks: list[Block], summary: RaySummary) -> None:
    """Totals from the commit records; problem rows merged in input order; temporary leftovers removed."""
    records = [json.loads((out / "_blocks" / f"{b.id}.json").read_text(encoding="utf-8")) for b in blocks]
    summary.scored = sum(r["scored"] for r in records)
    summary.problems = sum(r["problems"] for r in records)
    write_atomic(out / "_problems.jsonl", b"".join((out / "_blocks" / f"{b.id}.errors.jsonl").read_bytes()
                                                   for b in blocks))
    for p in list(out.glob(".*.tmp")) + list((out / "_blocks").glob(".*.tmp")):  # left by killed writers
        p.unlink(missing_ok=True)
    summary.complete = True
    summary.problem_examples = first_problems(out / "_problems.jsonl", 5)


def _actor_stats(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per actor process of this run: blocks, rows, scoring seconds, start-up, peak RSS."""
    by: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        a = by.setdefault((r["node"], r["pid"]), {"node": r["node"], "pid": r["pid"], "blocks": 0, "rows": 0,
                                                  "seconds": 0.0, "startup_s": r["startup_s"], "rss_mb": 0.0})
        a["blocks"] += 1
        a["rows"] += r["rows"]
        a["seconds"] += r["seconds"]
        a["rss_mb"] = max(a["rss_mb"], r["rss_mb"])
    return list(by.values())


def read_parts(output_dir: str | Path) -> Iterator[dict[str, Any]]:
    """The scored rows of a finished Ray output, in input order (Parquet parts as flat rows)."""
    out = Path(output_dir)
    saved = json.loads((out / "_plan.json").read_text(encoding="utf-8"))
    fmt = saved["meta"]["output_format"]
    for b in saved["blocks"]:
        part = out / f"part-{b['id']}.{fmt}"
        if fmt == "parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(str(part)).to_pylist()
        elif fmt == "jsonl":
            yield from (json.loads(x) for x in part.read_text(encoding="utf-8").splitlines() if x)
        else:
            import csv

            with part.open(newline="", encoding="utf-8") as f:
                yield from csv.DictReader(f, delimiter=o.OUTPUT_SEPARATORS[fmt])


__all__ = ["ENGINES", "Block", "BlockScorer", "RayPredictOptions", "RaySummary", "block_id", "connect",
           "input_files", "plan_file", "predict_on_ray", "read_block", "read_parts"]
