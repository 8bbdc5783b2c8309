"""Tasks and rubrics: the core data model of rubricate.

A *task* is one assessment item: its question (markdown, may contain data tables), optional context
(a reading passage), and its rubric. A rubric can be

* **analytic** - binary criteria ("E1: student states that Gas A and D could be the same substance"),
  the multi-label kind of the UniMoE paper;
* **holistic/ordinal** - one score scale with a description per level;
* **multi-trait** - several ordinal scales (e.g. ideas, organization, conventions);

or analytic and ordinal at once. *Components* are named pieces of evidence for the LLM path
(AutoSCORE); optional *scoring rules* turn extracted components into a score deterministically.

Task files are YAML or JSON; a folder of them is a :class:`TaskRegistry`. Validation errors name the
file and the field path (``rubric.scales.0.levels.2.score``) so that authors can fix them quickly.
See ``docs/task-files.md`` for a complete example.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rubricate.errors import TaskFileError, UnknownTaskError

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"  # component ids are used as names in scoring rules

ComponentType = Literal["boolean", "count", "list", "text"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Criterion(_Strict):
    """One binary analytic criterion (present / absent)."""

    id: str = Field(pattern=_ID, description="Label key, e.g. 'E1'.")
    description: str = Field(min_length=1)
    perspective: str | None = Field(None, description="Optional NGSS-style tag, e.g. 'SEP: analyzing data'.")


class ScoreLevel(_Strict):
    score: int
    description: str = Field(min_length=1)


class Scale(_Strict):
    """An ordinal score scale: the holistic score, or one trait of a multi-trait rubric."""

    id: str = Field("score", pattern=_ID, description="Label key, e.g. 'score' or 'organization'.")
    name: str | None = None
    min: int = 0
    max: int
    levels: list[ScoreLevel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_levels(self) -> "Scale":
        if self.max <= self.min:
            raise ValueError(f"max ({self.max}) must be greater than min ({self.min})")
        seen: set[int] = set()
        for lv in self.levels:
            if not self.min <= lv.score <= self.max:
                raise ValueError(f"level score {lv.score} outside the scale range {self.min}-{self.max}")
            if lv.score in seen:
                raise ValueError(f"level score {lv.score} is described twice")
            seen.add(lv.score)
        return self

    @property
    def scores(self) -> list[int]:
        return list(range(self.min, self.max + 1))

    def level(self, score: int) -> ScoreLevel | None:
        return next((lv for lv in self.levels if lv.score == score), None)


class Component(_Strict):
    """A named piece of evidence that the extraction agent looks for in a response."""

    id: str = Field(pattern=_IDENT)
    description: str = Field(min_length=1)
    type: ComponentType = "boolean"


class RuleCase(_Strict):
    score: int
    when: str = Field(min_length=1, description="Boolean expression over component ids, e.g. "
                      "'valid_conclusion and len(design_improvements) >= 2'.")


class CasesRule(_Strict):
    """Ordered conditions: the first case whose ``when`` holds gives the score, else ``default``."""

    kind: Literal["cases"] = "cases"
    scale: str = "score"
    cases: list[RuleCase] = Field(min_length=1)
    default: int


class CountMapRule(_Strict):
    """Count evidence, then map the count to a score: e.g. key elements 4 -> 3, 3 -> 2, 1-2 -> 1, else 0.

    Booleans count 1 when true, ``count`` components add their value, ``list`` components add their length.
    Keys of ``map`` are a number ("4"), a closed range ("1-2") or an open range ("4+").
    """

    kind: Literal["count_map"] = "count_map"
    scale: str = "score"
    count: list[str] = Field(min_length=1, description="Component ids whose evidence is counted.")
    map: dict[str, int] = Field(min_length=1)
    default: int = 0

    @field_validator("map")
    @classmethod
    def _check_keys(cls, v: dict[str, int]) -> dict[str, int]:
        for key in v:
            _parse_count_key(key)
        return v

    def score_for(self, n: int) -> int:
        for key, score in self.map.items():
            lo, hi = _parse_count_key(key)
            if lo <= n <= hi:
                return score
        return self.default


ScoringRule = Annotated[Union[CasesRule, CountMapRule], Field(discriminator="kind")]


def _parse_count_key(key: str) -> tuple[int, float]:
    k = str(key).strip()
    try:
        if k.endswith("+"):
            return int(k[:-1]), float("inf")
        if "-" in k:
            lo, hi = k.split("-", 1)
            return int(lo), int(hi)
        return int(k), int(k)
    except ValueError:
        raise ValueError(f"count key '{key}' must be a number, a range like '1-2' or an open range like '4+'")


class Rubric(_Strict):
    criteria: list[Criterion] = Field(default_factory=list, description="Analytic binary criteria.")
    scales: list[Scale] = Field(default_factory=list, description="Holistic score and/or ordinal traits.")
    components: list[Component] = Field(default_factory=list, description="Evidence for the LLM path.")
    scoring_rules: list[ScoringRule] = Field(default_factory=list)
    notes: str | None = Field(None, description="Key elements, sample responses, scoring notes (markdown).")

    @model_validator(mode="after")
    def _check(self) -> "Rubric":
        if not self.criteria and not self.scales:
            raise ValueError("a rubric needs analytic 'criteria', ordinal 'scales', or both")
        keys = [c.id for c in self.criteria] + [s.id for s in self.scales]
        dupes = sorted({k for k in keys if keys.count(k) > 1})
        if dupes:
            raise ValueError(f"criterion/scale ids must be unique within a task; repeated: {dupes}")
        comp_ids = [c.id for c in self.components]
        if len(set(comp_ids)) != len(comp_ids):
            raise ValueError("component ids must be unique")
        scales = {s.id: s for s in self.scales}
        for i, rule in enumerate(self.scoring_rules):
            if rule.scale not in scales:
                raise ValueError(f"scoring_rules.{i}: unknown scale '{rule.scale}' (scales: {list(scales)})")
            sc = scales[rule.scale]
            outputs = [rule.default] + (
                [c.score for c in rule.cases] if isinstance(rule, CasesRule) else list(rule.map.values())
            )
            for s in outputs:
                if not sc.min <= s <= sc.max:
                    raise ValueError(f"scoring_rules.{i}: score {s} outside {sc.min}-{sc.max}")
            if isinstance(rule, CasesRule):
                for j, case in enumerate(rule.cases):
                    try:
                        check_expression(case.when, set(comp_ids))
                    except ValueError as e:
                        raise ValueError(f"scoring_rules.{i}.cases.{j}.when: {e}") from None
            else:
                unknown = [c for c in rule.count if c not in comp_ids]
                if unknown:
                    raise ValueError(f"scoring_rules.{i}.count: unknown components {unknown}")
        return self


class ReferenceAnswer(_Strict):
    """A model answer to the question (SemEval, Mohler, SAF): what zero-shot scoring compares responses with.

    ``category`` keeps the source's grading of the reference itself (Beetle: BEST / GOOD / MINIMAL / KEYWORD);
    ``id`` is the source's id (Beetle's ``answerMatch`` attribute of a response names it).
    """

    text: str = Field(min_length=1)
    category: str | None = None
    id: str | None = None

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("a reference answer must not be blank")
        return v


class Task(_Strict):
    """One assessment item with its rubric."""

    id: str = Field(pattern=_ID)
    title: str = Field(min_length=1)
    question: str = Field(min_length=1, description="The prompt shown to students (markdown; tables allowed).")
    context: str | None = Field(None, description="Reading passage or stimulus, if any (markdown).")
    grade: int | str | None = None
    subject: str | None = None
    rubric: Rubric
    reference_answers: list[ReferenceAnswer] = Field(
        default_factory=list, description="Model answers to the question (optional; used by zero-shot scoring).",
    )
    prompts: dict[str, str] = Field(
        default_factory=dict,
        description="Per-agent prompt template overrides: agent name -> template file (relative to the task file).",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("reference_answers")
    @classmethod
    def _unique_reference_ids(cls, v: list[ReferenceAnswer]) -> list[ReferenceAnswer]:
        ids = [r.id for r in v if r.id is not None]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"reference answer ids must be unique; repeated: {dupes}")
        return v

    @property
    def scales(self) -> list[Scale]:
        return self.rubric.scales

    @property
    def criteria(self) -> list[Criterion]:
        return self.rubric.criteria

    @property
    def components(self) -> list[Component]:
        return self.rubric.components

    @property
    def primary_scale(self) -> Scale | None:
        """The scale reported as 'the score' (the first one), or None for purely analytic tasks."""
        return self.rubric.scales[0] if self.rubric.scales else None

    def scale(self, scale_id: str) -> Scale:
        for s in self.rubric.scales:
            if s.id == scale_id:
                return s
        raise KeyError(f"task '{self.id}' has no scale '{scale_id}'")

    @property
    def label_keys(self) -> list[str]:
        """Keys of a record's ``labels`` dict for this task: criterion ids, then scale ids."""
        return [c.id for c in self.rubric.criteria] + [s.id for s in self.rubric.scales]

    def check_labels(self, labels: dict[str, int]) -> list[str]:
        """Return problems with a labels dict (unknown key, value out of range); empty when valid."""
        problems = []
        crit = {c.id for c in self.rubric.criteria}
        scales = {s.id: s for s in self.rubric.scales}
        for key, value in labels.items():
            if key in crit:
                if value not in (0, 1):
                    problems.append(f"criterion '{key}' must be 0 or 1, got {value!r}")
            elif key in scales:
                sc = scales[key]
                if not isinstance(value, int) or not sc.min <= value <= sc.max:
                    problems.append(f"score '{key}' must be an integer in {sc.min}-{sc.max}, got {value!r}")
            else:
                problems.append(f"unknown label '{key}' (task '{self.id}' has {self.label_keys})")
        return problems

    def apply_rules(self, components: dict[str, Any]) -> dict[str, int]:
        """Deterministic scores from extracted component values, one per scale that has a rule."""
        out: dict[str, int] = {}
        # A component the extractor did not return counts as absent (None), not as an unknown name.
        values = {c.id: None for c in self.rubric.components} | dict(components)
        for rule in self.rubric.scoring_rules:
            if isinstance(rule, CasesRule):
                score = rule.default
                for case in rule.cases:
                    if evaluate_expression(case.when, values):
                        score = case.score
                        break
            else:
                score = rule.score_for(sum(_evidence_count(components.get(c)) for c in rule.count))
            out[rule.scale] = score
        return out


def _evidence_count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, (list, tuple)):
        return len(value)
    if isinstance(value, str):
        return int(bool(value.strip()))
    return 0


# --- a tiny, safe expression language for scoring rules -------------------------------------------------
_ALLOWED_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare, ast.Eq,
    ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Name, ast.Load, ast.Constant, ast.Call, ast.BinOp,
    ast.Add, ast.Sub,
)
_FUNCS = {"len": lambda x: len(x or []), "count": lambda *xs: sum(_evidence_count(x) for x in xs)}


def check_expression(expr: str, names: set[str]) -> ast.Expression:
    """Parse a rule expression and reject anything beyond boolean logic, comparisons, len() and count()."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse '{expr}': {e.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED_NODES):
            raise ValueError(f"'{expr}': {type(node).__name__} is not allowed in a scoring rule")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
                raise ValueError(f"'{expr}': only len(x) and count(a, b, ...) may be called")
        elif isinstance(node, ast.Name) and node.id not in _FUNCS and node.id not in names | {"True", "False"}:
            raise ValueError(f"'{expr}': unknown component '{node.id}'")
    return tree


def evaluate_expression(expr: str, values: dict[str, Any]) -> Any:
    """Evaluate a checked rule expression against component values (missing components are None)."""
    tree = check_expression(expr, set(values))

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.BoolOp):
            vals = (ev(v) for v in node.values)
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.UnaryOp):
            v = ev(node.operand)
            return (not v) if isinstance(node.op, ast.Not) else -v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b
        if isinstance(node, ast.Compare):
            left = ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                ok = {
                    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
                    ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
                }[type(op)](left, right)
                if not ok:
                    return False
                left = right
            return True
        if isinstance(node, ast.Call):
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])  # type: ignore[union-attr]
        if isinstance(node, ast.Name):
            if node.id in ("True", "False"):
                return node.id == "True"
            v = values.get(node.id)
            return 0 if v is None else v
        if isinstance(node, ast.Constant):
            return node.value
        raise ValueError(f"unsupported node {type(node).__name__}")

    return ev(tree)


# --- loading --------------------------------------------------------------------------------------------
TASK_SUFFIXES = (".yaml", ".yml", ".json")


def _format_validation_error(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        out.append(f"{loc or '<root>'}: {e['msg']}")
    return out


def task_from_dict(data: Any, source: str | Path = "<dict>") -> Task:
    """Validate a parsed task document; errors name ``source`` and the field path."""
    if not isinstance(data, dict):
        raise TaskFileError(source, [f"<root>: expected a mapping, got {type(data).__name__}"])
    try:
        return Task.model_validate(data)
    except ValidationError as e:
        raise TaskFileError(source, _format_validation_error(e)) from None


def load_task(path: str | Path) -> Task:
    """Load one YAML or JSON task file."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskFileError(path, [f"<file>: not UTF-8 ({e.reason} at byte {e.start})"]) from None
    except OSError as e:
        raise TaskFileError(path, [f"<file>: {e.strerror}"]) from None
    try:
        data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise TaskFileError(path, [f"<syntax>: {e}"]) from None
    task = task_from_dict(data, path)
    task.metadata.setdefault("source_dir", str(path.parent.resolve()))
    return task


class TaskRegistry:
    """A set of tasks by id, usually loaded from a folder of task files (searched recursively)."""

    def __init__(self, tasks: list[Task] | None = None) -> None:
        self._tasks: dict[str, Task] = {}
        for t in tasks or []:
            self.add(t)

    def add(self, task: Task) -> None:
        if task.id in self._tasks:
            raise ValueError(f"duplicate task id '{task.id}'")
        self._tasks[task.id] = task

    @classmethod
    def from_dir(cls, path: str | Path) -> "TaskRegistry":
        root = Path(path)
        if root.is_file():
            return cls([load_task(root)])
        if not root.is_dir():
            raise FileNotFoundError(f"task folder not found: {root}")
        reg = cls()
        sources: dict[str, Path] = {}
        errors: list[str] = []
        for f in sorted(p for p in root.rglob("*") if p.suffix in TASK_SUFFIXES and p.is_file()):
            try:
                t = load_task(f)
            except TaskFileError as e:
                errors.append(str(e))
                continue
            if t.id in sources:
                errors.append(f"{f}: task id '{t.id}' already defined in {sources[t.id]}")
                continue
            sources[t.id] = f
            reg.add(t)
        if errors:
            raise TaskFileError(root, errors)
        return reg

    @classmethod
    def from_snapshot(cls, data: list[dict[str, Any]]) -> "TaskRegistry":
        return cls([task_from_dict(d, "<snapshot>") for d in data])

    def snapshot(self) -> list[dict[str, Any]]:
        """JSON-able copy of every task, stored inside checkpoints so they are self-contained."""
        return [t.model_dump(mode="json", exclude={"metadata": {"source_dir"}}) for t in self._tasks.values()]

    def get(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTaskError(task_id, list(self._tasks)) from None

    __getitem__ = get

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self):
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def ids(self) -> list[str]:
        return list(self._tasks)

    def subset(self, ids: list[str]) -> "TaskRegistry":
        return TaskRegistry([self.get(i) for i in ids])
