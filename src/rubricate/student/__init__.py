"""The compact multi-task student (UniMoE-Guided).

Public API (imported lazily so that ``import rubricate.student`` stays cheap)::

    from rubricate.student import TrainingArguments, train, Scorer, add_task, cross_fit_specialists
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "StudentConfig": "rubricate.student.modeling",
    "StudentModel": "rubricate.student.modeling",
    "TrainingArguments": "rubricate.student.arguments",
    "TrainResult": "rubricate.student.trainer",
    "train": "rubricate.student.trainer",
    "Scorer": "rubricate.student.scorer",
    "Prediction": "rubricate.student.scorer",
    "add_task": "rubricate.student.adapt",
    "AdaptArguments": "rubricate.student.arguments",
    "AdaptResult": "rubricate.student.adapt",
    "cross_fit_specialists": "rubricate.student.teachers",
    "import_teacher": "rubricate.student.teachers",
    "train_llm_teacher": "rubricate.student.teachers",
    "LLMTeacherArguments": "rubricate.student.arguments",
    "load_checkpoint": "rubricate.student.checkpoint",
    "evaluate_checkpoint": "rubricate.student.evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rubricate.student' has no attribute {name!r}")
