"""All ten ASAP-SAS items as base tasks of one student: agreement with human raters, item by item.

    python benchmarks/asap_sas_ten.py --runs unimoe,unimoe-soft --threads 2     # resumable, one step at a time

Data: ``load_asap_sas`` (all 17,043 double-scored responses) minus the 300 responses AutoSCORE evaluates on
(``../shared/data/asap-sas/autoscore-prompts/autoscore_eval_subset_ids.csv``), which are scored apart; the
rest goes into a persisted stratified 80/10/10 split (seed 13) in ``<out>/split.json``. The 1-8 + 9-10
adaptation benchmark (``asap_sas_student.py``) is unchanged.

Each named run (``RUNS``: recipe overrides) is two resumable steps, each writing ``<out>/results/<step>.json``
with its wall time:

* ``train-<run>`` - trains the student (``rubricate.student.trainer.train``) and stores the validation, test
  and AutoSCORE-subset probabilities of the checkpoint (``<out>/probs/<run>.jsonl``);
* ``eval-<run>`` - for each decoder of ``rubricate.student.decoding`` (threshold, qwk_cuts, distribution),
  fit on the validation probabilities exactly as ``train`` fits the checkpoint's own, the test metrics per
  item (QWK with a bootstrap interval, exact agreement, SMD, the human-human QWK of the same rows) and the
  operational-readiness check (QWK >= 0.70, degradation <= 0.10, |SMD| <= 0.15), and the AutoSCORE subset.

Teacher runs (a run's ``teacher`` key, one of ``TEACHERS``): cross-fitted multi-task students
(``cross_fit_students``) as the teacher file of a UniMoE-Guided run, a step of their own (``teacher-<name>``);
the teacher's own test score is its fold ensemble's (``eval-teacher-<name>``).
``--md`` writes every finished run into one Markdown file (default ``docs/benchmarks/student-ten.md``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "asap-sas"
TASKS = [f"asap-sas-{i}" for i in range(1, 11)]
DECODERS = ("threshold", "qwk_cuts", "distribution")
#: operational-readiness thresholds (Williamson, Xi & Breyer 2012): QWK, degradation from human-human, |SMD|
READINESS = {"qwk": 0.70, "degradation": 0.10, "smd": 0.15}
#: AutoSCORE's published GPT-4o QWK with the AutoSCORE pipeline, on its 100-response subsets
AUTOSCORE_GPT4O = {"asap-sas-2": 0.717, "asap-sas-5": 0.743, "asap-sas-9": 0.629}

#: shared by every run: the measured settings of the 1-8 benchmark, 3 epochs (MTL was still rising at 2)
BASE_ARGS: dict[str, Any] = dict(encoder="minilm", epochs=3.0, batch_size=32, lr_encoder=1e-4, lr_new=1e-3,
                                 warmup_ratio=0.06, evals_per_epoch=2, early_stopping_patience=2, lambda_lb=0.01,
                                 n_experts=4, n_moe_layers=2, moe_placement="token", max_length=192)
#: cross-fitted teachers (``teacher`` key of a run): MTL students, each trained on (folds-1)/folds of train.
#: "students" (3 folds, 2 epochs) was the first; "students4" gives each fold model 75% of train and the recipe's
#: 3 epochs, to be stronger than the student it guides
TEACHERS: dict[str, dict[str, Any]] = {
    "students": {"folds": 3, "args": {"method": "mtl", "epochs": 2.0, "second_rater": "soft"}},
    "students4": {"folds": 4, "args": {"method": "mtl", "epochs": 3.0, "second_rater": "soft"}},
}
RUNS: dict[str, dict[str, Any]] = {
    "unimoe": {"method": "unimoe", "second_rater": "ignore"},
    "unimoe-soft": {"method": "unimoe", "second_rater": "soft"},
    "unimoe-soft-e4": {"method": "unimoe", "second_rater": "soft", "epochs": 4.0},
    "mtl-soft-e4": {"method": "mtl", "second_rater": "soft", "epochs": 4.0},
    "unimoe-dup": {"method": "unimoe", "second_rater": "duplicate"},
    "unimoe-len128": {"method": "unimoe", "second_rater": "ignore", "max_length": 128},
    "mtl": {"method": "mtl", "second_rater": "ignore"},
    "mtl-soft": {"method": "mtl", "second_rater": "soft"},
    "mtl-soft-ema": {"method": "mtl", "second_rater": "soft", "ema_decay": 0.995},
    "mtl-soft-llrd": {"method": "mtl", "second_rater": "soft", "layer_lr_decay": 0.85},
    "mtl-soft-ema-llrd": {"method": "mtl", "second_rater": "soft", "ema_decay": 0.995, "layer_lr_decay": 0.85},
    "guided-students": {"method": "unimoe_guided", "second_rater": "soft", "teacher": "students"},
    "guided-students4": {"method": "unimoe_guided", "second_rater": "soft", "teacher": "students4"},
    # the model a user ships: retrained on train + validation for the epochs early stopping chose; its selection
    # run (the plain mtl-soft training) is scored too, as run mtl-soft-refit-selection
    "mtl-soft-refit": {"method": "mtl", "second_rater": "soft", "refit": True},
    # one model per item, one epoch more than the students (each sees a tenth of the steps), as in the 1-8 benchmark
    "individual": {"method": "individual", "second_rater": "soft", "epochs": 4.0},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, out: Path, threads: int | None, seed: int, max_steps: int | None = None) -> None:
        self.out, self.threads, self.seed, self.max_steps = out, threads, seed, max_steps
        for sub in ("results", "runs", "probs"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        p = self.out / "results" / f"{name}.json"
        if p.exists():
            log(f"skip {name} (done)")
            return json.loads(p.read_text())
        log(f"run {name}")
        t0, load0 = time.time(), os.getloadavg()[0]
        res = fn()
        res.update(_seconds=time.time() - t0, _load_start=load0, _load_end=os.getloadavg()[0],
                   _finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        p.write_text(json.dumps(res, indent=2, default=str))
        log(f"done {name} in {res['_seconds'] / 60:.1f} min")
        return res

    # -- data ----------------------------------------------------------------------------------------
    def load(self) -> None:
        from rubricate.data.loaders import load_asap_sas
        from rubricate.data.splits import apply_split, load_split, make_split, save_split
        from rubricate.tasks import TaskRegistry

        self.registry = TaskRegistry.from_dir(REPO / "tasks" / "asap_sas")
        records = load_asap_sas(DATA / "train.tsv", registry=self.registry)
        with (DATA / "autoscore-prompts" / "autoscore_eval_subset_ids.csv").open(newline="") as f:
            held = {(f"asap-sas-{row['EssaySet']}", row["Id"]) for row in csv.DictReader(f)}
        self.autoscore = [r for r in records if r.key in held]
        if len(self.autoscore) != len(held):
            raise SystemExit(f"{len(held) - len(self.autoscore)} AutoSCORE subset ids not found in train.tsv")
        rest = [r for r in records if r.key not in held]
        sp = self.out / "split.json"
        if not sp.exists():
            save_split(make_split(rest, registry=self.registry, source="train.tsv minus the AutoSCORE subset"), sp)
        self.parts = apply_split(rest, load_split(sp))
        log(f"data: {len(records)} records, AutoSCORE subset {len(self.autoscore)}, "
            + ", ".join(f"{k} {len(v)}" for k, v in self.parts.items()))

    def lengths(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            from transformers import AutoTokenizer

            from rubricate.student.data import choose_max_length, length_stats
            from rubricate.student.modeling import resolve_encoder

            tok = AutoTokenizer.from_pretrained(str(resolve_encoder("minilm")))
            tr = self.parts["train"]
            return {"chosen_max_length": choose_max_length(tok, tr),
                    "at": {L: length_stats(tok, tr, L) for L in (128, 160, 192, 256)}}

        return self.step("lengths", run)

    # -- training ------------------------------------------------------------------------------------
    def run_id(self, name: str) -> str:
        """Step and folder name of a run: seed 42 (the 1-8 benchmark's) is the plain name."""
        return name if self.seed == 42 else f"{name}-s{self.seed}"

    def train_run(self, name: str) -> dict[str, Any]:
        cfg = dict(RUNS[name])
        rid = self.run_id(name)
        teacher = cfg.pop("teacher", None)
        # the teacher is its own step (its cost reported apart from the student's), run before the student
        teacher_path = self.teacher_students(teacher)["path"] if teacher else None

        def run() -> dict[str, Any]:
            from rubricate.student.trainer import TrainingArguments, train

            ck = self.out / "runs" / rid
            kw = {**BASE_ARGS, **cfg, "output_dir": str(ck), "seed": self.seed,
                  "num_threads": self.threads, "max_steps": self.max_steps}
            if teacher_path:
                kw["teacher_file"] = str(teacher_path)
            if cfg["method"] == "individual":
                return self.train_individual(rid, kw)
            res = train(TrainingArguments(**kw), registry=self.registry, train_records=self.parts["train"],
                        val_records=self.parts["validation"])
            if cfg.get("refit"):  # validation probabilities from the selection model: the refit one saw them
                self.write_probs(f"{rid}-selection", ck / "selection")
                self.write_probs(rid, ck, val_ckpt=ck / "selection")
            else:
                self.write_probs(rid, ck)
            return {"settings": {k: v for k, v in kw.items() if k != "num_threads"},
                    "train": {k: v for k, v in res.metrics.items() if k not in ("val",)}}

        return self.step(f"train-{rid}", run)

    def teacher_students(self, name: str = "students") -> dict[str, Any]:
        """Cross-fitted MTL students (``TEACHERS[name]``) as the teacher file; their ensemble scores
        val/test/subset. Step ``teacher-<name>``, file ``teacher_<name>.jsonl``."""
        spec = TEACHERS[name]

        def run() -> dict[str, Any]:
            from rubricate.student.teachers import cross_fit_students
            from rubricate.student.trainer import TrainingArguments

            path = self.out / f"teacher_{name}.jsonl"
            args = TrainingArguments(**{**BASE_ARGS, **spec["args"], "seed": self.seed,
                                        "num_threads": self.threads, "max_steps": self.max_steps,
                                        "output_dir": str(self.out / "runs" / f"teacher-{name}-folds")})
            cross_fit_students(args, self.registry, self.parts["train"], path, folds=spec["folds"],
                               val_records=self.parts["validation"],
                               predict_records=self.parts["validation"] + self.parts["test"] + self.autoscore)
            method = f"{spec['args']['method']}, {spec['folds']}-fold teacher"
            return {"path": str(path), "settings": {**spec["args"], "method": method}}

        return self.step(f"teacher-{name}", run)

    def eval_teacher(self, n_boot: int, name: str = "students") -> dict[str, Any]:
        """The teacher's own score: its fold ensemble on validation / test / the AutoSCORE subset."""
        def run() -> dict[str, Any]:
            from rubricate.data.teacher_file import read_teacher_file

            part_of = {r.key: part for part in ("validation", "test") for r in self.parts[part]}
            part_of.update({r.key: "autoscore" for r in self.autoscore})
            probs = self.out / "probs" / f"teacher-{name}.jsonl"
            with probs.open("w") as f:
                for key, row in read_teacher_file(self.teacher_students(name)["path"]).items():
                    if key in part_of and row.extra.get("fold") == "ensemble":
                        f.write(json.dumps({"part": part_of[key], "task_id": key[0], "response_id": key[1],
                                            "probs": row.probs}) + "\n")
            return evaluate_probs(self, probs, n_boot)

        return self.step(f"eval-teacher-{name}", run)

    def train_individual(self, rid: str, kw: dict[str, Any]) -> dict[str, Any]:
        """One checkpoint per item under ``runs/<rid>/<task>``; a rerun trains only the items still missing."""
        from rubricate.student.trainer import TrainingArguments, train

        ck = self.out / "runs" / rid
        todo = [t for t in TASKS if not (ck / t / "config.json").exists()]
        if todo:
            log(f"individual: training {len(todo)} item(s): {', '.join(todo)}")
            train(TrainingArguments(**{**kw, "task_ids": todo}), registry=self.registry,
                  train_records=[r for r in self.parts["train"] if r.task_id in todo],
                  val_records=[r for r in self.parts["validation"] if r.task_id in todo])
        self.write_probs(rid, {t: ck / t for t in TASKS})
        docs = {t: json.loads((ck / t / "config.json").read_text())["metrics"] for t in TASKS}
        return {"settings": {k: v for k, v in kw.items() if k != "num_threads"},
                "train": {"method": "individual", "retrained": todo,
                          "per_task": {t: {k: d.get(k) for k in ("steps", "stopped_early", "best_val_mean_agreement")}
                                       for t, d in docs.items()}}}

    def write_probs(self, name: str, ckpt: Path | dict[str, Path], val_ckpt: Path | None = None) -> None:
        """Validation / test / AutoSCORE-subset probabilities of a checkpoint (or one per task: Individual),
        the validation ones from ``val_ckpt`` when given (a refit model has trained on validation)."""
        from rubricate.student.scorer import Scorer

        scorers: dict[Path, Scorer] = {}

        def probs_of(path: Path, recs: list) -> list[np.ndarray]:
            if path not in scorers:
                scorers[path] = Scorer.from_pretrained(path, backend="torch")
            s = scorers[path]
            logits, _ = s.predict_logits([r.task_id for r in recs], [r.text for r in recs])
            probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
            return [p[: s.encodings[r.task_id].n_labels] for r, p in zip(recs, probs)]

        with (self.out / "probs" / f"{name}.jsonl").open("w") as f:
            for part, recs in (("validation", self.parts["validation"]), ("test", self.parts["test"]),
                               ("autoscore", self.autoscore)):
                src = val_ckpt if (part == "validation" and val_ckpt is not None) else ckpt
                paths = src if isinstance(src, dict) else {t: src for t in TASKS}
                for path in dict.fromkeys(paths.values()):
                    group = [r for r in recs if paths[r.task_id] == path]
                    for r, p in zip(group, probs_of(path, group)):
                        f.write(json.dumps({"part": part, "task_id": r.task_id, "response_id": r.response_id,
                                            "probs": [round(float(x), 7) for x in p]}) + "\n")

    # -- evaluation ----------------------------------------------------------------------------------
    def eval_run(self, name: str, n_boot: int, suffix: str = "") -> dict[str, Any]:
        """Step ``eval-<run><suffix>`` from ``probs/<run><suffix>.jsonl`` (suffix "-selection": a refit's
        selection model)."""
        rid = self.run_id(name) + suffix

        def run() -> dict[str, Any]:
            return evaluate_probs(self, self.out / "probs" / f"{rid}.jsonl", n_boot)

        return self.step(f"eval-{rid}", run)


def evaluate_probs(b: Bench, probs_file: Path, n_boot: int) -> dict[str, Any]:
    """Every decoder of the stored probabilities, on the test split and the AutoSCORE subset."""
    from rubricate.labels import LabelEncoding
    from rubricate.student.decoding import DecoderArguments, fit_decoder

    encs = {t: LabelEncoding.from_task(b.registry.get(t)) for t in TASKS}
    rows: dict[str, dict[tuple[str, str], np.ndarray]] = {"validation": {}, "test": {}, "autoscore": {}}
    for line in probs_file.read_text().splitlines():
        d = json.loads(line)
        rows[d["part"]][(d["task_id"], d["response_id"])] = np.array(d["probs"])
    val_probs, val_gold, train_gold = {}, {}, {}
    for t in TASKS:
        recs = [r for r in b.parts["validation"] if r.task_id == t]
        val_probs[t] = np.stack([rows["validation"][r.key] for r in recs])
        val_gold[t] = {"score": np.array([r.labels["score"] for r in recs], dtype=float)}
        train_gold[t] = {"score": np.array([r.labels["score"] for r in b.parts["train"] if r.task_id == t], float)}
    out: dict[str, Any] = {}
    for kind in DECODERS:
        dec = fit_decoder(DecoderArguments(kind=kind), encs, val_probs, val_gold, train_gold)  # type: ignore[arg-type]
        res = {"cuts": dec.cuts}
        for part, recs, boot in (("test", b.parts["test"], n_boot), ("autoscore", b.autoscore, 0)):
            preds = []
            for r in recs:
                p = rows[part][r.key]
                score = int(dec.decode_scores(r.task_id, encs[r.task_id], p[None, :])["score"][0])
                preds.append({"task_id": r.task_id, "response_id": r.response_id, "scores": {"score": score},
                              "probs": dict(zip(encs[r.task_id].names, p.tolist()))})
            res[part] = summarise(b, recs, preds, boot)
        out[kind] = res
    return out


def summarise(b: Bench, gold: list, preds: list, n_boot: int) -> dict[str, Any]:
    from rubricate.metrics import evaluate

    rep = evaluate(gold, preds, b.registry, n_boot=n_boot, seed=0)
    per_task = {}
    for t in rep.tasks:
        sc = t.scales[0]
        m, hh = sc.machine, sc.human_human
        ci = m.ci.get("qwk")
        deg = (m.qwk - hh.qwk) if hh is not None else None
        per_task[t.task_id] = {
            "n": t.n_matched, "qwk": m.qwk, "qwk_ci": [ci.low, ci.high] if ci else None, "exact": m.exact,
            "smd": m.smd, "hh_qwk": hh.qwk if hh else None, "degradation": deg,
            "ready": {"qwk": m.qwk >= READINESS["qwk"],
                      "degradation": deg is not None and -deg <= READINESS["degradation"],
                      "smd": abs(m.smd) <= READINESS["smd"]}}
    a = rep.across
    return {"per_task": per_task, "mean_qwk": a.machine.mean, "fisher_z_qwk": a.machine.fisher_z,
            "fisher_z_ci": [a.machine.ci["fisher_z"].low, a.machine.ci["fisher_z"].high]
            if "fisher_z" in a.machine.ci else None,
            "hh_fisher_z_qwk": a.human_human.fisher_z if a.human_human else None,
            "n_ready": sum(all(v["ready"].values()) for v in per_task.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ten")
    ap.add_argument("--runs", default="unimoe,unimoe-soft", help=f"comma list of {sorted(RUNS)}")
    ap.add_argument("--seed", type=int, default=42, help="training seed (the split stays the same)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--max-steps", type=int, default=None, help="smoke checks only: stop training after N steps")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "benchmarks" / "student-ten.md")
    ap.add_argument("--md-only", action="store_true", help="only rewrite the Markdown from finished steps")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    b = Bench(a.out, a.threads, a.seed, a.max_steps)
    b.load()
    b.lengths()
    if not a.md_only:
        for name in [x for x in a.runs.split(",") if x]:
            if name not in RUNS:
                raise SystemExit(f"unknown run {name!r}; known: {sorted(RUNS)}")
            b.train_run(name)
            b.eval_run(name, a.n_boot)
            if RUNS[name].get("refit"):
                b.eval_run(name, a.n_boot, suffix="-selection")
            if RUNS[name].get("teacher"):
                b.eval_teacher(a.n_boot, RUNS[name]["teacher"])
    try:
        from asap_sas_ten_md import write_markdown  # sibling module: the tables
    except ImportError as e:
        log(f"no Markdown written ({e}); rerun with --md-only")
        return 0
    write_markdown(b, a.md, " ".join(["python", *sys.argv]), platform.platform())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
