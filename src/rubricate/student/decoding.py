"""Decoding: the student's label probabilities -> integer scores, fit to the metric users judge us by.

The model gives, per ordinal scale, cumulative probabilities ``P(score >= k)`` (made monotone by
:meth:`LabelEncoding.monotone`). Three ways to turn them into a score (``DecoderArguments.kind``):

* ``"threshold"`` - count the indicators with ``p >= threshold`` (0.5): the plain multi-label rule.
* ``"qwk_cuts"`` - the **expected score** ``E = min + sum_k P(score >= k)`` cut at per-task, per-scale
  points ``c_1 < ... < c_K`` (``score = min + #{k : E >= c_k}``) fit on the validation split to maximise
  QWK. Regularised: the objective is ``QWK - shrinkage * mean_k (c_k - c0_k)^2`` where ``c0_k = min + k - 0.5``
  are the rounding cuts, so cuts only move away from rounding when validation agreement pays for it;
  coordinate ascent over a grid of ``grid_step`` for ``sweeps`` passes. With too few validation rows for
  a task (``min_rows``) the rounding cuts are kept.
* ``"distribution"`` - cuts on ``E`` placed at the quantiles of the validation predictions that make the
  predicted score shares equal the **training** score distribution (no labels of the validation rows are
  used): the decoder that keeps score shares honest, e.g. for rare top scores.

Analytic criteria are always decoded at ``threshold``. The fitted :class:`Decoder` (kind + cut points) is
stored in the checkpoint's ``config.json`` under ``"decoder"`` and read back by the scorer, so
``evaluate``, ``predict``, the server and the ONNX path all decode alike.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from rubricate.labels import DEFAULT_THRESHOLD, LabelEncoding
from rubricate.metrics.formulas import qwk

DecoderKind = Literal["threshold", "qwk_cuts", "distribution"]
DECODER_KINDS: tuple[str, ...] = ("threshold", "qwk_cuts", "distribution")


@dataclass
class DecoderArguments:
    """How a checkpoint's decoder is chosen and fit (recipe keys ``decoder``, ``decoder_*``)."""

    kind: DecoderKind = "threshold"
    threshold: float = DEFAULT_THRESHOLD  #: on each indicator (kind threshold) and each criterion (all kinds)
    shrinkage: float = 0.05  #: qwk_cuts: penalty on the mean squared distance of the cuts from rounding
    grid_step: float = 0.01  #: qwk_cuts: resolution of the cut-point search, in score units
    sweeps: int = 3  #: qwk_cuts: passes of coordinate ascent over the cuts
    min_rows: int = 20  #: qwk_cuts / distribution: fewer validation rows of a task keep the rounding cuts

    def __post_init__(self) -> None:
        if self.kind not in DECODER_KINDS:
            raise ValueError(f"decoder must be one of {DECODER_KINDS}, got {self.kind!r}")


@dataclass
class Decoder:
    """A fitted decoder: its kind, the criterion threshold, and per task and scale the cut points on E."""

    kind: DecoderKind = "threshold"
    threshold: float = DEFAULT_THRESHOLD
    cuts: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # task -> scale -> K cuts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Decoder":
        """The decoder of a checkpoint document; checkpoints written before decoders existed get the default."""
        if not d:
            return cls()
        kind = d.get("kind", "threshold")
        if kind not in DECODER_KINDS:
            raise ValueError(f"unknown decoder kind {kind!r} (known: {DECODER_KINDS})")
        cuts = {t: {s: [float(x) for x in c] for s, c in sc.items()} for t, sc in (d.get("cuts") or {}).items()}
        return cls(kind, float(d.get("threshold", DEFAULT_THRESHOLD)), cuts)

    def decode_scores(self, task_id: str, enc: LabelEncoding, probs: np.ndarray) -> dict[str, np.ndarray]:
        """(N, n_labels) probabilities of one task -> {scale or criterion id: (N,) int}."""
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        out = enc.decode_scores(probs, self.threshold)
        if self.kind == "threshold":
            return out
        expected = enc.expected_scores(probs)
        for sc in enc.scales:
            cuts = self.cuts.get(task_id, {}).get(sc.id) or rounding_cuts(sc.min, sc.max)
            out[sc.id] = cut_scores(expected[sc.id], cuts, sc.min)
        return out


def rounding_cuts(lo: int, hi: int) -> list[float]:
    """The cuts that round the expected score to the nearest integer: ``lo + 0.5, ..., hi - 0.5``."""
    return [lo + k - 0.5 for k in range(1, hi - lo + 1)]


def cut_scores(expected: np.ndarray, cuts: Sequence[float], lo: int) -> np.ndarray:
    """``lo + #{k : expected >= c_k}`` for ascending cuts."""
    return lo + np.searchsorted(np.asarray(cuts, dtype=np.float64), np.asarray(expected), side="right")


def fit_qwk_cuts(expected: np.ndarray, gold: np.ndarray, lo: int, hi: int, args: DecoderArguments) -> list[float]:
    """Cut points on the expected score maximising ``QWK - shrinkage * mean((c - c0)^2)`` (module docstring)."""
    c0 = np.asarray(rounding_cuts(lo, hi))
    if len(gold) < args.min_rows or len(c0) == 0:
        return c0.tolist()
    cuts = c0.copy()
    grid = np.arange(lo, hi + args.grid_step / 2, args.grid_step)

    def objective(c: np.ndarray) -> float:
        q = qwk(gold, cut_scores(expected, c, lo), lo, hi)
        return (-math.inf if math.isnan(q) else q) - args.shrinkage * float(np.mean((c - c0) ** 2))

    best = objective(cuts)
    for _ in range(args.sweeps):
        moved = False
        for k in range(len(cuts)):
            low = cuts[k - 1] if k > 0 else lo - args.grid_step
            high = cuts[k + 1] if k + 1 < len(cuts) else hi + args.grid_step
            for v in grid[(grid > low) & (grid < high)]:
                trial = cuts.copy()
                trial[k] = v
                val = objective(trial)
                if val > best + 1e-12:
                    best, cuts, moved = val, trial, True
        if not moved:
            break
    return [float(round(c, 6)) for c in cuts]


def fit_distribution_cuts(expected: np.ndarray, train_scores: np.ndarray, lo: int, hi: int,
                          args: DecoderArguments) -> list[float]:
    """Cuts at the quantiles of ``expected`` that reproduce the training score shares of ``lo..hi``."""
    c0 = rounding_cuts(lo, hi)
    if len(expected) < args.min_rows or len(train_scores) == 0:
        return c0
    shares = np.bincount(np.asarray(train_scores) - lo, minlength=hi - lo + 1)[: hi - lo + 1] / len(train_scores)
    below = np.cumsum(shares)[:-1]  # share of training scores below lo+1, ..., hi
    cuts = np.quantile(np.asarray(expected, dtype=np.float64), np.clip(below, 0.0, 1.0))
    cuts = np.maximum.accumulate(cuts)  # ascending even with ties
    return [float(round(c, 6)) for c in cuts]


def fit_decoder(args: DecoderArguments, encodings: Mapping[str, LabelEncoding],
                val_probs: Mapping[str, np.ndarray], val_gold: Mapping[str, Mapping[str, np.ndarray]],
                train_gold: Mapping[str, Mapping[str, np.ndarray]]) -> Decoder:
    """Fit ``args.kind`` per task and scale.

    ``val_probs[task]``: (N, n_labels) validation probabilities; ``val_gold[task][scale]``: (N,) official
    scores of the same rows (NaN where missing); ``train_gold[task][scale]``: training scores (for
    ``"distribution"``).
    """
    dec = Decoder(args.kind, args.threshold)
    if args.kind == "threshold":
        return dec
    for tid, enc in encodings.items():
        if tid not in val_probs or not enc.scales:
            continue
        expected = enc.expected_scores(val_probs[tid])
        per_scale: dict[str, list[float]] = {}
        for sc in enc.scales:
            if args.kind == "qwk_cuts":
                g = np.asarray(val_gold.get(tid, {}).get(sc.id, []), dtype=np.float64)
                keep = ~np.isnan(g) if len(g) else np.zeros(0, dtype=bool)
                per_scale[sc.id] = fit_qwk_cuts(expected[sc.id][keep], g[keep].astype(int), sc.min, sc.max, args)
            else:
                t = np.asarray(train_gold.get(tid, {}).get(sc.id, []), dtype=np.float64)
                t = t[~np.isnan(t)].astype(int)
                per_scale[sc.id] = fit_distribution_cuts(expected[sc.id], t, sc.min, sc.max, args)
        dec.cuts[tid] = per_scale
    return dec


def gold_scores(enc: LabelEncoding, targets: np.ndarray) -> dict[str, np.ndarray]:
    """(N, n_labels) 0/1 targets (NaN = missing) -> {scale: (N,) float score, NaN where any indicator is missing}."""
    targets = np.atleast_2d(np.asarray(targets, dtype=np.float64))
    out = {}
    for sc in enc.scales:
        block = targets[:, enc.scale_slice(sc.id)]
        s = sc.min + np.nansum(np.round(block), axis=1)
        s[np.isnan(block).any(axis=1)] = np.nan
        out[sc.id] = s
    return out
