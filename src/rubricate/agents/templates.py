"""Prompt building: one template file per agent (``prompts/<agent>.md``), overridable per task.

A template is markdown with ``$placeholders`` (``string.Template``: braces in rubric text are safe) and
one line ``<<<user>>>`` that separates the system message from the user message. Placeholders:
``$question $context_block $rubric $components $response $extraction $score $format $schema $max_words``.

``$format`` is a fill-in skeleton of the reply (``{"x": {"evidence": ["<exact words ...>"], "value": <true
or false>}}``) and ``$schema`` the raw JSON schema. The packaged templates use ``$format``: models of a
few hundred million parameters copy schema keywords (``"items"``, ``"Evidence"``) into their answers when
shown a JSON schema, and constrained decoding enforces the schema anyway.

The fixed parts (instructions, question, passage, rubric) come first and the response-specific parts
last, so that a backend with prefix caching (llama.cpp) evaluates the long shared prefix only once.
A task overrides a template with ``prompts: {score: my_score.md}`` (path relative to the task file).
"""

from __future__ import annotations

import json
import string
from importlib import resources
from pathlib import Path
from typing import Any

from rubricate.agents.backends import Message
from rubricate.agents.schemas import agent_components
from rubricate.errors import InputError
from rubricate.tasks import Task

AGENTS = ("extract", "score", "single", "verify", "feedback")
SEPARATOR = "<<<user>>>"


def template_text(agent: str, task: Task | None = None) -> tuple[str, str]:
    """(template text, where it came from): the task's override if it names one, else the packaged file."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent '{agent}' (agents: {', '.join(AGENTS)})")
    if task is not None and agent in task.prompts:
        base = Path(task.metadata.get("source_dir", "."))
        path = Path(task.prompts[agent])
        path = path if path.is_absolute() else base / path
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise InputError(f"prompt template for agent '{agent}' of task '{task.id}': {e.strerror}",
                             file=path) from None
    res = resources.files("rubricate.agents").joinpath("prompts", f"{agent}.md")
    return res.read_text(encoding="utf-8"), f"rubricate/agents/prompts/{agent}.md"


def render_rubric(task: Task) -> str:
    """Every rubric element as markdown: score scales with each level, analytic criteria, notes."""
    out: list[str] = []
    for sc in task.scales:
        title = sc.name or sc.id
        out.append(f"## Scale '{sc.id}' ({title}): integer from {sc.min} to {sc.max}")
        for lv in sorted(sc.levels, key=lambda lv: -lv.score):
            out.append(f"- Score {lv.score}: {lv.description.strip()}")
    if task.criteria:
        out.append("## Analytic criteria (1 = present, 0 = absent)")
        for c in task.criteria:
            tag = f" [{c.perspective}]" if c.perspective else ""
            out.append(f"- {c.id}{tag}: {c.description.strip()}")
    if task.rubric.notes:
        out.append("## Scoring notes\n" + task.rubric.notes.strip())
    return "\n".join(out)


_TYPE_HINT = {"boolean": "true/false", "count": "a whole number >= 0", "list": "a list of short items",
              "text": "a short text"}


def render_components(task: Task) -> str:
    return "\n".join(f"- {c.id} ({_TYPE_HINT[c.type]}): {c.description.strip()}" for c in agent_components(task))


def render_scores(scores: dict[str, int]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in scores.items())


#: Placeholder text for strings in the reply skeleton, by property name (others get ``<text>``).
STRING_HINTS = {"evidence": "<words copied exactly from the response>", "rationale": "<one or two sentences>",
                "feedback": "<feedback to the student>", "corrections": "<component: what you changed>"}


def render_format(schema: dict[str, Any] | None, indent: int = 0, key: str | None = None) -> str:
    """A fill-in skeleton of the JSON reply that ``schema`` describes (a hint for the model, not JSON)."""
    if not schema:
        return ""
    pad = "  " * indent
    kind = schema.get("type")
    if "enum" in schema:
        if key in STRING_HINTS:  # evidence restricted to the response's spans: not listed (prefix caching)
            return json.dumps(STRING_HINTS[key])
        return "<one of " + ", ".join(json.dumps(v) for v in schema["enum"]) + ">"
    if "anyOf" in schema:
        return " or ".join(render_format(s, indent, key) for s in schema["anyOf"])
    if kind == "object":
        props = schema.get("properties", {})
        lines = [f'{pad}  "{k}": {render_format(v, indent + 1, k)}' for k, v in props.items()]
        return "{\n" + ",\n".join(lines) + f"\n{pad}}}"
    if kind == "array":
        return "[" + render_format(schema.get("items", {}), indent, key) + ", ...]"
    if kind == "string":
        return json.dumps(STRING_HINTS.get(key or "", "<text>"))
    if kind == "boolean":
        return "<true or false>"
    if kind == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is not None and hi is not None:
            return f"<whole number from {lo} to {hi}>"
        return f"<whole number >= {lo}>" if lo is not None else "<whole number>"
    if kind == "number":
        return "<number>"
    return "<value>"


def build_messages(agent: str, task: Task, response: str, *, schema: dict[str, Any] | None = None,
                   extraction: dict[str, Any] | None = None, scores: dict[str, int] | None = None,
                   max_words: int = 80) -> list[Message]:
    """System + user messages for one agent call."""
    text, source = template_text(agent, task)
    if SEPARATOR not in text:
        raise InputError(f"template has no '{SEPARATOR}' line separating system and user messages", file=source)
    context_block = f"\n# Reading passage / context\n{task.context.strip()}\n" if task.context else ""
    values = {
        "question": task.question.strip(), "context_block": context_block, "rubric": render_rubric(task),
        "components": render_components(task), "response": response.strip(),
        "extraction": json.dumps(extraction, ensure_ascii=False, indent=1) if extraction is not None else "",
        "score": render_scores(scores or {}), "schema": json.dumps(schema, ensure_ascii=False) if schema else "",
        "format": render_format(schema),
        "max_words": str(max_words),
    }
    try:
        system, user = (string.Template(part).substitute(values).strip() for part in text.split(SEPARATOR, 1))
    except (KeyError, ValueError) as e:
        raise InputError(f"template placeholder problem: {e} (known: {', '.join(values)})", file=source) from None
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
