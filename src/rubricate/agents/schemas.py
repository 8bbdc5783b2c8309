"""Output schemas of the agents, generated from the task file (never hand-written per dataset).

Each schema is a pydantic model built at run time; the JSON schema sent to the backend for
constrained decoding comes from the same model (:func:`json_schema`), so what the model is forced to
write and what the pipeline accepts cannot drift apart.

* extraction: one object per component, ``{"evidence": [quotes...], "value": ...}`` where the value
  type follows the component (boolean / count / list / text). Evidence comes first so that the model
  quotes before it decides.
* scoring and the single-call baseline: an optional short ``rationale``, then one integer per scale
  (restricted to the scale's range) and 0/1 per analytic criterion.
* verification: the corrected extraction plus a list of corrections; feedback: at most N words.

Validation is strict (``"2"`` is not an integer, ``"true"`` is not a boolean): a wrong type is an
invalid output, to be retried and, failing that, reported as a failure. Length caps (``maxLength``,
``maxItems``) are decoding aids only and are not validation criteria, except the feedback word limit.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Annotated, Any, Literal, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator

from rubricate.tasks import Component, Task

#: Fallback component for tasks that define neither components nor criteria (holistic-only rubrics).
KEY_POINTS = Component(
    id="key_points", type="list",
    description="Statements in the response that bear on the rubric's score levels (relevant ideas, "
                "reasons, details), each quoted as evidence.")


class _Lenient(BaseModel):
    """Strict types, but extra keys are ignored rather than failing an otherwise valid reply."""

    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


def agent_components(task: Task) -> list[Component]:
    """Components the extraction agent looks for: the task's own, else one boolean per analytic
    criterion (``crit_<id>``), else :data:`KEY_POINTS`."""
    if task.components:
        return list(task.components)
    if task.criteria:
        out = []
        for c in task.criteria:
            cid = "crit_" + re.sub(r"[^A-Za-z0-9_]", "_", c.id)
            out.append(Component(id=cid, type="boolean", description=f"{c.id}: {c.description}"))
        return out
    return [KEY_POINTS]


def _value_type(comp: Component, max_items: int, max_chars: int) -> tuple[Any, Any]:
    if comp.type == "boolean":
        return bool, Field(...)
    if comp.type == "count":
        return int, Field(..., ge=0)
    if comp.type == "list":
        item = Annotated[str, Field(json_schema_extra={"maxLength": max_chars})]
        return list[item], Field(..., json_schema_extra={"maxItems": max_items})  # type: ignore[valid-type]
    return str, Field(..., json_schema_extra={"maxLength": max_chars})


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*(?:\^p|\n)+\s*|\s*[\"\\]+\s*")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+")


def response_spans(text: str, max_chars: int = 200, max_spans: int = 80) -> list[str]:
    """The response cut into quotable spans: sentences, split at clause punctuation (and then between
    words) when longer than ``max_chars``; duplicates dropped, order kept, at most ``max_spans``.

    Spans never contain ``"`` or ``\\`` (the text is cut there): llama-cpp-python's schema-to-grammar
    conversion mis-escapes both inside enum strings (a ``"`` gives an unparsable grammar that crashed
    the process; a backslash makes the model write a different string).

    With ``evidence="spans"`` the extraction schema restricts every quote to one of these, so a
    constrained decoder can only copy the student's words (grounding 1.0 by construction).
    """
    out: list[str] = []

    def add(piece: str) -> None:
        piece = piece.strip()
        if piece and piece not in out:
            out.append(piece)

    for sent in _SENTENCE_END.split(text):
        if len(sent.strip()) <= max_chars:
            add(sent)
            continue
        for clause in _CLAUSE_END.split(sent):
            words, cur = clause.split(), ""
            for w in words:
                if cur and len(cur) + 1 + len(w) > max_chars:
                    add(cur)
                    cur = w
                else:
                    cur = f"{cur} {w}" if cur else w
            add(cur[:max_chars])
    return out[:max_spans]


def extraction_model(task: Task, *, max_quotes: int = 3, quote_chars: int = 200,
                     list_items: int = 6, evidence_spans: Sequence[str] | None = None) -> type[BaseModel]:
    """Pydantic model of the extraction agent's output for ``task``.

    ``max_quotes`` / ``quote_chars`` cap the evidence per component and the length of one quote;
    ``list_items`` caps ``list`` components (decoding aids: a small model otherwise rambles).
    ``evidence_spans`` (see :func:`response_spans`) restricts each quote to one of these strings.
    """
    fields: dict[str, Any] = {}
    if evidence_spans:
        quote: Any = Literal[tuple(evidence_spans)]  # type: ignore[valid-type]
    else:
        quote = Annotated[str, Field(json_schema_extra={"maxLength": quote_chars})]
    for comp in agent_components(task):
        vtype, vfield = _value_type(comp, list_items, quote_chars)
        item = create_model(
            f"Component_{comp.id}", __base__=_Lenient,
            evidence=(list[quote],  # type: ignore[valid-type]
                      Field(..., description="Exact quotes from the response.",
                            json_schema_extra={"maxItems": max_quotes})),
            value=(vtype, vfield),
        )
        fields[comp.id] = (item, Field(..., description=comp.description))
    return create_model(f"Extraction_{_safe(task.id)}", __base__=_Lenient, **fields)


def _exact_int(v: Any) -> Any:
    """Literal[...] alone accepts 2.0 and true (they compare equal to 2 and 1): a score must be a JSON integer."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected an integer, got {type(v).__name__} {v!r}")
    return v


def score_keys(task: Task) -> list[tuple[str, int, int]]:
    """(key, min, max) of every score the scoring agent returns: scales first, then criteria (0/1)."""
    return [(s.id, s.min, s.max) for s in task.scales] + [(c.id, 0, 1) for c in task.criteria]


def score_model(task: Task, *, rationale_chars: int = 300) -> type[BaseModel]:
    """Pydantic model of the scoring agent's (and single-call baseline's) output.

    Keys are the task's scale and criterion ids (aliases: ids may contain '-' or '.'), each an integer
    restricted to its range; ``rationale_chars`` > 0 adds a short rationale written *before* the scores.
    """
    fields: dict[str, Any] = {}
    if rationale_chars > 0:
        fields["rationale"] = (str, Field(..., json_schema_extra={"maxLength": rationale_chars}))
    for i, (key, lo, hi) in enumerate(score_keys(task)):
        values = tuple(range(lo, hi + 1))
        fields[f"s{i}"] = (Annotated[Literal[values], BeforeValidator(_exact_int)],  # type: ignore[valid-type]
                           Field(..., alias=key))
    return create_model(f"Score_{_safe(task.id)}", __base__=_Lenient, **fields)


def verify_model(task: Task, **extraction_kw: Any) -> type[BaseModel]:
    """Verifier output: what was corrected, then the full (corrected) extraction."""
    ext = extraction_model(task, **extraction_kw)
    return create_model(
        f"Verify_{_safe(task.id)}", __base__=_Lenient,
        corrections=(list[str], Field(..., description="One line per changed component; empty if none.",
                                      json_schema_extra={"maxItems": 5})),
        components=(ext, Field(...)),
    )


def feedback_model(max_words: int = 80) -> type[BaseModel]:
    """Feedback output: one student-facing text of at most ``max_words`` words (validated)."""

    def _check(cls: Any, v: str) -> str:
        n = len(v.split())
        if n == 0:
            raise ValueError("feedback is empty")
        if n > max_words:
            raise ValueError(f"feedback has {n} words; at most {max_words} are allowed")
        return v

    return create_model(
        "Feedback", __base__=_Lenient,
        feedback=(str, Field(..., json_schema_extra={"maxLength": max_words * 8})),
        __validators__={"check_words": field_validator("feedback")(_check)},
    )


def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to the backend: refs inlined, every property required, no extra keys,
    titles dropped (the form OpenAI's strict structured outputs and llama.cpp grammars both accept)."""
    raw = model.model_json_schema(by_alias=True)
    defs = raw.pop("$defs", {})

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return fix(copy.deepcopy(defs[node["$ref"].split("/")[-1]]))
            out = {k: fix(v) for k, v in node.items() if k != "title"}
            if out.get("type") == "object" and "properties" in out:
                out["required"] = list(out["properties"])
                out["additionalProperties"] = False
            if "const" in out and "enum" not in out:
                out["enum"] = [out.pop("const")]
            return out
        if isinstance(node, list):
            return [fix(v) for v in node]
        return node

    return fix(raw)


def strip_keywords(schema: dict[str, Any], keywords: tuple[str, ...] = ("maxLength", "minLength")) -> dict:
    """Copy of a schema without keywords a server rejects (OpenAI strict mode has no ``maxLength``)."""
    if isinstance(schema, dict):
        return {k: strip_keywords(v, keywords) for k, v in schema.items() if k not in keywords}
    if isinstance(schema, list):
        return [strip_keywords(v, keywords) for v in schema]
    return schema


class OutputError(ValueError):
    """A reply that is not valid JSON or does not validate against the agent's schema."""


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def parse_output(text: str, model: type[BaseModel]) -> BaseModel:
    """Parse a reply (tolerating a code fence or prose around one JSON object) and validate it."""
    s = _FENCE.sub("", text.strip())
    start, end = s.find("{"), s.rfind("}")
    if start < 0 or end < start:
        raise OutputError("no JSON object in the reply")
    try:
        obj = json.loads(s[start:end + 1], strict=False)  # tolerate raw newlines inside strings
    except json.JSONDecodeError as e:
        raise OutputError(f"invalid JSON: {e.msg} at char {e.pos}") from None
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
                             for err in e.errors()[:6])
        raise OutputError(f"schema validation failed: {problems}") from None


def scores_from(parsed: BaseModel, task: Task) -> dict[str, int]:
    """Scores of a validated score-model instance, by scale / criterion id."""
    dumped = parsed.model_dump(by_alias=True)
    return {key: int(dumped[key]) for key, _, _ in score_keys(task)}


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", s)
