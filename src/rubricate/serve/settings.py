"""Server settings: one pydantic model, filled from a YAML/JSON file, environment variables, CLI options.

Precedence (highest first): explicit CLI options, environment (``RUBRICATE_*``), config file, defaults.
Every limit and threshold of the server lives here, documented, so that nothing is a hidden constant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from rubricate.errors import InputError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
REVIEW_CONFIDENCE = 0.6
"""Default review threshold: a student result with confidence below this needs a human (server and predict)."""
REVIEW_CONFIDENCE_ZERO_SHOT = 0.8
"""Default review threshold for zero-shot items (scores of a task the student has no labels of)."""


class ServeSettings(BaseModel):
    """Everything ``create_app`` needs."""

    model_dir: Path | None = Field(None, description="Student checkpoint served by /v1/score (None: agents only).")
    tasks_dir: Path | None = Field(None, description="Task files; default: the tasks stored in the checkpoint.")
    backend: str = Field("auto", description="Student backend: auto (ONNX when exported) | torch | onnx.")
    quantize: bool = Field(False, description="Serve the int8 ONNX graph (onnx/model.int8.onnx; `rubricate export --int8`).")
    threads: int | None = Field(None, ge=1, description="CPU threads for the student (ONNX Runtime intra-op or "
                                                         "torch); None = the runtime's default (all cores).")
    database_url: str = Field("sqlite:///rubricate.db", description="SQLAlchemy URL; SQLite file or PostgreSQL.")
    tokens: list[str] = Field(default_factory=list,
                              description="Bearer tokens accepted by the API; empty = local-only mode "
                                          "(the server binds to 127.0.0.1 only).")
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(2_000_000, gt=0, description="Larger request bodies get 413.")
    max_batch: int = Field(256, gt=0, description="More items in one /v1/score or agents request get 413.")
    max_text_chars: int = Field(20_000, gt=0, description="Longer response texts are a 422 naming the item.")
    max_upload_rows: int = Field(50_000, gt=0, description="Rows in one CSV uploaded through the web page.")
    score_batch_size: int = Field(32, gt=0, description="Batch size handed to the student's predict().")
    max_wait_ms: float = Field(0.0, ge=0.0, description="Dynamic batching: concurrent /v1/score requests arriving "
                                                       "within this many ms share one forward pass (up to "
                                                       "max_batch items); 0 = each request runs alone. A lone "
                                                       "request never waits. Default 0 by measurement on 2 CPU "
                                                       "cores (c=32: 57.7 req/s at 0 ms, 52.4 at 2, 41.0 at 8): "
                                                       "a CPU already busy gains nothing from bigger batches; "
                                                       "try 2-5 ms on a GPU or many cores.")
    min_token_length: int = Field(16, ge=1, description="Shorter API tokens are refused at start-up (a guessable "
                                                         "token is no protection).")
    review_confidence: float = Field(REVIEW_CONFIDENCE, ge=0.0, le=1.0,
                                     description="A student result with confidence below this enters the "
                                                 "review queue (confidence as defined by the Scorer).")
    review_confidence_zero_shot: float = Field(REVIEW_CONFIDENCE_ZERO_SHOT, ge=0.0, le=1.0,
                                               description="The review threshold for an item the student scores "
                                                           "zero-shot (no labels of it seen): stricter, since "
                                                           "such an item's confidence is not yet calibrated.")
    disagreement_threshold: int = Field(1, ge=1, description="|student - agents| on any scale at or above "
                                                             "this puts the response in the review queue.")
    agents_backend: str | None = Field(None, description="Backend spec for rubricate.agents (None: LLM path off).")
    agents_mode: str = Field("multi", description="Default agents mode: multi | single.")
    agents_sync_wait_s: float = Field(2.0, ge=0.0, description="POST /v1/agents/score answers inline when the "
                                                                "job finishes within this time, else 202 + status URL.")
    job_workers: int = Field(1, ge=1, description="Background threads for agent and CSV batch jobs.")
    migrate: bool = Field(True, description="Run database migrations at start-up.")

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, v: Any) -> Any:
        """A comma-separated string (the environment) becomes a list; every entry is stripped below."""
        if isinstance(v, str):
            return [t for t in v.split(",") if t.strip()]
        return v

    @model_validator(mode="after")
    def _check_tokens(self) -> "ServeSettings":
        """The same rules for tokens from any source: stripped, none empty, none shorter than the minimum."""
        cleaned = []
        for i, t in enumerate(self.tokens):
            t = t.strip()
            if not t:
                raise ValueError(f"token {i + 1} is empty or whitespace")
            if len(t) < self.min_token_length:
                raise ValueError(f"token {i + 1} has {len(t)} characters; at least {self.min_token_length} are "
                                 "required (min_token_length)")
            cleaned.append(t)
        self.tokens = cleaned
        return self

    @property
    def local_only(self) -> bool:
        return not self.tokens

    def check_binding(self) -> None:
        """Refuse to listen beyond loopback without tokens: no auth must never mean open to the network."""
        if self.local_only and self.host not in LOOPBACK_HOSTS:
            raise InputError(f"refusing to listen on {self.host!r} without API tokens: set RUBRICATE_API_TOKENS or "
                             "'tokens' in the config, or bind to 127.0.0.1 (--host)")


_ENV = {
    "RUBRICATE_MODEL": "model_dir",
    "RUBRICATE_TASKS": "tasks_dir",
    "RUBRICATE_DATABASE_URL": "database_url",
    "RUBRICATE_API_TOKENS": "tokens",
    "RUBRICATE_AGENTS_BACKEND": "agents_backend",
    "RUBRICATE_REVIEW_CONFIDENCE": "review_confidence",
    "RUBRICATE_REVIEW_CONFIDENCE_ZERO_SHOT": "review_confidence_zero_shot",
    "RUBRICATE_MAX_BATCH": "max_batch",
    "RUBRICATE_MAX_BODY_BYTES": "max_body_bytes",
    "RUBRICATE_MAX_WAIT_MS": "max_wait_ms",
}


def load_settings(config: str | Path | None = None, env: dict[str, str] | None = None,
                  **overrides: Any) -> ServeSettings:
    """Merge defaults <- config file <- environment <- ``overrides`` (None values are ignored)."""
    data: dict[str, Any] = {}
    if config:
        path = Path(config)
        try:
            raw = path.read_text(encoding="utf-8")
            loaded = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read server config: {e}", file=path) from None
        if not isinstance(loaded, dict):
            raise InputError("server config must be a mapping", file=path)
        data.update(loaded)
    env = os.environ if env is None else env
    for var, key in _ENV.items():
        if env.get(var):
            data[key] = env[var]
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServeSettings.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(first["msg"].removeprefix("Value error, "), file=config, column=field) from None
