"""Background jobs (agents scoring, CSV batches): a thread pool over jobs stored in the database.

A job's items live in its row, so a server killed mid-job resumes it at the next start
(:meth:`JobRunner.resume`); a job that fails is recorded as failed with the reason, never lost.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rubricate.serve.service import ScoringService
from rubricate.serve.validation import Item

log = logging.getLogger("rubricate.serve")


class JobRunner:
    """Runs jobs on ``settings.job_workers`` threads; ``submit`` returns the job's future."""

    def __init__(self, service: ScoringService) -> None:
        self.service = service
        self.pool = ThreadPoolExecutor(max_workers=service.settings.job_workers, thread_name_prefix="rubricate-job")
        self.futures: dict[str, Future] = {}

    def create(self, kind: str, items: list[Item], keys: list[tuple[str, str]], **params: Any) -> str:
        """Store a job (its items and parameters) and start it; returns its id."""
        stored = {"items": [{"task_id": k[0], "response_id": k[1], "text": it.text} for it, k in zip(items, keys)],
                  **params}
        job_id = self.service.create_job(kind, len(items), stored)
        self.submit(job_id, kind, stored)
        return job_id

    def submit(self, job_id: str, kind: str, params: dict[str, Any]) -> Future:
        fut = self.pool.submit(self._run, job_id, kind, params)
        self.futures[job_id] = fut
        fut.add_done_callback(lambda _f: self.futures.pop(job_id, None))
        return fut

    def resume(self) -> None:
        """Restart what a crash interrupted (an agents job without an agents backend fails, saying why)."""
        for job_id, kind, params in self.service.unfinished_jobs():
            if kind == "agents" and not self.service.agents_enabled():
                self.service.update_job(job_id, status="failed", error="server restarted without an agents backend")
                continue
            self.submit(job_id, kind, params)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job_id: str, kind: str, params: dict[str, Any]) -> None:
        svc = self.service
        items = [Item(d["task_id"], d["text"], d["response_id"]) for d in params["items"]]
        keys = [(d["task_id"], d["response_id"]) for d in params["items"]]
        try:
            svc.update_job(job_id, status="running")
            if kind == "agents":
                svc.run_agents(job_id, items, keys, params["mode"], params["with_student"],
                               progress=lambda n, total: svc.update_job(job_id, done=n))
                results = svc.agent_results_for_job(job_id)
                svc.update_job(job_id, status="done", done=len(items),
                               failed=sum(r["status"] != "ok" for r in results))
            else:
                step = svc.settings.score_batch_size
                for i in range(0, len(items), step):
                    svc.score(items[i:i + step])
                    svc.update_job(job_id, done=min(i + step, len(items)))
                svc.update_job(job_id, status="done", done=len(items))
        except Exception as e:  # a failed job is recorded, never silently lost
            log.exception("job %s failed", job_id)
            try:
                svc.update_job(job_id, status="failed", error=f"{type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001 - the database itself is gone: the next start resumes the job
                log.exception("job %s: could not record the failure", job_id)
