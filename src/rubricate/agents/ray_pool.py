"""Agents on a Ray cluster (``rubricate agents score --engine ray``): responses fanned out to Ray actors.

Why actors: an LLM scorer takes seconds per response, so a night's batch needs many backends at once. Each
actor holds its own backend - an in-process GGUF model (one llama.cpp model per actor, ``threads_per_actor``
threads) or a client of one of several OpenAI-compatible endpoints (actor ``i`` talks to
``endpoints[i % len(endpoints)]``, e.g. one vLLM replica each) - and scores one response per call with the
same :class:`~rubricate.agents.pipeline.AgentPipeline` as the local path.

The local path's rules hold because the **driver** keeps them: it alone writes the results file (fsynced per
row), skips every key already scored ``ok`` there (a rerun scores nothing twice) and retries the failed ones;
a response whose actor died for good becomes a failed result (a failure is never a score). The request cache
is shared by the actors: :class:`~rubricate.agents.cache.RequestCache` writes one file per entry by atomic
rename, which is safe for concurrent writers (on a cluster: a shared filesystem where rename is atomic, such
as NFS). Token counts and costs travel inside each result, as locally.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rubricate.agents.backends import BackendError
from rubricate.agents.pipeline import AgentPipeline, AgentResult, PipelineConfig
from rubricate.agents.run import BackendOptions
from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.tasks import TaskRegistry


@dataclass
class RayAgentOptions:
    """How ``agents score --engine ray`` uses the cluster (the CLI reads its defaults from here)."""

    address: str | None = None  #: "auto", "host:6379", "ray://host:10001"; None: $RAY_ADDRESS or a local Ray
    workers: int = 2  #: actors, each with its own backend
    threads_per_actor: int = 1  #: local GGUF: llama.cpp threads of each actor's model
    cpus_per_actor: float | None = None  #: CPUs Ray reserves per actor; None = threads_per_actor
    in_flight_per_actor: int = 1  #: responses an actor scores at once (capped by its backend's max_concurrency)
    endpoints: list[str] = field(default_factory=list)  #: OpenAI-compatible base URLs (empty: --base-url)
    max_restarts: int = 3  #: times Ray restarts an actor that died (killed, out of memory)
    task_retries: int = 1  #: times a response in flight on a dead actor is sent again before it is a failure


class AgentWorker:
    """The actor: one backend, the shared request cache, one pipeline per task (made on first use)."""

    def __init__(self, registry: TaskRegistry, backend: BackendOptions, base_url: str | None, cache_dir: str,
                 use_cache: bool, threads: int) -> None:
        from rubricate.agents.cache import RequestCache

        self.llm = backend.build(base_url, n_threads=threads)
        self.cache = RequestCache(cache_dir, enabled=use_cache)
        self.registry = registry
        self.config = PipelineConfig()
        self.pipelines: dict[str, AgentPipeline] = {}
        self.lock = threading.Lock()
        self.base_url = base_url

    def describe(self) -> dict[str, Any]:
        return {"name": self.llm.name, "model": self.llm.model, "pid": os.getpid(), "base_url": self.base_url,
                "max_concurrency": int(getattr(self.llm, "max_concurrency", 1))}

    def configure(self, config: PipelineConfig) -> None:
        with self.lock:
            self.config, self.pipelines = config, {}

    def score(self, record: Record) -> dict[str, Any]:
        with self.lock:
            if record.task_id not in self.pipelines:
                self.pipelines[record.task_id] = AgentPipeline(self.registry.get(record.task_id), self.llm,
                                                               self.config, self.cache)
            pipe = self.pipelines[record.task_id]
        return pipe.score(record).model_dump(mode="json")


class AgentPool:
    """``workers`` :class:`AgentWorker` actors and the driver loop that keeps the results file."""

    def __init__(self, registry: TaskRegistry, backend: BackendOptions, options: RayAgentOptions, *,
                 cache_dir: Path, use_cache: bool = True) -> None:
        import ray

        from rubricate.batch.ray_engine import connect

        if options.workers < 1 or options.in_flight_per_actor < 1 or options.threads_per_actor < 1:
            raise InputError("workers, in_flight_per_actor and threads_per_actor must be >= 1")
        connect(options.address)
        urls = options.endpoints or [backend.base_url]
        remote = ray.remote(AgentWorker).options(  # type: ignore[attr-defined]
            num_cpus=options.cpus_per_actor or options.threads_per_actor, max_concurrency=options.in_flight_per_actor,
            max_restarts=options.max_restarts, max_task_retries=options.task_retries)
        self.actors = [remote.remote(registry, backend, urls[i % len(urls)], str(cache_dir), use_cache,
                                     options.threads_per_actor) for i in range(options.workers)]
        try:
            info = ray.get([a.describe.remote() for a in self.actors])  # a backend that cannot start fails here
        except ray.exceptions.RayError as e:
            self.close()
            raise BackendError(f"the Ray actors could not start their backend: {e}") from None
        models = {(d["name"], d["model"]) for d in info}
        if len(models) > 1:
            raise InputError(f"the endpoints serve different models {sorted(models)}; one run is one scorer")
        (self.name, self.model), = models
        self.slots = min([options.in_flight_per_actor] + [d["max_concurrency"] for d in info])
        self.cache_hits = 0

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)

    def __enter__(self) -> "AgentPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def score(self, records: Sequence[Record], config: PipelineConfig, *, output: Path | None = None,
              resume: bool = True, progress: bool = False) -> list[AgentResult]:
        """Score ``records`` on the actors; results in input order (resume and accounting: module docs)."""
        import ray

        from rubricate.agents.pipeline import open_results, unique_keys

        keys = unique_keys(records)
        ray.get([a.configure.remote(config) for a in self.actors])
        out, results = open_results(output, resume, self.name, self.model, config)
        todo = deque(r for r in records if r.key not in results)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(records), initial=len(records) - len(todo), unit="resp", desc="scoring (ray)",
                       dynamic_ncols=True)
        try:
            for res in self._run(todo, config):
                if out is not None:
                    out.append(res.model_dump(mode="json"))
                results[(res.task_id, res.response_id)] = res
                self.cache_hits += res.tokens.get("cached_calls", 0)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if out is not None:
                out.close()
        return [results[k] for k in keys]

    def _run(self, todo: deque[Record], config: PipelineConfig) -> Any:
        """Keep ``slots`` responses in flight on every actor; yield each result as it arrives."""
        import ray

        pending: dict[Any, tuple[int, Record]] = {}

        def submit(i: int) -> None:
            rec = todo.popleft()
            pending[self.actors[i].score.remote(rec)] = (i, rec)

        for i in range(len(self.actors)):
            for _ in range(self.slots):
                if todo:
                    submit(i)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            i, rec = pending.pop(ref)
            try:
                res = AgentResult.model_validate(ray.get(ref))
            except ray.exceptions.RayError as e:  # the actor died for good: this response failed, never a score
                res = AgentResult(task_id=rec.task_id, response_id=rec.response_id, status="failed",
                                  error=f"ray worker failed: {type(e).__name__}: {str(e)[:500]}", mode=config.mode,
                                  scoring=config.scoring, backend=self.name, model=self.model)
            if todo:
                submit(i)
            yield res

