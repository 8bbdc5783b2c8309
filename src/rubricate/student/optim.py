"""The optimiser's pieces for the students' training loops: parameter groups, layer-wise learning rates, and an
exponential moving average of the weights (``TrainingArguments.layer_lr_decay`` / ``ema_decay``)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from rubricate.student.modeling import encoder_layers


def param_groups(named: Sequence[tuple[str, nn.Parameter]], lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """Split into decayed / not decayed (biases, norms, embeddings are not decayed)."""
    decay, no_decay = [], []
    for n, p in named:
        if not p.requires_grad:
            continue
        lname = n.lower()
        if p.ndim < 2 or "norm" in lname or "embedding" in lname:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return groups


def encoder_param_groups(encoder: nn.Module, lr: float, weight_decay: float,
                         layer_lr_decay: float = 1.0) -> list[dict[str, Any]]:
    """:func:`param_groups` of the encoder, with layer-wise learning rates (``TrainingArguments.layer_lr_decay``).

    Transformer layer l of L (1-based) steps at ``lr * layer_lr_decay**(L - l)``, the embeddings at
    ``lr * layer_lr_decay**L`` and anything above the layers (a pooler) at ``lr``.
    """
    named = list(encoder.named_parameters())
    if layer_lr_decay == 1.0:
        return param_groups(named, lr, weight_decay)
    layers = encoder_layers(encoder)
    n = len(layers)
    depth = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
    by_depth: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, p in named:
        d = depth.get(id(p), 0 if "embeddings" in name else n)
        by_depth.setdefault(d, []).append((name, p))
    return [g for d in sorted(by_depth)
            for g in param_groups(by_depth[d], lr * layer_lr_decay ** (n - d), weight_decay)]


def ema_model(model: nn.Module, decay: float) -> Any:
    """An exponential moving average of ``model``'s parameters (None when ``decay`` is 0)."""
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))


def swap_in_average(model: nn.Module, ema: Any) -> dict[str, torch.Tensor] | None:
    """Load the averaged weights into ``model``; return a copy of the weights they replaced (None without EMA)."""
    if ema is None:
        return None
    live = state_copy(model)
    model.load_state_dict(ema.module.state_dict())
    return live


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s weights (the best evaluation's, or the raw ones under EMA)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
