"""The task-text-conditioned student: a cross-encoder over (statement, response) pairs.

Modules only, as in Hugging Face modeling files (shapes are commented). The statements (a reference answer, a
criterion, or a level description, each followed by the question) are built in ``task_text_data.py``.

* **Encoder** - the UniMoE student's encoder and tokenizer (``modeling.resolve_encoder``: "minilm" by default),
  reading ``[CLS] statement question [SEP] response [SEP]``, so attention compares the two texts token by token
  (a bi-encoder would compare two pooled vectors only);
* **Pooling** - masked mean over the pair's tokens (MiniLM's sentence-embedding pooling);
* **Head** - Linear -> GELU -> Dropout -> Linear: one logit per pair, "the response satisfies the statement".

No parameter belongs to a task, so any task file can be scored (zero-shot). A label with several statements
(reference answers) pools their logits (``TaskTextOptions.reference_pool``). Few-shot adaptation adds per-task
parameters outside this module (``task_text_trainer.FewShotHead``), so the shared weights never change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rubricate.student.configuration import DictRoundTrip
from rubricate.student.modeling import masked_mean, resolve_encoder
from rubricate.student.task_text_data import TaskTextOptions

ARCHITECTURE = "task_text"


@dataclass
class TaskTextConfig(TaskTextOptions, DictRoundTrip):
    """Everything needed to rebuild the model offline (saved in the checkpoint's ``config.json`` ``"model"``)."""

    hidden_size: int = 0  # filled in from the encoder
    encoder_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskTextOutput:
    """``logits``: (P,) one per pair; ``pooled``: (P, H) the vector the head reads (few-shot features)."""

    logits: torch.Tensor
    pooled: torch.Tensor


class PairHead(nn.Module):
    """Linear -> GELU -> Dropout -> Linear: (P, H) pooled pairs -> (P,) logits."""

    def __init__(self, hidden: int, head_hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(head_hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (P, H) -> (P,)
        return self.net(x).squeeze(-1)


class TaskTextModel(nn.Module):
    """Encoder + mean pooling + pair head."""

    def __init__(self, config: TaskTextConfig, encoder: nn.Module | None = None) -> None:
        super().__init__()
        if encoder is None:
            encoder = _encoder_from_config(config.encoder_config)
        self.config = config
        self.encoder = encoder
        config.hidden_size = int(encoder.config.hidden_size)
        self.head = PairHead(config.hidden_size, config.head_hidden, config.dropout)

    @classmethod
    def from_encoder(cls, config: TaskTextConfig) -> "TaskTextModel":
        """Start from pre-trained encoder weights (``config.encoder``); the head is new."""
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the unused pooler of sentence-transformers dirs is reported as noise
        try:
            enc = AutoModel.from_pretrained(resolve_encoder(config.encoder), add_pooling_layer=False)
        except TypeError:
            enc = AutoModel.from_pretrained(resolve_encoder(config.encoder))
        finally:
            hf_logging.set_verbosity(level)
        drop = ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
                "_attn_implementation_autoset")
        config.encoder_config = {k: v for k, v in enc.config.to_dict().items() if k not in drop}
        return cls(config, enc)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TaskTextOutput:
        # input_ids, attention_mask: (P, T)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (P, T, H)
        pooled = masked_mean(hidden, attention_mask)  # (P, H)
        return TaskTextOutput(self.head(pooled), pooled)  # (P,), (P, H)

    def count_parameters(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        head = sum(p.numel() for p in self.head.parameters())
        return {"encoder": enc, "heads": head, "total": enc + head}


def pool_logits(pair_logits: torch.Tensor, pair_unit: torch.Tensor, n_units: int, pool: str) -> torch.Tensor:
    """(P,) pair logits -> (U,) unit logits: max (any statement holds) or mean over each unit's pairs."""
    if pool == "max":
        out = pair_logits.new_full((n_units,), float("-inf"))
        return out.scatter_reduce(0, pair_unit, pair_logits, reduce="amax", include_self=True)
    out = pair_logits.new_zeros(n_units)
    return out.scatter_reduce(0, pair_unit, pair_logits, reduce="mean", include_self=False)


def _encoder_from_config(enc_cfg: dict[str, Any]) -> nn.Module:
    """An encoder with random weights from a stored HF config (the checkpoint's weights are loaded after)."""
    from transformers import AutoModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not enc_cfg:
        raise ValueError("TaskTextModel needs an encoder module or config.encoder_config "
                         "(use TaskTextModel.from_encoder to start from a HF directory)")
    hf_config = CONFIG_MAPPING[enc_cfg["model_type"]].from_dict(dict(enc_cfg))
    try:
        return AutoModel.from_config(hf_config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(hf_config)
