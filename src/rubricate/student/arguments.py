"""Every argument dataclass of the student, in one light module (no torch): the CLI reads its defaults here.

* :class:`TrainingArguments` - ``rubricate train`` and the recipes under ``recipes/`` (the model keys come from
  :class:`~rubricate.student.configuration.ModelOptions`);
* :class:`AdaptArguments` - ``rubricate add-task`` (:func:`rubricate.student.adapt.add_task`);
* :class:`LLMTeacherArguments` - ``rubricate teach llm`` (:func:`rubricate.student.teachers.train_llm_teacher`);
* :class:`EvaluateOptions` - ``rubricate evaluate`` (:func:`rubricate.student.evaluation.evaluate_checkpoint`).

As in SetFit's ``training_args.py``: the knobs live apart from the loops that use them, so a reader sees every
default in one place and ``rubricate --help`` does not import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from rubricate.data.teacher_file import AlignPolicy
from rubricate.errors import InputError
from rubricate.labels import DEFAULT_THRESHOLD
from rubricate.student.configuration import ModelOptions, StudentConfig
from rubricate.student.decoding import DecoderArguments

Subset = Literal["train", "validation", "test", "all"]

Method = Literal["individual", "mtl", "unimoe", "unimoe_guided"]
METHODS = ("individual", "mtl", "unimoe", "unimoe_guided")


@dataclass
class TrainingArguments(ModelOptions):
    """Every knob of :func:`train`; a recipe YAML under ``recipes/`` holds exactly these keys.

    The model keys (``encoder``, ``n_experts``, ``dropout``...) are inherited from
    :class:`~rubricate.student.configuration.ModelOptions`, where they are defined once for recipes and checkpoints.
    """

    # data: either `data` (+ `split`) or `train_data` (+ `val_data`)
    tasks: str = ""  #: task folder or file (TaskRegistry.from_dir)
    data: str | None = None  #: all records (native JSONL or a table `load_table` reads); cut by `split`
    split: str | None = None  #: split file (rubricate data split); None with `data`: the default split, made now
    train_data: str = ""  #: training records (native JSONL or a table), when there is no `data`
    val_data: str | None = None  #: validation records for early stopping (None: no early stopping)
    task_ids: list[str] | None = None  #: train on these tasks only (default: every task with training rows)
    output_dir: str = "runs/student"
    method: Method = "unimoe_guided"
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
    #: layer-wise learning rate of the encoder: transformer layer l (1..L) steps at lr_encoder * layer_lr_decay^(L-l),
    #: the embeddings at lr_encoder * layer_lr_decay^L (the lower layers hold general language); 1.0: one rate
    layer_lr_decay: float = 1.0
    #: exponential moving average of the weights (torch.optim.swa_utils), updated after every optimizer step:
    #: validation, early stopping and the saved model use the average (0.99 weighs about the last 100 steps); 0: off
    ema_decay: float = 0.0
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
        if not 0.0 < self.layer_lr_decay <= 1.0:
            raise ValueError(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
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
        """The checkpoint's config: this recipe's model options, the tasks, and MoE on or off by ``method``."""
        return StudentConfig(task_ids=list(task_ids), n_labels=list(n_labels), use_moe=self.use_moe,
                             **self.model_options())


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
class LLMTeacherArguments:
    """Arguments of :func:`train_llm_teacher` (all documented, none hidden)."""

    model_dir: str  #: causal-LM directory (HF), a folder holding ``gguf_file``, or "smollm2" (packaged GGUF)
    gguf_file: str | None = None  #: GGUF file name inside model_dir (de-quantised by transformers)
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  #: None: q_proj, k_proj, v_proj, o_proj
    epochs: float = 1.0
    lr: float = 2e-4
    batch_size: int = 8
    max_length: int = 256
    max_question_chars: int = 600  #: how much of the task's question is put before the answer
    folds: int = 1  #: >= 2: cross-fitted; 1: one model for all rows (training rows are then in-sample)
    seed: int = 42
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    device: str = "auto"  #: "auto" (cuda when available), "cpu" or "cuda"
    progress: bool = True


@dataclass
class EvaluateOptions:
    """The choices of :func:`evaluate_checkpoint` (the CLI reads its defaults here)."""

    subset: Subset = "test"  #: which part of the split is scored ("all": every row)
    backend: str = "auto"  #: the Scorer's backend: "auto", "torch" or "onnx"
