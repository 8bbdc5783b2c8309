"""Making a task file from plain text: question, reference answers and rubric lines (``rubricate tasks new``).

An item writer has a question, one or more reference answers and a rubric written as lines; this module
turns them into a validated :class:`~rubricate.tasks.Task` and writes it as a YAML task file that
``rubricate tasks validate`` accepts, so ``predict`` and the server can score the item at once (zero-shot
with a task-text student). Rubric text is either

* **levels** (holistic/ordinal or 2-way): one ``score: description`` line per score point
  (``1: The answer says the bulb is in a closed path with the battery.`` / ``0: Anything else.``); the
  scale's range defaults to the lowest and highest score given;
* **criteria** (analytic): one ``id: description`` line per binary criterion (``E1: States that ...``).

A line that starts with whitespace continues the previous description; blank lines and lines starting
with ``#`` are ignored. A value given as ``@path`` is read from that file (line numbers in errors are
then the file's). The documented template: :data:`TEMPLATE` (``rubricate tasks template``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rubricate.errors import InputError
from rubricate.resources import resource_path
from rubricate.tasks import Scale, Task, load_task, task_from_dict

TEMPLATE = resource_path("examples", "templates", "new-item.yaml")  #: a commented task file to copy
_SCORE_LINE = re.compile(r"^\s*(-?\d+)\s*[:=]\s*(.+)$")
_CRITERION_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*:\s*(.+)$")


@dataclass
class Text:
    """A piece of text and where it came from (an option name, or a file) for error messages."""

    value: str
    origin: str
    file: Path | None = None


def read_text(value: str, option: str) -> Text:
    """``value`` itself, or the contents of the file when it is ``@path``."""
    if not value.startswith("@"):
        return Text(value, option)
    path = Path(value[1:])
    try:
        return Text(path.read_text(encoding="utf-8"), option, path)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {option} from this file: {e}", file=path, column=option) from None


def _rubric_lines(text: Text, pattern: re.Pattern[str], expected: str) -> list[tuple[str, str]]:
    """``(key, description)`` per entry; continuation lines join the previous description."""
    entries: list[tuple[str, str, int]] = []
    for lineno, raw in enumerate(text.value.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[:1].isspace() and entries and not pattern.match(raw):
            key, desc, first = entries[-1]
            entries[-1] = (key, f"{desc} {raw.strip()}", first)
            continue
        m = pattern.match(raw)
        if not m:
            raise InputError(f"expected {expected}, got {raw.strip()[:80]!r}", file=text.file,
                             line=lineno if text.file else None, column=text.origin)
        entries.append((m.group(1), m.group(2).strip(), lineno))
    if not entries:
        raise InputError(f"no {expected} lines", file=text.file, column=text.origin)
    return [(k, d) for k, d, _ in entries]


def parse_levels(text: Text) -> list[dict[str, Any]]:
    """``score: description`` lines -> ``[{score, description}]`` (highest score first, as task files list them)."""
    levels = [{"score": int(k), "description": d} for k, d in _rubric_lines(text, _SCORE_LINE, "'score: description'")]
    return sorted(levels, key=lambda lv: -lv["score"])


def parse_criteria(text: Text) -> list[dict[str, str]]:
    """``id: description`` lines -> ``[{id, description}]`` (analytic criteria, in the order given)."""
    return [{"id": k, "description": d} for k, d in _rubric_lines(text, _CRITERION_LINE, "'id: description'")]


@dataclass
class NewTask:
    """What ``rubricate tasks new`` asks for; the fields mirror :class:`~rubricate.tasks.Task`'s."""

    id: str
    title: str
    question: str
    references: list[str] = field(default_factory=list)  #: reference answers (Task.reference_answers)
    levels: str | None = None  #: ``score: description`` lines (an ordinal or 2-way scale)
    criteria: str | None = None  #: ``id: description`` lines (analytic criteria)
    context: str | None = None
    grade: str | None = None
    subject: str | None = None
    notes: str | None = None  #: Rubric.notes: key elements, sample answers
    scale_id: str = Scale.model_fields["id"].default
    scale_name: str | None = None
    scale_min: int | None = None  #: default: the lowest score in ``levels``
    scale_max: int | None = None  #: default: the highest score in ``levels``


def _scale(req: NewTask) -> dict[str, Any]:
    levels = parse_levels(read_text(req.levels or "", "levels"))
    scores = [lv["score"] for lv in levels]
    scale: dict[str, Any] = {"id": req.scale_id}
    if req.scale_name:
        scale["name"] = req.scale_name
    scale["min"] = min(scores) if req.scale_min is None else req.scale_min
    scale["max"] = max(scores) if req.scale_max is None else req.scale_max
    scale["levels"] = levels
    return scale


def task_document(req: NewTask) -> dict[str, Any]:
    """The task file's content (only what was given, in the order of docs/task-files.md), not yet validated."""
    if not req.levels and not req.criteria:
        raise InputError("give the rubric: levels ('score: description' lines) and/or criteria "
                         "('id: description' lines)", column="levels")
    doc: dict[str, Any] = {"id": req.id, "title": req.title}
    grade = int(req.grade) if req.grade and req.grade.strip().isdigit() else req.grade
    doc.update({k: v for k, v in (("grade", grade), ("subject", req.subject)) if v})
    doc["question"] = read_text(req.question, "question").value.strip()
    if req.context:
        doc["context"] = read_text(req.context, "context").value.strip()
    refs = [read_text(r, "reference").value.strip() for r in req.references]
    if refs:
        doc["reference_answers"] = [{"text": r} for r in refs if r]
    rubric: dict[str, Any] = {}
    if req.criteria:
        rubric["criteria"] = parse_criteria(read_text(req.criteria, "criteria"))
    if req.levels:
        rubric["scales"] = [_scale(req)]
    if req.notes:
        rubric["notes"] = read_text(req.notes, "notes").value.strip()
    doc["rubric"] = rubric
    doc["metadata"] = {"source": "rubricate tasks new"}
    return doc


class _BlockDumper(yaml.SafeDumper):
    """YAML with multi-line strings as ``|`` blocks (a question reads as it was written)."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def build_task(req: NewTask) -> tuple[Task, dict[str, Any]]:
    """Validate the request as a task (errors name the field, as ``tasks validate`` does): (task, document)."""
    doc = task_document(req)
    return task_from_dict(doc, f"<tasks new {req.id}>"), doc


def write_new_task(req: NewTask, out: str | Path, overwrite: bool = False) -> Task:
    """Build, validate and write the task file; reads it back with :func:`~rubricate.tasks.load_task`.

    An existing file is kept unless ``overwrite`` (nothing is written when validation fails).
    """
    _, doc = build_task(req)
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError("file exists (use --force to replace it)", file=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(yaml.dump(doc, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=110),
                   encoding="utf-8")
    os.replace(tmp, out)
    return load_task(out)
