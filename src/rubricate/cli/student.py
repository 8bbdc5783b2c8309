"""Student verbs: ``train``, ``teach specialists|students|mix|import|llm``, ``add-task``, ``evaluate``.

Each verb is a few lines around one library function in ``rubricate.student``; every option default is read
from that function's argument dataclass (``rubricate.student.arguments``) or signature, never retyped. The
argument module is torch-free and torch/transformers are imported inside the verbs, so ``rubricate --help``
stays fast.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from rubricate.student import teachers as T
from rubricate.student.arguments import AdaptArguments as A
from rubricate.student.arguments import EvaluateOptions as E
from rubricate.student.arguments import LLMTeacherArguments as L
from rubricate.student.arguments import TrainingArguments
from rubricate.student.distributed import DistributedOptions as D
from rubricate.student.task_text_trainer import FewShotArguments as FSA
from rubricate.student.task_text_trainer import TaskTextArguments as TTA

teach_app = typer.Typer(help="Produce a teacher-outputs file (soft labels) for distillation.", no_args_is_help=True)


def _default(fn: Callable[..., Any], name: str) -> Any:
    """The default of parameter ``name`` of a library function (for options without an argument dataclass)."""
    return inspect.signature(fn).parameters[name].default


def _parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as YAML scalars (numbers, booleans, null, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise typer.BadParameter(f"expected KEY=VALUE, got '{p}'", param_hint="--set")
        k, v = p.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _recipe(recipe: Path, set_: list[str] | None, **fixed: Any) -> TrainingArguments:
    """A recipe with ``fixed`` keys (where given) and then the ``--set`` overrides applied."""
    return TrainingArguments.from_yaml(recipe, {**{k: v for k, v in fixed.items() if v is not None},
                                                **_parse_overrides(set_)})


def train_cmd(
    recipe: Path = typer.Option(..., "--recipe", "-r", exists=True, dir_okay=False, help="YAML recipe (recipes/*.yaml)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a recipe key: KEY=VALUE (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Checkpoint directory (overrides the recipe)."),
    dist_backend: str = typer.Option(D.backend, "--dist-backend", help="Under torchrun: auto (nccl with CUDA, else "
                                     "gloo), gloo or nccl (docs/distributed-training.md)."),
    dist_timeout: float = typer.Option(D.timeout_minutes, "--dist-timeout-minutes",
                                       help="Under torchrun: how long a collective may wait (rank 0 validates)."),
) -> None:
    """Train a student (Individual / MTL / UniMoE / UniMoE-Guided) from a recipe; under torchrun, one DDP run."""
    from rubricate.student.distributed import launch_rank
    from rubricate.student.trainer import train

    res = train(_recipe(recipe, set_, output_dir=str(output_dir) if output_dir else None),
                distributed=D(backend=dist_backend, timeout_minutes=dist_timeout))  # type: ignore[arg-type]
    if launch_rank() == 0:
        typer.echo(json.dumps({"checkpoint": str(res.checkpoint_dir), "val_mean_agreement": res.val_mean_agreement},
                              default=str))


@teach_app.command("specialists")
def teach_specialists(
    data: Path = typer.Option(..., "--data", "-d", exists=True, help="Records (JSONL or table)."),
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True, help="Task folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Teacher file to write (JSONL)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file; default: the default split made now."),
    kind: str = typer.Option(_default(T.cross_fit_specialists, "kind"), "--kind",
                             help="'tfidf' (word+char n-grams + logistic regression) or 'encoder'."),
    folds: int = typer.Option(_default(T.cross_fit_specialists, "folds"), "--folds", help="K of the cross-fitting."),
    encoder: str = typer.Option(TrainingArguments.encoder, "--encoder",
                                help="kind=encoder: 'minilm', 'mpnet' or a HF directory."),
    epochs: float = typer.Option(TrainingArguments.epochs, "--epochs", help="kind=encoder: epochs per fold."),
    seed: int = typer.Option(_default(T.cross_fit_specialists, "seed"), "--seed"),
) -> None:
    """Cross-fitted per-task specialists: each training row is predicted by a model that never saw it."""
    from rubricate.student.data import read_split

    registry, parts = read_split(data, tasks, split)
    options = {"encoder": encoder, "epochs": epochs} if kind == "encoder" else {}
    p = T.cross_fit_specialists(registry, parts["train"], out, kind=kind, folds=folds,  # type: ignore[arg-type]
                                seed=seed, predict_records=parts["validation"] + parts["test"], options=options)
    typer.echo(str(p))


@teach_app.command("students")
def teach_students(
    recipe: Path = typer.Option(..., "--recipe", "-r", exists=True, dir_okay=False,
                                help="Recipe of the fold students (method mtl or unimoe; its data + split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Teacher file to write (JSONL)."),
    folds: int = typer.Option(T.STUDENT_FOLDS, "--folds",
                              help="K of the cross-fitting (K models, each trained on K-1 folds)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a recipe key: KEY=VALUE."),
) -> None:
    """Cross-fitted multi-task students as a teacher: each training row predicted by a model that never saw it."""
    typer.echo(str(T.students_teacher(_recipe(recipe, set_, output_dir=str(out.with_suffix(".folds"))), out,
                                      folds=folds)))


@teach_app.command("mix")
def teach_mix(
    teachers: list[Path] = typer.Argument(..., exists=True, help="Teacher files to average."),
    out: Path = typer.Option(..., "--out", "-o"),
    weights: Optional[list[float]] = typer.Option(None, "--weight", "-w", help="One per file (default: equal)."),
) -> None:
    """Weighted mean of several teacher files (e.g. cross-fitted students + TF-IDF), on the rows all cover."""
    typer.echo(str(T.mix_teachers(teachers, weights or [1.0] * len(teachers), out)))


@teach_app.command("import")
def teach_import(
    src: Path = typer.Argument(..., exists=True, help="Teacher JSONL, or CSV/TSV with task_id, response_id and "
                               "one column per label name (probabilities) or 'logit:<label>' columns."),
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True),
    out: Path = typer.Option(..., "--out", "-o"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Check coverage against these records' training split."),
    split: Optional[Path] = typer.Option(None, "--split"),
    policy: str = typer.Option(T.IMPORT_POLICY, "--policy",
                               help="strict | ignore_extra | allow_missing"),
    source: Optional[str] = typer.Option(None, "--source", help="Provenance tag written on every row."),
) -> None:
    """Import teacher outputs produced elsewhere (e.g. a LoRA-tuned large LLM): validate and re-write."""
    p = T.import_teacher_files(src, tasks, out, data=data, split=split, policy=policy,  # type: ignore[arg-type]
                               source=source)
    typer.echo(str(p))


@teach_app.command("llm")
def teach_llm(
    model_dir: str = typer.Option(..., "--model-dir", help="Causal-LM directory, the folder of --gguf-file, or "
                                  "'smollm2' (the packaged SmolLM2-135M-Instruct GGUF)."),
    data: Path = typer.Option(..., "--data", "-d", exists=True),
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True),
    out: Path = typer.Option(..., "--out", "-o"),
    gguf_file: Optional[str] = typer.Option(L.gguf_file, "--gguf-file", help="GGUF file name inside --model-dir."),
    split: Optional[Path] = typer.Option(None, "--split"),
    folds: int = typer.Option(L.folds, "--folds", help=">= 2: cross-fitted; 1: training rows predicted in-sample."),
    epochs: float = typer.Option(L.epochs, "--epochs"),
    lr: float = typer.Option(L.lr, "--lr"),
    lora_r: int = typer.Option(L.lora_r, "--lora-r"),
    lora_alpha: int = typer.Option(L.lora_alpha, "--lora-alpha", help="LoRA scaling numerator (alpha / r)."),
    batch_size: int = typer.Option(L.batch_size, "--batch-size"),
    max_length: int = typer.Option(L.max_length, "--max-length"),
    device: str = typer.Option(L.device, "--device"),
) -> None:
    """LLM classifier teacher: causal LM + classification head + LoRA adapters (peft)."""
    from rubricate.student.data import read_split

    registry, parts = read_split(data, tasks, split)
    args = L(model_dir=model_dir, gguf_file=gguf_file, folds=folds, epochs=epochs, lr=lr, lora_r=lora_r,
             lora_alpha=lora_alpha, batch_size=batch_size, max_length=max_length, device=device)
    typer.echo(str(T.train_llm_teacher(args, registry, parts["train"], out,
                                       predict_records=parts["validation"] + parts["test"])))


def add_task_cmd(
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False, help="Student checkpoint."),
    task: Path = typer.Option(..., "--task", exists=True, help="Task file (or folder) of the new task(s)."),
    data: Path = typer.Option(..., "--data", "-d", exists=True, help="Records of the new task(s)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory of the adapted checkpoint."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file for --data (default: made now)."),
    old_data: Optional[Path] = typer.Option(None, "--old-data", exists=True,
                                            help="Records of the old tasks: rehearsal pool (train) and forgetting (validation)."),
    old_tasks: Optional[Path] = typer.Option(None, "--old-tasks", exists=True, help="Task folder of --old-data "
                                             "(default: the checkpoint's task snapshot)."),
    old_split: Optional[Path] = typer.Option(None, "--old-split"),
    mode: str = typer.Option(A.mode, "--mode", help="'moe' (experts + gate + new head), 'head' (new head only) or "
                             "'branch' (the new task's own copy of the encoder's top layers + new head; old tasks "
                             "untouched)."),
    rehearsal_size: int = typer.Option(A.rehearsal_size, "--rehearsal-size"),
    epochs: float = typer.Option(A.epochs, "--epochs"),
    lr: float = typer.Option(A.lr, "--lr", help="Learning rate of the new head(s)."),
    lr_moe: Optional[float] = typer.Option(A.lr_moe, "--lr-moe", help="Learning rate of the MoE and the new task "
                                           "embedding (default: --lr)."),
    teacher: Optional[Path] = typer.Option(A.teacher_file, "--teacher", exists=True,
                                           help="Teacher file for the new task(s)."),
    lambda_kd: float = typer.Option(A.lambda_kd, "--lambda-kd", help="Distillation weight (with --teacher)."),
    lambda_self_kd: float = typer.Option(A.lambda_self_kd, "--lambda-self-kd", help="Self-distillation weight on "
                                         "the rehearsal rows (the old tasks' outputs before add-task are the "
                                         "targets)."),
    self_kd_temperature: float = typer.Option(A.self_kd_temperature, "--self-kd-temperature"),
    train_encoder_layers: int = typer.Option(A.train_encoder_layers, "--train-encoder-layers", help="Also train "
                                             "the encoder's last K layers (0 = frozen encoder, the paper's recipe)."),
    lr_encoder: float = typer.Option(A.lr_encoder, "--lr-encoder", help="Learning rate of those encoder layers (or "
                                     "of the copies with --mode branch)."),
    branch_layers: int = typer.Option(A.branch_layers, "--branch-layers", help="With --mode branch: how many of "
                                      "the encoder's top layers the new task gets its own copy of."),
    seed: int = typer.Option(A.seed, "--seed"),
) -> None:
    """Add a task to a trained student; prints the trainable share and the forgetting report."""
    from rubricate.student.adapt import add_task_from_files

    args = A(mode=mode, rehearsal_size=rehearsal_size, epochs=epochs, lr=lr, lr_moe=lr_moe,  # type: ignore[arg-type]
             teacher_file=str(teacher) if teacher else None, lambda_kd=lambda_kd, lambda_self_kd=lambda_self_kd,
             self_kd_temperature=self_kd_temperature, train_encoder_layers=train_encoder_layers,
             lr_encoder=lr_encoder, branch_layers=branch_layers, seed=seed)
    res = add_task_from_files(model, task, data, out, split=split, old_data=old_data, old_tasks=old_tasks,
                              old_split=old_split, args=args)
    typer.echo(json.dumps({k: v for k, v in res.to_dict().items() if k != "history"}, indent=2, default=str))


def evaluate_cmd(
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False),
    data: Path = typer.Option(..., "--data", "-d", exists=True),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for predictions.jsonl and the report."),
    tasks: Optional[Path] = typer.Option(None, "--tasks", "-t", help="Task folder (default: the checkpoint's snapshot)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file; with --subset picks the rows."),
    subset: str = typer.Option(E.subset, "--subset", help="train | validation | test | all"),
    backend: str = typer.Option(E.backend, "--backend", help="auto | torch | onnx"),
) -> None:
    """Predict a split with a student and write predictions + a reliability report."""
    from rubricate.student.evaluation import evaluate_checkpoint

    run = evaluate_checkpoint(model, data, out, tasks=tasks, split=split,
                              options=E(subset=subset, backend=backend))  # type: ignore[arg-type]
    typer.echo(f"report: {run.paths}")
    a = run.report.across.machine
    typer.echo(f"mean QWK {a.mean:.4f}  Fisher-z mean QWK {a.fisher_z:.4f}  ({run.n_predictions} responses)")


def train_task_text_cmd(
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True, help="Task folder (or file) of the training items."),
    data: Path = typer.Option(..., "--data", "-d", exists=True, help="Their scored records (JSONL or a table)."),
    output_dir: Path = typer.Option(Path(TTA.output_dir), "--output-dir", "-o"),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="A TaskTextArguments key: KEY=VALUE "
                                             "(repeatable; e.g. max_steps=150, max_responses_per_task=300)."),
) -> None:
    """Train the task-text student across items (scores any task file, zero-shot; docs/benchmarks.md)."""
    from rubricate.student.task_text_trainer import train_task_text_from_files

    args = TTA(**{**_parse_overrides(set_), "output_dir": str(output_dir)})
    res = train_task_text_from_files(tasks, data, args)
    typer.echo(json.dumps({"checkpoint": str(res.checkpoint_dir), "units": res.n_units, "pairs": res.n_pairs,
                           "seconds": round(res.seconds, 1)}))


def few_shot_cmd(
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False, help="Task-text checkpoint."),
    task: Path = typer.Option(..., "--task", exists=True, dir_okay=False, help="Task file of the new item."),
    data: Path = typer.Option(..., "--data", "-d", exists=True, help="Its scored answers (k of them)."),
    l2: float = typer.Option(FSA.l2, "--l2", help="Prior strength toward the zero-shot model."),
    calibrate_only: bool = typer.Option(not FSA.features, "--calibrate-only/--head",
                                        help="Fit only a scale and a bias per label."),
) -> None:
    """Fit a new item's few-shot head in a task-text checkpoint (other tasks' scores do not change)."""
    from rubricate.student.task_text_trainer import few_shot_from_files

    head = few_shot_from_files(model, task, data, FSA(l2=l2, features=not calibrate_only))
    typer.echo(json.dumps({"checkpoint": str(model), "examples": head.n_examples}))


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("train")(train_cmd)
    app.add_typer(teach_app, name="teach")
    app.command("add-task")(add_task_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("train-task-text")(train_task_text_cmd)
    app.command("few-shot")(few_shot_cmd)
