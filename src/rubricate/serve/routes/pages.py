"""The web page: score an answer, batch upload, review queue, sign-in (server-rendered templates).

Task questions and rubric texts are Markdown (tables included), rendered here with raw HTML disabled,
so an author's ``<script>`` shows as text while a table shows as a table.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup, escape

from rubricate import __version__
from rubricate.serve.http import COOKIE, ServerContext, context, token_ok
from rubricate.serve.reviews import REVIEW_FILTERS, REVIEW_ORDERS, review_threshold
from rubricate.student.active import source_for

router = APIRouter(include_in_schema=False)
REVIEW_PAGE_SIZE = 100  #: review cards shown on one page


@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str | None) -> Markup:
    """Markdown to HTML with raw HTML escaped (safe to insert into the page)."""
    return Markup(_markdown().render(text or ""))


def highlight(text: str, quotes: list[str]) -> Markup:
    """``text`` escaped, with every case-insensitive occurrence of each evidence quote in ``<mark>``."""
    low = text.lower()
    spans: list[tuple[int, int]] = []
    for q in quotes:
        needle = str(q).strip().lower()
        start = low.find(needle) if needle else -1
        while start >= 0:
            spans.append((start, start + len(needle)))
            start = low.find(needle, start + len(needle))
    out, pos = [], 0
    for a, b in sorted(spans):
        if a < pos:
            continue
        out += [escape(text[pos:a]), Markup("<mark>"), escape(text[a:b]), Markup("</mark>")]
        pos = b
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def _page(request: Request, ctx: ServerContext, name: str, **values: Any) -> Response:
    if not ctx.settings.local_only and not token_ok(ctx.settings, request.cookies.get(COOKIE)):
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    return ctx.templates.TemplateResponse(request, name, {"settings": ctx.settings, "service": ctx.service,
                                                          "version": __version__, "markdown": render_markdown,
                                                          "highlight": highlight,
                                                          **values})


def score_source(ctx: ServerContext, task_id: str) -> dict[str, Any]:
    """How the served student scores a task (trained / few_shot / zero_shot) and its review threshold;
    ``source`` is None when no student scores it."""
    scorer = ctx.service.scorer
    if scorer is None or task_id not in scorer.tasks:
        return {"source": None, "review_threshold": None}
    return {"source": source_for(scorer, task_id),
            "review_threshold": review_threshold(ctx.settings, scorer, task_id)}


@router.get("/", response_class=HTMLResponse)
def page_score(request: Request, ctx: ServerContext = Depends(context)) -> Response:
    tasks = [{**t, "question_html": str(render_markdown(t.get("question"))),
              "context_html": str(render_markdown(t.get("context"))) if t.get("context") else "",
              **score_source(ctx, t["id"])}
             for t in ctx.service.task_list()]
    return _page(request, ctx, "score.html", tasks=tasks, active="score")


@router.get("/batch", response_class=HTMLResponse)
def page_batch(request: Request, ctx: ServerContext = Depends(context)) -> Response:
    return _page(request, ctx, "batch.html", tasks=list(ctx.service.tasks), active="batch")


@router.get("/reviews", response_class=HTMLResponse)
def page_reviews(request: Request, status: str = "pending", order: str = "id",
                 ctx: ServerContext = Depends(context)) -> Response:
    status = status if status in REVIEW_FILTERS else "pending"
    order = order if order in REVIEW_ORDERS else "id"
    data = ctx.reviews.list_reviews(None if status == "all" else status, REVIEW_PAGE_SIZE, 0, order=order)
    tasks = {t.id: t for t in ctx.service.tasks}
    sources = {tid: score_source(ctx, tid)["source"] for tid in {r["task_id"] for r in data["items"]}}
    return _page(request, ctx, "reviews.html", reviews=data, tasks=tasks, status=status, order=order,
                 sources=sources, active="reviews")


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", ctx: ServerContext = Depends(context)) -> Response:
    return ctx.templates.TemplateResponse(request, "login.html", {"next": next, "error": None,
                                                                  "version": __version__, "active": ""})


@router.post("/login")
def login(request: Request, token: str = Form(...), next: str = Form("/"), ctx: ServerContext = Depends(context)
          ) -> Response:
    if not token_ok(ctx.settings, token):
        return ctx.templates.TemplateResponse(request, "login.html", {"next": next, "error": "Invalid token.",
                                                                      "version": __version__, "active": ""},
                                              status_code=401)
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return resp
