"""Adding a task to a trained student (``rubricate add-task``) and measuring forgetting.

Three modes, same code:

* ``"moe"`` (UniMoE adaptation): freeze the encoder, the existing heads and the existing task embeddings;
  train the MoE blocks (experts + gates), the new task embedding and the new head. Because the shared
  experts move, three knobs hold the old tasks in place:

  - a *rehearsal* sample of old-task training rows (``rehearsal_size``) mixed into the batches, with
    their human labels;
  - *self-distillation* of those rows (``lambda_self_kd``): the model's own old-task logits before
    add-task are frozen as soft targets, so the experts are pulled back toward what the old heads were
    trained on, not only toward the (few, noisy) rehearsal labels (learning without forgetting);
  - a lower learning rate for the shared MoE than for the new head (``lr_moe``: "lightly tuning").

  Optional distillation from a teacher file covers the new task.
* ``"head"`` (the MTL way): only the new head is trained; old tasks are untouched by construction.
* ``"branch"`` (beyond the paper): the new task gets its *own copy* of the encoder's top ``branch_layers``
  layers (``StudentConfig.task_layers``), trained with its head and its task embedding (learning rate
  ``lr_encoder`` for the copy). Everything shared - encoder, MoE, old heads, old embeddings - stays frozen,
  so the old tasks' outputs are bit-identical by construction and no rehearsal is needed. The price is
  ``branch_layers`` encoder layers more per new task, on disk and in the forward of that task's rows.

With the encoder frozen its outputs never change, so they are computed once and cached
(``cache_encoder``) - adaptation then costs a fraction of a training epoch.

Beyond the paper's recipe, ``train_encoder_layers = k > 0`` also trains the encoder's last ``k``
transformer layers (learning rate ``lr_encoder``), for a new task that differs too much from the old
ones for a frozen encoder (on ASAP-SAS set 9 every frozen-encoder variant stayed 0.06-0.09 QWK behind a
per-task model). The encoder then moves under the old tasks too, so rehearsal and self-distillation run
in both modes, the encoder cache is off (each step runs the full encoder) and forgetting must be read
from the report: only the layers below the last ``k`` stay bit-identical.

The result reports the trainable-parameter share, the new task's validation metrics, every old task's
agreement before and after, and checks that every frozen tensor is bit-identical after training.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.labels import DEFAULT_THRESHOLD, LabelEncoding
from rubricate.student.modeling import StudentModel, encoder_layers, pad_batch, save_model
from rubricate.student.trainer import (
    EncodedSet,
    attach_teacher,
    check_records,
    checkpoint_document,
    encode_records,
    fit,
    load_checkpoint,
    param_groups,
    set_seed,
    task_agreement,
)
from rubricate.tasks import Task, TaskRegistry


@dataclass
class AdaptArguments:
    """Every knob of :func:`add_task` (the same names as in ``TrainingArguments`` where they overlap)."""

    mode: Literal["moe", "head", "branch"] = "moe"
    rehearsal_size: int = 800  #: old-task training rows mixed in (spread evenly over old tasks); moe mode only
    epochs: float = 6.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-3  #: learning rate of the new head(s)
    lr_moe: float | None = None  #: learning rate of the MoE blocks and the new task embedding (None = ``lr``)
    weight_decay: float = 0.01  #: not applied to biases, norms, task embeddings
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    bucket_batches: int = 50
    lambda_lb: float = 0.01
    lambda_kd: float = 0.0  #: > 0 with a teacher_file: distil the new task(s)
    kd_temperature: float = 2.0
    #: weight of self-distillation on the rehearsal rows: the old-task logits of the model *before* add-task
    #: are the soft targets (0 = off; moe mode with rehearsal only). Default 1: on ASAP-SAS sets 9-10 it cut
    #: the largest old-task loss from 0.123 to 0.017 QWK with no loss on the new tasks (docs/benchmarks.md)
    lambda_self_kd: float = 1.0
    self_kd_temperature: float = 1.0  #: temperature of that self-distillation term
    #: train the encoder's last k transformer layers too (0 = the paper's frozen encoder); turns the encoder
    #: cache off and rehearsal/self-distillation on in both modes, since the old tasks' inputs now move
    train_encoder_layers: int = 0
    #: learning rate of those encoder layers (or of the copies in branch mode); half the 1e-4 the ASAP-SAS
    #: benchmark trains MiniLM with, since shared layers under old tasks should only be nudged
    lr_encoder: float = 5e-5
    #: branch mode: how many of the encoder's top layers the new task gets its own copy of
    branch_layers: int = 1
    teacher_file: str | None = None
    teacher_policy: Literal["strict", "ignore_extra", "allow_missing"] = "allow_missing"
    teacher_eps: float = 1e-4
    evals_per_epoch: int = 1
    early_stopping_patience: int = 3
    min_delta: float = 0.0
    early_stopping_floor: float = 0.0  #: as in TrainingArguments: no patience while the new task is at chance
    threshold: float = DEFAULT_THRESHOLD
    cache_encoder: bool = True
    seed: int = 42
    progress: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("moe", "head", "branch"):
            raise ValueError(f"mode must be 'moe', 'head' or 'branch', got {self.mode!r}")
        if self.mode == "branch" and self.train_encoder_layers:
            raise ValueError("branch mode trains copies of the top layers; train_encoder_layers must be 0")
        if self.branch_layers < 1:
            raise ValueError("branch_layers must be >= 1")
        if self.rehearsal_size < 0:
            raise ValueError("rehearsal_size must be >= 0")
        if self.lambda_self_kd < 0 or self.self_kd_temperature <= 0:
            raise ValueError("lambda_self_kd must be >= 0 and self_kd_temperature > 0")
        if self.lr_moe is not None and self.lr_moe < 0:
            raise ValueError("lr_moe must be >= 0")
        if self.train_encoder_layers < 0 or self.lr_encoder < 0:
            raise ValueError("train_encoder_layers and lr_encoder must be >= 0")


@dataclass
class AdaptResult:
    checkpoint_dir: Path
    mode: str
    new_tasks: list[str]
    trainable_parameters: int
    total_parameters: int
    new_task_metrics: dict[str, float]  # validation agreement (QWK or mean kappa) per new task
    old_before: dict[str, float]  # old tasks' agreement before adaptation
    old_after: dict[str, float]
    frozen_unchanged: bool
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        return self.trainable_parameters / max(1, self.total_parameters)

    @property
    def forgetting(self) -> dict[str, float]:
        """Per old task: agreement before minus after (positive = forgotten)."""
        return {t: self.old_before[t] - self.old_after[t] for t in self.old_before if t in self.old_after}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["checkpoint_dir"] = str(self.checkpoint_dir)
        d["trainable_share"] = self.trainable_share
        d["forgetting"] = self.forgetting
        return d


def rehearsal_sample(records: Sequence[Record], size: int, seed: int) -> list[Record]:
    """``size`` rows spread evenly over the tasks present (all rows of a task when it has fewer)."""
    if size <= 0 or not records:
        return []
    by_task: dict[str, list[Record]] = {}
    for r in records:
        by_task.setdefault(r.task_id, []).append(r)
    rng = np.random.default_rng(seed)
    per = max(1, size // len(by_task))
    out: list[Record] = []
    for tid in sorted(by_task):
        recs = by_task[tid]
        idx = rng.choice(len(recs), size=min(per, len(recs)), replace=False)
        out += [recs[i] for i in sorted(idx)]
    return out


@torch.no_grad()
def cache_hidden(model: StudentModel, data: EncodedSet, pad_id: int, batch_size: int) -> None:
    """Store the frozen encoder's (T_i, H) outputs for every row of ``data``."""
    model.eval()
    hidden: list[torch.Tensor | None] = [None] * len(data)
    order = sorted(range(len(data)), key=lambda i: len(data.input_ids[i]))
    for s in range(0, len(order), batch_size):
        rows = order[s: s + batch_size]
        ids, mask = pad_batch([data.input_ids[i] for i in rows], pad_id)
        h = model.encode(ids, mask, torch.from_numpy(data.task_index[rows]))
        for j, i in enumerate(rows):
            hidden[i] = h[j, : len(data.input_ids[i])].clone()
    data.hidden = hidden  # type: ignore[assignment]


@torch.no_grad()
def _anchor_logits(model: StudentModel, data: EncodedSet, rows: Sequence[int], encodings: dict[str, LabelEncoding],
                   pad_id: int, batch_size: int) -> np.ndarray:
    """(N, max_labels) logits of the current model for ``rows`` (NaN elsewhere and in padding columns)."""
    model.eval()
    anchor = np.full(data.targets.shape, np.nan, dtype=np.float32)
    rows = list(rows)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s: s + batch_size]
        z = _forward_rows(model, data, chunk, pad_id).logits.numpy()
        for j, i in enumerate(chunk):
            n = encodings[data.keys[i][0]].n_labels
            anchor[i, :n] = z[j, :n]
    return anchor


def _pad_hidden(hs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(h.shape[0] for h in hs)
    H = hs[0].shape[1]
    out = hs[0].new_zeros(len(hs), T, H)
    mask = torch.zeros(len(hs), T, dtype=torch.long)
    for i, h in enumerate(hs):
        out[i, : h.shape[0]] = h
        mask[i, : h.shape[0]] = 1
    return out, mask


def _forward_rows(model: StudentModel, data: EncodedSet, rows: Sequence[int], pad_id: int):
    tidx = torch.from_numpy(data.task_index[list(rows)])
    if data.hidden is not None:
        h, mask = _pad_hidden([data.hidden[i] for i in rows])
        return model.forward_from_hidden(h, mask, tidx)
    ids, mask = pad_batch([data.input_ids[i] for i in rows], pad_id)
    return model(ids, mask, tidx)


@torch.no_grad()
def _agreement(model: StudentModel, data: EncodedSet, registry: TaskRegistry, encodings: dict[str, LabelEncoding],
               pad_id: int, batch_size: int, threshold: float) -> dict[str, float]:
    model.eval()
    n = len(data)
    logits = np.zeros((n, model.config.max_labels), dtype=np.float32)
    order = sorted(range(n), key=lambda i: len(data.input_ids[i]))
    for s in range(0, n, batch_size):
        rows = order[s: s + batch_size]
        logits[rows] = _forward_rows(model, data, rows, pad_id).logits.numpy()
    probs = 1.0 / (1.0 + np.exp(-logits))
    out = {}
    for ti, tid in enumerate(model.config.task_ids):
        rows = np.where(data.task_index == ti)[0]
        if len(rows):
            enc = encodings[tid]
            ps = registry.get(tid).primary_scale
            out[tid] = task_agreement(enc, ps.id if ps else None, probs[rows, : enc.n_labels],
                                      data.targets[rows, : enc.n_labels], threshold)
    return out


def add_task(checkpoint_dir: str | Path, new_tasks: Task | Sequence[Task], train_records: Sequence[Record],
             val_records: Sequence[Record], out_dir: str | Path, *, old_train_records: Sequence[Record] = (),
             old_eval_records: Sequence[Record] = (), args: AdaptArguments | None = None) -> AdaptResult:
    """Add ``new_tasks`` to the student at ``checkpoint_dir`` and save the result to ``out_dir``.

    ``train_records``/``val_records`` hold the new task(s)' rows (validation drives early stopping);
    ``old_train_records`` is the pool for the rehearsal sample; ``old_eval_records`` (old tasks'
    validation or test rows) measure forgetting before/after.
    """
    import time

    args = args or AdaptArguments()
    t0 = time.time()
    set_seed(args.seed)
    new_tasks = [new_tasks] if isinstance(new_tasks, Task) else list(new_tasks)
    model, tok, registry, encodings, doc = load_checkpoint(checkpoint_dir)
    old_ids = list(model.config.task_ids)
    for t in new_tasks:
        if t.id in old_ids:
            raise InputError(f"task '{t.id}' is already in the model at {checkpoint_dir}")
        registry.add(t)
        encodings[t.id] = LabelEncoding.from_task(t)
    new_ids = [t.id for t in new_tasks]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    max_len = model.config.max_length
    check_records(train_records, new_ids, registry, "<new-task training records>")
    check_records(val_records, new_ids, registry, "<new-task validation records>")
    if not train_records:
        raise InputError("no training records for the new task(s)")
    old_train = [r for r in old_train_records if r.task_id in set(old_ids)]
    old_eval = [r for r in old_eval_records if r.task_id in set(old_ids)]
    check_records(old_eval, old_ids, registry, "<old-task evaluation records>")

    # a trained encoder layer makes cached encoder outputs stale, so the cache is only used when all are frozen
    use_cache = args.cache_encoder and args.train_encoder_layers == 0 and args.mode != "branch"
    # 1. old tasks before (with the unchanged model)
    old_eval_set = encode_records(old_eval, tok, old_ids, encodings, max_len) if old_eval else None
    if old_eval_set is not None and use_cache:
        cache_hidden(model, old_eval_set, pad_id, args.eval_batch_size)
    before = _agreement(model, old_eval_set, registry, encodings, pad_id, args.eval_batch_size,
                        args.threshold) if old_eval_set is not None else {}

    # 2. grow the model and freeze
    for t in new_tasks:
        model.add_task(t.id, encodings[t.id].n_labels)
    all_ids = list(model.config.task_ids)
    n_old = len(old_ids)
    for p in model.parameters():
        p.requires_grad_(False)
    head_params: list[tuple[str, torch.nn.Parameter]] = []
    for i in range(n_old, len(all_ids)):
        head_params += [(f"heads.{i}.{n}", p) for n, p in model.heads[i].named_parameters()]
    shared_params: list[tuple[str, torch.nn.Parameter]] = []
    emb_hook = None
    if args.mode in ("moe", "branch") and model.config.use_moe:
        if args.mode == "moe":
            shared_params += [(f"moe.{n}", p) for n, p in model.moe.named_parameters()]
        shared_params.append(("task_embedding.weight", model.task_embedding.weight))
        old_rows = n_old

        def emb_hook() -> None:  # only the new tasks' embedding rows learn
            g = model.task_embedding.weight.grad
            if g is not None:
                g[:old_rows] = 0.0
    encoder_params: list[tuple[str, torch.nn.Parameter]] = []
    if args.train_encoder_layers > 0:
        try:
            layers = encoder_layers(model.encoder)
        except ValueError as e:
            raise InputError(f"{e}; use train_encoder_layers=0 with this encoder") from e
        if args.train_encoder_layers > len(layers):
            raise InputError(f"train_encoder_layers={args.train_encoder_layers} but the encoder has {len(layers)} layers")
        first = len(layers) - args.train_encoder_layers
        for li in range(first, len(layers)):
            encoder_params += [(f"encoder_layer.{li}.{n}", p) for n, p in layers[li].named_parameters()]
    if args.mode == "branch":
        try:
            for t in new_tasks:
                copies = model.add_task_layers(t.id, args.branch_layers)
                encoder_params += [(f"task_layers.{t.id}.{n}", p) for n, p in copies.named_parameters()]
        except ValueError as e:
            raise InputError(f"add-task --mode branch: {e}") from e
    trainable = head_params + shared_params + encoder_params
    for _, p in trainable:
        p.requires_grad_(True)
    trainable_ids = {id(p) for _, p in trainable}
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable_ids}
    old_emb_before = model.task_embedding.weight[:n_old].detach().clone() if model.task_embedding is not None else None

    # 3. data: new task rows (+ rehearsal), encoder outputs cached once
    shared_moves = args.mode == "moe" or args.train_encoder_layers > 0  # branch mode: nothing shared moves
    rehearsal = rehearsal_sample(old_train, args.rehearsal_size, args.seed) if shared_moves else []
    train_set = encode_records(list(train_records) + rehearsal, tok, all_ids, encodings, max_len)
    if args.lambda_kd > 0 and args.teacher_file:
        attach_teacher(train_set, args.teacher_file, {t: encodings[t] for t in all_ids},
                       "allow_missing" if rehearsal else args.teacher_policy, args.teacher_eps, registry)
    val_set = encode_records(val_records, tok, all_ids, encodings, max_len)
    if use_cache:
        cache_hidden(model, train_set, pad_id, args.eval_batch_size)
        cache_hidden(model, val_set, pad_id, args.eval_batch_size)
    if args.lambda_self_kd > 0 and rehearsal:
        # the old tasks' outputs are untouched by adding a head, so the grown model still gives them as before
        train_set.anchor = _anchor_logits(model, train_set, range(len(train_records), len(train_set)), encodings,
                                          pad_id, args.eval_batch_size)

    model.train()
    # no dropout in the encoder: frozen layers must give their cached outputs, and trained top layers are only
    # nudged (dropout there would also make the self-distillation targets noisy). Branch-mode copies live
    # outside model.encoder and keep their dropout: they are fine-tuned for the new task alone.
    model.encoder.eval()

    def forward(data: EncodedSet, rows: np.ndarray):
        model.encoder.eval()
        return _forward_rows(model, data, rows, pad_id)

    def evaluate() -> dict[str, Any]:
        res = _agreement(model, val_set, registry, encodings, pad_id, args.eval_batch_size, args.threshold)
        vals = [v for t, v in res.items() if t in new_ids and not math.isnan(v)]
        return {"mean_agreement": float(np.mean(vals)) if vals else float("nan"), "per_task": res}

    groups = param_groups(head_params, args.lr, args.weight_decay)
    if shared_params:
        groups += param_groups(shared_params, args.lr if args.lr_moe is None else args.lr_moe, args.weight_decay)
    if encoder_params:
        groups += param_groups(encoder_params, args.lr_encoder, args.weight_decay)
    summary = fit(model, train_set, val_set, args, groups, forward, evaluate,
                  use_kd=args.lambda_kd > 0 and train_set.teacher is not None, grad_hook=emb_hook,
                  desc=f"add-task {','.join(new_ids)} ({args.mode})", anchor_weight=args.lambda_self_kd,
                  anchor_temperature=args.self_kd_temperature)

    # 4. verify the frozen parts, measure
    unchanged = all(torch.equal(frozen_before[n], p.detach()) for n, p in model.named_parameters()
                    if n in frozen_before)
    if old_emb_before is not None:
        unchanged = unchanged and torch.equal(old_emb_before, model.task_embedding.weight[:n_old].detach())
    if not unchanged:
        raise RuntimeError("a frozen parameter changed during add-task (this is a bug)")
    new_metrics = {t: v for t, v in evaluate()["per_task"].items() if t in new_ids}
    after = _agreement(model, old_eval_set, registry, encodings, pad_id, args.eval_batch_size,
                       args.threshold) if old_eval_set is not None else {}
    n_train = sum(p.numel() for _, p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    if args.mode in ("moe", "branch") and model.task_embedding is not None:
        n_train -= n_old * model.task_embedding.weight.shape[1]  # old embedding rows are frozen
    result = AdaptResult(Path(out_dir), args.mode, new_ids, n_train, n_total, new_metrics, before, after,
                         unchanged, time.time() - t0, summary["history"])
    metrics = dict(doc.get("metrics", {}))
    metrics["adaptation"] = {k: v for k, v in result.to_dict().items() if k != "history"}
    recipe = {"base": doc.get("recipe"), "add_task": asdict(args)}
    for p in model.parameters():
        p.requires_grad_(True)
    save_model(model, tok, out_dir, checkpoint_document(
        model, registry, encodings, recipe, metrics, model_id=Path(out_dir).name or "student",
        # the base checkpoint's decoder carries over: old tasks keep their cut points, a new task decodes with
        # the decoder's default for a task without cuts (rubricate.student.decoding.Decoder.decode_scores)
        extra={"history": doc.get("history", []), "adapt_history": summary["history"],
               "decoder": doc.get("decoder")}))
    (Path(out_dir) / "adaptation.json").write_text(json.dumps(result.to_dict(), indent=2, default=str),
                                                   encoding="utf-8")
    return result
