"""What the task-text student reads: *statements* made from a task's own text, paired with responses.

The task-text student (``task_text.py``) never sees a task id. For every binary label of a task's
``LabelEncoding`` it reads one or more short **statements** built from the task file and decides whether the
response satisfies them:

* a 2-way item (one binary decision: a lone criterion, or a 0-1 scale) with ``reference_answers``: one
  statement per reference answer, ``"reference answer: <text>"`` (at most ``max_references``, BEST/GOOD
  categories first); P(correct) pools the statements (``reference_pool``: max or mean);
* an analytic criterion: ``"criterion: <description>"``;
* an ordinal scale ``s`` with range ``min..max``: for each cumulative indicator ``s>=k``,
  ``"score at least k of max: <level-k description>"`` (P(score >= k), decoded like every cumulative label:
  monotone, then counted at 0.5, ``rubricate.labels``).

Each statement is followed by ``"question: <question>"`` (for an item with reference answers and more than one
label, by ``"reference answers: <r1> | <r2> ... question: <question>"``). A pair is encoded as
``[CLS] statement question [SEP] response [SEP]``: the response keeps up to ``max_response_tokens``, the
statement up to ``max_statement_tokens``, and the question gets what is left of ``max_length`` (so the question
is truncated first). This module is torch-free; the model is in ``task_text.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Sequence

import numpy as np

from rubricate.labels import LabelEncoding, LabelSpec
from rubricate.tasks import Task

Pool = Literal["max", "mean"]
#: reference-answer categories (Beetle's BEST/GOOD/MINIMAL/KEYWORD) in the order they are kept
CATEGORY_ORDER = ("best", "good", "minimal", "keyword")


@dataclass
class TaskTextOptions:
    """The task-text student's architecture and input settings (a checkpoint stores them; defined once here).

    Measured with the MiniLM tokenizer (docs/benchmarks.md, "Task-text student"): SemEval-2013 responses have
    p99 43 tokens, its reference answers p99 50; ASAP-SAS responses p90 91 (p95 108), its level descriptions p90
    79; questions are long (ASAP-SAS items with a reading passage: median 659), so they are cut first. Hence
    responses up to 96 tokens, statements up to 64, and pairs of 160 (the benchmark uses 128 on SemEval).
    """

    encoder: str = "minilm"  #: "minilm", "mpnet" or a HF encoder directory (modeling.resolve_encoder)
    max_length: int = 160  #: tokens of one (statement + question, response) pair, special tokens included
    max_response_tokens: int = 96  #: the response is cut to this many tokens before the question is
    max_statement_tokens: int = 64  #: the statement (reference answer / criterion / level text) is cut to this
    max_references: int = 3  #: reference answers used per 2-way item (kept in CATEGORY_ORDER, then file order)
    reference_pool: Pool = "max"  #: how one label's statements pool into one logit (max: any reference matches)
    head_hidden: int = 256
    dropout: float = 0.1

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(TaskTextOptions)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------------------------------------
def reference_texts(task: Task, max_references: int) -> list[str]:
    """The task's reference answers (``Task.reference_answers``, when the schema has them), best first."""
    refs = list(getattr(task, "reference_answers", None) or [])

    def rank(item: tuple[int, Any]) -> tuple[int, int]:
        cat = (getattr(item[1], "category", None) or "").lower()
        return (CATEGORY_ORDER.index(cat) if cat in CATEGORY_ORDER else len(CATEGORY_ORDER), item[0])

    ordered = [r for _, r in sorted(enumerate(refs), key=rank)]
    texts = [getattr(r, "text", r) for r in ordered]
    return [str(t) for t in texts if str(t).strip()][:max_references]


def is_two_way(enc: LabelEncoding) -> bool:
    """One binary decision in all: a lone criterion, or one scale with two scores."""
    return enc.n_labels == 1


def label_statements(task: Task, enc: LabelEncoding, spec: LabelSpec, max_references: int) -> list[str]:
    """The statements of one label (at least one)."""
    refs = reference_texts(task, max_references) if is_two_way(enc) else []
    if refs:
        return [f"reference answer: {r}" for r in refs]
    if spec.kind == "criterion":
        crit = next(c for c in task.criteria if c.id == spec.source)
        return [f"criterion: {crit.description}"]
    scale = task.scale(spec.source)
    level = scale.level(int(spec.threshold))
    head = f"score at least {spec.threshold} of {scale.max}"
    return [f"{head}: {level.description}" if level else head]


@dataclass
class TaskStatements:
    """One task's statements, tokenized once: ``statements[j]`` belongs to label ``label_of[j]``."""

    task_id: str
    encoding: LabelEncoding
    statement_ids: list[list[int]]  # per statement, token ids without special tokens (cut to max_statement_tokens)
    question_ids: list[int]  # the question (and its context), without special tokens, not yet cut
    label_of: list[int]  # (S,) label index of each statement

    def statements_of(self, label: int) -> list[int]:
        return [j for j, lab in enumerate(self.label_of) if lab == label]


def task_statements(task: Task, tokenizer: Any, options: TaskTextOptions,
                    encoding: LabelEncoding | None = None) -> TaskStatements:
    """Build and tokenize a task's statements (``encoding`` defaults to ``LabelEncoding.from_task(task)``)."""
    enc = encoding or LabelEncoding.from_task(task)
    texts: list[str] = []
    label_of: list[int] = []
    for i, spec in enumerate(enc.specs):
        for s in label_statements(task, enc, spec, options.max_references):
            texts.append(s)
            label_of.append(i)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    question = "question: " + task.question + (f"\n{task.context}" if task.context else "")
    refs = [] if is_two_way(enc) else reference_texts(task, options.max_references)
    if refs:  # an ordinal or analytic item with model answers: they come before the question (cut last)
        question = "reference answers: " + " | ".join(refs) + " " + question
    q_ids = tokenizer([question], add_special_tokens=False)["input_ids"][0]
    return TaskStatements(task.id, enc, [list(x)[: options.max_statement_tokens] for x in ids], list(q_ids),
                          label_of)


def pair_ids(statement: Sequence[int], question: Sequence[int], response: Sequence[int], cls_id: int,
             sep_id: int, max_length: int) -> list[int]:
    """``[CLS] statement question [SEP] response [SEP]`` cut to ``max_length``: the question gives way first."""
    room = max_length - 3 - len(statement) - len(response)
    if room < 0:  # a long statement and a long response: the response keeps its share, the statement is cut
        statement = statement[: max(0, len(statement) + room)]
        room = 0
    return [cls_id, *statement, *question[:room], sep_id, *response, sep_id][:max_length]


def special_ids(tokenizer: Any) -> tuple[int, int]:
    """(cls, sep) ids: BERT's [CLS]/[SEP] or RoBERTa/MPNet's <s>/</s>."""
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("the task-text student needs a tokenizer with CLS/SEP (or BOS/EOS) tokens")
    return int(cls_id), int(sep_id)


@dataclass
class PairSet:
    """(statement, response) pairs grouped into decisions.

    A *unit* is one (response, label) decision; its pairs are ``pair_unit == u``. ``unit_row``/``unit_label``
    say which response row and which label of its task the unit is; ``targets`` (U,) its 0/1 (or soft) target,
    NaN when unknown.
    """

    input_ids: list[list[int]]  # (P, T_p)
    pair_unit: np.ndarray  # (P,) int64
    unit_row: np.ndarray  # (U,) int64
    unit_label: np.ndarray  # (U,) int64
    targets: np.ndarray  # (U,) float32

    @property
    def n_units(self) -> int:
        return len(self.unit_row)


def build_pairs(statements: dict[str, TaskStatements], task_ids: Sequence[str], response_ids: list[list[int]],
                options: TaskTextOptions, cls_id: int, sep_id: int,
                targets: np.ndarray | None = None) -> PairSet:
    """Every (statement, response) pair of every label of each row's task.

    ``targets``: (N, max_labels) encoded labels (NaN = missing); with it, units whose target is NaN are left out
    (training), without it every label is a unit (scoring).
    """
    ids: list[list[int]] = []
    pair_unit: list[int] = []
    unit_row: list[int] = []
    unit_label: list[int] = []
    unit_target: list[float] = []
    for row, (tid, resp) in enumerate(zip(task_ids, response_ids)):
        st = statements[tid]
        resp = list(resp)[: options.max_response_tokens]
        for lab in range(st.encoding.n_labels):
            y = float("nan") if targets is None else float(targets[row, lab])
            if targets is not None and np.isnan(y):
                continue
            u = len(unit_row)
            unit_row.append(row)
            unit_label.append(lab)
            unit_target.append(y)
            for j in st.statements_of(lab):
                ids.append(pair_ids(st.statement_ids[j], st.question_ids, resp, cls_id, sep_id, options.max_length))
                pair_unit.append(u)
    return PairSet(ids, np.asarray(pair_unit, dtype=np.int64), np.asarray(unit_row, dtype=np.int64),
                   np.asarray(unit_label, dtype=np.int64), np.asarray(unit_target, dtype=np.float32))


def pool_units(pair_logits: np.ndarray, pair_unit: np.ndarray, n_units: int, pool: Pool) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """(P,) pair logits -> (U,) unit logits and (U,) the pair chosen per unit (max) or its first pair (mean)."""
    out = np.full(n_units, -np.inf if pool == "max" else 0.0)
    pick = np.full(n_units, -1, dtype=np.int64)
    if pool == "max":
        for p, (z, u) in enumerate(zip(pair_logits, pair_unit)):
            if z > out[u]:
                out[u], pick[u] = z, p
    else:
        counts = np.bincount(pair_unit, minlength=n_units)
        np.add.at(out, pair_unit, pair_logits)
        out = out / np.maximum(counts, 1)
        for p, u in enumerate(pair_unit):
            if pick[u] < 0:
                pick[u] = p
    return out, pick
