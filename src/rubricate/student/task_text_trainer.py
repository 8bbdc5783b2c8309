"""Training the task-text student across items, and its few-shot heads for new items.

**Across items** (:func:`train_task_text`): every labelled (response, label) decision of every training task is a
*unit*; its statements (``task_text_data``) pair with the response, the pair logits pool into the unit's logit
(``reference_pool``), and the loss is binary cross-entropy against the label (criteria, 2-way correctness and the
cumulative ordinal indicators alike). AdamW with linear warm-up and decay, as the UniMoE trainer; no task id is
learned, so nothing in the model is specific to a training task. ``max_responses_per_task`` and ``max_steps`` bound
the CPU cost (the benchmark sets both and reports them).

**Few-shot** (:func:`fit_few_shot`): with ``k`` scored answers of a new item, a :class:`FewShotHead` per label,
``z = a * z0 + w . h + b`` over the frozen model's logit ``z0`` and pooled pair vector ``h``, fit by L-BFGS on
``sum BCE + l2/2 * (|w|^2 + (a - 1)^2)`` (the prior is the zero-shot model: ``a = 1, w = 0``; with few examples the
fit stays near it). Only the new task's numbers are written (:func:`save_few_shot`), so no other task's predictions
change. ``FewShotArguments.features=False`` fits ``a`` and ``b`` alone (Platt calibration of the zero-shot logits).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rubricate.data.records import Record
from rubricate.labels import LabelEncoding
from rubricate.student.task_text_data import TaskTextOptions, build_pairs, special_ids, task_statements
from rubricate.student.task_text_scorer import FewShotHead, TaskTextScorer
from rubricate.tasks import Task, TaskRegistry


@dataclass
class TaskTextArguments(TaskTextOptions):
    """Every knob of :func:`train_task_text` (the model keys come from ``TaskTextOptions``)."""

    output_dir: str = "runs/task-text"
    epochs: float = 1.0
    max_steps: int | None = None  #: stop after this many optimizer steps
    batch_size: int = 16  #: (response, label) units per step; each brings one pair per statement
    eval_batch_size: int = 64  #: pairs per forward when scoring
    lr_encoder: float = 3e-5
    lr_head: float = 1e-3  #: the new pair head (a larger step than the pre-trained encoder's)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    bucket_batches: int = 50  #: length bucketing windows (student.data.bucketed_batches)
    max_responses_per_task: int | None = None  #: a seeded sample of each training task's responses (None: all)
    seed: int = 42
    num_threads: int | None = None  #: torch CPU threads (None: torch's default)
    progress: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FewShotArguments:
    """The few-shot head's fit (see the module docstring)."""

    l2: float = 1.0  #: prior strength toward the zero-shot model (as 1/C of scikit-learn's logistic regression)
    max_iter: int = 200  #: L-BFGS iterations
    features: bool = True  #: False: calibrate the zero-shot logit only (a, b)


@dataclass
class TaskTextResult:
    checkpoint_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    n_units: int = 0
    n_pairs: int = 0


# --------------------------------------------------------------------------------------------------------
# Forward over many pairs
# --------------------------------------------------------------------------------------------------------
def pair_outputs(model: Any, input_ids: Sequence[Sequence[int]], pad_id: int,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(P,) pair logits and (P, H) pooled vectors, length-sorted batches (``inference.run_batched``)."""
    import torch

    from rubricate.student.inference import pad_batch, run_batched

    model.eval()
    H = model.config.hidden_size

    @torch.no_grad()
    def forward(rows: list[int]) -> tuple[np.ndarray, None]:
        ids, mask = pad_batch([input_ids[i] for i in rows], pad_id)
        out = model(ids, mask)
        return torch.cat([out.logits[:, None], out.pooled], dim=1).float().numpy(), None

    packed, _ = run_batched([len(x) for x in input_ids], batch_size, forward, 1 + H)
    return packed[:, 0].astype(np.float64), packed[:, 1:]


def sample_records(records: Sequence[Record], max_per_task: int | None, seed: int) -> list[Record]:
    """At most ``max_per_task`` records per task (a seeded sample, input order kept)."""
    if max_per_task is None:
        return list(records)
    rng = np.random.default_rng(seed)
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r.task_id, []).append(i)
    keep: set[int] = set()
    for rows in by_task.values():
        keep.update(rows if len(rows) <= max_per_task else rng.choice(rows, max_per_task, replace=False).tolist())
    return [r for i, r in enumerate(records) if i in keep]


# --------------------------------------------------------------------------------------------------------
# Training across items
# --------------------------------------------------------------------------------------------------------
def train_task_text(registry: TaskRegistry, records: Sequence[Record], args: TaskTextArguments,
                    model_id: str | None = None) -> TaskTextResult:
    """Train on the labelled records of the registry's tasks and save the checkpoint in ``args.output_dir``."""
    import torch
    from transformers import AutoTokenizer

    from rubricate.student.modeling import resolve_encoder
    from rubricate.student.task_text import TaskTextConfig, TaskTextModel
    from rubricate.student.trainer import set_seed

    t0 = time.time()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    set_seed(args.seed)
    recs = [r for r in sample_records(records, args.max_responses_per_task, args.seed) if r.task_id in registry]
    if not recs:
        raise ValueError("no training records belong to the registry's tasks")
    tok = AutoTokenizer.from_pretrained(str(resolve_encoder(args.encoder)))
    model = TaskTextModel.from_encoder(TaskTextConfig(**args.options()))
    task_ids = list(dict.fromkeys(r.task_id for r in recs))
    encodings = {t: LabelEncoding.from_task(registry.get(t)) for t in task_ids}
    statements = {t: task_statements(registry.get(t), tok, args, encodings[t]) for t in task_ids}
    L = max(e.n_labels for e in encodings.values())
    targets = np.full((len(recs), L), np.nan, dtype=np.float32)
    for i, r in enumerate(recs):
        targets[i, : encodings[r.task_id].n_labels] = encodings[r.task_id].encode(r.labels)
    cls_id, sep_id = special_ids(tok)
    resp = tok([r.text for r in recs], add_special_tokens=False)["input_ids"]
    pairs = build_pairs(statements, [r.task_id for r in recs], resp, args, cls_id, sep_id, targets)
    history = _fit(model, pairs, args, tok.pad_token_id or 0)
    out = Path(args.output_dir)
    save_task_text(model, tok, registry.subset(task_ids), out, args, model_id or out.name,
                   {"history": history, "train_units": pairs.n_units, "train_pairs": len(pairs.input_ids),
                    "train_responses": len(recs), "train_seconds": round(time.time() - t0, 1)})
    return TaskTextResult(out, history, time.time() - t0, pairs.n_units, len(pairs.input_ids))


def _fit(model: Any, pairs: Any, args: TaskTextArguments, pad_id: int) -> list[dict[str, Any]]:
    """The optimisation loop over unit batches; returns the loss history (every tenth of the run)."""
    import torch
    import torch.nn.functional as F
    from transformers import get_linear_schedule_with_warmup

    from rubricate.student.data import bucketed_batches
    from rubricate.student.inference import pad_batch
    from rubricate.student.task_text import pool_logits
    from rubricate.student.trainer import param_groups

    rng = np.random.default_rng(args.seed)
    order = np.argsort(pairs.pair_unit, kind="stable")
    starts = np.searchsorted(pairs.pair_unit[order], np.arange(pairs.n_units + 1))
    unit_pairs = [order[starts[u]: starts[u + 1]] for u in range(pairs.n_units)]
    lengths = [max(len(pairs.input_ids[p]) for p in ps) for ps in unit_pairs]
    steps_per_epoch = math.ceil(pairs.n_units / args.batch_size)
    total = max(1, min(math.ceil(steps_per_epoch * args.epochs), args.max_steps or 10**9))
    enc_named = [(f"encoder.{n}", p) for n, p in model.encoder.named_parameters()]
    head_named = [(f"head.{n}", p) for n, p in model.head.named_parameters()]
    opt = torch.optim.AdamW(param_groups(enc_named, args.lr_encoder, args.weight_decay)
                            + param_groups(head_named, args.lr_head, args.weight_decay))
    sched = get_linear_schedule_with_warmup(opt, int(args.warmup_ratio * total), total)
    history: list[dict[str, Any]] = []
    step, running, t0 = 0, None, time.time()
    while step < total:
        for units in bucketed_batches(lengths, args.batch_size, args.bucket_batches, rng):
            model.train()
            rows = np.concatenate([unit_pairs[u] for u in units])
            local = np.repeat(np.arange(len(units)), [len(unit_pairs[u]) for u in units])
            ids, mask = pad_batch([pairs.input_ids[p] for p in rows], pad_id)
            out = model(ids, mask)
            z = pool_logits(out.logits, torch.from_numpy(local), len(units), args.reference_pool)
            loss = F.binary_cross_entropy_with_logits(z, torch.from_numpy(pairs.targets[units]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
            if step % max(1, total // 10) == 0 or step == total:
                history.append({"step": step, "loss": round(running, 5), "seconds": round(time.time() - t0, 1)})
                if args.progress:
                    print(f"task-text step {step}/{total} loss {running:.4f} {time.time() - t0:.0f}s", flush=True)
            if step >= total:
                break
    model.eval()
    return history


def save_task_text(model: Any, tokenizer: Any, registry: TaskRegistry, out_dir: Path, args: TaskTextArguments,
                   model_id: str, extra: dict[str, Any]) -> Path:
    """The checkpoint folder (``checkpoint.save_model``) with ``"architecture": "task_text"`` and the training
    tasks as ``"trained"`` sources."""
    from rubricate.student.checkpoint import save_model
    from rubricate.student.task_text import ARCHITECTURE

    doc = {"architecture": ARCHITECTURE, "model_id": model_id, "tasks": registry.snapshot(),
           "label_encodings": {t.id: LabelEncoding.from_task(t).to_dict() for t in registry},
           "task_sources": {t.id: "trained" for t in registry}, "few_shot": {}, "recipe": args.to_dict(),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parameters": model.count_parameters(), **extra}
    return save_model(model, tokenizer, out_dir, doc)


# --------------------------------------------------------------------------------------------------------
# Few-shot
# --------------------------------------------------------------------------------------------------------
def fit_head(z0: np.ndarray, h: np.ndarray, y: np.ndarray, args: FewShotArguments) -> FewShotHead:
    """Fit ``a * z0 + w . h + b`` per label on (n, L) logits, (n, L, H) features and (n, L) 0/1 targets (NaN =
    missing); see the module docstring for the objective."""
    import torch

    n, L = z0.shape
    H = h.shape[2]
    zt, ht, yt = (torch.as_tensor(x, dtype=torch.float64) for x in (z0, h, y))
    mask = ~torch.isnan(yt)
    a = torch.ones(L, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(L, dtype=torch.float64, requires_grad=True)
    w = torch.zeros(L, H, dtype=torch.float64, requires_grad=True)
    params = [a, b, w] if args.features else [a, b]
    opt = torch.optim.LBFGS(params, max_iter=args.max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = a * zt + torch.einsum("nlh,lh->nl", ht, w) + b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z[mask], yt[mask], reduction="sum")
        loss = bce + 0.5 * args.l2 * ((w ** 2).sum() + ((a - 1) ** 2).sum())
        loss.backward()
        return loss

    if bool(mask.any()):
        opt.step(closure)
    return FewShotHead(a.detach().numpy(), w.detach().numpy(), b.detach().numpy(), n)


def fit_few_shot(scorer: TaskTextScorer, task: Task, records: Sequence[Record], args: FewShotArguments,
                 zero_shot: tuple[np.ndarray, np.ndarray] | None = None) -> FewShotHead:
    """Fit the task's few-shot head on scored ``records`` and install it in ``scorer`` (in memory).

    ``zero_shot``: the records' precomputed ``scorer.zero_shot_outputs`` (the benchmark reuses them across k).
    """
    if task.id not in scorer.tasks:
        scorer.tasks.add(task)
        scorer.encodings[task.id] = LabelEncoding.from_task(task)
        scorer.task_ids = scorer.tasks.ids
    enc = scorer.encodings[task.id]
    z0, h = zero_shot or scorer.zero_shot_outputs([task.id] * len(records), [r.text for r in records])
    y = enc.encode_many([r.labels for r in records])
    head = fit_head(z0[:, : enc.n_labels], h[:, : enc.n_labels], y, args)
    scorer.few_shot[task.id] = head
    return head


def save_few_shot(checkpoint_dir: str | Path, task: Task, head: FewShotHead) -> Path:
    """Write one task's few-shot head into the checkpoint's ``config.json`` (weights untouched)."""
    import json

    from rubricate.student.checkpoint import CONFIG_NAME, read_document

    d = Path(checkpoint_dir)
    doc = read_document(d)
    tasks = [t for t in doc.get("tasks", []) if t["id"] != task.id]
    doc["tasks"] = tasks + TaskRegistry([task]).snapshot()
    doc.setdefault("label_encodings", {})[task.id] = LabelEncoding.from_task(task).to_dict()
    doc.setdefault("few_shot", {})[task.id] = head.to_dict()
    doc.setdefault("task_sources", {})[task.id] = "few_shot"
    (d / CONFIG_NAME).write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    return d


# --------------------------------------------------------------------------------------------------------
# From files (the CLI verbs)
# --------------------------------------------------------------------------------------------------------
def train_task_text_from_files(tasks: str | Path, data: str | Path, args: TaskTextArguments) -> TaskTextResult:
    """``rubricate train-task-text``: a task folder and its records (native JSONL or a table) -> a checkpoint."""
    from rubricate.student.data import load_records

    registry = TaskRegistry.from_dir(tasks)
    return train_task_text(registry, load_records(data, registry), args)


def few_shot_from_files(checkpoint_dir: str | Path, task_file: str | Path, data: str | Path,
                        args: FewShotArguments) -> FewShotHead:
    """``rubricate few-shot``: fit one task's few-shot head on its scored records and save it in the checkpoint."""
    from rubricate.student.data import load_records

    registry = TaskRegistry.from_dir(task_file)
    if len(registry) != 1:
        raise ValueError(f"{task_file}: expected one task, found {len(registry)} ({registry.ids[:5]})")
    task = next(iter(registry))
    records = [r for r in load_records(data, registry) if r.task_id == task.id and r.labels]
    if not records:
        raise ValueError(f"{data}: no scored records of task '{task.id}'")
    head = fit_few_shot(TaskTextScorer.from_pretrained(checkpoint_dir), task, records, args)
    save_few_shot(checkpoint_dir, task, head)
    return head
