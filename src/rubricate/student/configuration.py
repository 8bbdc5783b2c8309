"""The student's architecture settings, defined once.

:class:`ModelOptions` holds the hyperparameters a user picks (encoder, MoE size, heads, dropout...).
``TrainingArguments`` inherits them, so a recipe keeps its flat keys (``n_experts: 4``), and
:class:`StudentConfig` inherits them too and adds what the data and the encoder fix (task ids, label
counts, hidden size, task layers). Each default is written here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Pooling = Literal["mean", "cls"]
Placement = Literal["token", "pooled"]
ExpertInit = Literal["random", "zero"]


class DictRoundTrip:
    """``to_dict`` / ``from_dict`` for a config dataclass stored in config.json: an unknown key is an error
    (a checkpoint from another version fails loudly instead of loading half its settings)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}")
        return cls(**d)


@dataclass
class ModelOptions:
    """Architecture hyperparameters shared by recipes (``TrainingArguments``) and checkpoints (``StudentConfig``)."""

    encoder: str = "minilm"  #: "minilm", "mpnet" or a HF encoder directory
    pooling: Pooling = "mean"
    max_length: int = 128
    n_experts: int = 4
    n_moe_layers: int = 2
    moe_placement: Placement = "token"
    expert_hidden: int | None = None  #: expert inner size (None: the encoder's hidden size)
    expert_init: ExpertInit = "random"  #: "zero": experts' output layers start at 0 (see modeling.py)
    gate_hidden: int = 128
    task_emb_dim: int = 32
    head_hidden: int = 256
    dropout: float = 0.1

    def model_options(self) -> dict[str, Any]:
        """Only the :class:`ModelOptions` fields of this object (a recipe or a config), by name."""
        return {f.name: getattr(self, f.name) for f in fields(ModelOptions)}


@dataclass
class StudentConfig(ModelOptions, DictRoundTrip):
    """Everything needed to rebuild the model; saved as JSON inside the checkpoint.

    ``task_ids``/``n_labels`` fix the head order: ``task_index`` i means ``task_ids[i]``.
    """

    task_ids: list[str] = field(kw_only=True)
    n_labels: list[int] = field(kw_only=True)
    use_moe: bool = True
    #: task id -> k: the task owns a copy of the encoder's top k layers (modeling.py, "Task layers"); in order
    task_layers: dict[str, int] = field(default_factory=dict)
    hidden_size: int = 0  # filled in from the encoder config when the model is built
    encoder_config: dict[str, Any] = field(default_factory=dict)  # the encoder's HF config, for offline rebuild

    def __post_init__(self) -> None:
        if len(self.task_ids) != len(self.n_labels):
            raise ValueError("task_ids and n_labels must have the same length")
        if len(set(self.task_ids)) != len(self.task_ids):
            raise ValueError(f"duplicate task ids in {self.task_ids}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.moe_placement not in ("token", "pooled"):
            raise ValueError(f"moe_placement must be 'token' or 'pooled', got {self.moe_placement!r}")
        if self.expert_init not in ("random", "zero"):
            raise ValueError(f"expert_init must be 'random' or 'zero', got {self.expert_init!r}")
        if self.use_moe and (self.n_experts < 1 or self.n_moe_layers < 1):
            raise ValueError("a MoE model needs n_experts >= 1 and n_moe_layers >= 1")
        for tid, k in self.task_layers.items():
            if tid not in self.task_ids:
                raise ValueError(f"task_layers names task '{tid}', which is not in task_ids")
            if int(k) < 1:
                raise ValueError(f"task_layers['{tid}'] must be >= 1, got {k}")

    @property
    def max_labels(self) -> int:
        return max(self.n_labels)

