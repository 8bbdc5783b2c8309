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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import nn

from rubricate.data.records import Record
from rubricate.data.teacher_file import AlignPolicy
from rubricate.errors import InputError
from rubricate.labels import LabelEncoding
from rubricate.student.data import (  # noqa: F401  (re-exported: add-task and older imports use these names)
    EncodedSet,
    add_second_rater,
    attach_teacher,
    bucketed_batches,
    check_records,
    concat_sets,
    encode_records,
    length_stats,
)
from rubricate.student.decoding import Decoder, DecoderArguments, fit_decoder, gold_scores
from rubricate.student.losses import EarlyStopping, bce_loss, distillation_loss, load_balancing_loss  # noqa: F401
from rubricate.student.modeling import (
    StudentConfig,
    StudentModel,
    load_model,
    pad_batch,
    run_model,
    save_model,
)
from rubricate.tasks import TaskRegistry

Method = Literal["individual", "mtl", "unimoe", "unimoe_guided"]
METHODS = ("individual", "mtl", "unimoe", "unimoe_guided")


# --------------------------------------------------------------------------------------------------------
# Arguments (= recipe keys)
# --------------------------------------------------------------------------------------------------------
@dataclass
class TrainingArguments:
    """Every knob of :func:`train`; a recipe YAML under ``recipes/`` holds exactly these keys."""

    # data: either `data` (+ `split`) or `train_data` (+ `val_data`)
    tasks: str = ""  #: task folder or file (TaskRegistry.from_dir)
    data: str | None = None  #: all records (native JSONL or a table `load_table` reads); cut by `split`
    split: str | None = None  #: split file (rubricate data split); None with `data`: the default split, made now
    train_data: str = ""  #: training records (native JSONL or a table), when there is no `data`
    val_data: str | None = None  #: validation records for early stopping (None: no early stopping)
    task_ids: list[str] | None = None  #: train on these tasks only (default: every task with training rows)
    output_dir: str = "runs/student"
    method: Method = "unimoe_guided"
    # model
    encoder: str = "minilm"  #: "minilm", "mpnet" or a HF encoder directory
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = 128
    n_experts: int = 4
    n_moe_layers: int = 2
    moe_placement: Literal["token", "pooled"] = "token"
    expert_hidden: int | None = None  #: expert inner size (None: the encoder's hidden size)
    expert_init: Literal["random", "zero"] = "random"  #: "zero": experts' output layers start at 0 (modeling.py)
    gate_hidden: int = 128
    task_emb_dim: int = 32
    head_hidden: int = 256
    dropout: float = 0.1
    # optimisation
    epochs: float = 3.0
    max_steps: int | None = None  #: stop after this many optimizer steps (for quick runs)
    batch_size: int = 32
    eval_batch_size: int = 64
    lr_encoder: float = 5e-5
    lr_new: float = 1e-3  #: MoE, task embeddings and heads (newly initialised, so a larger step)
    weight_decay: float = 0.01  #: AdamW decoupled decay (not applied to biases, LayerNorms, embeddings)
    warmup_ratio: float = 0.1  #: linear warm-up over this share of the steps, then linear decay to 0
    max_grad_norm: float = 1.0
    bucket_batches: int = 50  #: length bucketing: sort by length within windows of this many batches
    seed: int = 42
    num_threads: int | None = None  #: torch CPU threads (None: torch's default)
    # losses
    lambda_lb: float = 0.01
    lambda_kd: float = 1.0
    kd_temperature: float = 2.0
    teacher_file: str | None = None
    teacher_policy: AlignPolicy = "ignore_extra"
    teacher_eps: float = 1e-4  #: clip teacher probabilities to [eps, 1-eps] before taking logits
    # early stopping / decoding
    evals_per_epoch: int = 1
    early_stopping_patience: int = 2  #: evaluations without improvement before stopping
    min_delta: float = 0.0  #: an evaluation improves only if it beats the best by more than this
    #: patience counts only once the best validation agreement exceeds this floor. Mean QWK / kappa of
    #: constant predictions is 0: a model still at chance has not started to overfit, and stopping it
    #: then returns a constant scorer (ASAP-SAS set 3, Individual, stopped at 1.5 epochs with kappa 0).
    early_stopping_floor: float = 0.0
    #: how scores are decoded from probabilities, fit on the validation split after training and stored in the
    #: checkpoint (rubricate.student.decoding; a recipe gives a mapping, e.g. ``decoder: {kind: qwk_cuts}``).
    #: Early stopping always decodes at ``decoder.threshold`` (a decoder fit on the same rows would flatter it).
    decoder: DecoderArguments = field(default_factory=DecoderArguments)
    #: a second rater's labels (``Record.rater2``) in training: "ignore", "soft" (mean of the two raters'
    #: indicators as the target) or "duplicate" (each response once per rater); student/data.py
    second_rater: Literal["ignore", "soft", "duplicate"] = "ignore"
    #: after training with validation: retrain from scratch on train + validation for the number of optimizer
    #: epochs that early stopping chose (scaled to the larger set), keep the decoder fit on validation, and
    #: save that model (the one a user ships); the selection run is kept in ``<output_dir>/selection``
    refit: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if isinstance(self.decoder, dict):
            known = {f.name for f in fields(DecoderArguments)}
            unknown = sorted(set(self.decoder) - known)
            if unknown:
                raise ValueError(f"unknown decoder keys {unknown} (known: {sorted(known)})")
            self.decoder = DecoderArguments(**self.decoder)
        elif isinstance(self.decoder, str):
            self.decoder = DecoderArguments(kind=self.decoder)  # type: ignore[arg-type]
        if self.second_rater not in ("ignore", "soft", "duplicate"):
            raise ValueError(f"second_rater must be 'ignore', 'soft' or 'duplicate', got {self.second_rater!r}")
        if self.method == "unimoe_guided" and not self.teacher_file:
            raise ValueError("method 'unimoe_guided' needs a teacher_file (see `rubricate teach`)")

    @property
    def use_moe(self) -> bool:
        return self.method in ("unimoe", "unimoe_guided")

    @property
    def use_kd(self) -> bool:
        return self.method == "unimoe_guided" and self.lambda_kd > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<recipe>") -> "TrainingArguments":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown recipe keys {unknown} (known: {sorted(known)})", file=source)
        try:
            return cls(**d)
        except (TypeError, ValueError) as e:
            raise InputError(str(e), file=source) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "TrainingArguments":
        """Load a recipe; relative data/task paths stay relative to the current directory."""
        import yaml

        p = Path(path)
        try:
            d = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise InputError(f"invalid YAML: {e}", file=p) from None
        if not isinstance(d, dict):
            raise InputError("a recipe must be a mapping of TrainingArguments keys", file=p)
        d.update(overrides or {})
        return cls.from_dict(d, str(p))

    def model_config(self, task_ids: list[str], n_labels: list[int]) -> StudentConfig:
        return StudentConfig(task_ids=list(task_ids), n_labels=list(n_labels), encoder=self.encoder,
                             pooling=self.pooling, max_length=self.max_length, use_moe=self.use_moe,
                             n_experts=self.n_experts, n_moe_layers=self.n_moe_layers,
                             moe_placement=self.moe_placement, expert_hidden=self.expert_hidden,
                             expert_init=self.expert_init,
                             gate_hidden=self.gate_hidden, task_emb_dim=self.task_emb_dim,
                             head_hidden=self.head_hidden, dropout=self.dropout)


@dataclass
class TrainResult:
    checkpoint_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------
def task_agreement(enc: LabelEncoding, primary_scale: str | None, probs: np.ndarray, targets: np.ndarray,
                   threshold: float) -> float:
    """QWK of the decoded primary score, or mean Cohen's kappa over criteria for analytic-only tasks."""
    from sklearn.metrics import cohen_kappa_score

    pred = enc.decode_scores(probs, threshold)
    gold_rows = enc.decode_targets(targets)
    if primary_scale is not None:
        keep = [i for i, g in enumerate(gold_rows) if primary_scale in g]
        if not keep:
            return float("nan")
        y = [gold_rows[i][primary_scale] for i in keep]
        sc = next(s for s in enc.scales if s.id == primary_scale)
        k = cohen_kappa_score(y, pred[primary_scale][keep], weights="quadratic",
                              labels=list(range(sc.min, sc.max + 1)))
        return 0.0 if math.isnan(k) else float(k)
    kappas = []
    for c in enc.criteria:
        keep = [i for i, g in enumerate(gold_rows) if c in g]
        if keep:
            k = cohen_kappa_score([gold_rows[i][c] for i in keep], pred[c][keep], labels=[0, 1])
            kappas.append(0.0 if math.isnan(k) else float(k))
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


ForwardFn = Callable[[EncodedSet, np.ndarray], Any]


def fit(model: StudentModel, train_set: EncodedSet, val_set: EncodedSet | None, args: TrainingArguments,
        groups: list[dict[str, Any]], forward: ForwardFn,
        evaluate: Callable[[], dict[str, Any]] | None,
        use_kd: bool, grad_hook: Callable[[], None] | None = None, desc: str = "train",
        anchor_weight: float = 0.0, anchor_temperature: float = 1.0) -> dict[str, Any]:
    """Optimise ``model`` on ``train_set``; keep (and restore) the weights of the best evaluation.

    ``forward(data, rows)`` returns a :class:`StudentOutput` for a batch; ``evaluate()`` returns a dict
    with ``mean_agreement``. ``grad_hook`` runs after backward (add-task uses it to zero the gradients of
    frozen rows). With ``anchor_weight > 0`` and ``train_set.anchor`` set, the loss adds
    ``anchor_weight * distillation_loss(z, anchor, anchor_temperature)`` (self-distillation toward a
    frozen copy of the model's own outputs). Returns the training summary (history, best metric, steps,
    seconds).
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

    stopper = EarlyStopping(args.early_stopping_patience, args.min_delta, args.early_stopping_floor)
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    step = 0
    t0 = time.time()
    last_val = float("nan")
    running = None
    stopped_early = False
    bar = tqdm(total=total, desc=desc, disable=not args.progress, dynamic_ncols=True)
    try:
        while step < total and not stopped_early:
            for rows in bucketed_batches(lengths, args.batch_size, args.bucket_batches, rng):
                model.train()
                out = forward(train_set, rows)
                targets = torch.from_numpy(train_set.targets[rows])
                l_task = bce_loss(out.logits, targets, out.label_mask)
                loss = l_task
                parts = {"task": l_task.item()}
                if out.gate_weights is not None and args.lambda_lb > 0:
                    l_lb = load_balancing_loss(out.gate_weights)
                    loss = loss + args.lambda_lb * l_lb
                    parts["lb"] = l_lb.item()
                if use_kd and train_set.teacher is not None:
                    l_kd = distillation_loss(out.logits, torch.from_numpy(train_set.teacher[rows]),
                                             args.kd_temperature, out.label_mask)
                    loss = loss + args.lambda_kd * l_kd
                    parts["kd"] = l_kd.item()
                if anchor_weight > 0 and train_set.anchor is not None:
                    l_anchor = distillation_loss(out.logits, torch.from_numpy(train_set.anchor[rows]),
                                                 anchor_temperature, out.label_mask)
                    loss = loss + anchor_weight * l_anchor
                    parts["self_kd"] = l_anchor.item()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_hook is not None:
                    grad_hook()
                if args.max_grad_norm and args.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
                opt.step()
                sched.step()
                step += 1
                running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{running:.4f}", val=f"{last_val:.4f}")
                if evaluate is not None and (step % eval_every == 0 or step == total):
                    res = evaluate()
                    last_val = res["mean_agreement"]
                    history.append({"step": step, "epoch": step / steps_per_epoch, "loss": running, **parts,
                                    "val_mean_agreement": last_val, "val_per_task": res.get("per_task", {}),
                                    "seconds": time.time() - t0})
                    bar.set_postfix(loss=f"{running:.4f}", val=f"{last_val:.4f}")
                    improved, stop = stopper.update(last_val)
                    if improved:
                        best_state = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items()})
                    elif stop:
                        stopped_early = True
                        break
                if step >= total:
                    break
    finally:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_val_mean_agreement": stopper.best if best_state is not None else None,
            "steps": step, "seconds": time.time() - t0, "stopped_early": stopped_early,
            "n_train": len(train_set)}


# --------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------
def _resolve_inputs(args: TrainingArguments, registry: TaskRegistry | None, train_records: Sequence[Record] | None,
                    val_records: Sequence[Record] | None) -> tuple[TaskRegistry, list[Record], list[Record] | None]:
    if registry is None:
        if not args.tasks:
            raise InputError("no task registry: set 'tasks' (a task folder or file) in the recipe")
        registry = TaskRegistry.from_dir(args.tasks)
    if train_records is None and args.data:
        parts = split_records(load_records(args.data, registry), args.split, registry)
        train_records = parts["train"]
        if val_records is None:
            val_records = parts["validation"] or None
    if train_records is None:
        if not args.train_data:
            raise InputError("no training data: set 'data' (+ 'split') or 'train_data' in the recipe")
        train_records = load_records(args.train_data, registry)
    if val_records is None and args.val_data:
        val_records = load_records(args.val_data, registry)
    return registry, list(train_records), (list(val_records) if val_records is not None else None)


def resolve_inputs_with_test(args: TrainingArguments) -> tuple[TaskRegistry, dict[str, list[Record]]]:
    """A recipe's registry and its train / validation / test records (``data`` + ``split`` recipes)."""
    if not args.tasks or not args.data:
        raise InputError("this verb needs a recipe with 'tasks' and 'data' (+ 'split')")
    registry = TaskRegistry.from_dir(args.tasks)
    parts = split_records(load_records(args.data, registry), args.split, registry)
    if args.task_ids:
        keep = set(args.task_ids)
        parts = {k: [r for r in v if r.task_id in keep] for k, v in parts.items()}
    return registry, parts


def load_records(path: str | Path, registry: TaskRegistry | None = None) -> list[Record]:
    """Records from native JSONL or any table ``load_table`` understands (label columns named like label keys)."""
    from rubricate.data.loaders import load_table

    return load_table(path, registry=registry)


def split_records(records: Sequence[Record], split: str | Path | None,
                  registry: TaskRegistry | None = None) -> dict[str, list[Record]]:
    """{"train", "validation", "test"} parts: from a split file, or the default stratified split made now."""
    from rubricate.data.splits import apply_split, make_split

    sp = split if split is not None else make_split(records, registry=registry)
    return apply_split(records, sp)


def _task_ids(args: TrainingArguments, registry: TaskRegistry, records: Sequence[Record]) -> list[str]:
    if args.task_ids:
        for t in args.task_ids:
            registry.get(t)  # UnknownTaskError for a typo
        return list(args.task_ids)
    present = list(dict.fromkeys(r.task_id for r in records))
    for t in present:
        registry.get(t)
    return present


def checkpoint_document(model: StudentModel, registry: TaskRegistry, encodings: dict[str, LabelEncoding],
                        args: TrainingArguments | dict[str, Any], metrics: dict[str, Any], model_id: str,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The non-model part of ``config.json``: task snapshot, label encodings, recipe, metrics.

    ``model_version`` is added by :func:`save_model` (a hash of the weights).
    """
    tids = model.config.task_ids
    doc = {
        "model_id": model_id,
        "tasks": registry.subset(tids).snapshot(),
        "label_encodings": {t: encodings[t].to_dict() for t in tids},
        "recipe": args.to_dict() if isinstance(args, TrainingArguments) else args,
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parameters": model.count_parameters(),
    }
    doc.update(extra or {})
    return doc


def train(args: TrainingArguments, *, registry: TaskRegistry | None = None,
          train_records: Sequence[Record] | None = None, val_records: Sequence[Record] | None = None) -> TrainResult:
    """Train one student (or, for ``method='individual'``, one checkpoint per task) and save it.

    Records and the registry may be passed directly (the library way) or come from the paths in ``args``
    (the recipe way). Returns the checkpoint directory and the validation metrics.
    """
    registry, train_records, val_records = _resolve_inputs(args, registry, train_records, val_records)
    if args.method == "individual":
        return _train_individual(args, registry, train_records, val_records)
    return _train_one(args, registry, train_records, val_records)


def _train_individual(args: TrainingArguments, registry: TaskRegistry, train_records: list[Record],
                      val_records: list[Record] | None) -> TrainResult:
    out = Path(args.output_dir)
    per_task: dict[str, Any] = {}
    for tid in _task_ids(args, registry, train_records):
        sub = copy.deepcopy(args)
        sub.task_ids = [tid]
        sub.output_dir = str(out / tid)
        res = _train_one(sub, registry, [r for r in train_records if r.task_id == tid],
                         [r for r in val_records if r.task_id == tid] if val_records is not None else None)
        per_task[tid] = res.metrics
    vals = [m["val"]["per_task"][t] for t, m in per_task.items() if m.get("val")]
    metrics = {"method": "individual", "per_task": per_task,
               "val_mean_agreement": float(np.mean(vals)) if vals else None}
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


def _prepare(args: TrainingArguments, registry: TaskRegistry, train_records: list[Record],
             val_records: list[Record] | None) -> _Prepared:
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
    return _Prepared(tids, encodings, tokenizer, pad_id, train_set, val_set, val_records, info)


def _fit_model(args: TrainingArguments, prep: _Prepared, registry: TaskRegistry, train_set: EncodedSet,
               val_set: EncodedSet | None) -> tuple[StudentModel, dict[str, Any], Callable[[], dict[str, Any]] | None]:
    """A fresh student trained on ``train_set`` (early stopping on ``val_set`` when given)."""
    set_seed(args.seed)
    model = StudentModel.from_encoder(args.model_config(prep.tids, [prep.encodings[t].n_labels for t in prep.tids]))

    def forward(data: EncodedSet, rows: np.ndarray):
        ids, mask = pad_batch([data.input_ids[i] for i in rows], prep.pad_id)
        return model(ids, mask, torch.from_numpy(data.task_index[rows]))

    evaluate = None
    if val_set is not None and len(val_set):
        def evaluate() -> dict[str, Any]:
            return evaluate_agreement(model, val_set, registry, prep.encodings, prep.pad_id, args.eval_batch_size,
                                      args.decoder.threshold)

    enc_named = [(n, p) for n, p in model.named_parameters() if n.startswith("encoder.")]
    new_named = [(n, p) for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = param_groups(enc_named, args.lr_encoder, args.weight_decay) + \
        param_groups(new_named, args.lr_new, args.weight_decay)
    n = len(prep.tids)
    summary = fit(model, train_set, val_set, args, groups, forward, evaluate, args.use_kd,
                  desc=f"{args.method} ({n} task{'s' if n > 1 else ''})")
    return model, summary, evaluate


def _fit_checkpoint_decoder(args: TrainingArguments, model: StudentModel, prep: _Prepared) -> Decoder:
    """The decoder of ``args.decoder``, fit on the validation predictions (module rubricate.student.decoding)."""
    if args.decoder.kind == "threshold":
        return Decoder("threshold", args.decoder.threshold)
    if prep.val_set is None or not len(prep.val_set):
        raise InputError(f"decoder '{args.decoder.kind}' is fit on validation data: set 'split', 'val_data' or "
                         "use decoder kind 'threshold'")
    logits, _ = run_model(model, prep.val_set.input_ids, prep.val_set.task_index, prep.pad_id, args.eval_batch_size)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
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
    model, summary, _ = _fit_model(refit_args, prep, registry, merged, None)
    return model, summary


def _train_one(args: TrainingArguments, registry: TaskRegistry, train_records: list[Record],
               val_records: list[Record] | None) -> TrainResult:
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    prep = _prepare(args, registry, train_records, val_records)
    model, summary, evaluate = _fit_model(args, prep, registry, prep.train_set, prep.val_set)
    decoder = _fit_checkpoint_decoder(args, model, prep)
    info = {k: v for k, v in prep.info.items() if k != "train_gold"}
    metrics: dict[str, Any] = {"method": args.method, "val": evaluate() if evaluate is not None else None,
                               **info, **{k: v for k, v in summary.items() if k != "history"}}
    out = Path(args.output_dir)
    history = summary["history"]
    if args.refit:
        epochs = chosen_epochs(summary, len(prep.train_set), args.batch_size)
        if epochs is None:
            raise InputError("refit needs validation data for early stopping to choose the epochs")
        _save(model, prep, registry, args, metrics, decoder, out / "selection", history)
        model, refit_summary = _refit(args, prep, registry, epochs)
        metrics["refit"] = {"epochs": epochs, **{k: v for k, v in refit_summary.items() if k != "history"}}
        history = history + [{"refit": True, **h} for h in refit_summary["history"]]
    _save(model, prep, registry, args, metrics, decoder, out, history)
    return TrainResult(out, metrics, history)


def _save(model: StudentModel, prep: _Prepared, registry: TaskRegistry, args: TrainingArguments,
          metrics: dict[str, Any], decoder: Decoder, out: Path, history: list[dict[str, Any]]) -> None:
    save_model(model, prep.tokenizer, out,
               checkpoint_document(model, registry, prep.encodings, args, metrics, model_id=out.name or "student",
                                   extra={"history": history, "decoder": decoder.to_dict()}))


def load_checkpoint(checkpoint_dir: str | Path) -> tuple[StudentModel, Any, TaskRegistry, dict[str, LabelEncoding],
                                                          dict[str, Any]]:
    """(model, tokenizer, task registry snapshot, label encodings, config document) of a checkpoint."""
    model, tok, doc = load_model(checkpoint_dir)
    registry = TaskRegistry.from_snapshot(doc["tasks"])
    encodings = {t: LabelEncoding.from_dict(e) for t, e in doc["label_encodings"].items()}
    return model, tok, registry, encodings, doc
