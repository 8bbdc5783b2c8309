"""Scoring with a trained student checkpoint: ``Scorer.from_pretrained(dir).predict(task_ids, texts)``.

**Confidence** (``Prediction.confidence``) is the smallest of the per-part certainties of a response:
for each ordinal scale, the largest probability of its score distribution (``max_k P(score = k)``, see
``LabelEncoding.score_distribution``); for each analytic criterion, ``max(p, 1 - p)``.
A response is only as certain as its least certain part, so a reviewer queue can sort on it.

**Scores** are decoded by the checkpoint's fitted decoder (``config.json`` ``"decoder"``, see
``rubricate.student.decoding``): the same cut points for the torch and ONNX backends, ``predict`` and the server.

Backends: ``"torch"`` runs the PyTorch model (fp32 only); ``"onnx"`` uses
``rubricate.student.export.OnnxEngine`` on ``onnx/model.onnx`` (or ``onnx/model.int8.onnx`` when
``quantize=True``: int8 always means that file); ``"auto"`` picks ONNX when such a file exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from rubricate.data.text import text_problem
from rubricate.errors import InputError, UnknownTaskError
from rubricate.labels import LabelEncoding
from rubricate.student.checkpoint import load_tasks, load_tokenizer, read_document
from rubricate.student.decoding import Decoder
from rubricate.student.inference import run_engine, run_model
from rubricate.tasks import TaskRegistry

Backend = Literal["auto", "torch", "onnx"]
TORCH_INT8_GONE = ("int8 runs on the ONNX engine only (torch.ao.quantization is deprecated; torch 2.13 warns): run "
                   "`rubricate export DIR --int8` and score with backend 'onnx' or 'auto'")


@dataclass
class Prediction:
    task_id: str
    response_id: str | None
    scores: dict[str, int]  # decoded, per scale id and per criterion id
    probs: dict[str, float]  # per label name ("E1", "score>=2", ...)
    score_distribution: dict[str, list[float]]  # per scale: P(score = min..max)
    confidence: float  # see the module docstring
    gate_weights: list[list[float]] = field(default_factory=list)  # [n_moe_layers][n_experts]; [] without MoE
    model_id: str = ""
    model_version: str = ""
    #: where the task's scores come from: "trained" (a trained head), "few_shot" or "zero_shot" (task_text_scorer)
    source: str = "trained"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_of(enc: LabelEncoding, probs: np.ndarray) -> float:
    """min over scales of max_k P(score = k) and over criteria of max(p, 1 - p), for one row of probabilities."""
    parts: list[float] = []
    for sc in enc.scales:
        parts.append(float(enc.score_distribution(probs[None, :], sc.id)[0].max()))
    for i, s in enumerate(enc.specs):
        if s.kind == "criterion":
            parts.append(float(max(probs[i], 1.0 - probs[i])))
    return min(parts) if parts else 1.0


class Scorer:
    """A loaded student checkpoint that turns (task id, text) pairs into :class:`Prediction` objects."""

    def __init__(self, model: Any, tokenizer: Any, registry: TaskRegistry, encodings: dict[str, LabelEncoding],
                 doc: dict[str, Any], engine: Any | None = None, threshold: float | None = None,
                 checkpoint_dir: Path | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tasks = registry
        self.encodings = encodings
        self.doc = doc
        self.engine = engine
        self.decoder = Decoder.from_dict(doc.get("decoder"))
        if threshold is not None:  # an explicit threshold overrides the checkpoint's (criteria, and kind threshold)
            self.decoder.threshold = float(threshold)
        self.checkpoint_dir = checkpoint_dir
        cfg = doc["model"]
        self.task_ids: list[str] = list(cfg["task_ids"])
        self.max_length = int(cfg["max_length"])
        self.max_labels = max(cfg["n_labels"])
        self.model_id: str = str(doc.get("model_id") or (checkpoint_dir.name if checkpoint_dir else "student"))
        self.model_version: str = str(doc.get("model_version", ""))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @property
    def backend(self) -> str:
        return "onnx" if self.engine is not None else "torch"

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, backend: Backend = "auto", quantize: bool = False,
                        threshold: float | None = None, num_threads: int | None = None,
                        tasks: TaskRegistry | str | Path | None = None) -> "Scorer":
        """Load a checkpoint; a task-text one (``"architecture": "task_text"``) loads as
        ``task_text_scorer.TaskTextScorer``, which also scores the tasks of ``tasks`` (a registry or a folder)."""
        d = Path(checkpoint_dir)
        if backend not in ("auto", "torch", "onnx"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnx', got {backend!r}")
        doc = read_document(d)
        if doc.get("architecture") == "task_text":
            from rubricate.student.task_text_scorer import TaskTextScorer

            return TaskTextScorer.from_pretrained(d, tasks=tasks, threshold=threshold,  # type: ignore[return-value]
                                                  num_threads=num_threads)
        registry, encodings = load_tasks(doc)
        onnx_file = d / "onnx" / ("model.int8.onnx" if quantize else "model.onnx")
        engine = None
        model = None
        if quantize and backend == "torch":
            raise ValueError(TORCH_INT8_GONE)
        if backend == "onnx" or quantize or (backend == "auto" and onnx_file.exists()):
            if not onnx_file.exists():
                raise FileNotFoundError(f"no ONNX export at {onnx_file} (run `rubricate export"
                                        f"{' --int8' if quantize else ''}` first)")
            from rubricate.student.export import OnnxEngine

            engine = OnnxEngine(onnx_file, intra_op_threads=num_threads)
            # The ONNX path stays torch-free (transformers' AutoTokenizer imports torch: ~200 MB RSS);
            # LightTokenizer reads the same tokenizer.json and gives identical ids (tests/test_export.py).
            tok = load_tokenizer(d, light=True)
        else:
            import torch

            from rubricate.student.checkpoint import load_model

            if num_threads:
                torch.set_num_threads(num_threads)
            model, tok, doc = load_model(d)
        return cls(model, tok, registry, encodings, doc, engine, threshold, d)

    # ------------------------------------------------------------------------------------------------
    def _forward(self, ids: list[list[int]], tidx: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        if self.engine is None:
            return run_model(self.model, ids, tidx, self.pad_id, batch_size)
        return run_engine(self.engine, ids, tidx, self.pad_id, self.max_labels, batch_size)

    def predict_logits(self, task_ids: Sequence[str], texts: Sequence[str],
                       batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw padded logits (N, max_labels) and gate weights (N, n_moe, M) or None."""
        if len(task_ids) != len(texts):
            raise InputError(f"{len(task_ids)} task ids but {len(texts)} texts")
        index = {t: i for i, t in enumerate(self.task_ids)}
        for i, (t, x) in enumerate(zip(task_ids, texts)):
            if t not in index:
                raise UnknownTaskError(t, self.task_ids)
            problem = text_problem(x, "response text")
            if problem:
                raise InputError(problem, line=i + 1, column="text")
        if not texts:
            return np.zeros((0, self.max_labels), dtype=np.float32), None
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        tidx = np.array([index[t] for t in task_ids], dtype=np.int64)
        return self._forward([list(x) for x in ids], tidx, batch_size)

    def predict(self, task_ids: Sequence[str], texts: Sequence[str], batch_size: int = 64,
                response_ids: Sequence[str] | None = None) -> list[Prediction]:
        """Score responses; order of the output = order of the input."""
        if response_ids is not None and len(response_ids) != len(texts):
            raise InputError(f"{len(response_ids)} response ids but {len(texts)} texts")
        logits, gates = self.predict_logits(task_ids, texts, batch_size)
        probs_all = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        out: list[Prediction] = []
        for i, tid in enumerate(task_ids):
            enc = self.encodings[tid]
            p = probs_all[i, : enc.n_labels]
            scores = {k: int(v[0]) for k, v in self.decoder.decode_scores(tid, enc, p[None, :]).items()}
            dist = {sc.id: [float(x) for x in enc.score_distribution(p[None, :], sc.id)[0]] for sc in enc.scales}
            out.append(Prediction(
                task_id=tid,
                response_id=None if response_ids is None else str(response_ids[i]),
                scores=scores,
                probs={name: float(p[j]) for j, name in enumerate(enc.names)},
                score_distribution=dist,
                confidence=confidence_of(enc, p),
                gate_weights=[] if gates is None else [[float(x) for x in layer] for layer in gates[i]],
                model_id=self.model_id,
                model_version=self.model_version,
            ))
        return out
