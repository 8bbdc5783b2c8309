"""The optimiser options of the student: layer-wise learning rates and the moving average of the weights."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from rubricate.student.data import EncodedSet
from rubricate.student.modeling import encoder_layers
from rubricate.student.optim import encoder_param_groups, param_groups
from rubricate.student.trainer import TrainingArguments, fit

from tiny_models import make_tiny_encoder


def test_layer_lr_decay_gives_each_layer_its_rate_and_covers_every_parameter_once(tmp_path) -> None:
    from transformers import AutoModel

    enc = AutoModel.from_pretrained(str(make_tiny_encoder(tmp_path / "enc", layers=3)))
    groups = encoder_param_groups(enc, 1e-3, 0.01, layer_lr_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = [p for p in enc.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in groups) == len(trainable) == len(lr_of)
    layers = encoder_layers(enc)
    for i, layer in enumerate(layers):  # layer l (1-based) of L=3: 1e-3 * 0.5 ** (3 - l)
        assert [lr_of[id(p)] for p in layer.parameters()] == \
            pytest.approx([1e-3 * 0.5 ** (2 - i)] * len(list(layer.parameters())))
    assert lr_of[id(enc.embeddings.word_embeddings.weight)] == pytest.approx(1e-3 * 0.5 ** 3)
    # 1.0 is the plain grouping: one rate, decay split as before
    plain = encoder_param_groups(enc, 1e-3, 0.01, layer_lr_decay=1.0)
    ref = param_groups(list(enc.named_parameters()), 1e-3, 0.01)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in plain] == \
        [(g["lr"], g["weight_decay"], len(g["params"])) for g in ref]


@pytest.mark.parametrize("bad", [{"layer_lr_decay": 0.0}, {"layer_lr_decay": 1.5}, {"ema_decay": 1.0},
                                 {"ema_decay": -0.1}])
def test_optimiser_options_out_of_range_are_clear_errors(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainingArguments(method="mtl", **bad)


class _Toy(nn.Module):
    """One weight: logits = w * x, enough to follow the optimiser's trajectory exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0]))


def _toy_fit(ema_decay: float, seen: dict[str, list[float]]) -> _Toy:
    model = _Toy()
    n = 8
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    data = EncodedSet([("t", str(i)) for i in range(n)], [[1] * 3 for _ in range(n)], np.zeros(n, dtype=np.int64),
                      (x.numpy() > 0).astype(np.float32))

    def forward(_data: EncodedSet, rows: np.ndarray) -> SimpleNamespace:
        seen["raw"].append(model.w.item())  # the weight this step starts from
        return SimpleNamespace(logits=model.w * x[rows] * 4, label_mask=torch.ones(len(rows), 1, dtype=torch.bool),
                               gate_weights=None)

    def evaluate() -> dict:
        seen["evaluated"].append(model.w.item())
        return {"mean_agreement": float(len(seen["evaluated"]))}  # always improving: no early stop

    args = replace(TrainingArguments(method="mtl"), epochs=6, batch_size=n, evals_per_epoch=1, warmup_ratio=0.0,
                   bucket_batches=1, progress=False)
    fit(model, data, data, args, [{"params": [model.w], "lr": 0.5, "weight_decay": 0.0}], forward, evaluate,
        use_kd=False, ema_decay=ema_decay)
    return model


def test_ema_evaluates_the_average_and_trains_the_raw_weights() -> None:
    d = 0.8
    seen: dict[str, list[float]] = {"raw": [], "evaluated": []}
    model = _toy_fit(d, seen)
    raw, evaluated = seen["raw"], seen["evaluated"]  # raw[t] = w after t steps; evaluated[t-1] after step t
    assert len(raw) == len(evaluated) == 6 and raw[0] == 0.0
    expected = [raw[1]]  # the average starts at the first step's weights, then w_avg <- d w_avg + (1 - d) w
    for w in raw[2:]:
        expected.append(d * expected[-1] + (1 - d) * w)
    assert evaluated[:-1] == pytest.approx(expected, abs=1e-6)
    assert raw[2] != pytest.approx(evaluated[1])  # training went on from the raw weights, not the average
    assert model.w.item() == pytest.approx(evaluated[-1])  # the best evaluation (the last) is what is kept


def test_without_ema_evaluation_sees_the_raw_weights() -> None:
    seen: dict[str, list[float]] = {"raw": [], "evaluated": []}
    _toy_fit(0.0, seen)
    assert seen["evaluated"][:-1] == pytest.approx(seen["raw"][1:])
