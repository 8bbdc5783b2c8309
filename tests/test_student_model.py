"""The student model and its losses, on a tiny random encoder (hand-computed expectations)."""

from __future__ import annotations

import math

import pytest
import torch

from rubricate.student.modeling import MoEBlock, StudentConfig, StudentModel, TaskAwareGate
from tiny_models import make_tiny_encoder, make_tiny_tokenizer
from rubricate.student.losses import bce_loss, distillation_loss, load_balancing_loss


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    return str(make_tiny_encoder(tmp_path_factory.mktemp("enc")))


def _batch(encoder_dir: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(encoder_dir)
    enc = tok(["acid rain is bad", "the cell makes energy and more", "water"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("placement", ["token", "pooled"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_shapes_and_gate_sums_to_one(encoder_dir: str, placement: str, pooling: str) -> None:
    cfg = StudentConfig(task_ids=["a", "b"], n_labels=[3, 2], encoder=encoder_dir, moe_placement=placement,
                        pooling=pooling, n_experts=5, n_moe_layers=2)
    model = StudentModel.from_encoder(cfg).eval()
    ids, mask = _batch(encoder_dir)
    out = model(ids, mask, torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 3)
    assert out.label_mask.tolist() == [[True, True, True], [True, True, False], [True, True, False]]
    assert out.gate_weights.shape == (3, 2, 5)
    assert torch.allclose(out.gate_weights.sum(-1), torch.ones(3, 2), atol=1e-6)
    assert (out.gate_weights >= 0).all()
    assert out.pooled.shape == (3, 32)
    logits, gates = model.forward_padded(ids, mask, torch.tensor([0, 1, 1]))
    assert torch.equal(logits, out.logits) and torch.equal(gates, out.gate_weights)


def test_mtl_has_no_gate_and_padded_forward_keeps_signature(encoder_dir: str) -> None:
    cfg = StudentConfig(task_ids=["a"], n_labels=[2], encoder=encoder_dir, use_moe=False)
    model = StudentModel.from_encoder(cfg).eval()
    ids, mask = _batch(encoder_dir)
    out = model(ids, mask, torch.zeros(3, dtype=torch.long))
    assert out.gate_weights is None and model.count_parameters()["moe"] == 0
    _, gates = model.forward_padded(ids, mask, torch.zeros(3, dtype=torch.long))
    assert gates.shape == (3, 0, 0)


def test_each_row_gets_its_own_task_head(encoder_dir: str) -> None:
    cfg = StudentConfig(task_ids=["a", "b"], n_labels=[3, 2], encoder=encoder_dir)
    model = StudentModel.from_encoder(cfg).eval()
    ids, mask = _batch(encoder_dir)
    mixed = model(ids, mask, torch.tensor([0, 1, 0])).logits
    only_a = model(ids, mask, torch.tensor([0, 0, 0])).logits
    only_b = model(ids, mask, torch.tensor([1, 1, 1])).logits
    # the gate depends on the task too, so compare the rows whose task matches
    assert torch.allclose(mixed[0], only_a[0], atol=1e-6) and torch.allclose(mixed[2], only_a[2], atol=1e-6)
    assert torch.allclose(mixed[1, :2], only_b[1, :2], atol=1e-6)
    assert (mixed[1, 2:] == 0).all()  # padding of the shorter task


def test_gate_is_task_aware() -> None:
    torch.manual_seed(0)
    gate = TaskAwareGate(hidden=8, task_emb_dim=4, gate_hidden=16, n_experts=3)
    x = torch.randn(1, 8)
    a1 = gate(x, torch.randn(1, 4))
    a2 = gate(x, torch.randn(1, 4))
    assert not torch.allclose(a1, a2)


def test_moe_block_is_residual_layernorm_of_weighted_experts() -> None:
    torch.manual_seed(0)
    block = MoEBlock(hidden=8, inner=6, n_experts=3, task_emb_dim=4, gate_hidden=5, dropout=0.0).eval()
    x, temb = torch.randn(2, 8), torch.randn(2, 4)
    y, alpha = block(x, temb)
    mixed = sum(alpha[:, j: j + 1] * block.experts[j](x) for j in range(3))
    assert torch.allclose(y, block.norm(x + mixed), atol=1e-6)
    # token placement: one gate per response, shared by every token
    xt = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    yt, at = block(xt, temb, mask)
    summary = torch.stack([xt[0, :3].mean(0), xt[1].mean(0)])
    assert torch.allclose(at, block.gate(summary, temb), atol=1e-6)
    assert yt.shape == (2, 5, 8)


def test_zero_expert_init_starts_as_layernorm_of_the_input_and_still_learns() -> None:
    """expert_init='zero': a new MoE block adds nothing to the encoder's states at first (only its LayerNorm),
    yet the experts receive gradient through their zeroed output layer and leave zero after one step."""
    torch.manual_seed(0)
    block = MoEBlock(hidden=8, inner=6, n_experts=3, task_emb_dim=4, gate_hidden=5, dropout=0.0,
                     expert_init="zero")
    x, temb = torch.randn(2, 5, 8), torch.randn(2, 4)
    y, alpha = block(x, temb)
    assert torch.allclose(y, block.norm(x), atol=1e-6) and torch.allclose(alpha.sum(-1), torch.ones(2))
    (y * torch.randn_like(y)).sum().backward()
    assert all(e.fc2.weight.grad.abs().sum() > 0 for e in block.experts)
    torch.optim.SGD(block.parameters(), lr=0.1).step()
    y2, _ = block(x, temb)
    assert not torch.allclose(y2, block.norm(x), atol=1e-4)
    with pytest.raises(ValueError, match="expert_init"):
        StudentConfig(task_ids=["a"], n_labels=[2], expert_init="ones")  # type: ignore[arg-type]


def test_bce_loss_matches_hand_computation_and_masks() -> None:
    logits = torch.tensor([[0.0, 2.0, 5.0], [-1.0, 1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, float("nan")], [0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])

    def bce(z: float, y: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(0, 1) + bce(2, 0) + bce(-1, 0) + bce(1, 1)) / 4
    assert bce_loss(logits, targets, mask).item() == pytest.approx(expected, rel=1e-6)
    assert bce_loss(logits, torch.full_like(targets, float("nan"))).item() == 0.0


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_distillation_loss_with_temperature(tau: float) -> None:
    z = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    zt = torch.tensor([[1.5, float("nan")], [-2.0, 3.0]])
    expected = 0.0
    n = 0
    for (a, b) in [(0.5, 1.5), (2.0, -2.0), (0.0, 3.0)]:
        q = 1 / (1 + math.exp(-b / tau))
        p = 1 / (1 + math.exp(-a / tau))
        expected += -(q * math.log(p) + (1 - q) * math.log(1 - p))
        n += 1
    expected = expected / n * tau ** 2
    assert distillation_loss(z, zt, tau).item() == pytest.approx(expected, rel=1e-6)


def test_distillation_gradient_vanishes_at_the_teacher() -> None:
    zt = torch.tensor([[0.3, -2.0]])
    z = zt.clone().requires_grad_(True)
    distillation_loss(z, zt, 3.0).backward()
    assert torch.allclose(z.grad, torch.zeros_like(z), atol=1e-7)


def test_load_balancing_loss_matches_hand_computation() -> None:
    g = torch.tensor([[[0.7, 0.2, 0.1]], [[0.1, 0.2, 0.7]], [[0.4, 0.5, 0.1]]])  # (B=3, n_moe=1, M=3)
    abar = [0.4, 0.3, 0.3]
    expected = sum((a - 1 / 3) ** 2 for a in abar) / 3
    assert load_balancing_loss(g).item() == pytest.approx(expected, rel=1e-6)
    uniform = torch.full((4, 2, 3), 1 / 3)
    assert load_balancing_loss(uniform).item() == pytest.approx(0.0, abs=1e-12)


def test_tiny_tokenizer_covers_any_word(tmp_path) -> None:
    tok = make_tiny_tokenizer(tmp_path)
    assert tok.unk_token not in tok.tokenize("Photosynthesis 42 xyz!")


def test_early_stopping_waits_for_a_signal_then_counts_patience() -> None:
    from rubricate.student.losses import EarlyStopping

    es = EarlyStopping(patience=2, floor=0.0)
    # a collapsed start (constant predictions: kappa 0) is not overfitting: never stopped there
    assert [es.update(v) for v in (0.0, 0.0, 0.0, 0.0)] == [(True, False)] + [(False, False)] * 3
    assert es.update(0.4) == (True, False)
    assert es.update(0.3) == (False, False)
    assert es.update(0.4) == (False, True)  # a tie is not an improvement; 2 bad evaluations -> stop
    assert es.best == 0.4
    old = EarlyStopping(patience=2, floor=-math.inf)  # the plain rule, for comparison
    assert [old.update(v)[1] for v in (0.0, 0.0, 0.0)] == [False, False, True]
    assert EarlyStopping(patience=1).update(float("nan")) == (False, False)


def _perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _three_task_model(encoder_dir: str) -> StudentModel:
    cfg = StudentConfig(task_ids=["a", "b", "c"], n_labels=[3, 2, 2], encoder=encoder_dir)
    return StudentModel.from_encoder(cfg).eval()


def test_task_layers_change_only_their_tasks_rows(encoder_dir: str) -> None:
    """A task's own copy of the top layer starts as the shared layer (outputs unchanged); once it moves,
    only that task's rows change, in a mixed batch exactly as when each row runs alone."""
    model, (ids, mask) = _three_task_model(encoder_dir), _batch(encoder_dir)
    tidx = torch.tensor([0, 2, 2])
    with torch.no_grad():
        ref = model(ids, mask, tidx).logits
        copies = model.add_task_layers("c", 1)
        assert len(copies) == 1 and model.config.task_layers == {"c": 1}
        assert torch.equal(model(ids, mask, tidx).logits, ref)  # an unchanged copy changes nothing
        _perturb(copies)
        mixed = model(ids, mask, tidx).logits
        assert torch.equal(mixed[0], ref[0])  # task a: shared layers, bit-identical
        assert not torch.allclose(mixed[1:], ref[1:])  # task c: its own layer
        for i in range(3):
            alone = model(ids[i:i + 1, : int(mask[i].sum())], mask[i:i + 1, : int(mask[i].sum())], tidx[i:i + 1])
            torch.testing.assert_close(alone.logits[0], mixed[i], atol=1e-5, rtol=1e-5)
    counts = model.count_parameters()
    assert counts["task_layers"] == sum(p.numel() for p in copies.parameters()) > 0
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="needs task_index"):
        model.encode(ids, mask)
    with pytest.raises(ValueError, match="already has its own"):
        model.add_task_layers("c", 1)
    with pytest.raises(ValueError, match="k=3 but the encoder has 2 layers"):
        model.add_task_layers("b", 3)


def test_task_layers_two_deep_and_two_tasks_and_survive_deepcopy(encoder_dir: str) -> None:
    """Two branch tasks with different depths; a deep copy (as dynamic quantization makes) routes through
    its own copies, not the original's."""
    import copy

    model, (ids, mask) = _three_task_model(encoder_dir), _batch(encoder_dir)
    tidx = torch.tensor([0, 1, 2])
    with torch.no_grad():
        ref = model(ids, mask, tidx).logits
        _perturb(model.add_task_layers("b", 2), seed=1)
        _perturb(model.add_task_layers("c", 1), seed=2)
        out = model(ids, mask, tidx).logits
        assert torch.equal(out[0], ref[0]) and not torch.allclose(out[1:], ref[1:])
        twin = copy.deepcopy(model)
        assert torch.equal(twin(ids, mask, tidx).logits, out)
        _perturb(twin.task_layers[0], seed=3)  # moving the twin's copy of b must not touch the original
        assert torch.equal(model(ids, mask, tidx).logits, out)
        moved = twin(ids, mask, tidx).logits
        assert not torch.allclose(moved[1], out[1]) and torch.equal(moved[2], out[2])


def test_task_layers_round_trip_through_a_checkpoint(encoder_dir: str, tmp_path) -> None:
    from rubricate.student.checkpoint import load_model, save_model
    from transformers import AutoTokenizer

    cfg = StudentConfig(task_ids=["a", "b"], n_labels=[3, 2], encoder=encoder_dir)
    model = StudentModel.from_encoder(cfg).eval()
    _perturb(model.add_task_layers("b", 1))
    ids, mask = _batch(encoder_dir)
    tidx = torch.tensor([1, 0, 1])
    save_model(model, AutoTokenizer.from_pretrained(encoder_dir), tmp_path / "ck")
    loaded, _, doc = load_model(tmp_path / "ck")
    assert doc["model"]["task_layers"] == {"b": 1}
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask, tidx).logits, model(ids, mask, tidx).logits)
    with pytest.raises(ValueError, match="not in task_ids"):
        StudentConfig(task_ids=["a"], n_labels=[2], task_layers={"z": 1})


def test_run_batched_sorts_by_length_and_restores_the_input_order() -> None:
    """One batched-inference helper: batches hold rows of similar length; outputs come back in input order."""
    import numpy as np

    from rubricate.student.inference import pad_ids, run_batched

    seqs = [[1] * n for n in (5, 1, 3, 8, 2)]
    seen: list[list[int]] = []

    def forward(rows: list[int]):
        seen.append(rows)
        ids, mask = pad_ids([seqs[i] for i in rows], pad_id=0)
        assert ids.shape == (len(rows), max(len(seqs[i]) for i in rows))
        return mask.sum(axis=1, keepdims=True).astype(np.float32), None

    logits, gates = run_batched([len(s) for s in seqs], 2, forward, width=1)
    assert seen == [[1, 4], [2, 0], [3]]
    assert logits[:, 0].tolist() == [5, 1, 3, 8, 2] and gates is None


def test_task_agreement_uses_the_reports_qwk_and_is_nan_when_undefined() -> None:
    """The early-stopping QWK is ``metrics.formulas.qwk``: NaN (not 0) for constant gold scores."""
    import math

    import numpy as np

    from rubricate.labels import LabelEncoding
    from rubricate.metrics.formulas import qwk
    from rubricate.student.trainer import task_agreement
    from rubricate.tasks import task_from_dict

    task = task_from_dict({"id": "q", "title": "q", "question": "Why?",
                           "rubric": {"scales": [{"id": "score", "min": 0, "max": 3}]}})
    enc = LabelEncoding.from_task(task)
    sc = task.primary_scale
    gold = [sc.min, sc.max, sc.min + 1, sc.max]
    targets = np.array([enc.encode({sc.id: g}) for g in gold], dtype=np.float32)
    probs = np.clip(targets[[0, 1, 1, 3]], 0.05, 0.95)  # decodes to the gold scores of rows 0, 1, 1, 3
    pred = [gold[i] for i in (0, 1, 1, 3)]
    assert task_agreement(enc, sc.id, probs, targets, 0.5) == pytest.approx(qwk(gold, pred, sc.min, sc.max))
    constant = np.repeat(targets[:1], 4, axis=0)
    assert math.isnan(task_agreement(enc, sc.id, probs, constant, 0.5))
