"""Persistence for the server: every scored response, its outputs, evidence, model version and human review.

SQLAlchemy 2 ORM models; SQLite by default (a file next to where the server runs), any PostgreSQL URL
(``postgresql+psycopg://user@host:port/db``) in production. The schema is owned by the Alembic
migrations shipped in ``rubricate/serve/migrations`` - :func:`upgrade` brings any database to the
latest revision and runs at server start-up and from ``rubricate db upgrade``; the ORM models below
must match the latest migration (a test checks that the two agree).

Identity: a response is ``(task_id, response_id)``; one prediction per response and model version; one
review item per response and reason. These unique constraints are what make retries and restarts
idempotent (a request replayed after a crash finds its rows instead of duplicating them).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

REVIEW_REASONS = ("low_confidence", "disagreement")
REVIEW_STATUSES = ("pending", "accepted", "overridden")
JOB_STATUSES = ("queued", "running", "done", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def text_digest(text: str) -> str:
    """SHA-256 of a response text: lets a replayed request be told apart from a conflicting one."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "model_version", name="uq_model_versions_id_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(200))
    backend: Mapped[str] = mapped_column(String(50), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("task_id", "response_id", name="uq_responses_task_response"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(String(200), index=True)
    response_id: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    predictions: Mapped[list["Prediction"]] = relationship(back_populates="response")
    agent_results: Mapped[list["AgentResultRow"]] = relationship(back_populates="response")
    reviews: Mapped[list["Review"]] = relationship(back_populates="response")


class Prediction(Base):
    """The student's output for one response and one model version."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("response_pk", "model_version_pk", name="uq_predictions_response_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_pk: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    model_version_pk: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    probs: Mapped[dict[str, Any]] = mapped_column(JSON)
    score_distribution: Mapped[dict[str, Any]] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    gate_weights: Mapped[list[Any]] = mapped_column(JSON)
    needs_review: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    response: Mapped[Response] = relationship(back_populates="predictions")
    model: Mapped[ModelVersion] = relationship()


class Job(Base):
    """A slow request (agents scoring, a CSV batch) run in the background; polled through its status URL."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="queued")
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AgentResultRow(Base):
    """One LLM-path result (``rubricate.agents.AgentResult``) with its evidence."""

    __tablename__ = "agent_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_pk: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), nullable=True, index=True)
    status: Mapped[str] = mapped_column(String(20))
    score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    components: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    grounding_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    rule_score: Mapped[int | None] = mapped_column(Integer, nullable=True)
    feedback: Mapped[str | None] = mapped_column(Text, nullable=True)
    raw_outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    mode: Mapped[str] = mapped_column(String(20), default="multi")
    backend: Mapped[str] = mapped_column(String(100), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    tokens: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    response: Mapped[Response] = relationship(back_populates="agent_results")


class Review(Base):
    """A queue item for a human rater: why it is there, what the machine proposed, what the human decided."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("response_pk", "reason", name="uq_reviews_response_reason"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_pk: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"), nullable=True)
    agent_result_id: Mapped[int | None] = mapped_column(ForeignKey("agent_results.id"), nullable=True)
    reason: Mapped[str] = mapped_column(String(30))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    proposed_scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    final_scores: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    response: Mapped[Response] = relationship(back_populates="reviews")
    decisions: Mapped[list["ReviewDecision"]] = relationship(back_populates="review", order_by="ReviewDecision.id")


class ReviewDecision(Base):
    """Every human decision is kept (a later one supersedes, never erases, an earlier one)."""

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    rater_id: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    review: Mapped[Review] = relationship(back_populates="decisions")


# --- engine, sessions, migrations ------------------------------------------------------------------------
def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``postgres://`` URLs and route them to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def make_engine(url: str, *, sqlite_busy_timeout_s: float = 30.0) -> Engine:
    """An engine for ``url``; SQLite gets WAL journaling, foreign keys and a busy timeout.

    ``sqlite_busy_timeout_s``: how long a writer waits for SQLite's lock before failing (the server's
    threads and a concurrent ``rubricate reviews export`` share one file).
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": sqlite_busy_timeout_s})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            if ":memory:" not in url:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str):
    """An Alembic config pointing at the migrations shipped inside the package (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> str:
    """Bring the database at ``url`` to ``revision`` (default: the latest); returns the revision reached."""
    from alembic import command

    cfg = alembic_config(url)
    command.upgrade(cfg, revision)
    return current_revision(url) or ""


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""
