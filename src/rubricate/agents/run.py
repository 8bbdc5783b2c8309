"""``rubricate agents score`` as one library call: read responses, build the backend and the config, score, sum up.

Why a module of its own: the CLI verb stays a list of options, and a notebook or a job runner gets the same
behaviour (task checks before the model loads, price table, cache, resume) from one function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rubricate.agents.pipeline import PipelineConfig


@dataclass
class BackendOptions:
    """How to reach the model: ``make_backend``'s arguments plus the options of one backend kind."""

    kind: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    openai: dict[str, Any] = field(default_factory=dict)  # structured, timeout_s, max_retries
    local: dict[str, Any] = field(default_factory=dict)  # n_ctx, logprobs


def score_file(input: Path, output: Path, tasks_dir: Path, backend: BackendOptions, config: PipelineConfig, *,
               task: str | None = None, limit: int | None = None, prices_file: Path | None = None,
               price_in: float | None = None, price_out: float | None = None, cache_dir: Path | None = None,
               use_cache: bool = True, resume: bool = True, concurrency: int = 1,
               warn: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the responses of ``input`` into ``output`` (JSONL, resumable); returns the run summary."""
    from dataclasses import replace

    from rubricate.agents.backends import make_backend
    from rubricate.agents.cache import RequestCache, default_cache_dir
    from rubricate.agents.io import read_price_table, read_responses
    from rubricate.agents.pipeline import score_responses, summarize
    from rubricate.tasks import TaskRegistry

    registry = TaskRegistry.from_dir(tasks_dir)
    if task is not None:
        registry.get(task)
    records = read_responses(input, task_id=task)
    for r in records:
        registry.get(r.task_id)  # an unknown task fails before the model loads
    if limit is not None:
        records = records[:limit]
    prices = read_price_table(prices_file) if prices_file is not None else {}  # bad file: fail before model load
    kw = backend.openai if backend.kind == "openai" else backend.local if backend.kind == "local" else {}
    extra = {"api_key_env": backend.api_key_env} if backend.api_key_env is not None else {}
    llm = make_backend(backend.kind, model=backend.model, base_url=backend.base_url, **extra, **kw)  # type: ignore[arg-type]
    if price_in is not None:
        prices[llm.model] = (price_in, price_out or 0.0)
    if prices_file is not None and llm.model not in prices:
        warn(f"note: {prices_file} has no price for model '{llm.model}'; cost is not computed")
    cache = RequestCache(cache_dir or default_cache_dir(), enabled=use_cache)
    results = score_responses(registry, records, llm, replace(config, prices=prices or None), cache=cache,
                              output=output, resume=resume, concurrency=concurrency, progress=True)
    s = summarize(results)
    s.update(cache_hits=cache.hits, output=str(output), backend=llm.name, model=llm.model)
    return s
