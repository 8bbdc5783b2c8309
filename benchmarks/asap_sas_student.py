"""Benchmark of the compact multi-task student on ASAP-SAS (sets 1-8 base tasks, 9-10 added later).

    python benchmarks/asap_sas_student.py --budget quick   # subsample, ~15 min on a quiet 2-core CPU
    python benchmarks/asap_sas_student.py --budget full    # < 2.5 h on a quiet 2-core CPU (see below)

At ``--budget full`` the default run is the issue's tables within its 2.5-hour limit: by the step times
measured on 2026-12-02 (teacher 1.4 min, Individual 17, MTL 18, UniMoE 20, UniMoE-Guided 18.4, adaptation
with ``DEFAULT_ADAPT_VARIANTS`` 22, ablations ~17, the rest ~2) about 2 h. Opt-in, because they would break
that limit: the full-size ``placement`` step (``--skip ""``, +28 min) and the other adaptation variants
(``--adapt-variants all`` or a list, +50 min for all of them).

Resumable: each finished step writes ``<out>/results/<step>.json`` (and checkpoints under ``<out>/runs``)
and is skipped on a rerun. Writes the tables to ``docs/benchmarks/student.md`` (``--budget full``) or
``docs/benchmarks/student-<budget>.md`` otherwise, and the expert-usage heatmap PNG next to it in ``docs/``.

Steps:
1. data - ``load_asap_sas`` with the task files ``tasks/asap_sas``; a persisted stratified 80/10/10 split
   per set (``rubricate.data.splits``, seed 13) in ``<out>/split.json``; the budget may subsample it.
2. teacher - cross-fitted (5-fold) TF-IDF specialists on the training rows of all 10 sets.
3. Individual / MTL / UniMoE / UniMoE-Guided on sets 1-8, same split, same hyper-parameters.
4. reliability on the test split with ``rubricate.metrics.evaluate`` (+ human-human on the same rows).
5. efficiency - parameters, disk (fp32, int8), CPU latency p50/p95 (one response) and batch-64 throughput.
6. adaptation - sets 9 and 10: Individual vs head-only (MTL way) vs UniMoE adaptation (``ADAPT_VARIANTS``).
7. expert usage heatmap of UniMoE-Guided; 8. ablations on a reduced budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BASE = [f"asap-sas-{i}" for i in range(1, 9)]
NEW = ["asap-sas-9", "asap-sas-10"]
LR_ENCODER = 1e-4  # MiniLM-L6 is small; 5e-5 left it visibly under-trained within 2 epochs
LR_NEW = 1e-3

# Adaptation variants (AdaptArguments overrides): the MTL way, then UniMoE adaptation plain, with the TF-IDF
# teacher on the new tasks, with self-distillation of the rehearsal rows, with a 10x lower MoE learning rate
# ("lightly tuning" the shared experts), and with both.
ADAPT_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "adapt-head": ("MTL way (new head only)", {"mode": "head"}),
    "adapt-moe": ("UniMoE adaptation", {"mode": "moe", "lambda_self_kd": 0.0}),
    "adapt-moe-kd": ("UniMoE adaptation + KD (TF-IDF teacher, new tasks)",
                     {"mode": "moe", "lambda_kd": 1.0, "lambda_self_kd": 0.0}),
    # the add-task default since this measurement
    "adapt-moe-self": ("UniMoE adaptation + self-distillation of rehearsal rows (λ 1)",
                       {"mode": "moe", "lambda_self_kd": 1.0}),
    "adapt-moe-lowlr": ("UniMoE adaptation, MoE lr 1e-4 (head 1e-3)",
                        {"mode": "moe", "lr_moe": 1e-4, "lambda_self_kd": 0.0}),
    "adapt-moe-self-lowlr": ("UniMoE adaptation + self-distillation, MoE lr 1e-4",
                             {"mode": "moe", "lambda_self_kd": 1.0, "lr_moe": 1e-4}),
    # beyond the paper: the encoder's last layer trains too (lr 5e-5), for set 9's gap to Individual
    "adapt-moe-self-enc1": ("UniMoE adaptation + self-distillation + last encoder layer trained",
                            {"mode": "moe", "lambda_self_kd": 1.0, "train_encoder_layers": 1}),
    "adapt-moe-self-enc2": ("UniMoE adaptation + self-distillation + last 2 encoder layers trained",
                            {"mode": "moe", "lambda_self_kd": 1.0, "train_encoder_layers": 2}),
    # beyond the paper: each new task gets its own copy of the top encoder layer(s), trained at the encoder
    # learning rate of the base training (nothing else depends on the copy); everything shared stays frozen
    "adapt-branch1": ("Own copy of the top encoder layer per new task (branch, shared parts frozen)",
                      {"mode": "branch", "branch_layers": 1, "lr_encoder": LR_ENCODER}),
    "adapt-branch2": ("Own copy of the top 2 encoder layers per new task (branch, shared parts frozen)",
                      {"mode": "branch", "branch_layers": 2, "lr_encoder": LR_ENCODER}),
}

#: what a default run adapts with: the issue's comparison (MTL way, UniMoE adaptation with the add-task default)
#: and the variant that meets the adaptation target (docs/benchmarks.md); Individual always runs
DEFAULT_ADAPT_VARIANTS = ["adapt-head", "adapt-moe-self", "adapt-branch1"]

PLACEMENT_NAMES = {"token": "token-wise", "pooled": "pooled"}

# Ablation variants: overrides of the UniMoE-Guided arguments (a "method" key trains another method on the
# same reduced budget, e.g. the MTL and UniMoE references for the expert-initialisation variants)
ABLATIONS: dict[str, dict[str, Any]] = {
    "pooled": {"moe_placement": "pooled"}, "experts-3": {"n_experts": 3}, "experts-5": {"n_experts": 5},
    "lb-0": {"lambda_lb": 0.0}, "lb-0.1": {"lambda_lb": 0.1}, "kd-0.5": {"lambda_kd": 0.5},
    "kd-2": {"lambda_kd": 2.0},
    "zero-init": {"expert_init": "zero"}, "pooled-zero-init": {"moe_placement": "pooled", "expert_init": "zero"},
    "mtl": {"method": "mtl"}, "unimoe": {"method": "unimoe"},
    "unimoe-zero-init": {"method": "unimoe", "expert_init": "zero"},
}

# Budgets: rows per task and split (None = all), epochs, ablation subsample
BUDGETS: dict[str, dict[str, Any]] = {
    # smoke: a pipeline check in a few minutes (development only; numbers meaningless)
    "smoke": {"train_per_task": 24, "val_per_task": 10, "test_per_task": 12, "epochs": 0.5,
              "adapt_epochs": 1.0, "ablation_train_per_task": 12, "ablation_epochs": 0.5,
              "ablations": ["pooled"], "latency_n": 5, "rehearsal": 16, "evals_per_epoch": 1},
    "quick": {"train_per_task": 150, "val_per_task": 50, "test_per_task": 80, "epochs": 1.0,
              "adapt_epochs": 3.0, "ablation_train_per_task": 60, "ablation_epochs": 1.0,
              "ablations": ["pooled", "experts-3"], "latency_n": 20, "rehearsal": 200, "evals_per_epoch": 1},
    # medium: the whole base test split (same rows as full) with 500 training rows per task; ~1 h on a quiet
    # 2-core CPU. For sessions that cannot afford the full budget; the tables say it is a subsample.
    "medium": {"train_per_task": 500, "val_per_task": 80, "test_per_task": None, "epochs": 2.0,
               "individual_epochs": 3.0, "adapt_epochs": 6.0, "ablation_train_per_task": 100, "ablation_epochs": 2.0,
               "ablations": ["pooled", "experts-3", "experts-5"],
               "latency_n": 50, "rehearsal": 400, "evals_per_epoch": 1},
    # full: ~2 h on a quiet 2-core CPU (MiniLM ~25 responses/s training; token-wise MoE ~30% slower than MTL).
    # Individual gets one more epoch: each of its models takes 8x fewer optimizer steps than the shared model.
    "full": {"train_per_task": None, "val_per_task": None, "test_per_task": None, "epochs": 2.0,
             "individual_epochs": 3.0, "adapt_epochs": 6.0, "ablation_train_per_task": 150, "ablation_epochs": 2.0,
             "ablations": ["pooled", "experts-3", "experts-5", "lb-0", "lb-0.1", "kd-0.5", "kd-2"],
             "latency_n": 100, "rehearsal": 800, "evals_per_epoch": 2},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, out: Path, budget: str, encoder: str, data_path: Path, threads: int | None,
                 placement: str = "token", epochs: float | None = None, seed: int = 42) -> None:
        self.out = out
        self.seed = seed  # training seed only: the split (seed 13) and the row subsamples stay the same
        self.budget_name = budget
        self.b = dict(BUDGETS[budget])
        if epochs is not None:  # Individual keeps its extra epoch (8x fewer optimizer steps per model)
            extra = self.b.get("individual_epochs", self.b["epochs"]) - self.b["epochs"]
            self.b.update(epochs=epochs, individual_epochs=epochs + extra)
        self.placement = placement
        self.ablation_names: list[str] = list(self.b["ablations"])
        self.adapt_names: list[str] = list(DEFAULT_ADAPT_VARIANTS)
        self.encoder = encoder
        self.data_path = data_path
        self.threads = threads
        (out / "results").mkdir(parents=True, exist_ok=True)
        (out / "runs").mkdir(parents=True, exist_ok=True)

    # -- resumable steps ---------------------------------------------------------------------------
    def step(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        p = self.out / "results" / f"{name}.json"
        if p.exists():
            log(f"skip {name} (done: {p})")
            return json.loads(p.read_text())
        log(f"run {name}")
        t0 = time.time()
        res = fn()
        res["_seconds"] = time.time() - t0
        p.write_text(json.dumps(res, indent=2, default=str))
        log(f"done {name} in {res['_seconds']:.0f}s")
        return res

    # -- data --------------------------------------------------------------------------------------
    def load(self) -> None:
        from rubricate.data.loaders import load_asap_sas
        from rubricate.data.splits import apply_split, load_split, make_split, save_split
        from rubricate.tasks import TaskRegistry

        self.registry = TaskRegistry.from_dir(REPO / "tasks" / "asap_sas")
        records = load_asap_sas(self.data_path, registry=self.registry)
        sp = self.out / "split.json"
        if not sp.exists():
            save_split(make_split(records, registry=self.registry, source=str(self.data_path)), sp)
        parts = apply_split(records, load_split(sp))
        rng = np.random.default_rng(0)
        self.parts = {}
        for name, cap in (("train", self.b["train_per_task"]), ("validation", self.b["val_per_task"]),
                          ("test", self.b["test_per_task"])):
            self.parts[name] = self._cap(parts[name], cap, rng)
        counts = {k: len(v) for k, v in self.parts.items()}
        log(f"data: {len(records)} records; used {counts}")

    @staticmethod
    def _cap(recs: list, cap: int | None, rng: np.random.Generator) -> list:
        if cap is None:
            return recs
        out = []
        by: dict[str, list] = {}
        for r in recs:
            by.setdefault(r.task_id, []).append(r)
        for t, rs in by.items():
            idx = sorted(rng.choice(len(rs), size=min(cap, len(rs)), replace=False))
            out += [rs[i] for i in idx]
        return out

    def rows(self, split: str, tasks: list[str]) -> list:
        s = set(tasks)
        return [r for r in self.parts[split] if r.task_id in s]

    # -- training ----------------------------------------------------------------------------------
    def args(self, method: str, out_dir: Path, **kw: Any):
        from rubricate.student.trainer import TrainingArguments

        epochs = self.b.get("individual_epochs", self.b["epochs"]) if method == "individual" else self.b["epochs"]
        base = dict(encoder=self.encoder, method=method, output_dir=str(out_dir), epochs=epochs,
                    batch_size=32, lr_encoder=LR_ENCODER, lr_new=LR_NEW, warmup_ratio=0.06, evals_per_epoch=self.b["evals_per_epoch"],
                    early_stopping_patience=2, num_threads=self.threads, seed=self.seed, lambda_lb=0.01,
                    lambda_kd=1.0, kd_temperature=2.0, teacher_policy="ignore_extra", moe_placement=self.placement,
                    n_experts=4, n_moe_layers=2)
        if method == "unimoe_guided":
            base["teacher_file"] = str(self.teacher_path)
        base.update(kw)
        return TrainingArguments(**base)

    def teacher(self) -> dict[str, Any]:
        from rubricate.student.teachers import cross_fit_specialists

        self.teacher_path = self.out / "teacher_tfidf.jsonl"

        def run() -> dict[str, Any]:
            cross_fit_specialists(self.registry, self.parts["train"], self.teacher_path, kind="tfidf", folds=5,
                                  predict_records=self.parts["validation"] + self.parts["test"])
            return {"path": str(self.teacher_path), "test": self.teacher_metrics(BASE)}

        if not self.teacher_path.exists():
            (self.out / "results" / "teacher.json").unlink(missing_ok=True)
        return self.step("teacher", run)

    def teacher_metrics(self, tasks: list[str]) -> dict[str, Any]:
        """The teacher's own test metrics (its full-fit predictions of the test rows)."""
        from rubricate.data.teacher_file import read_teacher_file
        from rubricate.labels import LabelEncoding

        rows = read_teacher_file(self.teacher_path)
        gold = self.rows("test", tasks)
        preds = []
        for r in gold:
            tr = rows[r.key]
            enc = LabelEncoding.from_task(self.registry.get(r.task_id))
            p = tr.as_probs().astype(float)
            scores = {k: int(v[0]) for k, v in enc.decode_scores(p[None, :]).items()}
            preds.append({"task_id": r.task_id, "response_id": r.response_id, "scores": scores,
                          "probs": dict(zip(enc.names, p.tolist()))})
        return self.evaluate(gold, preds, "teacher (TF-IDF specialists)")

    def evaluate(self, gold: list, preds: list, title: str) -> dict[str, Any]:
        from rubricate.metrics import evaluate

        rep = evaluate(gold, preds, self.registry, title=title, n_boot=0)
        per_task = {}
        for t in rep.tasks:
            sc = t.scales[0]
            ml = t.multilabel
            per_task[t.task_id] = {
                "n": t.n_matched, "qwk": sc.machine.qwk, "mae": sc.machine.mae,
                "mean_kappa": ml.mean_kappa if ml else None, "macro_f1": ml.macro_f1 if ml else None,
                "micro_f1": ml.micro_f1 if ml else None, "label_accuracy": ml.accuracy if ml else None,
                "hh_qwk": sc.human_human.qwk if sc.human_human else None}
        a = rep.across
        return {"per_task": per_task, "mean_qwk": a.machine.mean, "fisher_z_qwk": a.machine.fisher_z,
                "hh_mean_qwk": a.human_human.mean if a.human_human else None,
                "hh_fisher_z_qwk": a.human_human.fisher_z if a.human_human else None,
                "multilabel_mean": a.multilabel_mean, "score_means": a.score_means}

    def predict(self, ckpt: Path, recs: list) -> list:
        from rubricate.student.scorer import Scorer

        s = Scorer.from_pretrained(ckpt, backend="torch")
        return s.predict([r.task_id for r in recs], [r.text for r in recs], response_ids=[r.response_id for r in recs])

    def save_predictions(self, step: str, preds: list, path: Path | None = None) -> Path:
        """Test-split predictions of a step as JSONL (``<out>/predictions/<step>.jsonl``), for paired
        comparisons of two methods on the same responses (``benchmarks/student_seeds.py``)."""
        path = path or self.out / "predictions" / f"{step}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for p in preds:
                f.write(json.dumps(p.to_dict()) + "\n")
        return path

    def train_method(self, method: str, name: str | None = None, **kw: Any) -> dict[str, Any]:
        """Train ``method`` on the base tasks (``kw`` overrides training arguments) and test it; step ``name``."""
        from rubricate.student.trainer import train

        name = name or method
        ck = self.out / "runs" / name

        def run() -> dict[str, Any]:
            # Individual: one checkpoint per task, each kept once trained (a rerun trains only missing ones)
            todo = [t for t in BASE if not (ck / t / "config.json").exists()] if method == "individual" else BASE
            res = None
            if todo:
                res = train(self.args(method, ck, task_ids=todo, **kw), registry=self.registry,
                            train_records=self.rows("train", todo), val_records=self.rows("validation", todo))
            test = self.rows("test", BASE)
            if method == "individual":
                preds = []
                for t in BASE:
                    preds += self.predict(ck / t, [r for r in test if r.task_id == t])
            else:
                preds = self.predict(ck, test)
            self.save_predictions(name, preds)
            if name == "unimoe_guided":  # the expert-usage heatmap reads the gate weights from here
                self.save_predictions(name, preds, self.out / "unimoe_guided_test_predictions.jsonl")
            m = self.evaluate(test, preds, name)
            m["settings"] = kw
            if method == "individual":
                docs = {t: json.loads((ck / t / "config.json").read_text())["metrics"] for t in BASE}
                m["train"] = {"method": method, "retrained": todo,
                              "per_task": {t: {k: d.get(k) for k in ("steps", "stopped_early", "best_val_mean_agreement")}
                                           for t, d in docs.items()}}
                m["val_mean_agreement"] = float(np.mean([d["best_val_mean_agreement"] or 0.0 for d in docs.values()]))
            else:
                assert res is not None
                m["train"] = {k: v for k, v in res.metrics.items() if k not in ("val", "per_task")}
                m["val_mean_agreement"] = (res.metrics.get("val") or {}).get("mean_agreement",
                                                                             res.metrics.get("val_mean_agreement"))
            return m

        return self.step(name, run)

    @property
    def other_placement(self) -> str:
        return "pooled" if self.placement == "token" else "token"

    def placement_runs(self, methods: list[str]) -> dict[str, Any]:
        """UniMoE and UniMoE-Guided with the other expert placement at the main budget: the full-budget check
        of the reduced-budget placement ablation."""
        o = self.other_placement
        return {m: self.train_method(m, f"{m}-{o}", moe_placement=o) for m in ("unimoe", "unimoe_guided")
                if m in methods}

    # -- efficiency --------------------------------------------------------------------------------
    def efficiency(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            out = {"student": self._eff_ckpt(self.out / "runs" / "unimoe_guided")}
            ind = [self._eff_ckpt(self.out / "runs" / "individual" / t, latency=(t == BASE[0])) for t in BASE]
            out["individual_set"] = {
                "parameters": sum(x["parameters"] for x in ind),
                "disk_fp32_mb": sum(x["disk_fp32_mb"] for x in ind),
                "disk_int8_mb": sum(x["disk_int8_mb"] for x in ind),
                "latency": ind[0]["latency"], "n_models": len(ind)}
            out["teacher"] = self._eff_teacher()
            s, i = out["student"], out["individual_set"]
            out["disk_ratio_individual_over_student"] = i["disk_fp32_mb"] / s["disk_fp32_mb"]
            return out

        return self.step("efficiency", run)

    def _eff_ckpt(self, ck: Path, latency: bool = True) -> dict[str, Any]:
        import tempfile

        import torch

        from rubricate.student.scorer import Scorer

        s = Scorer.from_pretrained(ck, backend="torch")
        n_params = sum(p.numel() for p in s.model.parameters())
        disk = sum(f.stat().st_size for f in ck.iterdir() if f.is_file()) / 1e6
        q = torch.ao.quantization.quantize_dynamic(s.model, {torch.nn.Linear}, dtype=torch.qint8)
        with tempfile.TemporaryDirectory() as d:
            torch.save(q.state_dict(), Path(d) / "q.pt")
            tok_mb = sum(f.stat().st_size for f in ck.iterdir() if f.is_file() and f.name.startswith("tok")) / 1e6
            disk_q = (Path(d) / "q.pt").stat().st_size / 1e6 + tok_mb
        res = {"parameters": n_params, "disk_fp32_mb": disk, "disk_int8_mb": disk_q}
        if latency:
            res["latency"] = {"fp32": self._latency(s), "int8": self._latency(Scorer.from_pretrained(
                ck, backend="torch", quantize=True))}
        return res

    def _latency(self, s) -> dict[str, float]:
        recs = [r for r in self.rows("test", s.task_ids)]
        rng = np.random.default_rng(1)
        pick = [recs[i] for i in rng.choice(len(recs), size=min(self.b["latency_n"], len(recs)), replace=False)]
        s.predict([pick[0].task_id], [pick[0].text])  # warm-up
        times = []
        for r in pick:
            t = time.perf_counter()
            s.predict([r.task_id], [r.text])
            times.append(time.perf_counter() - t)
        batch = (recs * 4)[:256]
        t = time.perf_counter()
        s.predict([r.task_id for r in batch], [r.text for r in batch], batch_size=64)
        thr = len(batch) / (time.perf_counter() - t)
        return {"p50_ms": float(np.percentile(times, 50) * 1000), "p95_ms": float(np.percentile(times, 95) * 1000),
                "throughput_batch64_per_s": thr}

    def _eff_teacher(self) -> dict[str, Any]:
        """TF-IDF specialists fitted on the full training split of each base task: size and latency."""
        import pickle

        from rubricate.labels import LabelEncoding
        from rubricate.student.teachers import TfidfSpecialist

        specs, size, n_params = {}, 0, 0
        for t in BASE:
            enc = LabelEncoding.from_task(self.registry.get(t))
            tr = self.rows("train", [t])
            sp = TfidfSpecialist(enc).fit([r.text for r in tr], enc.encode_many([r.labels for r in tr]))
            specs[t] = sp
            size += len(pickle.dumps(sp))
            n_params += sum(m.coef_.size + m.intercept_.size for m in sp.models if not isinstance(m, float))
        test = self.rows("test", BASE)
        rng = np.random.default_rng(1)
        pick = [test[i] for i in rng.choice(len(test), size=min(self.b["latency_n"], len(test)), replace=False)]
        times = []
        for r in pick:
            t = time.perf_counter()
            specs[r.task_id].predict_proba([r.text])
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        batch = (test * 4)[:256]
        for tid in BASE:
            xs = [r.text for r in batch if r.task_id == tid]
            if xs:
                specs[tid].predict_proba(xs)
        thr = len(batch) / (time.perf_counter() - t)
        return {"parameters": n_params, "disk_fp32_mb": size / 1e6, "disk_int8_mb": None,
                "latency": {"fp32": {"p50_ms": float(np.percentile(times, 50) * 1000),
                                     "p95_ms": float(np.percentile(times, 95) * 1000),
                                     "throughput_batch64_per_s": thr}}}

    # -- adaptation --------------------------------------------------------------------------------
    def adaptation(self) -> dict[str, Any]:
        from rubricate.student.adapt import AdaptArguments, add_task
        from rubricate.student.trainer import train

        res: dict[str, Any] = {}
        base_ck = self.out / "runs" / "unimoe_guided"
        new_tasks = [self.registry.get(t) for t in NEW]
        for name in self.adapt_names:
            kw = ADAPT_VARIANTS[name][1]

            def run(kw: dict[str, Any] = kw, name: str = name) -> dict[str, Any]:
                kd = kw.get("lambda_kd", 0.0)
                args = AdaptArguments(rehearsal_size=self.b["rehearsal"], epochs=self.b["adapt_epochs"],
                                      teacher_file=str(self.teacher_path) if kd else None,
                                      evals_per_epoch=1, early_stopping_patience=2, seed=self.seed, **kw)
                r = add_task(base_ck, new_tasks, self.rows("train", NEW), self.rows("validation", NEW),
                             self.out / "runs" / name, old_train_records=self.rows("train", BASE),
                             old_eval_records=self.rows("test", BASE), args=args)
                test = self.rows("test", NEW)
                m = self.evaluate(test, self.predict(r.checkpoint_dir, test), name)
                d = r.to_dict()
                d.pop("history", None)
                return {"adapt": d, "new_test": m}

            res[name] = self.step(name, run)

        def run_ind() -> dict[str, Any]:
            ck = self.out / "runs" / "individual-new"
            train(self.args("individual", ck, task_ids=NEW, epochs=self.b.get("individual_epochs", max(self.b["epochs"], 2.0))),
                  registry=self.registry, train_records=self.rows("train", NEW),
                  val_records=self.rows("validation", NEW))
            test = self.rows("test", NEW)
            preds = []
            for t in NEW:
                preds += self.predict(ck / t, [r for r in test if r.task_id == t])
            params = 0
            from rubricate.student.scorer import Scorer

            for t in NEW:
                params += sum(p.numel() for p in Scorer.from_pretrained(ck / t).model.parameters())
            return {"new_test": self.evaluate(test, preds, "individual (new)"), "trainable_parameters": params}

        res["individual-new"] = self.step("individual-new", run_ind)
        return res

    # -- expert usage ------------------------------------------------------------------------------
    def expert_usage(self, png: Path) -> dict[str, Any]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        preds = [json.loads(x) for x in (self.out / "unimoe_guided_test_predictions.jsonl").read_text().splitlines()]
        by: dict[str, list] = {}
        for p in preds:
            by.setdefault(p["task_id"], []).append(np.array(p["gate_weights"]))
        tasks = [t for t in BASE if t in by]
        mean = np.stack([np.mean(by[t], axis=0) for t in tasks])  # (tasks, layers, M)
        n_layers, m = mean.shape[1], mean.shape[2]
        fig, axes = plt.subplots(1, n_layers, figsize=(3.2 * n_layers + 1, 0.45 * len(tasks) + 1.6), squeeze=False)
        for li in range(n_layers):
            ax = axes[0, li]
            im = ax.imshow(mean[:, li, :], vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(m), [f"E{j + 1}" for j in range(m)])
            ax.set_yticks(range(len(tasks)), tasks if li == 0 else [""] * len(tasks))
            ax.set_title(f"MoE layer {li + 1}")
            for i in range(len(tasks)):
                for j in range(m):
                    ax.text(j, i, f"{mean[i, li, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if mean[i, li, j] < 0.6 else "black")
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="mean gate weight")
        fig.suptitle("UniMoE-Guided: mean gate weight per task and expert (ASAP-SAS test split)")
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return {"png": str(png), "mean": mean.tolist(), "tasks": tasks}

    # -- ablations ---------------------------------------------------------------------------------
    def ablations(self) -> dict[str, Any]:
        from rubricate.student.trainer import train

        rng = np.random.default_rng(3)
        tr = self._cap(self.rows("train", BASE), self.b["ablation_train_per_task"], rng)
        # early stopping on a smaller validation sample keeps the ablations cheap; the test rows are the full ones
        va = self._cap(self.rows("validation", BASE), self.b["ablation_train_per_task"] // 3, rng)
        variants: dict[str, dict[str, Any]] = {"base (token, M=4, lb=0.01, kd=1)": {}}
        for a in self.ablation_names:
            variants[a] = ABLATIONS[a]
        res = {}
        for name, kw in variants.items():
            slug = "ablation-" + name.split(" ")[0]

            def run(kw: dict[str, Any] = kw, slug: str = slug) -> dict[str, Any]:
                ck = self.out / "runs" / slug
                over = {k: v for k, v in kw.items() if k != "method"}
                train(self.args(kw.get("method", "unimoe_guided"), ck, task_ids=BASE, epochs=self.b["ablation_epochs"],
                                evals_per_epoch=1, **over),
                      registry=self.registry, train_records=tr, val_records=va)
                test = self.rows("test", BASE)
                preds = self.predict(ck, test)
                self.save_predictions(slug, preds)
                return {"settings": kw, "test": self.evaluate(test, preds, slug), "train_rows": len(tr)}

            res[name] = self.step(slug, run)
        return res


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------
def f(x: Any, d: int = 3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)


def per_task_table(L: list[str], R: dict[str, Any], methods: list[tuple[str, str]]) -> None:
    """Per-task QWK (mean κ) of the four methods; only written when at least one of them was trained."""
    L.append("Per task, QWK (mean κ over labels):\n")
    L.append("| Task | n | human–human QWK | " + " | ".join(lab for lab, _ in methods[:4]) + " |")
    L.append("|---|---|---|" + "---|" * 4)
    for t in BASE:
        cells = []
        n = hhq = None
        for _, key in methods[:4]:
            pt = (R.get(key) or {}).get("per_task", {}).get(t)
            if pt:
                n, hhq = pt["n"], pt["hh_qwk"]
                cells.append(f"{f(pt['qwk'])} ({f(pt['mean_kappa'])})")
            else:
                cells.append("–")
        L.append(f"| {t} | {n} | {f(hhq)} | " + " | ".join(cells) + " |")


def write_markdown(path: Path, bench: Bench, R: dict[str, Any], cmd: str, png_rel: str, seconds: float) -> None:
    b = bench.b
    L: list[str] = []
    L.append(f"## Student (UniMoE-Guided) on ASAP-SAS — budget `{bench.budget_name}`, encoder `{bench.encoder}`\n")
    L.append(f"Command: `{cmd}`  ")
    L.append(f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
             f"load average at the end {os.getloadavg()[0]:.1f} (latency numbers need a quiet machine); "
             f"date {time.strftime('%Y-%m-%d')}; wall time of this invocation {seconds / 60:.1f} min "
             f"(steps done in earlier invocations are reused).  ")
    counts = {k: len(v) for k, v in bench.parts.items()}
    L.append(f"Data: ASAP-SAS `train.tsv`, persisted stratified 80/10/10 split per set (`split.json`, seed 13). "
             f"Rows used: {counts}" + ("" if bench.budget_name == "full" else
                                       f" (**subsample**: {b['train_per_task']}/{b['val_per_task']}/"
                                       f"{b['test_per_task']} per task)") + ".  ")
    L.append(f"Training: {b['epochs']} epochs max ({b.get('individual_epochs', b['epochs'])} for Individual), batch 32, "
             f"AdamW (lr {LR_ENCODER:g} encoder / {LR_NEW:g} new), 6% warm-up then linear decay, "
             f"early stopping (patience 2) on validation mean QWK; λ_LB 0.01, λ_KD 1, τ 2; {PLACEMENT_NAMES[bench.placement]} experts, "
             f"M=4, 2 MoE layers; training seed {bench.seed}. Teacher: cross-fitted 5-fold TF-IDF (word 1-2 + char 2-5) logistic specialists.\n")

    L.append("### 1. Reliability on the base tasks' test split (sets 1–8)\n")
    methods = [("Individual", "individual"), ("MTL", "mtl"), ("UniMoE", "unimoe"), ("UniMoE-Guided", "unimoe_guided"),
               ("Teacher (TF-IDF, cross-fitted)", "teacher")]
    L.append("| Method | mean QWK | Fisher-z mean QWK | mean κ (labels) | macro-F1 | micro-F1 | label acc. | MAE |")
    L.append("|---|---|---|---|---|---|---|---|")
    hh = None
    for label, key in methods:
        m = R.get(key)
        if m is None:
            continue
        m = m.get("test", m)
        ml, sm = m.get("multilabel_mean", {}), m.get("score_means", {})
        L.append(f"| {label} | {f(m['mean_qwk'])} | {f(m['fisher_z_qwk'])} | {f(ml.get('mean_kappa'))} | "
                 f"{f(ml.get('macro_f1'))} | {f(ml.get('micro_f1'))} | {f(ml.get('accuracy'))} | {f(sm.get('mae'))} |")
        hh = hh or (m.get("hh_mean_qwk"), m.get("hh_fisher_z_qwk"))
    if hh:
        L.append(f"| *Human–human (same rows)* | {f(hh[0])} | {f(hh[1])} | | | | | |")
    L.append("")
    trained = [key for _, key in methods[:4] if R.get(key)]
    if trained:
        per_task_table(L, R, methods)

    L.append("")

    pl = R.get("placement")
    if pl:
        L.append("#### Expert placement at the main budget (same split, epochs and hyper-parameters)\n")
        L.append("| Method | placement | mean QWK | Fisher-z mean QWK | mean κ | best validation mean QWK |")
        L.append("|---|---|---|---|---|---|")
        rows = [("MTL (no experts)", "–", R.get("mtl"))]
        for label, key in (("UniMoE", "unimoe"), ("UniMoE-Guided", "unimoe_guided")):
            rows += [(label, PLACEMENT_NAMES[bench.placement], R.get(key)),
                     (label, PLACEMENT_NAMES[bench.other_placement], pl.get(key))]
        for label, place, m in rows:
            if m:
                L.append(f"| {label} | {place} | {f(m['mean_qwk'])} | {f(m['fisher_z_qwk'])} | "
                         f"{f(m['multilabel_mean'].get('mean_kappa'))} | {f(m.get('val_mean_agreement'))} |")
        L.append("")

    e = R.get("efficiency")
    if e:
        L.append("### 2. Efficiency (CPU, torch backend; int8 = torch dynamic quantisation of Linear layers)\n")
        L.append("| Model | parameters | disk fp32 (MB) | disk int8 (MB) | p50 1 response (ms) | p95 (ms) | "
                 "throughput batch 64 (resp/s) | int8 p50 (ms) | int8 throughput |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for label, key in (("Student (UniMoE-Guided, 1 checkpoint)", "student"),
                           (f"Individual set ({len(BASE)} checkpoints)", "individual_set"),
                           ("Teacher (TF-IDF specialists, 8 tasks)", "teacher")):
            x = e[key]
            lat = x.get("latency", {})
            fp, q = lat.get("fp32", {}), lat.get("int8", {})
            L.append(f"| {label} | {x['parameters']:,} | {f(x['disk_fp32_mb'], 1)} | {f(x['disk_int8_mb'], 1)} | "
                     f"{f(fp.get('p50_ms'), 1)} | {f(fp.get('p95_ms'), 1)} | {f(fp.get('throughput_batch64_per_s'), 1)} | "
                     f"{f(q.get('p50_ms'), 1)} | {f(q.get('throughput_batch64_per_s'), 1)} |")
        L.append(f"\nDisk: the Individual set is **{e['disk_ratio_individual_over_student']:.1f}×** the student "
                 f"(target ≥ 7×). Individual latency is one of its models (a response is routed to its task's model).\n")

    ad = R.get("adaptation")
    if ad:
        L.append("### 3. Adaptation: adding sets 9 and 10 to the UniMoE-Guided student\n")
        L.append("| Method | trainable share | asap-sas-9 QWK | asap-sas-10 QWK | old tasks mean QWK before → after "
                 "(test) | max old-task drop |")
        L.append("|---|---|---|---|---|---|")
        ind = ad.get("individual-new")
        if ind:
            pt = ind["new_test"]["per_task"]
            L.append(f"| Individual (2 new full models) | 100% (new models: {ind['trainable_parameters']:,} params) | "
                     f"{f(pt['asap-sas-9']['qwk'])} | {f(pt['asap-sas-10']['qwk'])} | (untouched) | 0 |")
        for key, (label, _) in ADAPT_VARIANTS.items():
            x = ad.get(key)
            if not x:
                continue
            a, pt = x["adapt"], x["new_test"]["per_task"]
            bef, aft = a["old_before"], a["old_after"]
            drop = max(a["forgetting"].values()) if a["forgetting"] else 0.0
            L.append(f"| {label} | {100 * a['trainable_share']:.1f}% | {f(pt['asap-sas-9']['qwk'])} | "
                     f"{f(pt['asap-sas-10']['qwk'])} | {f(float(np.mean(list(bef.values()))))} → "
                     f"{f(float(np.mean(list(aft.values()))))} | {f(drop)} |")
        L.append("\nOld-task QWK before/after is measured on the base test split; the old heads (and the encoder, "
                 "except in variants that train its last layers) are frozen and verified bit-identical after "
                 "training.\n")

    if R.get("expert_usage"):
        L.append("### 4. Expert usage\n")
        L.append(f"![mean gate weight per task and expert]({png_rel})\n")

    ab = R.get("ablations")
    if ab:
        first = next(iter(ab.values()))
        L.append(f"### 5. Ablations (reduced budget: {first.get('train_rows')} training rows = "
                 f"{b['ablation_train_per_task']} per task, {b['ablation_epochs']} epochs; same test rows)\n")
        L.append("| Variant | mean QWK | Fisher-z mean QWK | mean κ |")
        L.append("|---|---|---|---|")
        for name, x in ab.items():
            m = x["test"]
            L.append(f"| {name} {x['settings'] or ''} | {f(m['mean_qwk'])} | {f(m['fisher_z_qwk'])} | "
                     f"{f(m['multilabel_mean'].get('mean_kappa'))} |")
        L.append("")

    g, ind_, mtl, uni = (R.get(k) for k in ("unimoe_guided", "individual", "mtl", "unimoe"))
    checks = []
    if g and ind_:
        checks.append(("UniMoE-Guided ≥ Individual on Fisher-z mean QWK", g["fisher_z_qwk"] >= ind_["fisher_z_qwk"],
                       f"{f(g['fisher_z_qwk'])} vs {f(ind_['fisher_z_qwk'])}"))
        gk, ik = g["multilabel_mean"].get("mean_kappa"), ind_["multilabel_mean"].get("mean_kappa")
        checks.append(("UniMoE-Guided ≥ Individual on mean κ", gk >= ik, f"{f(gk)} vs {f(ik)}"))
    if uni and mtl:
        checks.append(("UniMoE > MTL (Fisher-z mean QWK)", uni["fisher_z_qwk"] > mtl["fisher_z_qwk"],
                       f"{f(uni['fisher_z_qwk'])} vs {f(mtl['fisher_z_qwk'])}"))
    if pl and pl.get("unimoe") and mtl:
        u = pl["unimoe"]
        checks.append((f"UniMoE ({bench.other_placement} experts) > MTL (Fisher-z mean QWK)", u["fisher_z_qwk"] > mtl["fisher_z_qwk"],
                       f"{f(u['fisher_z_qwk'])} vs {f(mtl['fisher_z_qwk'])}"))
    if e:
        checks.append(("Student ≥ 7× smaller on disk than the Individual set",
                       e["disk_ratio_individual_over_student"] >= 7, f"{e['disk_ratio_individual_over_student']:.2f}×"))
    for label, key in (("UniMoE-Guided", "unimoe_guided"), ("UniMoE", "unimoe"), ("MTL", "mtl")):
        if R.get(key):
            z = R[key]["fisher_z_qwk"]
            checks.append((f"Fisher-z mean QWK ≥ 0.75 on the base tasks ({label})", z >= 0.75, f(z)))
    if ad and ad.get("individual-new"):
        ipt = ad["individual-new"]["new_test"]["per_task"]
        for k in ADAPT_VARIANTS:
            if not ad.get(k):
                continue
            apt = ad[k]["new_test"]["per_task"]
            gap = max(ipt[t]["qwk"] - apt[t]["qwk"] for t in NEW)
            drop = max(ad[k]["adapt"]["forgetting"].values())
            checks.append((f"{k}: new tasks within 0.05 QWK of Individual, old tasks lose ≤ 0.02",
                           gap <= 0.05 and drop <= 0.02, f"max gap {gap:+.3f}, max drop {drop:+.3f}"))
    if checks:  # a run of the ablations alone checks no target
        L.append("### Targets\n")
        L.append("| Target | met | measured |")
        L.append("|---|---|---|")
        for name, ok, val in checks:
            L.append(f"| {name} | {'yes' if ok else '**no**'} | {val} |")
    if bench.budget_name != "full":
        L.append(f"\n*Budget `{bench.budget_name}`: a subsample of the training rows ({b['epochs']} epochs) — "
                 "not the full-budget results.*")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", choices=sorted(BUDGETS), default="quick")
    ap.add_argument("--encoder", default="minilm", help="'minilm', 'mpnet' or a HF encoder directory")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "asap-sas" / "train.tsv")
    ap.add_argument("--out", type=Path, default=None, help="work folder (default runs/bench_student_<budget>_<enc>)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--skip", default=None,
                    help="comma-separated steps to skip: placement,efficiency,adaptation,ablations,expert_usage "
                         "(default: 'placement' at --budget full, where it would break the 2.5-hour limit; "
                         "none otherwise; --skip '' runs everything)")
    ap.add_argument("--methods", default="individual,mtl,unimoe,unimoe_guided",
                    help="comma-separated methods to train on the base tasks (later steps need unimoe_guided)")
    ap.add_argument("--moe-placement", choices=["token", "pooled"], default="token",
                    help="expert placement of UniMoE / UniMoE-Guided in the main table (the other one is the "
                         "'placement' step)")
    ap.add_argument("--epochs", type=float, default=None,
                    help="override the budget's epochs (Individual keeps its extra epoch); use a separate --out")
    ap.add_argument("--ablations", default=None,
                    help=f"comma-separated ablation variants instead of the budget's ({', '.join(ABLATIONS)})")
    ap.add_argument("--adapt-variants", default=None,
                    help=f"comma-separated adaptation variants, or 'all' (default: {','.join(DEFAULT_ADAPT_VARIANTS)}; "
                         f"all: {', '.join(ADAPT_VARIANTS)})")
    ap.add_argument("--seed", type=int, default=42,
                    help="training seed of every step, add-task included (new-parameter init, dropout, batch order, rehearsal sample); the split and row subsamples "
                         "do not change. Use a separate --out per seed")
    ap.add_argument("--md", type=Path, default=None, help="markdown output (default docs/benchmarks/student[-budget].md)")
    a = ap.parse_args(argv)
    t0 = time.time()
    enc_slug = Path(a.encoder).name
    out = a.out or REPO / "runs" / f"bench_student_{a.budget}_{enc_slug}"
    bench = Bench(out, a.budget, a.encoder, a.data, a.threads, placement=a.moe_placement, epochs=a.epochs,
                  seed=a.seed)
    if a.ablations is not None:
        unknown = [x for x in a.ablations.split(",") if x and x not in ABLATIONS]
        if unknown:
            ap.error(f"unknown ablations {unknown}; choose from {list(ABLATIONS)}")
        bench.ablation_names = [x for x in a.ablations.split(",") if x]
    if a.adapt_variants == "all":
        a.adapt_variants = ",".join(ADAPT_VARIANTS)
    if a.adapt_variants is not None:
        unknown = [x for x in a.adapt_variants.split(",") if x and x not in ADAPT_VARIANTS]
        if unknown:
            ap.error(f"unknown adaptation variants {unknown}; choose from {list(ADAPT_VARIANTS)}")
        bench.adapt_names = [x for x in a.adapt_variants.split(",") if x]
    methods = [m for m in a.methods.split(",") if m]
    if a.skip is None:
        a.skip = "placement" if a.budget == "full" else ""
    skip = {s for s in a.skip.split(",") if s}
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    bench.load()
    R: dict[str, Any] = {}
    R["teacher"] = bench.teacher()["test"]
    for m in methods:
        R[m] = bench.train_method(m)
    if "unimoe_guided" not in methods:
        skip |= {"expert_usage", "efficiency", "adaptation"}
    suffix = "" if a.budget == "full" and enc_slug == "minilm" else f"-{a.budget}" + (
        "" if enc_slug == "minilm" else f"-{enc_slug}")
    png = REPO / "docs" / f"student_expert_usage{suffix}.png"
    if "expert_usage" not in skip:
        R["expert_usage"] = bench.step("expert_usage", lambda: bench.expert_usage(png))
    if "placement" not in skip:
        R["placement"] = bench.placement_runs(methods)
    if "efficiency" not in skip:
        R["efficiency"] = bench.efficiency()
    if "adaptation" not in skip:
        R["adaptation"] = bench.adaptation()
    if "ablations" not in skip:
        R["ablations"] = bench.ablations()
    md = a.md or REPO / "docs" / "benchmarks" / f"student{suffix}.md"
    cmd = "python benchmarks/asap_sas_student.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_markdown(md, bench, R, cmd.strip(), os.path.relpath(png, md.parent), time.time() - t0)
    log(f"wrote {md}" + (f" and {png}" if "expert_usage" in R else "") + f" ({(time.time() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
