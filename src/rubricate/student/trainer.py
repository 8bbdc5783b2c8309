"""Training the student: losses, mixed-task batches, AdamW with warm-up, early stopping, checkpoints.

Total loss (every weight is a field of :class:`TrainingArguments`, nothing is hidden)::

    L = L_task + lambda_lb * L_LB + lambda_kd * L_KD

* ``L_task`` - :func:`bce_loss`: binary cross-entropy on the task's labels, mean over the labels that are
  present (missing labels are NaN and masked);
* ``L_KD`` - :func:`distillation_loss`: ``BCE(sigmoid(z/tau), sigmoid(z_teacher/tau)) * tau^2``, mean over
  labels with a teacher value (the authors' code multiplies KD by an undisclosed 0.05; we don't);
* ``L_LB`` - :func:`load_balancing_loss`: ``(1/M) sum_j (mean_batch alpha_j - 1/M)^2``, averaged over MoE layers.

Methods (``TrainingArguments.method``), same code, same splits:

* ``individual`` - one encoder + head per task (a folder of single-task checkpoints);
* ``mtl`` - shared encoder + per-task heads;
* ``unimoe`` - MTL + MoE blocks with the task-aware gate;
* ``unimoe_guided`` - UniMoE + distillation from a teacher-outputs file.

Under ``torchrun`` the same recipe trains one model with DDP: ``batch_size`` is the global batch, each rank
trains on its shard of it, rank 0 validates and writes (module rubricate.student.distributed,
docs/distributed-training.md).

Early stopping watches the **validation metric**: the mean over tasks of the quadratic weighted kappa
of the decoded primary score (``Task.primary_scale``); a purely analytic task contributes its mean
Cohen's kappa over criteria instead. Kappa is the field's agreement measure, so we select on it
rather than on the loss.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.labels import LabelEncoding
from rubricate.student.arguments import METHODS, Method, TrainingArguments  # noqa: F401  (re-exported)
from rubricate.student.checkpoint import (  # noqa: F401  (load_checkpoint/checkpoint_document: older imports)
    checkpoint_document,
    load_checkpoint,
    save_model,
)
from rubricate.student.data import (  # noqa: F401  (re-exported: older imports use these names)
    EncodedSet,
    add_second_rater,
    attach_teacher,
    bucketed_batches,
    check_records,
    concat_sets,
    encode_records,
    length_stats,
    token_counts,
    load_records,
    resolve_inputs,
    resolve_inputs_with_test,
    split_records,
)
from rubricate.student.decoding import Decoder, fit_decoder, gold_scores
from rubricate.student.distributed import (
    SINGLE,
    DistContext,
    DistributedOptions,
    barrier,
    broadcast_float,
    host_view,
    process_group,
    shard_loss,
    shard_rows,
    wrap_model,
)
from rubricate.student.inference import pad_batch, run_model
from rubricate.student.losses import EarlyStopping, bce_loss, distillation_loss, load_balancing_loss  # noqa: F401
from rubricate.student.modeling import StudentModel
from rubricate.student.optim import (  # noqa: F401  (param_groups re-exported)
    ema_model,
    encoder_param_groups,
    param_groups,
    state_copy,
    swap_in_average,
)
from rubricate.tasks import TaskRegistry


@dataclass
class TrainResult:
    checkpoint_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val_mean_agreement(self) -> float | None:
        """The validation mean agreement (one student, or the mean over the per-task models of ``individual``)."""
        return (self.metrics.get("val") or {}).get("mean_agreement", self.metrics.get("val_mean_agreement"))


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------
def task_agreement(enc: LabelEncoding, primary_scale: str | None, probs: np.ndarray, targets: np.ndarray,
                   threshold: float) -> float:
    """QWK of the decoded primary score, or mean Cohen's kappa over criteria for analytic-only tasks.

    Both come from ``rubricate.metrics.formulas`` (the report's definitions): NaN when undefined (constant
    gold scores), and an undefined criterion is left out of its task's mean. :func:`evaluate_agreement` leaves an
    undefined task out of the mean too (it was counted as 0 before); a mean that is NaN never improves the early
    stopper (``EarlyStopping.update``).
    """
    from rubricate.metrics.formulas import kappa, qwk

    pred = enc.decode_scores(probs, threshold)
    gold_rows = enc.decode_targets(targets)
    if primary_scale is not None:
        keep = [i for i, g in enumerate(gold_rows) if primary_scale in g]
        if not keep:
            return float("nan")
        sc = next(s for s in enc.scales if s.id == primary_scale)
        return float(qwk([gold_rows[i][primary_scale] for i in keep], pred[primary_scale][keep], sc.min, sc.max))
    kappas = []
    for c in enc.criteria:
        keep = [i for i, g in enumerate(gold_rows) if c in g]
        if keep:
            kappas.append(kappa([gold_rows[i][c] for i in keep], pred[c][keep], labels=[0, 1])[0])
    kappas = [k for k in kappas if not math.isnan(k)]
    return float(np.mean(kappas)) if kappas else float("nan")


def evaluate_agreement(model: StudentModel, data: EncodedSet, registry: TaskRegistry,
                       encodings: dict[str, LabelEncoding], pad_id: int, batch_size: int,
                       threshold: float, logits: np.ndarray | None = None) -> dict[str, Any]:
    """Per-task agreement (see :func:`task_agreement`) and their mean, the early-stopping metric."""
    if logits is None:
        logits, _ = run_model(model, data.input_ids, data.task_index, pad_id, batch_size)
    probs = 1.0 / (1.0 + np.exp(-logits))
    per_task = {}
    for ti, tid in enumerate(model.config.task_ids):
        rows = np.where(data.task_index == ti)[0]
        if len(rows) == 0:
            continue
        enc = encodings[tid]
        task = registry.get(tid)
        ps = task.primary_scale.id if task.primary_scale else None
        per_task[tid] = task_agreement(enc, ps, probs[rows, : enc.n_labels], data.targets[rows, : enc.n_labels],
                                       threshold)
    vals = [v for v in per_task.values() if not math.isnan(v)]
    return {"mean_agreement": float(np.mean(vals)) if vals else float("nan"), "per_task": per_task}


# --------------------------------------------------------------------------------------------------------
# The training loop (shared with add-task)
# --------------------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


ForwardFn = Callable[[EncodedSet, np.ndarray], Any]


@dataclass
class LossTerm:
    """One part of the training loss on a batch (or a rank's shard of one)."""

    name: str  #: "task", "lb", "kd" or "self_kd" (the keys of the history's parts)
    weight: float  #: its weight in the total (lambda_lb, lambda_kd, the anchor weight; 1 for the task loss)
    value: torch.Tensor  #: the term on these rows: a mean over ``valid`` entries, or for "lb" a function of the mean
    valid: torch.Tensor | None  #: (B, L) entries the mean is over; None for "lb" (a statistic of the batch mean)


def loss_terms(out: Any, data: EncodedSet, rows: np.ndarray, args: Any, use_kd: bool, anchor_weight: float = 0.0,
               anchor_temperature: float = 1.0) -> list[LossTerm]:
    """The terms of :func:`batch_loss` on ``rows``, each with the entries it averages (the task term first)."""
    def target(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x[rows]).to(out.logits.device)

    def valid(t: torch.Tensor) -> torch.Tensor:
        return ~torch.isnan(t) & out.label_mask

    y = target(data.targets)
    terms = [LossTerm("task", 1.0, bce_loss(out.logits, y, out.label_mask), valid(y))]
    if out.gate_weights is not None and args.lambda_lb > 0:
        terms.append(LossTerm("lb", args.lambda_lb, load_balancing_loss(out.gate_weights), None))
    if use_kd and data.teacher is not None:
        t = target(data.teacher)
        terms.append(LossTerm("kd", args.lambda_kd, distillation_loss(out.logits, t, args.kd_temperature,
                                                                      out.label_mask), valid(t)))
    if anchor_weight > 0 and data.anchor is not None:
        a = target(data.anchor)
        terms.append(LossTerm("self_kd", anchor_weight, distillation_loss(out.logits, a, anchor_temperature,
                                                                          out.label_mask), valid(a)))
    return terms


def batch_loss(out: Any, data: EncodedSet, rows: np.ndarray, args: Any, use_kd: bool, anchor_weight: float = 0.0,
               anchor_temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_task + lambda_lb L_LB + lambda_kd L_KD (+ anchor_weight L_self_KD)`` of one batch, and each part's value.

    ``args`` holds ``lambda_lb``, ``lambda_kd`` and ``kd_temperature`` (``TrainingArguments`` or ``AdaptArguments``).
    """
    terms = loss_terms(out, data, rows, args, use_kd, anchor_weight, anchor_temperature)
    loss = terms[0].value
    for t in terms[1:]:
        loss = loss + t.weight * t.value
    return loss, {t.name: t.value.item() for t in terms}


def _step_loss(rows: np.ndarray, data: EncodedSet, forward: ForwardFn, args: Any, use_kd: bool, anchor_weight: float,
               anchor_temperature: float, ctx: DistContext) -> tuple[torch.Tensor, dict[str, float], float]:
    """(loss to back-propagate, part values, total value) of one global batch: the whole batch, or under DDP this
    rank's shard of it (the values are then still the whole batch's)."""
    if not ctx.enabled:
        loss, parts = batch_loss(forward(data, rows), data, rows, args, use_kd, anchor_weight, anchor_temperature)
        return loss, parts, loss.item()
    mine = shard_rows(rows, ctx)
    live = len(mine) > 0
    if not live:  # every rank must join the gradient reduction: one row, weighted 0
        mine = rows[:1]
    out = forward(data, mine)
    terms = loss_terms(out, data, mine, args, use_kd, anchor_weight, anchor_temperature)
    loss, parts = shard_loss(out, terms, len(rows), live, ctx)
    return loss, parts, sum(t.weight * parts[t.name] for t in terms)


def _evaluate_now(evaluate: Callable[[], dict[str, Any]], ctx: DistContext) -> dict[str, Any]:
    """Rank 0 evaluates; every rank gets its mean agreement, so early stopping decides the same everywhere."""
    res = evaluate() if ctx.is_main else {}
    if ctx.enabled:
        res = {**res, "mean_agreement": broadcast_float(res.get("mean_agreement"), ctx)}
    return res


def fit(model: StudentModel, train_set: EncodedSet, val_set: EncodedSet | None, args: TrainingArguments,
        groups: list[dict[str, Any]], forward: ForwardFn,
        evaluate: Callable[[], dict[str, Any]] | None,
        use_kd: bool, grad_hook: Callable[[], None] | None = None, desc: str = "train",
        anchor_weight: float = 0.0, anchor_temperature: float = 1.0, ctx: DistContext = SINGLE,
        ema_decay: float = 0.0) -> dict[str, Any]:
    """Optimise ``model`` on ``train_set``; keep (and restore) the weights of the best evaluation.

    ``forward(data, rows)`` returns a :class:`StudentOutput` for a batch; ``evaluate()`` returns a dict
    with ``mean_agreement``. ``grad_hook`` runs after backward (add-task uses it to zero the gradients of
    frozen rows). With ``anchor_weight > 0`` and ``train_set.anchor`` set, the loss adds
    ``anchor_weight * distillation_loss(z, anchor, anchor_temperature)`` (self-distillation toward a
    frozen copy of the model's own outputs). With ``ema_decay > 0`` an exponential moving average of the weights
    is kept; evaluations, early stopping and the returned model use it, the optimizer steps the raw weights.
    Under DDP (``ctx``) every rank draws the same global batches, trains on its shard and calls ``forward`` on
    the DDP module; rank 0 evaluates and shows the bar. Returns the training summary (history, best metric,
    steps, seconds).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    rng = np.random.default_rng(args.seed)
    lengths = [len(x) for x in train_set.input_ids]
    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total = math.ceil(steps_per_epoch * args.epochs)
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    total = max(total, 1)
    opt = torch.optim.AdamW(groups)
    sched = get_linear_schedule_with_warmup(opt, int(args.warmup_ratio * total), total)
    eval_every = max(1, steps_per_epoch // max(1, args.evals_per_epoch))
    params = [p for g in groups for p in g["params"]]

    ema = ema_model(model, ema_decay)
    stopper = EarlyStopping(args.early_stopping_patience, args.min_delta, args.early_stopping_floor)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    step = 0
    t0 = time.time()
    last_val = float("nan")
    running = None
    stopped_early = False
    bar = tqdm(total=total, desc=desc, disable=not (args.progress and ctx.is_main), dynamic_ncols=True)
    try:
        while step < total and not stopped_early:
            for rows in bucketed_batches(lengths, args.batch_size, args.bucket_batches, rng):
                model.train()
                loss, parts, value = _step_loss(rows, train_set, forward, args, use_kd, anchor_weight,
                                                anchor_temperature, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_hook is not None:
                    grad_hook()
                if args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                opt.step()
                sched.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                running = value if running is None else 0.9 * running + 0.1 * value
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", val=f"{last_val:.4f}")
                if evaluate is not None and (step % eval_every == 0 or step == total):
                    live = swap_in_average(model, ema)
                    res = _evaluate_now(evaluate, ctx)
                    last_val = res["mean_agreement"]
                    history.append({"step": step, "epoch": step / steps_per_epoch, "loss": running, **parts,
                                    "val_mean_agreement": last_val, "val_per_task": res.get("per_task", {}),
                                    "seconds": time.time() - t0})
                    bar.set_postfix(loss=f"{running:.4f}", val=f"{last_val:.4f}")
                    improved, stop = stopper.update(last_val)
                    if improved:
                        best_state = state_copy(model)
                    if live is not None:  # back to the raw weights the optimizer is stepping
                        model.load_state_dict(live)
                    if not improved and stop:
                        stopped_early = True
                        break
                if step >= total:
                    break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        swap_in_average(model, ema)
    model.eval()
    return {"history": history, "best_val_mean_agreement": stopper.best if best_state is not None else None,
            "steps": step, "seconds": time.time() - t0, "stopped_early": stopped_early,
            "n_train": len(train_set)}


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------
def _task_ids(args: TrainingArguments, registry: TaskRegistry, records: Sequence[Record]) -> list[str]:
    if args.task_ids:
        for t in args.task_ids:
            registry.get(t)  # UnknownTaskError for a typo
        return list(args.task_ids)
    present = list(dict.fromkeys(r.task_id for r in records))
    for t in present:
        registry.get(t)
    return present


def train(args: TrainingArguments, *, registry: TaskRegistry | None = None,
          train_records: Sequence[Record] | None = None, val_records: Sequence[Record] | None = None,
          distributed: DistributedOptions | None = None) -> TrainResult:
    """Train one student (or, for ``method='individual'``, one checkpoint per task) and save it.

    Records and the registry may be passed directly (the library way) or come from the paths in ``args``
    (the recipe way). Returns the checkpoint directory and the validation metrics. Started by torchrun (or inside
    an initialised process group) this is one DDP run with the same recipe (``distributed`` says how to join;
    module rubricate.student.distributed); rank 0 writes the checkpoint, the other ranks' results hold the
    training summary only.
    """
    registry, train_records, val_records = resolve_inputs(args, registry, train_records, val_records)
    with process_group(distributed) as ctx:
        if args.method == "individual":
            return _train_individual(args, registry, train_records, val_records, ctx)
        return _train_one(args, registry, train_records, val_records, ctx)


def _train_individual(args: TrainingArguments, registry: TaskRegistry, train_records: list[Record],
                      val_records: list[Record] | None, ctx: DistContext = SINGLE) -> TrainResult:
    out = Path(args.output_dir)
    per_task: dict[str, Any] = {}
    for tid in _task_ids(args, registry, train_records):
        sub = copy.deepcopy(args)
        sub.task_ids = [tid]
        sub.output_dir = str(out / tid)
        res = _train_one(sub, registry, [r for r in train_records if r.task_id == tid],
                         [r for r in val_records if r.task_id == tid] if val_records is not None else None, ctx)
        per_task[tid] = res.metrics
    vals = [m["val"]["per_task"][t] for t, m in per_task.items() if m.get("val")]
    metrics = {"method": "individual", "per_task": per_task,
               "val_mean_agreement": float(np.mean(vals)) if vals else None}
    if ctx.is_main:
        (out / "individual.json").write_text(json.dumps(metrics, indent=2, default=str), encoding="utf-8")
    return TrainResult(out, metrics)


@dataclass
class _Prepared:
    """What one training run needs besides the model: tasks, encodings, tokenizer and encoded sets."""

    tids: list[str]
    encodings: dict[str, LabelEncoding]
    tokenizer: Any
    pad_id: int
    train_set: EncodedSet
    val_set: EncodedSet | None
    val_records: list[Record] | None
    info: dict[str, Any]  # teacher coverage, second-rater rows, length statistics (into the metrics)
    ctx: DistContext = SINGLE  # this process's place in a DDP run (the single process by default)


def _prepare(args: TrainingArguments, registry: TaskRegistry, train_records: list[Record],
             val_records: list[Record] | None, ctx: DistContext = SINGLE) -> _Prepared:
    """Check and encode the records; attach the teacher and the second rater to the training set."""
    from transformers import AutoTokenizer

    from rubricate.student.modeling import resolve_encoder

    tids = _task_ids(args, registry, train_records)
    train_records = [r for r in train_records if r.task_id in set(tids)]
    if not train_records:
        raise InputError(f"no training records for tasks {tids}", file=args.train_data or None)
    check_records(train_records, tids, registry, args.train_data or "<train records>")
    if val_records is not None:
        val_records = [r for r in val_records if r.task_id in set(tids)]
        check_records(val_records, tids, registry, args.val_data or "<validation records>")
    encodings = {t: LabelEncoding.from_task(registry.get(t)) for t in tids}
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_encoder(args.encoder)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    train_set = encode_records(train_records, tokenizer, tids, encodings, args.max_length)
    info: dict[str, Any] = {"teacher_rows": None,
                            "lengths": length_stats(tokenizer, train_records, args.max_length)}
    if args.use_kd:
        info["teacher_rows"] = attach_teacher(train_set, args.teacher_file, encodings, args.teacher_policy,
                                              args.teacher_eps, registry)
    info["train_gold"] = {t: gold_scores(encodings[t], train_set.targets[train_set.task_index == i,
                                                                         : encodings[t].n_labels])
                          for i, t in enumerate(tids)}  # official scores, before the second rater
    info["second_rater_rows"] = add_second_rater(train_set, train_records, encodings, args.second_rater)
    val_set = encode_records(val_records, tokenizer, tids, encodings, args.max_length) if val_records else None
    return _Prepared(tids, encodings, tokenizer, pad_id, train_set, val_set, val_records, info, ctx)


def _fit_model(args: TrainingArguments, prep: _Prepared, registry: TaskRegistry, train_set: EncodedSet,
               val_set: EncodedSet | None) -> tuple[StudentModel, dict[str, Any]]:
    """A fresh student trained on ``train_set`` (early stopping on ``val_set`` when given)."""
    set_seed(args.seed)
    model = StudentModel.from_encoder(args.model_config(prep.tids, [prep.encodings[t].n_labels for t in prep.tids]))
    ctx, dev = prep.ctx, prep.ctx.device
    net = wrap_model(model, ctx)  # the model itself for a single process
    if ctx.enabled:  # same initial weights everywhere, but each rank its own dropout masks (seed + rank)
        torch.manual_seed(args.seed + ctx.rank)

    def forward(data: EncodedSet, rows: np.ndarray):
        ids, mask = pad_batch([data.input_ids[i] for i in rows], prep.pad_id)
        return net(ids.to(dev), mask.to(dev), torch.from_numpy(data.task_index[rows]).to(dev))

    evaluate = None
    if val_set is not None and len(val_set):
        def evaluate() -> dict[str, Any]:
            return evaluate_agreement(host_view(model, ctx), val_set, registry, prep.encodings, prep.pad_id,
                                      args.eval_batch_size, args.decoder.threshold)

    new_named = [(n, p) for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = encoder_param_groups(model.encoder, args.lr_encoder, args.weight_decay, args.layer_lr_decay) + \
        param_groups(new_named, args.lr_new, args.weight_decay)
    n = len(prep.tids)
    summary = fit(model, train_set, val_set, args, groups, forward, evaluate, args.use_kd,
                  desc=f"{args.method} ({n} task{'s' if n > 1 else ''})", ctx=ctx, ema_decay=args.ema_decay)
    return model, summary


def _fit_checkpoint_decoder(args: TrainingArguments, prep: _Prepared, val_logits: np.ndarray | None) -> Decoder:
    """The decoder of ``args.decoder``, fit on the validation predictions (module rubricate.student.decoding)."""
    if args.decoder.kind == "threshold":
        return Decoder("threshold", args.decoder.threshold)
    if prep.val_set is None or val_logits is None:
        raise InputError(f"decoder '{args.decoder.kind}' is fit on validation data: set 'split', 'val_data' or "
                         "use decoder kind 'threshold'")
    probs = 1.0 / (1.0 + np.exp(-val_logits.astype(np.float64)))
    val_probs, val_gold = {}, {}
    for i, t in enumerate(prep.tids):
        rows = prep.val_set.task_index == i
        n_labels = prep.encodings[t].n_labels
        val_probs[t] = probs[rows, :n_labels]
        val_gold[t] = gold_scores(prep.encodings[t], prep.val_set.targets[rows, :n_labels])
    return fit_decoder(args.decoder, prep.encodings, val_probs, val_gold, prep.info["train_gold"])


def chosen_epochs(summary: dict[str, Any], n_train: int, batch_size: int) -> float | None:
    """Epochs (passes over the training set) at the evaluation early stopping kept, or None without one."""
    best = summary.get("best_val_mean_agreement")
    hist = [h for h in summary.get("history", []) if h.get("val_mean_agreement") == best]
    if best is None or not hist:
        return None
    return hist[0]["step"] / math.ceil(n_train / batch_size)


def _refit(args: TrainingArguments, prep: _Prepared, registry: TaskRegistry,
           epochs: float) -> tuple[StudentModel, dict[str, Any]]:
    """Retrain from scratch on train + validation for ``epochs`` (see ``TrainingArguments.refit``)."""
    assert prep.val_set is not None and prep.val_records is not None
    extra = encode_records(prep.val_records, prep.tokenizer, prep.tids, prep.encodings, args.max_length)
    if args.use_kd:
        attach_teacher(extra, args.teacher_file, prep.encodings, args.teacher_policy, args.teacher_eps, registry)
    add_second_rater(extra, prep.val_records, prep.encodings, args.second_rater)
    merged = concat_sets(prep.train_set, extra)
    refit_args = copy.deepcopy(args)
    refit_args.epochs = epochs
    model, summary = _fit_model(refit_args, prep, registry, merged, None)
    return model, summary


def _validate(args: TrainingArguments, prep: _Prepared, registry: TaskRegistry,
              model: StudentModel) -> tuple[dict[str, Any] | None, Decoder]:
    """The validation agreement and the checkpoint's decoder, from one pass over validation."""
    val, val_logits = None, None
    if prep.val_set is not None and len(prep.val_set):
        view = host_view(model, prep.ctx)
        val_logits, _ = run_model(view, prep.val_set.input_ids, prep.val_set.task_index, prep.pad_id,
                                  args.eval_batch_size)
        val = evaluate_agreement(view, prep.val_set, registry, prep.encodings, prep.pad_id, args.eval_batch_size,
                                 args.decoder.threshold, logits=val_logits)
    return val, _fit_checkpoint_decoder(args, prep, val_logits)


def _train_one(args: TrainingArguments, registry: TaskRegistry, train_records: list[Record],
               val_records: list[Record] | None, ctx: DistContext = SINGLE) -> TrainResult:
    """Train, validate and save one student; under DDP rank 0 alone validates and saves (the others wait)."""
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    prep = _prepare(args, registry, train_records, val_records, ctx)
    model, summary = _fit_model(args, prep, registry, prep.train_set, prep.val_set)
    val, decoder = _validate(args, prep, registry, model) if ctx.is_main else (None, None)
    info = {k: v for k, v in prep.info.items() if k != "train_gold"}
    metrics: dict[str, Any] = {"method": args.method, "val": val,
                               **info, **{k: v for k, v in summary.items() if k != "history"}}
    out = Path(args.output_dir)
    history = summary["history"]
    seen = prep.train_set.input_ids  # the responses whose tokens the saved model was trained on
    if args.refit:
        epochs = chosen_epochs(summary, len(prep.train_set), args.batch_size)
        if epochs is None:
            raise InputError("refit needs validation data for early stopping to choose the epochs")
        if ctx.is_main:
            _save(model, prep, registry, args, metrics, decoder, out / "selection", history, seen)
        model, refit_summary = _refit(args, prep, registry, epochs)
        metrics["refit"] = {"epochs": epochs, **{k: v for k, v in refit_summary.items() if k != "history"}}
        history = history + [{"refit": True, **h} for h in refit_summary["history"]]
        seen = seen + prep.val_set.input_ids
    if ctx.is_main:
        _save(model, prep, registry, args, metrics, decoder, out, history, seen)
    barrier(ctx)
    return TrainResult(out, metrics, history)


def _save(model: StudentModel, prep: _Prepared, registry: TaskRegistry, args: TrainingArguments,
          metrics: dict[str, Any], decoder: Decoder, out: Path, history: list[dict[str, Any]],
          seen: list[list[int]]) -> None:
    """The checkpoint, with the token counts of ``seen`` (the rows it trained on) for the int8 export."""
    save_model(model, prep.tokenizer, out,
               checkpoint_document(model, registry, prep.encodings, args, metrics, model_id=out.name or "student",
                                   extra={"history": history, "decoder": decoder.to_dict()}),
               token_counts=token_counts(seen, args.max_length))
