"""The student's losses and early stopping (weights are fields of ``TrainingArguments``; trainer.py combines them).

* :func:`bce_loss` - binary cross-entropy on the task's labels (soft targets allowed, e.g. two raters' mean);
* :func:`distillation_loss` - ``BCE(sigmoid(z/tau), sigmoid(z_teacher/tau)) * tau^2``;
* :func:`load_balancing_loss` - ``(1/M) sum_j (mean_batch alpha_j - 1/M)^2``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with logits, mean over the (example, label) entries that have a target.

    logits, targets: (B, L); targets may hold NaN for missing labels; ``mask`` (B, L) bool marks the
    columns that exist for each row (padding of shorter tasks is False). Returns 0 when nothing is valid.
    """
    valid = ~torch.isnan(targets)
    if mask is not None:
        valid = valid & mask
    if not bool(valid.any()):
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[valid], targets[valid])


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """``BCE(sigmoid(z/tau), sigmoid(z_teacher/tau)) * tau^2``, mean over entries with a teacher value.

    The tau^2 factor keeps the gradient scale independent of tau (Hinton et al., 2015). Teachers that
    only give probabilities are converted to logits first (:meth:`TeacherRow.as_logits`), so the same
    temperature softens both sides. ``teacher_logits`` may hold NaN (no teacher for that row).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    valid = ~torch.isnan(teacher_logits)
    if mask is not None:
        valid = valid & mask
    if not bool(valid.any()):
        return logits.sum() * 0.0
    soft = torch.sigmoid(teacher_logits[valid] / temperature)
    return nn.functional.binary_cross_entropy_with_logits(logits[valid] / temperature, soft) * temperature ** 2


def load_balancing_loss(gate_weights: torch.Tensor) -> torch.Tensor:
    """``(1/M) * sum_j (alpha_bar_j - 1/M)^2`` with alpha_bar the batch-mean gate weight, averaged over layers.

    gate_weights: (B, n_moe, M). Zero when every expert gets the same average share.
    """
    m = gate_weights.shape[-1]
    alpha_bar = gate_weights.mean(dim=0)  # (n_moe, M)
    return ((alpha_bar - 1.0 / m) ** 2).mean(dim=-1).mean()


class EarlyStopping:
    """Best-so-far tracking with patience; patience starts counting once the best exceeds ``floor``."""

    def __init__(self, patience: int, min_delta: float = 0.0, floor: float = -math.inf) -> None:
        self.patience, self.min_delta, self.floor = patience, min_delta, floor
        self.best = -math.inf
        self.bad_evals = 0

    def update(self, value: float) -> tuple[bool, bool]:
        """(improved, stop) after one evaluation; NaN never improves."""
        if value > self.best + self.min_delta:
            self.best, self.bad_evals = value, 0
            return True, False
        if self.best > self.floor:
            self.bad_evals += 1
        return False, self.bad_evals >= self.patience
