"""The FastAPI application: JSON API under /v1, a small server-rendered web page, OpenAPI docs at /docs.

``create_app(settings)`` builds everything from :class:`~rubricate.serve.settings.ServeSettings`; tests
pass their own ``scorer``/``agent_runner``. Behaviour lives in :mod:`rubricate.serve.service`; this module
is HTTP only: auth, limits, error mapping, jobs, pages.

Error contract: a missing field or an unknown task is a 422 whose ``detail[*].loc`` names the field
(``["body", "items", 3, "task_id"]``); a body over ``max_body_bytes`` or a batch over ``max_batch`` is a
413; a missing or wrong bearer token is a 401; a replayed response id with a different text is a 409.
Validation runs before anything is written, so a failed request leaves the database untouched.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import logging
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select, text

from rubricate import __version__
from rubricate.errors import InputError, RubricateError, UnknownTaskError
from rubricate.serve import db
from rubricate.serve.schemas import (
    AgentsRequest,
    JobStatus,
    ReviewDecisionIn,
    ReviewOut,
    ScoreRequest,
    ScoreResponse,
)
from rubricate.serve.service import (
    AgentRunner,
    Conflict,
    Item,
    NotFound,
    Problem,
    ScorerLike,
    ScoringService,
    ValidationFailed,
)
from rubricate.serve.settings import ServeSettings
from rubricate.tasks import TaskRegistry

log = logging.getLogger("rubricate.serve")
HERE = Path(__file__).parent
COOKIE = "rubricate_token"


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: by Content-Length up front, and by counting streamed chunks."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    await JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"},
                                       status_code=413)(scope, receive, send)
                    return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"},
                                   status_code=413)(scope, receive, send)


def load_scorer(settings: ServeSettings) -> ScorerLike | None:
    if settings.model_dir is None:
        return None
    from rubricate.student.scorer import Scorer

    return Scorer.from_pretrained(settings.model_dir, backend=settings.backend, quantize=settings.quantize,
                                  num_threads=settings.threads)


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


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI errors without the echoed input (it can be huge or undecodable bytes)."""
    return [{"loc": list(e.get("loc", [])), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors]


def create_app(settings: ServeSettings | None = None, *, scorer: ScorerLike | None = None,
               agent_runner: AgentRunner | None = None, tasks: TaskRegistry | None = None) -> FastAPI:
    """Build the app: migrate the database, load the student (unless given), wire the routes."""
    settings = settings or ServeSettings()
    if scorer is None:
        scorer = load_scorer(settings)
    if tasks is None and settings.tasks_dir is not None:
        tasks = TaskRegistry.from_dir(settings.tasks_dir)
    if agent_runner is None and settings.agents_backend:
        agent_runner = make_agent_runner(settings.agents_backend)
    if settings.migrate:
        db.upgrade(settings.database_url)
    engine = db.make_engine(settings.database_url)
    Session = db.make_sessionmaker(engine)
    service = ScoringService(settings, Session, scorer, tasks, agent_runner)
    pool = ThreadPoolExecutor(max_workers=settings.job_workers, thread_name_prefix="rubricate-job")
    futures: dict[str, Future] = {}

    # -- jobs -----------------------------------------------------------------------------------------
    def run_job(job_id: str, kind: str, params: dict[str, Any]) -> None:
        items = [Item(d["task_id"], d["text"], d["response_id"]) for d in params["items"]]
        keys = [(d["task_id"], d["response_id"]) for d in params["items"]]
        try:
            service.update_job(job_id, status="running")
            if kind == "agents":
                service.run_agents(job_id, items, keys, params["mode"], params["with_student"],
                                   progress=lambda n, total: service.update_job(job_id, done=n))
                results = service.agent_results_for_job(job_id)
                service.update_job(job_id, status="done", done=len(items),
                                   failed=sum(r["status"] != "ok" for r in results))
            else:
                step = settings.score_batch_size
                for i in range(0, len(items), step):
                    service.score(items[i:i + step])
                    service.update_job(job_id, done=min(i + step, len(items)))
                service.update_job(job_id, status="done", done=len(items))
        except Exception as e:  # a failed job is recorded, never silently lost
            log.exception("job %s failed", job_id)
            service.update_job(job_id, status="failed", error=f"{type(e).__name__}: {e}")

    def submit(job_id: str, kind: str, params: dict[str, Any]) -> Future:
        fut = pool.submit(run_job, job_id, kind, params)
        futures[job_id] = fut
        fut.add_done_callback(lambda _f: futures.pop(job_id, None))
        return fut

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        for job_id, kind, params in service.unfinished_jobs():  # resume what a crash interrupted
            if kind == "agents" and not service.agents_enabled():
                service.update_job(job_id, status="failed", error="server restarted without an agents backend")
                continue
            submit(job_id, kind, params)
        yield
        pool.shutdown(wait=False, cancel_futures=True)
        engine.dispose()

    app = FastAPI(title="rubricate", version=__version__, lifespan=lifespan,
                  description="Score students' written answers against rubrics: the multi-task student, the "
                              "LLM agents, a human review queue.")
    app.state.settings = settings
    app.state.service = service
    app.state.engine = engine
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    # -- auth -------------------------------------------------------------------------------------------
    def token_ok(token: str | None) -> bool:
        if not token:
            return False
        return any(hmac.compare_digest(token.encode("utf-8", "replace"), t.encode()) for t in settings.tokens)

    def request_token(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def require_auth(request: Request) -> None:
        if settings.local_only:
            return
        if not token_ok(request_token(request)):
            raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_auth)]

    # -- error mapping ------------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = exc.body if isinstance(getattr(exc, "body", None), dict) else None
        if body and isinstance(body.get("items"), list) and len(body["items"]) > settings.max_batch:
            return JSONResponse({"detail": f"{len(body['items'])} items; the limit is {settings.max_batch} per "
                                           "request"}, status_code=413)
        return JSONResponse({"detail": _clean_errors(exc.errors())}, status_code=422)

    @app.exception_handler(Conflict)
    async def _conflict(request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": [p.to_dict() for p in exc.problems]}, status_code=409)

    @app.exception_handler(ValidationFailed)
    async def _failed(request: Request, exc: ValidationFailed) -> JSONResponse:
        return JSONResponse({"detail": [p.to_dict() for p in exc.problems]}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RubricateError)
    async def _rubricate(request: Request, exc: RubricateError) -> JSONResponse:
        status = 422 if isinstance(exc, (InputError, UnknownTaskError)) else 400
        return JSONResponse({"detail": str(exc)}, status_code=status)

    def check_batch(n: int) -> None:
        if n > settings.max_batch:
            raise HTTPException(413, f"{n} items; the limit is {settings.max_batch} per request")

    def need_student() -> None:
        if service.scorer is None:
            raise HTTPException(503, "no student model is loaded (start the server with --model)")

    # -- API ----------------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, Any]:
        """Liveness + readiness: the database answers and the model (if any) is loaded."""
        with Session() as s:
            s.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__,
                "model": None if scorer is None else {"model_id": scorer.model_id,
                                                      "model_version": scorer.model_version,
                                                      "backend": str(getattr(scorer, "backend", ""))},
                "agents": service.agents_enabled(), "database_revision": db.current_revision(settings.database_url)
                if not settings.database_url.startswith("sqlite:///:memory:") else None,
                "auth": "bearer" if not settings.local_only else "local-only"}

    @app.get("/v1/tasks", dependencies=auth, tags=["tasks"])
    def list_tasks() -> dict[str, Any]:
        """Every task the server can score, with its question and rubric."""
        student_tasks = set(scorer.tasks.ids) if scorer is not None else set()
        return {"tasks": [{**t.model_dump(mode="json", exclude={"metadata"}), "student": t.id in student_tasks}
                          for t in service.tasks]}

    @app.post("/v1/score", dependencies=auth, response_model=ScoreResponse, tags=["scoring"])
    def score(req: ScoreRequest) -> dict[str, Any]:
        """Score a batch with the student; low-confidence results enter the review queue."""
        need_student()
        check_batch(len(req.items))
        items = [Item(i.task_id, i.text, i.response_id) for i in req.items]
        return {"results": service.score(items)}

    @app.post("/v1/agents/score", dependencies=auth, tags=["scoring"],
              responses={202: {"description": "Still running: poll status_url."}})
    async def agents_score(req: AgentsRequest, request: Request) -> JSONResponse:
        """The LLM path with evidence, run as a job; answers inline when it finishes quickly."""
        if not service.agents_enabled():
            raise HTTPException(503, "the LLM path is not configured (start the server with --agents-backend)")
        check_batch(len(req.items))
        items = [Item(i.task_id, i.text, i.response_id) for i in req.items]
        keys = await asyncio.to_thread(service.prepare_agent_items, items)
        params = {"items": [{"task_id": k[0], "response_id": k[1], "text": it.text} for it, k in zip(items, keys)],
                  "mode": req.mode or settings.agents_mode, "with_student": req.with_student}
        job_id = await asyncio.to_thread(service.create_job, "agents", len(items), params)
        fut = submit(job_id, "agents", params)
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), settings.agents_sync_wait_s)
        except asyncio.TimeoutError:
            pass
        status = await asyncio.to_thread(job_status, job_id)
        return JSONResponse(status, status_code=200 if status["status"] in ("done", "failed") else 202)

    def job_status(job_id: str) -> dict[str, Any]:
        out = service.job(job_id)
        out["status_url"] = f"/v1/jobs/{job_id}"
        if out["kind"] == "agents" and out["status"] == "done":
            out["results"] = service.agent_results_for_job(job_id)
        if out["kind"] == "batch":
            with Session() as s:
                params = s.get(db.Job, job_id).params
            out["problems"] = params.get("problems", [])
            if out["status"] == "done":
                out["results_url"] = f"/v1/jobs/{job_id}/results.csv"
        return out

    @app.get("/v1/jobs/{job_id}", dependencies=auth, response_model=JobStatus, tags=["jobs"])
    def get_job(job_id: str) -> dict[str, Any]:
        """Status (and, when done, results) of an agents or batch job."""
        return job_status(job_id)

    @app.post("/v1/batch", dependencies=auth, status_code=202, tags=["jobs"])
    async def batch_upload(file: UploadFile = File(..., description="CSV with columns text, task_id "
                                                                    "(or the task form field), response_id (optional)"),
                           task_id: str | None = Form(None)) -> dict[str, Any]:
        """Upload a CSV to score in the background; rows with problems are reported with their line."""
        need_student()
        raw = await file.read()
        items, problems = parse_upload(raw, file.filename or "upload.csv", task_id)
        if not items and not problems:
            raise ValidationFailed([Problem(("body", "file"), "the CSV has no rows", "empty")])
        params = {"items": [{"task_id": it.task_id, "response_id": it.response_id, "text": it.text} for it in items],
                  "problems": problems, "filename": file.filename}
        job_id = await asyncio.to_thread(service.create_job, "batch", len(items), params)
        submit(job_id, "batch", params)
        return {"job_id": job_id, "status_url": f"/v1/jobs/{job_id}", "rows": len(items), "problems": problems}

    def parse_upload(raw: bytes, name: str, default_task: str | None) -> tuple[list[Item], list[dict[str, Any]]]:
        try:
            content = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValidationFailed([Problem(("body", "file"), f"{name}: not UTF-8 (byte {e.start})", "encoding")])
        lines = iter(content.splitlines(keepends=True))
        reader = csv.DictReader(lines)
        cols = reader.fieldnames or []
        if "text" not in cols:
            raise ValidationFailed([Problem(("body", "file"), f"{name}: no 'text' column (columns: {cols})",
                                            "missing_column")])
        if "task_id" not in cols and not default_task:
            raise ValidationFailed([Problem(("body", "task_id"), f"{name}: no 'task_id' column and no task chosen",
                                            "missing_column")])
        items: list[Item] = []
        lines_of: list[int] = []
        problems: list[dict[str, Any]] = []
        prefix = "upload-" + uuid.uuid4().hex[:8]
        line = 1
        for row in reader:
            start = line + 1
            line = reader.line_num
            if len(items) + len(problems) >= settings.max_upload_rows:
                raise HTTPException(413, f"{name}: more than {settings.max_upload_rows} rows")
            task = (row.get("task_id") or "").strip() or (default_task or "")
            rid = (row.get("response_id") or "").strip() or f"{prefix}-line{start}"
            items.append(Item(task, row.get("text") or "", rid))
            lines_of.append(start)
        bad = service.validate(items, "file")
        with Session() as s:
            keys = [(it.task_id, it.response_id or "") for it in items]
            try:
                service._check_conflicts(s, items, keys, "file")
            except Conflict as c:
                bad += c.problems
        bad_idx: dict[int, list[Problem]] = {}
        for p in bad:
            bad_idx.setdefault(int(p.loc[2]), []).append(p)
        for i, ps in sorted(bad_idx.items()):
            for p in ps:
                problems.append({"line": lines_of[i], "field": str(p.loc[-1]), "error": p.msg})
        good = [it for i, it in enumerate(items) if i not in bad_idx]
        return good, problems

    @app.get("/v1/jobs/{job_id}/results.csv", dependencies=auth, tags=["jobs"], response_class=PlainTextResponse)
    def batch_results(job_id: str) -> Response:
        """The scored rows of a finished batch job as CSV."""
        with Session() as s:
            job = s.get(db.Job, job_id)
            if job is None or job.kind != "batch":
                raise NotFound(f"batch job '{job_id}' not found")
            keys = [(d["task_id"], d["response_id"]) for d in job.params["items"]]
            rows = service._find_responses(s, keys)
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["task_id", "response_id", "scores", "confidence", "needs_review", "model_version"])
            for k in keys:
                resp = rows.get(k)
                if resp is None:
                    continue
                pred = s.scalar(select(db.Prediction).where(db.Prediction.response_pk == resp.id)
                                .order_by(db.Prediction.id.desc()))
                if pred is None:
                    continue
                w.writerow([k[0], k[1], json.dumps(pred.scores), f"{pred.confidence:.4f}", pred.needs_review,
                            pred.model.model_version])
        return Response(buf.getvalue(), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="rubricate-{job_id}.csv"'})

    @app.get("/v1/reviews", dependencies=auth, tags=["reviews"])
    def reviews(status: str | None = Query("pending", pattern="^(pending|accepted|overridden|all)$"),
                limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """The review queue (pending by default; status=all for everything)."""
        return service.list_reviews(None if status == "all" else status, limit, offset)

    @app.post("/v1/reviews/{review_id}", dependencies=auth, response_model=ReviewOut, tags=["reviews"])
    def decide(body: ReviewDecisionIn, review_id: int = FPath(..., ge=1, le=2**31 - 1)) -> dict[str, Any]:
        """Accept or override a queued result, with a comment and the rater's id."""
        return service.decide(review_id, body.action, body.rater_id, body.comment, body.scores, body.source)

    # -- pages ----------------------------------------------------------------------------------------------
    def page(request: Request, name: str, **ctx: Any) -> Response:
        if not settings.local_only and not token_ok(request.cookies.get(COOKIE)):
            return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
        return templates.TemplateResponse(request, name, {"settings": settings, "service": service,
                                                          "version": __version__, **ctx})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page_score(request: Request) -> Response:
        student = set(scorer.tasks.ids) if scorer is not None else set()
        tasks_json = [{**t.model_dump(mode="json", exclude={"metadata"}), "student": t.id in student}
                      for t in service.tasks]
        return page(request, "score.html", tasks=tasks_json, active="score")

    @app.get("/batch", response_class=HTMLResponse, include_in_schema=False)
    def page_batch(request: Request) -> Response:
        return page(request, "batch.html", tasks=list(service.tasks), active="batch")

    @app.get("/reviews", response_class=HTMLResponse, include_in_schema=False)
    def page_reviews(request: Request, status: str = "pending") -> Response:
        status = status if status in ("pending", "accepted", "overridden", "all") else "pending"
        data = service.list_reviews(None if status == "all" else status, 100, 0)
        tasks = {t.id: t for t in service.tasks}
        return page(request, "reviews.html", reviews=data, tasks=tasks, status=status, active="reviews")

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(request, "login.html", {"next": next, "error": None,
                                                                  "version": __version__, "active": ""})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form(...), next: str = Form("/")) -> Response:
        if not token_ok(token):
            return templates.TemplateResponse(request, "login.html", {"next": next, "error": "Invalid token.",
                                                                      "version": __version__, "active": ""},
                                              status_code=401)
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        resp = RedirectResponse(target, status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp

    return app
