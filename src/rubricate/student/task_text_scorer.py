"""Scoring with a task-text checkpoint: any task in the registry, also one the model never saw.

``Scorer.from_pretrained(dir, tasks=registry_or_dir)`` comes here when the checkpoint's ``config.json`` says
``"architecture": "task_text"``; ``predict(task_ids, texts)`` returns the same :class:`Prediction` objects as the
UniMoE scorer, with ``source`` saying where the task's scores come from:

* ``"trained"`` - the task was among the training tasks of the checkpoint (``config.json`` ``"task_sources"``);
* ``"few_shot"`` - the task has a fitted :class:`FewShotHead` (``config.json`` ``"few_shot"``, written by
  ``task_text_trainer.add_few_shot``);
* ``"zero_shot"`` - any other task of the registry: scored from its text alone.

Few-shot logits are ``z = a * z0 + w . h + b`` per label, with ``z0`` the shared model's logit and ``h`` its pooled
pair vector (the chosen reference's for pooled labels): per-task numbers only, so adding a task never changes
another task's predictions. Scores decode as every student's labels do (monotone cumulative indicators counted at
``threshold``, ``rubricate.labels``); confidence is ``scorer.confidence_of``. Torch backend only (no ONNX export yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rubricate.data.text import text_problem
from rubricate.errors import InputError, UnknownTaskError
from rubricate.labels import DEFAULT_THRESHOLD, LabelEncoding
from rubricate.student.checkpoint import WEIGHTS_NAME, load_tokenizer, read_document
from rubricate.student.scorer import Prediction, confidence_of
from rubricate.student.task_text_data import PairSet, TaskStatements, build_pairs, pool_units, special_ids, \
    task_statements
from rubricate.tasks import TaskRegistry

SOURCES = ("trained", "few_shot", "zero_shot")


@dataclass
class FewShotHead:
    """Per-task logits ``a * z0 + w . h + b`` for each label (shapes: a, b (L,); w (L, H))."""

    a: np.ndarray
    w: np.ndarray
    b: np.ndarray
    n_examples: int = 0

    def apply(self, z0: np.ndarray, h: np.ndarray) -> np.ndarray:
        """(N, L) zero-shot logits, (N, L, H) features -> (N, L) few-shot logits."""
        return self.a[None, :] * z0 + np.einsum("nlh,lh->nl", h, self.w) + self.b[None, :]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.tolist(), "w": self.w.tolist(), "b": self.b.tolist(), "n_examples": self.n_examples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FewShotHead":
        return cls(np.asarray(d["a"], dtype=np.float64), np.asarray(d["w"], dtype=np.float64),
                   np.asarray(d["b"], dtype=np.float64), int(d.get("n_examples", 0)))


def merged_registry(snapshot: TaskRegistry, tasks: TaskRegistry | str | Path | None) -> TaskRegistry:
    """The checkpoint's tasks plus ``tasks`` (a registry or a task folder/file); a given task replaces a stored one."""
    if tasks is None:
        return snapshot
    given = tasks if isinstance(tasks, TaskRegistry) else TaskRegistry.from_dir(tasks)
    return TaskRegistry([t for t in snapshot if t.id not in given] + list(given))


class TaskTextScorer:
    """A loaded task-text checkpoint; the same ``predict`` contract as ``rubricate.student.scorer.Scorer``."""

    backend = "torch"

    def __init__(self, model: Any, tokenizer: Any, registry: TaskRegistry, doc: dict[str, Any],
                 checkpoint_dir: Path | None = None, threshold: float | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tasks = registry
        self.doc = doc
        self.options = model.config
        self.checkpoint_dir = checkpoint_dir
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        self.cls_id, self.sep_id = special_ids(tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.few_shot = {t: FewShotHead.from_dict(d) for t, d in (doc.get("few_shot") or {}).items()}
        self.encodings = {t.id: LabelEncoding.from_task(t) for t in registry}
        self.task_ids = registry.ids
        self.model_id = str(doc.get("model_id") or (checkpoint_dir.name if checkpoint_dir else "task-text"))
        self.model_version = str(doc.get("model_version", ""))
        self._statements: dict[str, TaskStatements] = {}

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, tasks: TaskRegistry | str | Path | None = None,
                        threshold: float | None = None, num_threads: int | None = None) -> "TaskTextScorer":
        import torch

        d = Path(checkpoint_dir)
        if num_threads:
            torch.set_num_threads(num_threads)
        model, tok, doc = load_task_text_model(d)
        registry = merged_registry(TaskRegistry.from_snapshot(doc.get("tasks") or []), tasks)
        return cls(model, tok, registry, doc, d, threshold)

    # ------------------------------------------------------------------------------------------------
    def source(self, task_id: str) -> str:
        """"few_shot", "trained" or "zero_shot" for a task of the registry (see the module docstring)."""
        if task_id in self.few_shot:
            return "few_shot"
        return str((self.doc.get("task_sources") or {}).get(task_id, "zero_shot"))

    def statements(self, task_id: str) -> TaskStatements:
        if task_id not in self._statements:
            task = self.tasks.get(task_id)
            self._statements[task_id] = task_statements(task, self.tokenizer, self.options,
                                                        self.encodings[task_id])
        return self._statements[task_id]

    def _check(self, task_ids: Sequence[str], texts: Sequence[str]) -> None:
        if len(task_ids) != len(texts):
            raise InputError(f"{len(task_ids)} task ids but {len(texts)} texts")
        for i, (t, x) in enumerate(zip(task_ids, texts)):
            if t not in self.tasks:
                raise UnknownTaskError(t, self.task_ids)
            problem = text_problem(x, "response text")
            if problem:
                raise InputError(problem, line=i + 1, column="text")

    def pairs(self, task_ids: Sequence[str], texts: Sequence[str], targets: np.ndarray | None = None) -> PairSet:
        """The (statement, response) pairs of these rows (every label, or the labelled ones with ``targets``)."""
        st = {t: self.statements(t) for t in dict.fromkeys(task_ids)}
        resp = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return build_pairs(st, task_ids, resp, self.options, self.cls_id, self.sep_id, targets)

    def zero_shot_outputs(self, task_ids: Sequence[str], texts: Sequence[str],
                          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """The shared model's (N, L_max) logits (NaN right of a task's labels) and (N, L_max, H) features."""
        from rubricate.student.task_text_trainer import pair_outputs

        self._check(task_ids, texts)
        n = len(texts)
        L = max((self.encodings[t].n_labels for t in task_ids), default=1)
        logits = np.full((n, L), np.nan)
        feats = np.zeros((n, L, self.model.config.hidden_size), dtype=np.float32)
        if not n:
            return logits, feats
        ps = self.pairs(task_ids, texts)
        z, h = pair_outputs(self.model, ps.input_ids, self.pad_id, batch_size)
        unit_z, pick = pool_units(z, ps.pair_unit, ps.n_units, self.options.reference_pool)
        logits[ps.unit_row, ps.unit_label] = unit_z
        if self.options.reference_pool == "max":
            feats[ps.unit_row, ps.unit_label] = h[pick]
        else:
            sums = np.zeros((ps.n_units, h.shape[1]), dtype=np.float64)
            np.add.at(sums, ps.pair_unit, h)
            feats[ps.unit_row, ps.unit_label] = sums / np.bincount(ps.pair_unit, minlength=ps.n_units)[:, None]
        return logits, feats

    def predict_logits(self, task_ids: Sequence[str], texts: Sequence[str],
                       batch_size: int = 64) -> tuple[np.ndarray, None]:
        """(N, L_max) logits after each task's few-shot head (zero right of a task's labels), and no gates."""
        z0, h = self.zero_shot_outputs(task_ids, texts, batch_size)
        out = np.nan_to_num(z0, nan=0.0)
        for tid in dict.fromkeys(task_ids):
            if tid in self.few_shot:
                rows = np.array([i for i, t in enumerate(task_ids) if t == tid])
                n_lab = self.encodings[tid].n_labels
                out[rows, :n_lab] = self.few_shot[tid].apply(out[rows, :n_lab], h[rows, :n_lab])
        return out.astype(np.float32), None

    def predict(self, task_ids: Sequence[str], texts: Sequence[str], batch_size: int = 64,
                response_ids: Sequence[str] | None = None) -> list[Prediction]:
        """Score responses of any registry task; order of the output = order of the input."""
        if response_ids is not None and len(response_ids) != len(texts):
            raise InputError(f"{len(response_ids)} response ids but {len(texts)} texts")
        logits, _ = self.predict_logits(task_ids, texts, batch_size)
        probs_all = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        out: list[Prediction] = []
        for i, tid in enumerate(task_ids):
            enc = self.encodings[tid]
            p = probs_all[i, : enc.n_labels]
            scores = {k: int(v[0]) for k, v in enc.decode_scores(p[None, :], self.threshold).items()}
            dist = {sc.id: [float(x) for x in enc.score_distribution(p[None, :], sc.id)[0]] for sc in enc.scales}
            out.append(Prediction(
                task_id=tid, response_id=None if response_ids is None else str(response_ids[i]),
                scores=scores, probs={name: float(p[j]) for j, name in enumerate(enc.names)},
                score_distribution=dist, confidence=confidence_of(enc, p), gate_weights=[],
                model_id=self.model_id, model_version=self.model_version, source=self.source(tid)))
        return out


def load_task_text_model(checkpoint_dir: str | Path) -> tuple[Any, Any, dict[str, Any]]:
    """(TaskTextModel in eval mode, tokenizer, config document) of a task-text checkpoint."""
    from rubricate.student.checkpoint import load_weights
    from rubricate.student.task_text import ARCHITECTURE, TaskTextConfig, TaskTextModel

    d = Path(checkpoint_dir)
    doc = read_document(d)
    if doc.get("architecture") != ARCHITECTURE:
        raise ValueError(f"{d}: not a task-text checkpoint (architecture={doc.get('architecture')!r})")
    if not (d / WEIGHTS_NAME).exists():
        raise FileNotFoundError(f"{d} has no {WEIGHTS_NAME}")
    return load_weights(TaskTextModel(TaskTextConfig.from_dict(doc["model"])), d), load_tokenizer(d), doc
