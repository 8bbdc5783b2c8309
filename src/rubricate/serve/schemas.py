"""Request and response bodies of the HTTP API (they are also what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from rubricate.serve.db import MAX_ID_CHARS
from rubricate.serve.validation import storable_problem

MAX_DB_INT = 2**31 - 1  #: bound of every integer in a path, query or score (a 32-bit database integer)
MAX_JOB_ID_CHARS = 64  #: job ids are uuid4 hex (the column is String(64))
Score = Annotated[StrictInt, Field(ge=-MAX_DB_INT, le=MAX_DB_INT)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScoreItemIn(_In):
    task_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="A task id from GET /v1/tasks.")
    text: str = Field(description="The student's response.")
    response_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                                    description="Your id for the response; makes retries idempotent. "
                                                "Generated when absent.")


class ScoreRequest(_In):
    items: list[ScoreItemIn] = Field(min_length=1, description="Responses to score (at most the server's max_batch).")


class ScoreResult(BaseModel):
    task_id: str
    response_id: str
    scores: dict[str, int] = Field(description="Decoded score per scale id and per criterion id.")
    probs: dict[str, float] = Field(description="Probability per label ('E1', 'score>=2', ...).")
    score_distribution: dict[str, list[float]] = Field(description="Per scale: P(score = min..max).")
    confidence: float
    needs_review: bool
    review_id: int | None
    gate_weights: list[list[float]] = Field(description="[MoE layer][expert] routing weights.")
    model_id: str
    model_version: str
    prediction_id: int


class ScoreResponse(BaseModel):
    results: list[ScoreResult]


class AgentsRequest(_In):
    items: list[ScoreItemIn] = Field(min_length=1)
    mode: Literal["multi", "single"] | None = Field(None, description="Agents pipeline mode (server default).")
    with_student: bool = Field(True, description="Also score with the student; disagreements enter the review queue.")


class JobStatus(BaseModel):
    id: str
    kind: str
    status: Literal["queued", "running", "done", "failed"]
    total: int
    done: int
    failed: int
    error: str | None
    created_at: str
    updated_at: str
    status_url: str
    results: list[dict[str, Any]] | None = None
    problems: list[dict[str, Any]] | None = None
    results_url: str | None = None


class ReviewDecisionIn(_In):
    action: Literal["accept", "override"]
    rater_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    comment: str = Field("", max_length=5000)
    scores: dict[str, Score] | None = Field(None, description="Override: score per scale/criterion id (integers; "
                                                              "true or \"1\" are refused).")
    source: Literal["student", "agents"] = Field("student", description="Accept: whose scores to accept.")
    replace: bool = Field(False, description="Replace the decision of an already decided review (else 409); "
                                             "the earlier decision stays in the history.")

    @field_validator("rater_id", "comment")
    @classmethod
    def _storable(cls, v: str) -> str:
        """No database stores NUL or lone surrogates faithfully: refuse them here (a 422), never in the database."""
        bad = storable_problem(v, "the value")
        if bad:
            raise ValueError(bad.removeprefix("the value "))
        return v


class ReviewOut(BaseModel):
    id: int
    status: str
    final_scores: dict[str, int]
    task_id: str
    response_id: str
