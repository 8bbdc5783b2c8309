"""HTTP plumbing shared by every router: the server context, auth, body limit, error mapping.

Error contract: a missing field or an unknown task is a 422 whose ``detail[*].loc`` names the field
(``["body", "items", 3, "task_id"]``); a body over ``max_body_bytes`` or a batch over ``max_batch`` is a
413; a missing or wrong bearer token is a 401; a replayed response id with a different text, or a second
decision on a decided review, is a 409; a database that cannot take a durable write is a 503 with a
one-line reason. Every message is rendered safely (:func:`~rubricate.serve.validation.safe_text`):
hostile input in an error can never turn it into a 500.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.templating import Jinja2Templates

from rubricate.errors import InputError, RubricateError, UnknownTaskError
from rubricate.serve.db import DatabaseUnavailable
from rubricate.serve.jobs import JobRunner
from rubricate.serve.reviews import ReviewService
from rubricate.serve.service import ScoringService
from rubricate.serve.settings import ServeSettings
from rubricate.serve.upload import TooManyRows
from rubricate.serve.validation import Conflict, NotFound, ValidationFailed, safe_text

log = logging.getLogger("rubricate.serve")
COOKIE = "rubricate_token"


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value, 10_000)
    if isinstance(value, dict):
        return {_safe(k): _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: a string that UTF-8 cannot hold (a lone surrogate) is escaped, not a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(_safe(content), ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")


@dataclass
class ServerContext:
    """What the routers need; stored on ``app.state.ctx``."""

    settings: ServeSettings
    service: ScoringService
    reviews: ReviewService
    jobs: JobRunner
    templates: Jinja2Templates


def context(request: Request) -> ServerContext:
    """FastAPI dependency: the server context of the running app."""
    return request.app.state.ctx


def token_ok(settings: ServeSettings, token: str | None) -> bool:
    if not token:
        return False
    given = token.encode("utf-8", "replace")
    return any(hmac.compare_digest(given, t.encode()) for t in settings.tokens)


def request_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.cookies.get(COOKIE)


def require_auth(request: Request) -> None:
    """FastAPI dependency: a valid bearer token (header or the login cookie) unless local-only."""
    settings = context(request).settings
    if settings.local_only:
        return
    if not token_ok(settings, request_token(request)):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


def check_batch(settings: ServeSettings, n: int) -> None:
    if n > settings.max_batch:
        raise HTTPException(413, f"{n} items; the limit is {settings.max_batch} per request")


def need_student(service: ScoringService) -> None:
    if service.scorer is None:
        raise HTTPException(503, "no student model is loaded (start the server with --model)")


def _clean_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI errors without the echoed input (it can be huge or undecodable bytes)."""
    return [{"loc": [safe_text(p) if isinstance(p, str) else p for p in e.get("loc", [])],
             "msg": safe_text(str(e.get("msg", "")), 2000), "type": str(e.get("type", ""))} for e in errors]


def install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Map every error the service raises on purpose to its status; none of them is a 500."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = exc.body if isinstance(getattr(exc, "body", None), dict) else None
        if body and isinstance(body.get("items"), list) and len(body["items"]) > settings.max_batch:
            return SafeJSONResponse({"detail": f"{len(body['items'])} items; the limit is {settings.max_batch} "
                                               "per request"}, status_code=413)
        return SafeJSONResponse({"detail": _clean_errors(exc.errors())}, status_code=422)

    @app.exception_handler(ValidationFailed)
    async def _failed(request: Request, exc: ValidationFailed) -> JSONResponse:
        status = 409 if isinstance(exc, Conflict) else 422
        return SafeJSONResponse({"detail": [p.to_dict() for p in exc.problems]}, status_code=status)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return SafeJSONResponse({"detail": safe_text(str(exc))}, status_code=404)

    @app.exception_handler(TooManyRows)
    async def _too_many(request: Request, exc: TooManyRows) -> JSONResponse:
        return SafeJSONResponse({"detail": safe_text(str(exc))}, status_code=413)

    @app.exception_handler(DatabaseUnavailable)
    async def _database(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        log.error("%s", exc)
        return SafeJSONResponse({"detail": safe_text(str(exc), 500)}, status_code=503,
                                headers={"Retry-After": "5"})

    @app.exception_handler(RubricateError)
    async def _rubricate(request: Request, exc: RubricateError) -> JSONResponse:
        status = 422 if isinstance(exc, (InputError, UnknownTaskError)) else 400
        return SafeJSONResponse({"detail": safe_text(str(exc), 2000)}, status_code=status)


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


