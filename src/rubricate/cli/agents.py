"""Agents verbs: ``rubricate agents score | components-reliability | teach``.

Option defaults are read from ``PipelineConfig``, the backends' and the library functions' signatures, never
retyped. Heavy imports (openai, llama_cpp) stay inside the backends, so ``rubricate --help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from rubricate.agents.backends import LlamaCppBackend, OpenAIBackend, make_backend
from rubricate.agents.pipeline import PipelineConfig as P
from rubricate.agents.ray_pool import RayAgentOptions
from rubricate.agents.run import score_file
from rubricate.agents.teacher import teacher_file_from_results
from rubricate.cli import TASKS_DIR, default_of

#: responses in flight for ``agents score`` (the library's default is 1; a server usually takes several)
CLI_CONCURRENCY = 4
_RAY = RayAgentOptions()  #: ``agents score --engine ray`` defaults

agents_app = typer.Typer(help="Rubric-aligned multi-agent LLM scoring (AutoSCORE): score, check, distil.",
                         no_args_is_help=True)


@agents_app.command("score")
def score(
    input: Path = typer.Option(..., "--input", "-i", help="Responses: .csv/.tsv (response_id, text[, task_id]) or records .jsonl."),
    output: Path = typer.Option(..., "--output", "-o", help="Results JSONL (appended; a rerun resumes)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task id (needed when the input has no task_id column)."),
    tasks_dir: Path = typer.Option(TASKS_DIR, "--tasks", help="Folder (or file) of task files."),
    backend: str = typer.Option(default_of(make_backend, "kind"), "--backend", "-b", help="local (in-process GGUF) | openai (any OpenAI-compatible server)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="local: smollm2 | gemma3 | path.gguf; openai: model name."),
    base_url: Optional[List[str]] = typer.Option(None, "--base-url", help="OpenAI-compatible base URL, e.g. "
                                                 "http://127.0.0.1:8000/v1; --engine ray: repeat it for several "
                                                 "endpoints (actor i uses the i-th, round robin)."),
    api_key_env: str = typer.Option(default_of(make_backend, "api_key_env"), "--api-key-env", help="Environment variable holding the API key."),
    structured: str = typer.Option(default_of(OpenAIBackend, "structured"), "--structured", help="openai: json_schema | json_object_schema | json_object | guided_json | none."),
    mode: str = typer.Option(P.mode, "--mode", help="multi (extract -> score) | single (one-call baseline)."),
    scoring: str = typer.Option(P.scoring, "--scoring", help="multi mode: llm (scoring agent) | rules (the task's scoring rules)."),
    verify: bool = typer.Option(P.verify, "--verify", help="Run the verifier agent on each extraction."),
    feedback: bool = typer.Option(P.feedback, "--feedback", help="Write <= --feedback-words words of feedback per response."),
    feedback_words: int = typer.Option(P.feedback_words, "--feedback-words"),
    samples: int = typer.Option(P.samples, "--samples", help="Self-consistency: scoring samples per response (majority vote)."),
    sample_temperature: float = typer.Option(P.sample_temperature, "--sample-temperature"),
    temperature: float = typer.Option(P.temperature, "--temperature"),
    logprobs: bool = typer.Option(P.logprobs, "--logprobs", help="Keep token log-probabilities of the score (teacher bridge)."),
    max_attempts: int = typer.Option(P.max_attempts, "--max-attempts", help="Parse/validate attempts per agent call."),
    rationale_chars: int = typer.Option(P.rationale_chars, "--rationale-chars", help="Cap of the scoring rationale; 0 = none."),
    evidence: Optional[str] = typer.Option(None, "--evidence", help="free (the model writes quotes; grounding is checked) | "
                                           "spans (quotes restricted to the response's sentences). Default: "
                                           f"{P.local_evidence} for --backend local, {P.evidence} otherwise."),
    concurrency: int = typer.Option(CLI_CONCURRENCY, "--concurrency", "-j", help="Responses in flight (the local backend runs 1); "
                                    "--engine ray: per actor."),
    engine: str = typer.Option(default_of(score_file, "engine"), "--engine", help="local (threads in this process) | "
                               "ray (Ray actors, each with its own backend; docs/scale-out.md)."),
    address: Optional[str] = typer.Option(_RAY.address, "--address", help="--engine ray: the cluster (auto | "
                                          "host:port | ray://host:10001); default $RAY_ADDRESS or a new local Ray."),
    workers: int = typer.Option(_RAY.workers, "--workers", help="--engine ray: actors (one backend each)."),
    threads_per_actor: int = typer.Option(_RAY.threads_per_actor, "--threads-per-actor", help="--engine ray, local "
                                          "backend: llama.cpp threads per actor (Ray reserves as many CPUs)."),
    timeout: float = typer.Option(default_of(OpenAIBackend, "timeout_s"), "--timeout", help="openai: seconds per request (local calls are bounded "
                                  "by their token caps)."),
    max_retries: int = typer.Option(default_of(OpenAIBackend, "max_retries"), "--max-retries", help="openai: retries on 429/5xx/timeouts."),
    n_ctx: int = typer.Option(default_of(LlamaCppBackend, "n_ctx"), "--n-ctx", help="local: context window."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Switch the on-disk request cache off."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Default: $RUBRICATE_CACHE/llm or ~/.cache/rubricate/llm."),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start the output file afresh instead of resuming."),
    price_in: Optional[float] = typer.Option(None, "--price-in", help="USD per 1M input tokens (enables cost)."),
    price_out: Optional[float] = typer.Option(None, "--price-out", help="USD per 1M output tokens."),
    prices_file: Optional[Path] = typer.Option(None, "--prices", help="Price table (YAML/JSON): model -> {input, "
                                               "output} in USD per 1M tokens; --price-in/--price-out override it."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N responses."),
) -> None:
    """Score responses with the agents; every row keeps score, status, evidence, raw outputs, tokens, latency."""
    from rubricate.agents.run import BackendOptions

    urls = base_url or []
    if len(urls) > 1 and engine != "ray":
        raise typer.BadParameter("several --base-url need --engine ray")
    config = P(mode=mode, scoring=scoring, verify=verify, feedback=feedback,  # type: ignore[arg-type]
               feedback_words=feedback_words, samples=samples, sample_temperature=sample_temperature,
               temperature=temperature, logprobs=logprobs, max_attempts=max_attempts,
               rationale_chars=rationale_chars,  # type: ignore[arg-type]
               evidence=evidence or (P.local_evidence if backend == "local" else P.evidence))
    options = BackendOptions(backend, model, urls[0] if urls else None, api_key_env,
                             openai=dict(structured=structured, timeout_s=timeout, max_retries=max_retries),
                             local=dict(n_ctx=n_ctx, logprobs=logprobs))
    summary = score_file(input, output, tasks_dir, options, config, task=task, limit=limit, prices_file=prices_file,
                         price_in=price_in, price_out=price_out, cache_dir=cache_dir, use_cache=not no_cache,
                         resume=not no_resume, concurrency=concurrency, engine=engine,
                         ray=RayAgentOptions(address=address, workers=workers, threads_per_actor=threads_per_actor,
                                             in_flight_per_actor=concurrency, endpoints=urls),
                         warn=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(summary, indent=1))


@agents_app.command("components-reliability")
def components_reliability(
    pred: Path = typer.Option(..., "--pred", help="Results JSONL from 'agents score'."),
    gold: Path = typer.Option(..., "--gold", help="Human-annotated components CSV (response_id + one column per component)."),
    task: str = typer.Option(..., "--task", "-t"),
    tasks_dir: Path = typer.Option(TASKS_DIR, "--tasks"),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the report as JSON."),
) -> None:
    """Agreement of extracted components with human annotation: accuracy, kappa, MAE, RMSE, Pearson, exact match."""
    from rich.console import Console
    from rich.table import Table

    from rubricate.agents.reliability import component_reliability
    from rubricate.tasks import TaskRegistry

    rep = component_reliability(pred, gold, TaskRegistry.from_dir(tasks_dir).get(task))
    table = Table(title=f"Component reliability - {task} (n gold {rep['n_gold']}, compared {rep['n_compared']})")
    for col in ("component", "type", "n", "accuracy", "kappa", "MAE", "RMSE", "Pearson", "exact"):
        table.add_column(col)

    def f(x: object) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    for cid, m in rep["components"].items():
        table.add_row(cid, m["type"], str(m["n"]), f(m.get("accuracy")), f(m.get("kappa")), f(m.get("mae")),
                      f(m.get("rmse")), f(m.get("pearson")), f(m.get("exact_match")))
    Console().print(table)
    typer.echo(f"all components match: {rep['exact_match_all_components']:.3f}; "
               f"missing or failed predictions: {len(rep['missing'])}")
    if out is not None:
        from rubricate.metrics import json_safe

        out.write_text(json.dumps(json_safe(rep), indent=1), encoding="utf-8")


@agents_app.command("teach")
def teach(
    results: Path = typer.Option(..., "--results", help="Results JSONL from 'agents score'."),
    out: Path = typer.Option(..., "--out", help="Teacher-outputs JSONL to write."),
    tasks_dir: Path = typer.Option(TASKS_DIR, "--tasks"),
    allow_hard: bool = typer.Option(default_of(teacher_file_from_results, "allow_hard"), "--allow-hard", help="Use one-hot labels when a result has no distribution."),
    source: Optional[str] = typer.Option(None, "--source", help="Source name stored in each row."),
) -> None:
    """Turn agent results into a teacher-outputs file (soft labels) for distilling into the student."""
    from rubricate.tasks import TaskRegistry

    summary = teacher_file_from_results(results, TaskRegistry.from_dir(tasks_dir), out, allow_hard=allow_hard,
                                        source=source)
    typer.echo(json.dumps(summary, indent=1))


def register(app: typer.Typer) -> None:
    """Add ``rubricate agents ...`` to the root app (``rubricate teach agents`` is the lead's alias of ``agents teach``)."""
    app.add_typer(agents_app, name="agents")
