"""Plain-text view of one agent result (for the demo, logs and the CLI): score, evidence, feedback."""

from __future__ import annotations

from rubricate.agents.pipeline import AgentResult


def render_result(result: AgentResult, *, max_quote_chars: int = 100) -> str:
    """Human-readable summary: status and score, each component with its quotes marked grounded (✓) or not
    found in the response (✗), the rule score when there is one, feedback, accounting and any error."""
    lines = [f"{result.task_id} / {result.response_id}: {result.status.upper()} ({result.mode}, {result.backend}:"
             f"{result.model})"]
    if result.status == "ok":
        lines.append(f"  score: {result.score}  " + "  ".join(f"{k}={v}" for k, v in result.scores.items()))
        if result.rule_score is not None:
            lines.append(f"  rule score (from the extracted components): {result.rule_score}")
        if result.agreement is not None:
            lines.append(f"  self-consistency agreement: {result.agreement:.2f}")
    else:
        lines.append(f"  no score (failure is never a score): {result.error}")
    for cid, cv in result.components.items():
        lines.append(f"  - {cid} = {cv.value!r}")
        for q, ok in zip(cv.evidence, cv.grounded):
            q = q if len(q) <= max_quote_chars else q[:max_quote_chars - 1] + "…"
            lines.append(f"      {'✓' if ok else '✗'} \"{q}\"")
    if result.grounding_rate is not None:
        lines.append(f"  evidence grounding rate: {result.grounding_rate:.2f}")
    if result.feedback:
        lines.append(f"  feedback: {result.feedback}")
    for w in result.warnings:
        lines.append(f"  warning: {w}")
    lines.append(f"  {result.tokens.get('in', 0)} tokens in, {result.tokens.get('out', 0)} out, "
                 f"{result.latency_s:.1f} s" + (f", ${result.cost_usd:.5f}" if result.cost_usd is not None else ""))
    return "\n".join(lines)
