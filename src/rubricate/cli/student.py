"""Student verbs: ``train``, ``teach specialists|import|llm``, ``add-task``, ``evaluate``.

Each verb is a thin wrapper around one library function in ``rubricate.student``; torch and
transformers are imported inside the functions so that ``rubricate --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

teach_app = typer.Typer(help="Produce a teacher-outputs file (soft labels) for distillation.", no_args_is_help=True)


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


def _records_and_split(data: Path, tasks: Path, split: Optional[Path]):
    from rubricate.student.trainer import load_records, split_records
    from rubricate.tasks import TaskRegistry

    registry = TaskRegistry.from_dir(tasks)
    records = load_records(data, registry)
    return registry, records, split_records(records, split, registry)


def train_cmd(
    recipe: Path = typer.Option(..., "--recipe", "-r", exists=True, dir_okay=False, help="YAML recipe (recipes/*.yaml)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a recipe key: KEY=VALUE (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help="Checkpoint directory (overrides the recipe)."),
) -> None:
    """Train a student (Individual / MTL / UniMoE / UniMoE-Guided) from a recipe."""
    from rubricate.student.trainer import TrainingArguments, train

    overrides = _parse_overrides(set_)
    if output_dir is not None:
        overrides["output_dir"] = str(output_dir)
    args = TrainingArguments.from_yaml(recipe, overrides)
    res = train(args)
    typer.echo(json.dumps({"checkpoint": str(res.checkpoint_dir),
                           "val_mean_agreement": (res.metrics.get("val") or {}).get("mean_agreement",
                                                                                    res.metrics.get("val_mean_agreement"))},
                          default=str))


@teach_app.command("specialists")
def teach_specialists(
    data: Path = typer.Option(..., "--data", "-d", exists=True, help="Records (JSONL or table)."),
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True, help="Task folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Teacher file to write (JSONL)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file; default: the default split made now."),
    kind: str = typer.Option("tfidf", "--kind", help="'tfidf' (word+char n-grams + logistic regression) or 'encoder'."),
    folds: int = typer.Option(5, "--folds", help="K of the cross-fitting."),
    encoder: str = typer.Option("minilm", "--encoder", help="kind=encoder: 'minilm', 'mpnet' or a HF directory."),
    epochs: float = typer.Option(3.0, "--epochs", help="kind=encoder: epochs per fold."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Cross-fitted per-task specialists: each training row is predicted by a model that never saw it."""
    from rubricate.student.teachers import cross_fit_specialists

    registry, _, parts = _records_and_split(data, tasks, split)
    options = {"encoder": encoder, "epochs": epochs} if kind == "encoder" else {}
    p = cross_fit_specialists(registry, parts["train"], out, kind=kind, folds=folds, seed=seed,  # type: ignore[arg-type]
                              predict_records=parts["validation"] + parts["test"], options=options)
    typer.echo(str(p))


@teach_app.command("students")
def teach_students(
    recipe: Path = typer.Option(..., "--recipe", "-r", exists=True, dir_okay=False,
                                help="Recipe of the fold students (method mtl or unimoe; its data + split)."),
    out: Path = typer.Option(..., "--out", "-o", help="Teacher file to write (JSONL)."),
    folds: int = typer.Option(3, "--folds", help="K of the cross-fitting (K models, each trained on K-1 folds)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a recipe key: KEY=VALUE."),
) -> None:
    """Cross-fitted multi-task students as a teacher: each training row predicted by a model that never saw it."""
    from rubricate.student.teachers import cross_fit_students
    from rubricate.student.trainer import TrainingArguments, resolve_inputs_with_test

    overrides = {"output_dir": str(out.with_suffix(".folds")), **_parse_overrides(set_)}
    args = TrainingArguments.from_yaml(recipe, overrides)
    registry, parts = resolve_inputs_with_test(args)
    typer.echo(str(cross_fit_students(args, registry, parts["train"], out, folds=folds,
                                      val_records=parts["validation"] or None,
                                      predict_records=parts["validation"] + parts["test"])))


@teach_app.command("mix")
def teach_mix(
    teachers: list[Path] = typer.Argument(..., exists=True, help="Teacher files to average."),
    out: Path = typer.Option(..., "--out", "-o"),
    weights: Optional[list[float]] = typer.Option(None, "--weight", "-w", help="One per file (default: equal)."),
) -> None:
    """Weighted mean of several teacher files (e.g. cross-fitted students + TF-IDF), on the rows all cover."""
    from rubricate.student.teachers import mix_teachers

    typer.echo(str(mix_teachers(teachers, weights or [1.0] * len(teachers), out)))


@teach_app.command("import")
def teach_import(
    src: Path = typer.Argument(..., exists=True, help="Teacher JSONL, or CSV/TSV with task_id, response_id and "
                               "one column per label name (probabilities) or 'logit:<label>' columns."),
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True),
    out: Path = typer.Option(..., "--out", "-o"),
    data: Optional[Path] = typer.Option(None, "--data", "-d", help="Check coverage against these records' training split."),
    split: Optional[Path] = typer.Option(None, "--split"),
    policy: str = typer.Option("ignore_extra", "--policy", help="strict | ignore_extra | allow_missing"),
    source: Optional[str] = typer.Option(None, "--source", help="Provenance tag written on every row."),
) -> None:
    """Import teacher outputs produced elsewhere (e.g. a LoRA-tuned large LLM): validate and re-write."""
    from rubricate.student.teachers import import_teacher
    from rubricate.tasks import TaskRegistry

    registry = TaskRegistry.from_dir(tasks)
    records = None
    if data is not None:
        registry, _, parts = _records_and_split(data, tasks, split)
        records = parts["train"]
    typer.echo(str(import_teacher(src, registry, out, records=records, policy=policy, source=source)))  # type: ignore[arg-type]


@teach_app.command("llm")
def teach_llm(
    model_dir: str = typer.Option(..., "--model-dir", help="Causal-LM directory, the folder of --gguf-file, or "
                                  "'smollm2' (the packaged SmolLM2-135M-Instruct GGUF)."),
    data: Path = typer.Option(..., "--data", "-d", exists=True),
    tasks: Path = typer.Option(..., "--tasks", "-t", exists=True),
    out: Path = typer.Option(..., "--out", "-o"),
    gguf_file: Optional[str] = typer.Option(None, "--gguf-file", help="GGUF file name inside --model-dir."),
    split: Optional[Path] = typer.Option(None, "--split"),
    folds: int = typer.Option(1, "--folds", help=">= 2: cross-fitted; 1: training rows predicted in-sample."),
    epochs: float = typer.Option(1.0, "--epochs"),
    lr: float = typer.Option(2e-4, "--lr"),
    lora_r: int = typer.Option(8, "--lora-r"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_length: int = typer.Option(256, "--max-length"),
    device: str = typer.Option("auto", "--device"),
) -> None:
    """LLM classifier teacher: causal LM + classification head + LoRA adapters (peft)."""
    from rubricate.student.teachers import LLMTeacherArguments, train_llm_teacher

    registry, _, parts = _records_and_split(data, tasks, split)
    args = LLMTeacherArguments(model_dir=model_dir, gguf_file=gguf_file, folds=folds, epochs=epochs, lr=lr,
                               lora_r=lora_r, lora_alpha=2 * lora_r, batch_size=batch_size, max_length=max_length,
                               device=device)
    typer.echo(str(train_llm_teacher(args, registry, parts["train"], out,
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
    mode: str = typer.Option("moe", "--mode", help="'moe' (experts + gate + new head), 'head' (new head only) or "
                             "'branch' (the new task's own copy of the encoder's top layers + new head; old tasks "
                             "untouched)."),
    rehearsal_size: int = typer.Option(800, "--rehearsal-size"),
    epochs: float = typer.Option(6.0, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate of the new head(s)."),
    lr_moe: Optional[float] = typer.Option(None, "--lr-moe", help="Learning rate of the MoE and the new task "
                                           "embedding (default: --lr)."),
    teacher: Optional[Path] = typer.Option(None, "--teacher", exists=True, help="Teacher file for the new task(s)."),
    lambda_kd: float = typer.Option(0.0, "--lambda-kd", help="Distillation weight (with --teacher)."),
    lambda_self_kd: float = typer.Option(1.0, "--lambda-self-kd", help="Self-distillation weight on the rehearsal "
                                         "rows (the old tasks' outputs before add-task are the targets)."),
    self_kd_temperature: float = typer.Option(1.0, "--self-kd-temperature"),
    train_encoder_layers: int = typer.Option(0, "--train-encoder-layers", help="Also train the encoder's last K "
                                             "layers (0 = frozen encoder, the paper's recipe)."),
    lr_encoder: float = typer.Option(5e-5, "--lr-encoder", help="Learning rate of those encoder layers (or of "
                                     "the copies with --mode branch)."),
    branch_layers: int = typer.Option(1, "--branch-layers", help="With --mode branch: how many of the encoder's "
                                      "top layers the new task gets its own copy of."),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Add a task to a trained student; prints the trainable share and the forgetting report."""
    from rubricate.student.adapt import AdaptArguments, add_task
    from rubricate.student.trainer import load_records, split_records
    from rubricate.tasks import TaskRegistry

    new_reg = TaskRegistry.from_dir(task)
    recs = load_records(data, new_reg)
    parts = split_records(recs, split, new_reg)
    old_train, old_eval = [], []
    if old_data is not None:
        if old_tasks is not None:
            old_reg = TaskRegistry.from_dir(old_tasks)
        else:
            cfg = json.loads((model / "config.json").read_text(encoding="utf-8"))
            old_reg = TaskRegistry.from_snapshot(cfg["tasks"])
        op = split_records(load_records(old_data, old_reg), old_split, old_reg)
        old_train, old_eval = op["train"], op["validation"]
    args = AdaptArguments(mode=mode, rehearsal_size=rehearsal_size, epochs=epochs, lr=lr,  # type: ignore[arg-type]
                          lr_moe=lr_moe, teacher_file=str(teacher) if teacher else None, lambda_kd=lambda_kd,
                          lambda_self_kd=lambda_self_kd, self_kd_temperature=self_kd_temperature,
                          train_encoder_layers=train_encoder_layers, lr_encoder=lr_encoder,
                          branch_layers=branch_layers, seed=seed)
    res = add_task(model, list(new_reg), parts["train"], parts["validation"], out, old_train_records=old_train,
                   old_eval_records=old_eval, args=args)
    d = res.to_dict()
    d.pop("history", None)
    typer.echo(json.dumps(d, indent=2, default=str))


def evaluate_cmd(
    model: Path = typer.Option(..., "--model", "-m", exists=True, file_okay=False),
    data: Path = typer.Option(..., "--data", "-d", exists=True),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for predictions.jsonl and the report."),
    tasks: Optional[Path] = typer.Option(None, "--tasks", "-t", help="Task folder (default: the checkpoint's snapshot)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split file; with --subset picks the rows."),
    subset: str = typer.Option("test", "--subset", help="train | validation | test | all"),
    backend: str = typer.Option("auto", "--backend", help="auto | torch | onnx"),
) -> None:
    """Predict a split with a student and write predictions + a reliability report."""
    from rubricate.student.scorer import Scorer
    from rubricate.student.trainer import load_records, split_records

    scorer = Scorer.from_pretrained(model, backend=backend)  # type: ignore[arg-type]
    from rubricate.tasks import TaskRegistry

    registry = TaskRegistry.from_dir(tasks) if tasks else scorer.tasks
    records = [r for r in load_records(data, registry) if r.task_id in scorer.task_ids]
    if subset != "all":
        records = split_records(records, split, registry)[subset]
    preds = scorer.predict([r.task_id for r in records], [r.text for r in records],
                           response_ids=[r.response_id for r in records])
    out.mkdir(parents=True, exist_ok=True)
    with (out / "predictions.jsonl").open("w", encoding="utf-8") as f:
        for p in preds:
            f.write(json.dumps(p.to_dict()) + "\n")
    from rubricate.metrics import evaluate

    report = evaluate(records, preds, scorer.tasks, title=f"Student {scorer.model_id} on {data.name} ({subset})")
    try:
        from rubricate.report import write_report

        paths = write_report(report, out)
        typer.echo(f"report: {paths}")
    except ImportError:
        (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        typer.echo(f"report: {out / 'report.json'}")
    a = report.across.machine
    typer.echo(f"mean QWK {a.mean:.4f}  Fisher-z mean QWK {a.fisher_z:.4f}  ({len(preds)} responses)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the root app."""
    app.command("train")(train_cmd)
    app.add_typer(teach_app, name="teach")
    app.command("add-task")(add_task_cmd)
    app.command("evaluate")(evaluate_cmd)
