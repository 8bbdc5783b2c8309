"""Initial schema: model versions, responses, predictions, jobs, agent results, reviews, review decisions.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("model_id", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(200), nullable=False),
        sa.Column("backend", sa.String(50), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("model_id", "model_version", name="uq_model_versions_id_version"),
    )
    op.create_table(
        "responses",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.String(200), nullable=False),
        sa.Column("response_id", sa.String(200), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("text_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("task_id", "response_id", name="uq_responses_task_response"),
    )
    op.create_index("ix_responses_task_id", "responses", ["task_id"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("response_pk", sa.Integer, sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("model_version_pk", sa.Integer, sa.ForeignKey("model_versions.id"), nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("probs", sa.JSON, nullable=False),
        sa.Column("score_distribution", sa.JSON, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("gate_weights", sa.JSON, nullable=False),
        sa.Column("needs_review", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("response_pk", "model_version_pk", name="uq_predictions_response_model"),
    )
    op.create_index("ix_predictions_response_pk", "predictions", ["response_pk"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "agent_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("response_pk", sa.Integer, sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("jobs.id"), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("score", sa.Integer, nullable=True),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("components", sa.JSON, nullable=False),
        sa.Column("grounding_rate", sa.Float, nullable=True),
        sa.Column("rule_score", sa.Integer, nullable=True),
        sa.Column("feedback", sa.Text, nullable=True),
        sa.Column("raw_outputs", sa.JSON, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("backend", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("tokens", sa.JSON, nullable=False),
        sa.Column("latency_s", sa.Float, nullable=True),
        sa.Column("cost_usd", sa.Float, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_agent_results_response_pk", "agent_results", ["response_pk"])
    op.create_index("ix_agent_results_job_id", "agent_results", ["job_id"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("response_pk", sa.Integer, sa.ForeignKey("responses.id", ondelete="CASCADE"), nullable=False),
        sa.Column("prediction_id", sa.Integer, sa.ForeignKey("predictions.id"), nullable=True),
        sa.Column("agent_result_id", sa.Integer, sa.ForeignKey("agent_results.id"), nullable=True),
        sa.Column("reason", sa.String(30), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("proposed_scores", sa.JSON, nullable=False),
        sa.Column("final_scores", sa.JSON, nullable=True),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decided_at", TS, nullable=True),
        sa.UniqueConstraint("response_pk", "reason", name="uq_reviews_response_reason"),
    )
    op.create_index("ix_reviews_response_pk", "reviews", ["response_pk"])
    op.create_index("ix_reviews_status", "reviews", ["status"])
    op.create_table(
        "review_decisions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("review_id", sa.Integer, sa.ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("rater_id", sa.String(200), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_review_decisions_review_id", "review_decisions", ["review_id"])


def downgrade() -> None:
    for table in ("review_decisions", "reviews", "agent_results", "jobs", "predictions", "responses",
                  "model_versions"):
        op.drop_table(table)
