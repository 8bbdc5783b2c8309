"""The FastAPI application: JSON API under /v1, a small server-rendered web page, OpenAPI docs at /docs.

``create_app(settings)`` builds everything from :class:`~rubricate.serve.settings.ServeSettings`; tests
pass their own ``scorer``/``agent_runner``. The routes live in :mod:`rubricate.serve.routes` (one router per
area), the behaviour in :mod:`rubricate.serve.service` and :mod:`rubricate.serve.reviews`, the HTTP
plumbing (auth, limits, the error contract) in :mod:`rubricate.serve.http`.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from rubricate import __version__
from rubricate.errors import InputError
from rubricate.serve import db
from rubricate.serve.http import BodyLimitMiddleware, SafeJSONResponse, ServerContext, install_error_handlers
from rubricate.serve.jobs import JobRunner
from rubricate.serve.reviews import ReviewService
from rubricate.serve.routes import batch, meta, pages, reviews, scoring
from rubricate.serve.service import AgentRunner, ScorerLike, ScoringService
from rubricate.serve.settings import ServeSettings
from rubricate.tasks import TaskRegistry

HERE = Path(__file__).parent


def load_scorer(settings: ServeSettings) -> ScorerLike | None:
    if settings.model_dir is None:
        return None
    from rubricate.student.scorer import Scorer

    # tasks: a task-text student also scores the task files given to the server (new items: zero-shot)
    return Scorer.from_pretrained(settings.model_dir, backend=settings.backend, quantize=settings.quantize,
                                  num_threads=settings.threads, tasks=settings.tasks_dir)


def make_agent_runner(spec: str) -> AgentRunner:
    """``local``, ``local:smollm2``, ``local:/path/model.gguf`` or ``openai:MODEL@BASE_URL`` -> a runner."""
    from rubricate.agents.backends import make_backend
    from rubricate.agents.pipeline import PipelineConfig, score_responses

    kind, _, rest = spec.partition(":")
    if kind == "openai":
        model, _, base = rest.partition("@")
        backend = make_backend("openai", model=model or None, base_url=base or None)
    elif kind == "local":
        backend = make_backend("local", model=rest or None)
    else:
        raise InputError(f"unknown agents backend spec {spec!r} (use 'local[:model]' or 'openai:MODEL@URL')",
                         column="agents_backend")
    lock = threading.Lock()  # one in-process LLM: calls are serialized

    def run(task: Any, records: list, mode: str) -> list:
        with lock:
            return score_responses(task, records, backend, PipelineConfig(mode=mode))  # type: ignore[arg-type]

    return run


def open_database(settings: ServeSettings) -> db.Database:
    """Migrate (unless disabled) and open the database; a database that cannot be used is one clear error."""
    if settings.migrate:
        db.upgrade(settings.database_url)
    return db.Database(settings.database_url)


def create_app(settings: ServeSettings | None = None, *, scorer: ScorerLike | None = None,
               agent_runner: AgentRunner | None = None, tasks: TaskRegistry | None = None) -> FastAPI:
    """Build the app: migrate the database, load the student (unless given), mount the routers."""
    settings = settings or ServeSettings()
    if scorer is None:
        scorer = load_scorer(settings)
    if tasks is None and settings.tasks_dir is not None:
        tasks = TaskRegistry.from_dir(settings.tasks_dir)
    if agent_runner is None and settings.agents_backend:
        agent_runner = make_agent_runner(settings.agents_backend)
    database = open_database(settings)
    service = ScoringService(settings, database, scorer, tasks, agent_runner)
    jobs = JobRunner(service)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        jobs.resume()  # what a crash interrupted
        yield
        jobs.shutdown()
        database.dispose()

    app = FastAPI(title="rubricate", version=__version__, lifespan=lifespan, default_response_class=SafeJSONResponse,
                  description="Score students' written answers against rubrics: the multi-task student, the "
                              "LLM agents, a human review queue.")
    app.state.ctx = ServerContext(settings, service, ReviewService(database, service.tasks), jobs,
                                  Jinja2Templates(directory=str(HERE / "templates")))
    app.state.settings = settings
    app.state.service = service
    app.state.engine = database.engine
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    install_error_handlers(app, settings)
    for module in (meta, scoring, batch, reviews, pages):
        app.include_router(module.router)
    return app
