"""Label encoding: any rubric <-> the student's multi-label binary targets.

* analytic criteria map one to one (``E1`` -> label ``E1``);
* an ordinal scale ``score`` with range ``min..max`` becomes cumulative indicators
  ``score>=min+1 ... score>=max`` (a score of 2 on 0-3 is ``[1, 1, 0]``);
* multi-trait rubrics simply concatenate the indicators of every scale.

Decoding is monotone: the probabilities of one scale's indicators are first made non-increasing
(``p'_k = min(p_1..p_k)``, since P(score >= k+1) cannot exceed P(score >= k)), then the score is
``min + #{k : p'_k >= threshold}``. The same corrected probabilities give a distribution over scores,
``P(s = k) = p'_k - p'_{k+1}``, used for confidence and expected scores.

Missing labels encode as NaN so that losses and metrics can mask them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal, Sequence

import numpy as np

from rubricate.tasks import Task

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class LabelSpec:
    """One binary target: an analytic criterion, or 'scale >= threshold' for an ordinal scale."""

    name: str
    source: str  # criterion id or scale id
    kind: Literal["criterion", "cumulative"]
    threshold: int | None = None


@dataclass(frozen=True)
class ScaleInfo:
    id: str
    min: int
    max: int


@dataclass
class LabelEncoding:
    task_id: str
    specs: list[LabelSpec]
    scales: list[ScaleInfo]

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_task(cls, task: Task) -> "LabelEncoding":
        specs = [LabelSpec(c.id, c.id, "criterion") for c in task.rubric.criteria]
        scales = []
        for s in task.rubric.scales:
            scales.append(ScaleInfo(s.id, s.min, s.max))
            specs += [LabelSpec(f"{s.id}>={k}", s.id, "cumulative", k) for k in range(s.min + 1, s.max + 1)]
        return cls(task.id, specs, scales)

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "specs": [asdict(s) for s in self.specs],
                "scales": [asdict(s) for s in self.scales]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabelEncoding":
        return cls(d["task_id"], [LabelSpec(**s) for s in d["specs"]], [ScaleInfo(**s) for s in d["scales"]])

    # --- properties -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def n_labels(self) -> int:
        return len(self.specs)

    @property
    def criteria(self) -> list[str]:
        return [s.source for s in self.specs if s.kind == "criterion"]

    def scale_slice(self, scale_id: str) -> slice:
        """Columns holding the cumulative indicators of one scale."""
        idx = [i for i, s in enumerate(self.specs) if s.kind == "cumulative" and s.source == scale_id]
        if not idx:
            raise KeyError(f"task '{self.task_id}' has no scale '{scale_id}'")
        return slice(idx[0], idx[-1] + 1)

    # --- encode -----------------------------------------------------------------------------------
    def encode(self, labels: dict[str, int] | None) -> np.ndarray:
        """labels dict -> float32 vector (n_labels,), NaN where the label is missing."""
        out = np.full(self.n_labels, np.nan, dtype=np.float32)
        if not labels:
            return out
        for i, s in enumerate(self.specs):
            v = labels.get(s.source)
            if v is None:
                continue
            out[i] = float(v) if s.kind == "criterion" else float(v >= s.threshold)
        return out

    def encode_many(self, labels: Sequence[dict[str, int] | None]) -> np.ndarray:
        """(N,) labels dicts -> (N, n_labels) float32 array."""
        if not len(labels):
            return np.zeros((0, self.n_labels), dtype=np.float32)
        return np.stack([self.encode(lab) for lab in labels])

    # --- decode -----------------------------------------------------------------------------------
    def monotone(self, probs: np.ndarray) -> np.ndarray:
        """Copy of (N, n_labels) probabilities with each scale's cumulative block made non-increasing."""
        p = np.array(probs, dtype=np.float64, copy=True)
        for sc in self.scales:
            sl = self.scale_slice(sc.id)
            p[:, sl] = np.minimum.accumulate(p[:, sl], axis=1)
        return p

    def score_distribution(self, probs: np.ndarray, scale_id: str) -> np.ndarray:
        """(N, n_labels) probabilities -> (N, max-min+1) distribution over the scale's scores."""
        probs = np.atleast_2d(probs)
        p = self.monotone(probs)[:, self.scale_slice(scale_id)]
        n = p.shape[0]
        upper = np.concatenate([np.ones((n, 1)), p], axis=1)  # P(s >= min) = 1
        lower = np.concatenate([p, np.zeros((n, 1))], axis=1)
        return np.clip(upper - lower, 0.0, 1.0)

    def decode_scores(self, probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, np.ndarray]:
        """(N, n_labels) probabilities -> {scale_id: (N,) int scores} and {criterion: (N,) 0/1}."""
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        p = self.monotone(probs)
        out: dict[str, np.ndarray] = {}
        for i, s in enumerate(self.specs):
            if s.kind == "criterion":
                out[s.source] = (p[:, i] >= threshold).astype(int)
        for sc in self.scales:
            out[sc.id] = sc.min + (p[:, self.scale_slice(sc.id)] >= threshold).sum(axis=1).astype(int)
        return out

    def decode(self, probs: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list[dict[str, int]]:
        """(N, n_labels) probabilities -> one labels dict per row (inverse of :meth:`encode`)."""
        cols = self.decode_scores(probs, threshold)
        n = np.atleast_2d(probs).shape[0]
        return [{k: int(v[i]) for k, v in cols.items()} for i in range(n)]

    def decode_targets(self, targets: np.ndarray) -> list[dict[str, int]]:
        """Exact inverse of :meth:`encode` for 0/1 targets (NaN columns are left out)."""
        targets = np.atleast_2d(targets)
        out = []
        for row in targets:
            d: dict[str, int] = {}
            for i, s in enumerate(self.specs):
                if s.kind == "criterion" and not np.isnan(row[i]):
                    d[s.source] = int(row[i])
            for sc in self.scales:
                block = row[self.scale_slice(sc.id)]
                if not np.isnan(block).any():
                    d[sc.id] = sc.min + int(block.sum())
            out.append(d)
        return out

    def expected_scores(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Expected value of each scale under :meth:`score_distribution` (useful for correlations)."""
        out = {}
        for sc in self.scales:
            dist = self.score_distribution(probs, sc.id)
            out[sc.id] = dist @ np.arange(sc.min, sc.max + 1)
        return out
