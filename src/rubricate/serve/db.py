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
import os
import stat
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

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
    make_url,
    text,
)
from sqlalchemy.exc import InternalError, OperationalError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from rubricate.errors import RubricateError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
MAX_ID_CHARS = 200  #: length of every id column (task, response, model, rater); validation refuses longer ids

REVIEW_REASONS = ("low_confidence", "disagreement")
REVIEW_STATUSES = ("pending", "accepted", "overridden")
JOB_STATUSES = ("queued", "running", "done", "failed")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps stored in UTC and always returned timezone-aware (SQLite drops the offset on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: store UTC-aware timestamps (db.utcnow())")
        return None if value is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def text_digest(text: str) -> str:
    """SHA-256 of a response text: lets a replayed request be told apart from a conflicting one."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "model_version", name="uq_model_versions_id_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(MAX_ID_CHARS))
    model_version: Mapped[str] = mapped_column(String(MAX_ID_CHARS))
    backend: Mapped[str] = mapped_column(String(50), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("task_id", "response_id", name="uq_responses_task_response"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[str] = mapped_column(String(MAX_ID_CHARS), index=True)
    response_id: Mapped[str] = mapped_column(String(MAX_ID_CHARS))
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


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
    model: Mapped[str] = mapped_column(String(MAX_ID_CHARS), default="")
    tokens: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    latency_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    response: Mapped[Response] = relationship(back_populates="reviews")
    decisions: Mapped[list["ReviewDecision"]] = relationship(back_populates="review", order_by="ReviewDecision.id")


class ReviewDecision(Base):
    """Every human decision is kept (a later one supersedes, never erases, an earlier one)."""

    __tablename__ = "review_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    review_id: Mapped[int] = mapped_column(ForeignKey("reviews.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(20))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    rater_id: Mapped[str] = mapped_column(String(MAX_ID_CHARS))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    review: Mapped[Review] = relationship(back_populates="decisions")


# --- engine, sessions, migrations ------------------------------------------------------------------------
class DatabaseUnavailable(RubricateError):
    """The database cannot be used (missing, read-only, replaced, unreachable): one line naming URL and cause.

    The server answers 503 with this message; the CLI prints it as one line.
    """

    def __init__(self, url: str, cause: str) -> None:
        self.url = safe_url(url)
        self.cause = cause
        super().__init__(f"database {self.url}: {cause}")


def safe_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    try:
        return make_url(normalize_url(url)).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown as given
        return url


def describe(exc: BaseException) -> str:
    """One line for a driver error (SQLAlchemy's message carries SQL and a help link on further lines)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` / ``postgres://`` URLs and route them to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for in-memory SQLite and for other databases."""
    u = make_url(normalize_url(url))
    if not u.drivername.startswith("sqlite") or u.database in (None, "", ":memory:"):
        return None
    if u.database.startswith("file:"):
        return None  # SQLite URI filenames: left to SQLite
    return Path(u.database).resolve()


def _writable(path: Path) -> bool:
    """Writable for us *and* not write-protected by its mode bits (root ignores the bits, SQLite then too)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return os.access(path, os.W_OK) and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class WriteGuard:
    """Tells whether a SQLite commit went where the next start will find it.

    An open SQLite connection keeps writing into a file that was deleted (or whose directory was) and
    into a file made read-only after it was opened, so a commit succeeding proves nothing. The guard
    remembers the file's identity (device, inode) and checks before and after every write that the path
    still names that file and that the file and its directory are writable. PostgreSQL needs none of this
    (a commit there is durable or raises); the guard is then a no-op.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = sqlite_file(url)
        self.identity: tuple[int, int] | None = None
        self.remember()

    def remember(self) -> None:
        """Record the file's identity (after migrations created it)."""
        if self.path is not None and self.path.exists():
            st = self.path.stat()
            self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """Why a write would not be durable now, or None."""
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return f"the database file {self.path} no longer exists"
        except OSError as e:
            return f"cannot stat {self.path}: {e.strerror}"
        if self.identity is None:  # created by the first connection (migrations off): remember it now
            self.identity = (st.st_dev, st.st_ino)
        if (st.st_dev, st.st_ino) != self.identity:
            return f"the database file {self.path} was replaced while the server was running"
        if not _writable(self.path):
            return f"the database file {self.path} is read-only"
        if not _writable(self.path.parent):
            return f"the database directory {self.path.parent} is read-only"
        return None

    def check(self) -> None:
        bad = self.problem()
        if bad:
            raise DatabaseUnavailable(self.url, bad)


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


class Database:
    """The server's database: an engine, read sessions, and write sessions acknowledged only when durable.

    ``write()`` raises :class:`DatabaseUnavailable` when the guard finds the file gone or read-only, before
    the transaction and again after its commit (the rows then went to a file nobody will find), and turns
    driver errors (disk full, read-only, lock timeout) into the same one-line error.
    """

    def __init__(self, url: str, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine or make_engine(url)
        self.Session = make_sessionmaker(self.engine)
        self.guard = WriteGuard(url)

    @contextmanager
    def read(self) -> Iterator[Session]:
        try:
            with self.Session() as s:
                yield s
        except OperationalError as e:
            raise DatabaseUnavailable(self.url, describe(e)) from None

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction committed on exit; an exception inside rolls it back (IntegrityError passes through)."""
        self.guard.check()
        try:
            with self.Session.begin() as s:
                yield s
        except (OperationalError, InternalError) as e:
            raise DatabaseUnavailable(self.url, describe(e)) from None
        self.guard.check()

    def health(self) -> dict[str, Any]:
        """``{"ok", "reason", "revision"}``: the database answers a query and can take a durable write."""
        reason = self.guard.problem()
        revision = None
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                from alembic.runtime.migration import MigrationContext

                revision = MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as e:
            reason = reason or describe(e)
        return {"ok": reason is None, "reason": reason, "revision": revision}

    def dispose(self) -> None:
        self.engine.dispose()


def require_existing(url: str) -> None:
    """Read paths (export, ``db current``) never create a database: a missing SQLite file is an error."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise DatabaseUnavailable(url, f"no database file at {path}")


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

    path = sqlite_file(url)
    if path is not None and path.exists() and not _writable(path):
        raise DatabaseUnavailable(url, f"the database file {path} is read-only (migrations need to write)")
    try:
        command.upgrade(alembic_config(url), revision)
    except SQLAlchemyError as e:
        raise DatabaseUnavailable(url, describe(e)) from None
    return current_revision(url) or ""


def current_revision(url: str) -> str | None:
    """The database's migration revision (None: not migrated); never creates the database."""
    from alembic.runtime.migration import MigrationContext

    require_existing(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as e:
        raise DatabaseUnavailable(url, describe(e)) from None
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head() or ""
