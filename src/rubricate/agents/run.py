"""``rubricate agents score`` as one library call: read responses, build the backend and the config, score, sum up.

Why a module of its own: the CLI verb stays a list of options, and a notebook or a job runner gets the same
behaviour (task checks before the model loads, price table, cache, resume) from one function. ``engine="ray"``
scores on Ray actors instead of threads (:mod:`rubricate.agents.ray_pool`), under the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rubricate.agents.pipeline import PipelineConfig

if TYPE_CHECKING:
    from rubricate.agents.ray_pool import RayAgentOptions


@dataclass
class BackendOptions:
    """How to reach the model: ``make_backend``'s arguments plus the options of one backend kind."""

    kind: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    openai: dict[str, Any] = field(default_factory=dict)  # structured, timeout_s, max_retries
    local: dict[str, Any] = field(default_factory=dict)  # n_ctx, logprobs

    def build(self, base_url: str | None = None, n_threads: int | None = None) -> Any:
        """The backend these options describe; ``base_url`` picks one endpoint of several, ``n_threads`` sets
        llama.cpp's threads (a Ray actor's share of a node)."""
        from rubricate.agents.backends import make_backend

        kw = dict(self.openai) if self.kind == "openai" else dict(self.local) if self.kind == "local" else {}
        if n_threads is not None and self.kind == "local":
            kw["n_threads"] = n_threads
        extra = {"api_key_env": self.api_key_env} if self.api_key_env is not None else {}
        return make_backend(self.kind, model=self.model, base_url=base_url or self.base_url,  # type: ignore[arg-type]
                            **extra, **kw)


def score_file(input: Path, output: Path, tasks_dir: Path, backend: BackendOptions, config: PipelineConfig, *,
               task: str | None = None, limit: int | None = None, prices_file: Path | None = None,
               price_in: float | None = None, price_out: float | None = None, cache_dir: Path | None = None,
               use_cache: bool = True, resume: bool = True, concurrency: int = 1, engine: str = "local",
               ray: "RayAgentOptions | None" = None, warn: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the responses of ``input`` into ``output`` (JSONL, resumable); returns the run summary.

    ``engine``: ``"local"`` (threads, ``concurrency`` responses in flight) or ``"ray"`` (``ray`` options:
    actors, each with its own backend; ``concurrency`` is then ignored for ``ray.in_flight_per_actor``)."""
    from dataclasses import replace

    from rubricate.agents.cache import RequestCache, default_cache_dir
    from rubricate.agents.io import read_price_table, read_responses
    from rubricate.agents.pipeline import score_responses, summarize
    from rubricate.tasks import TaskRegistry

    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    registry = TaskRegistry.from_dir(tasks_dir)
    if task is not None:
        registry.get(task)
    records = read_responses(input, task_id=task)
    for r in records:
        registry.get(r.task_id)  # an unknown task fails before the model loads
    if limit is not None:
        records = records[:limit]
    prices = read_price_table(prices_file) if prices_file is not None else {}  # bad file: fail before model load
    cache_root = cache_dir or default_cache_dir()
    if engine == "ray":
        from rubricate.agents.ray_pool import AgentPool, RayAgentOptions

        pool = AgentPool(registry, backend, ray or RayAgentOptions(), cache_dir=cache_root, use_cache=use_cache)
        name, model = pool.name, pool.model
    else:
        llm = backend.build()
        name, model = llm.name, llm.model
    if price_in is not None:
        prices[model] = (price_in, price_out or 0.0)
    if prices_file is not None and model not in prices:
        warn(f"note: {prices_file} has no price for model '{model}'; cost is not computed")
    cfg = replace(config, prices=prices or None)
    if engine == "ray":
        with pool:
            results = pool.score(records, cfg, output=output, resume=resume, progress=True)
        hits = pool.cache_hits
    else:
        cache = RequestCache(cache_root, enabled=use_cache)
        results = score_responses(registry, records, llm, cfg, cache=cache, output=output, resume=resume,
                                  concurrency=concurrency, progress=True)
        hits = cache.hits
    s = summarize(results)
    s.update(cache_hits=hits, output=str(output), backend=name, model=model, engine=engine)
    return s
