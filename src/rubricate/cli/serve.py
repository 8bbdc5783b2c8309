"""Deployment verbs: ``export``, ``predict``, ``serve``, ``db upgrade|current`` (``reviews``: cli/reviews.py).

Heavy imports (torch, onnxruntime, fastapi, uvicorn) stay inside the functions so ``rubricate --help``
is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from rubricate.batch.predict import PredictOptions
from rubricate.batch.ray_engine import ENGINES, RayPredictOptions
from rubricate.serve.settings import ServeSettings
from rubricate.student.onnx_tools import Int8Options

_PREDICT = PredictOptions()  #: the predict verb's defaults are the library's, never retyped
_RAY = RayPredictOptions()  #: ``predict --engine ray`` defaults
_INT8 = Int8Options()  #: ``export --int8`` defaults
SERVE_DEFAULTS = ServeSettings()  #: option defaults are read from the library's settings model, never retyped
db_app = typer.Typer(help="Server database: migrations.", no_args_is_help=True)

DB_HELP = f"SQLAlchemy URL (default: $RUBRICATE_DATABASE_URL or {SERVE_DEFAULTS.database_url})."



def _export_default(name: str) -> Any:
    """Defaults of ``rubricate export`` = those of ``student.export.export_checkpoint`` (never retyped)."""
    from rubricate.cli import default_of
    from rubricate.student.export import export_checkpoint

    return default_of(export_checkpoint, name)


def _scorer_default(name: str) -> Any:
    """Defaults of ``rubricate predict``'s model options = those of ``Scorer.from_pretrained``."""
    from rubricate.cli import default_of
    from rubricate.student.scorer import Scorer

    return default_of(Scorer.from_pretrained, name)


def _db_url(url: str | None) -> str:
    import os

    return url or os.environ.get("RUBRICATE_DATABASE_URL") or SERVE_DEFAULTS.database_url


def _texts_of(path: Path) -> list[str]:
    """The ``text`` column of a table (an InputError names the file when it has none)."""
    from rubricate.data.tables import read_rows, require_columns

    texts: list[str] = []
    for line, row in read_rows(path):
        if not texts:
            require_columns(path, list(row), ["text"], line=line)
        texts.append(str(row.get("text") or ""))
    return texts


def export(
    model: Path = typer.Argument(..., help="Student checkpoint directory."),
    onnx: bool = typer.Option(True, "--onnx/--no-onnx", help="Write an ONNX graph (the only export format)."),
    int8: bool = typer.Option(_export_default("int8"), "--int8", help="Also write a block-wise int8 graph."),
    opset: int = typer.Option(_export_default("opset"), help="ONNX opset."),
    optimize: bool = typer.Option(_export_default("optimize"), "--optimize/--no-optimize",
                                  help="Run ONNX Runtime's transformer optimizer (LayerNorm/GELU fusions) first."),
    weight_block: int = typer.Option(_INT8.weight_block, help="int8: weights per scale along a MatMul column."),
    embedding_bits: Optional[int] = typer.Option(_INT8.embedding_bits, help="int8: bits of the word-embedding "
                                                 "table (8, or 4: smaller, less exact); 0 keeps it fp32."),
    tol_fp32: float = typer.Option(_export_default("tolerance_fp32"), help="Parity tolerance: max |dprob| vs torch for fp32."),
    tol_int8: float = typer.Option(_export_default("tolerance_int8"), help="Parity tolerance: max |dprob| vs torch for int8."),
    int8_exclude: Optional[str] = typer.Option(_INT8.exclude, "--int8-exclude", help="int8: regex of MatMul/Gemm "
                                               "node names kept in fp32."),
    hot_rows: Optional[int] = typer.Option(_INT8.embedding_hot_rows, "--hot-rows", help="int8: keep the N most "
                                           "frequent word-embedding rows 8-bit, the rest 4-bit; 0: all 8-bit."),
    frequency_data: Optional[Path] = typer.Option(None, "--frequency-data", help="CSV, TSV, JSONL or Parquet with "
                                                  "a text column to count tokens on (default: the training "
                                                  "counts stored in the checkpoint)."),
) -> None:
    """Export the whole student (encoder, MoE, heads; task id as an input) next to the checkpoint."""
    from rich.console import Console

    from rubricate.student.export import ParityError, export_checkpoint

    if not onnx:
        raise typer.BadParameter("nothing to do: --onnx is the only export format")
    console = Console()
    try:
        options = Int8Options(weight_block=weight_block, embedding_bits=embedding_bits or None, exclude=int8_exclude,
                              embedding_hot_rows=hot_rows or None)
        texts = _texts_of(frequency_data) if frequency_data is not None else None
        rep = export_checkpoint(model, int8=int8, opset=opset, tolerance_fp32=tol_fp32, tolerance_int8=tol_int8,
                                int8_options=options, optimize=optimize, frequency_texts=texts)
    except ParityError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1)
    console.print(f"wrote {rep.onnx_path} ({rep.size_mb['model.onnx']:.1f} MB)")
    console.print(f"parity fp32: max |dprob| = {rep.max_abs_dprob_fp32:.2e} (tolerance {rep.tolerance_fp32:.0e}) "
                  f"over {rep.n_parity_inputs} inputs")
    if rep.int8_path:
        console.print(f"wrote {rep.int8_path} ({rep.size_mb['model.int8.onnx']:.1f} MB)")
        if rep.int8_excluded_nodes:
            console.print(f"int8: kept {rep.int8_excluded_nodes} MatMuls in fp32 (--int8-exclude)")
        hot = (rep.int8_options or {}).get("embedding_hot_rows")
        if hot:
            console.print(f"int8: the {hot} most frequent word-embedding rows 8-bit, the rest 4-bit (token counts: "
                          f"{rep.hot_rows_source})")
        for note in rep.notes:
            console.print(f"[yellow]note: {note}[/yellow]")
        console.print(f"parity int8: max |dprob| = {rep.max_abs_dprob_int8:.4f} (tolerance {rep.tolerance_int8})")
    console.print("[green]parity check passed[/green]")


def predict(
    model: Path = typer.Option(..., "--model", help="Student checkpoint directory."),
    input: Path = typer.Option(..., "--input", help="CSV, TSV, JSONL or Parquet with task_id, text, response_id "
                               "(--engine ray: also a folder or a quoted glob of them)."),
    output: Path = typer.Option(..., "--output", help="CSV, TSV, JSONL or Parquet (format from the extension); "
                                "--engine ray: a folder of part files."),
    backend: Optional[str] = typer.Option(None, help=f"auto (ONNX when exported) | torch | onnx (default: "
                                          f"{_scorer_default('backend')}; --engine ray: {_RAY.backend})."),
    int8: Optional[bool] = typer.Option(None, "--int8/--fp32", help="Use the int8 model (ONNX int8 file, or torch "
                                        f"dynamic int8); default: {'int8' if _scorer_default('quantize') else 'fp32'}"
                                        f", --engine ray: {'int8' if _RAY.quantize else 'fp32'}."),
    chunk_size: int = typer.Option(_PREDICT.chunk_size, help="Rows read, scored and committed together."),
    batch_size: int = typer.Option(_PREDICT.batch_size, help="Rows per forward pass."),
    review_confidence: float = typer.Option(_PREDICT.review_confidence, help="needs_review = confidence below this."),
    task: Optional[str] = typer.Option(_PREDICT.task, help="Score every row for this task (no task column needed)."),
    task_column: str = typer.Option(_PREDICT.task_column),
    text_column: str = typer.Option(_PREDICT.text_column),
    id_column: str = typer.Option(_PREDICT.id_column),
    input_format: Optional[str] = typer.Option(None, help="csv | tsv | jsonl | parquet (default: from the extension)."),
    output_format: Optional[str] = typer.Option(None, help="csv | tsv | jsonl | parquet (default: from the extension)."),
    overwrite: bool = typer.Option(_PREDICT.overwrite, help="Start again instead of resuming a partial output."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the model (default: all cores)."),
    progress: bool = typer.Option(_PREDICT.progress, "--progress/--no-progress"),
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="Task files (folder or file) a task-text checkpoint "
                                         "also scores, zero-shot or few-shot (a UniMoE checkpoint ignores it)."),
    engine: str = typer.Option(ENGINES[0], help="local (this process) | ray (Ray Data + an actor pool; "
                               "docs/scale-out.md)."),
    address: Optional[str] = typer.Option(_RAY.address, help="--engine ray: the cluster (auto | host:port | "
                                          "ray://host:10001); default $RAY_ADDRESS or a new local Ray."),
    workers: int = typer.Option(_RAY.workers, help="--engine ray: scoring actors (one Scorer each)."),
    threads_per_actor: int = typer.Option(_RAY.threads_per_actor, help="--engine ray: model threads per actor "
                                          "(Ray reserves as many CPUs for it)."),
) -> None:
    """Batch-score a file: streamed, resumable, problem rows reported with their line numbers."""
    from rich.console import Console

    from rubricate.batch import predict_file
    from rubricate.student.scorer import Scorer

    console = Console(stderr=True)
    opts = PredictOptions(chunk_size=chunk_size, batch_size=batch_size, review_confidence=review_confidence,
                          task_column=task_column, text_column=text_column, id_column=id_column, task=task,
                          input_format=input_format, output_format=output_format, overwrite=overwrite,
                          progress=progress)
    if engine not in ENGINES:
        raise typer.BadParameter(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray":
        from rubricate.batch.ray_engine import predict_on_ray

        ray_opt = RayPredictOptions(address=address, workers=workers, threads_per_actor=threads_per_actor,
                                    backend=backend or _RAY.backend, quantize=_RAY.quantize if int8 is None else int8,
                                    tasks=str(tasks) if tasks else None)
        s = predict_on_ray(model, input, output, opts, ray_opt)
        label = f"ray, {workers} actor(s), backend {ray_opt.backend}{' int8' if ray_opt.quantize else ''}"
        if s.skipped_blocks:
            console.print(f"resumed: {s.skipped_blocks} of {s.blocks} blocks were already committed")
        for a in s.actors:
            console.print(f"  actor pid {a['pid']} on {a['node']}: {a['rows']} rows, start-up {a['startup_s']:.1f} s, "
                          f"peak RSS {a['rss_mb']:.0f} MB")
    else:
        int8 = _scorer_default("quantize") if int8 is None else int8
        scorer = Scorer.from_pretrained(model, backend=backend or _scorer_default("backend"),  # type: ignore[arg-type]
                                        quantize=int8, num_threads=threads, tasks=tasks)
        s = predict_file(scorer, input, output, opts)
        label = f"backend {scorer.backend}{' int8' if int8 else ''}"
    if s.resumed_from_rows:
        console.print(f"resumed after {s.resumed_from_rows} input rows")
    console.print(f"{label}: scored {s.scored} responses -> {output} ({s.responses_per_s:.1f} responses/s this run)")
    if s.problems:
        console.print(f"[yellow]{s.problems} row(s) with problems were not scored; see {s.errors}[/yellow]")
        for p in s.problem_examples:
            console.print(f"  line {p['line']}: {p['field']}: {p['error']}")


def serve(
    model: Optional[Path] = typer.Option(None, "--model", help="Student checkpoint to serve."),
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="Task files (default: those in the checkpoint)."),
    db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
    host: Optional[str] = typer.Option(None, help="Bind address; anything but loopback needs API tokens."),
    port: Optional[int] = typer.Option(None, help=f"Port (default {SERVE_DEFAULTS.port})."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML/JSON server settings (see ServeSettings)."),
    backend: Optional[str] = typer.Option(None, help="Student backend: auto | torch | onnx."),
    int8: Optional[bool] = typer.Option(None, "--int8/--fp32", help="Serve the int8 model."),
    agents_backend: Optional[str] = typer.Option(None, help="LLM path: local[:smollm2|gemma3|file.gguf] or "
                                                           "openai:MODEL@BASE_URL."),
    review_confidence: Optional[float] = typer.Option(None, help="Review queue threshold on confidence (default "
                                                                 f"{SERVE_DEFAULTS.review_confidence})."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the model."),
    max_wait_ms: Optional[float] = typer.Option(None, help="Dynamic batching window for /v1/score in ms (default "
                                                f"{SERVE_DEFAULTS.max_wait_ms}; 0 = off)."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Run the API server and web page (OpenAPI docs at /docs). Tokens: RUBRICATE_API_TOKENS or config.

    A database that cannot be used (missing directory, read-only file) is one error line, not a traceback.
    """
    import uvicorn

    from rubricate.serve.app import create_app, load_scorer
    from rubricate.serve.db import safe_url
    from rubricate.serve.settings import load_settings

    settings = load_settings(config, model_dir=model, tasks_dir=tasks, database_url=db, host=host, port=port,
                             backend=backend, quantize=int8, agents_backend=agents_backend,
                             review_confidence=review_confidence, threads=threads,
                             max_wait_ms=max_wait_ms)
    settings.check_binding()
    scorer = load_scorer(settings)  # threads go to ONNX Runtime or torch; the ONNX path never imports torch
    app = create_app(settings, scorer=scorer)
    mode = "bearer tokens" if settings.tokens else "local-only (no tokens; bound to loopback)"
    typer.echo(f"rubricate serving on http://{settings.host}:{settings.port} ({mode}); database "
               f"{safe_url(settings.database_url)}", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)


@db_app.command("upgrade")
def db_upgrade(db: Optional[str] = typer.Option(None, "--db", help=DB_HELP),
               revision: str = typer.Option("head", help="Target revision.")) -> None:
    """Apply the database migrations (the server also does this at start-up)."""
    from rubricate.serve.db import upgrade

    typer.echo(f"database at revision {upgrade(_db_url(db), revision)}")


@db_app.command("current")
def db_current(db: Optional[str] = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Print the database's revision and the latest one shipped (never creates a database)."""
    from rubricate.serve.db import current_revision, head_revision

    typer.echo(f"current: {current_revision(_db_url(db))}  latest: {head_revision()}")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("export")(export)
    app.command("predict")(predict)
    app.command("serve")(serve)
    app.add_typer(db_app, name="db")
