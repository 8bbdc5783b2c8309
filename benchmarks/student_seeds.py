"""Is method A better than method B beyond noise? Seeds and paired bootstrap over the student benchmark's runs.

    python benchmarks/student_seeds.py --md docs/benchmarks/student-seeds.md \
        --compare "150 rows per task|full|ablation-unimoe|ablation-mtl|runs/bench_student_full_minilm,runs/bench_student_full_minilm_s1" \
        --compare "500 rows per task|medium|unimoe|mtl|runs/bench_student_medium_minilm,runs/bench_student_medium_minilm_s1"

Each ``--compare`` is ``TITLE|BUDGET|STEP_A|STEP_B|DIR,DIR,...``: work folders of
``benchmarks/asap_sas_student.py`` (one per training seed, same split and rows) and two of their step names
(``mtl``, ``unimoe``, ``ablation-mtl``, ...). For every folder the test predictions of both steps are read
from ``<dir>/predictions/<step>.jsonl``, or computed once from the checkpoint ``<dir>/runs/<step>`` and saved
there. Two sources of noise are reported separately:

* **test-set noise** - for each seed, :func:`rubricate.metrics.compare_systems` gives A − B in Fisher-z
  mean QWK with a *paired* bootstrap interval over the test responses;
* **training noise** - the spread of each method's Fisher-z over the seeds (mean ± SD).

A folder where a step has neither predictions nor a checkpoint is listed as missing, never filled in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from asap_sas_student import BASE, REPO, Bench, log  # noqa: E402


def step_predictions(bench: Bench, step: str) -> list[dict[str, Any]] | None:
    """The step's test predictions: from its JSONL, or predicted from its checkpoint (then saved)."""
    path = bench.out / "predictions" / f"{step}.jsonl"
    if not path.exists() and step == "unimoe_guided" and (bench.out / "unimoe_guided_test_predictions.jsonl").exists():
        path = bench.out / "unimoe_guided_test_predictions.jsonl"
    if path.exists():
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    ck = bench.out / "runs" / step
    if not (ck / "config.json").exists():
        return None
    log(f"predicting {step} in {bench.out} from its checkpoint")
    preds = bench.predict(ck, bench.rows("test", BASE))
    bench.save_predictions(step, preds)
    return [p.to_dict() for p in preds]


def training_seed(bench: Bench, step: str) -> int | None:
    cfg = bench.out / "runs" / step / "config.json"
    if not cfg.exists():
        return None
    d = json.loads(cfg.read_text())
    for key in ("recipe", "training_args", "training"):
        if isinstance(d.get(key), dict) and "seed" in d[key]:
            return int(d[key]["seed"])
    return None


def compare_group(title: str, budget: str, step_a: str, step_b: str, dirs: list[Path], data: Path,
                  n_boot: int) -> dict[str, Any]:
    from rubricate.metrics import compare_systems

    rows, missing = [], []
    for d in dirs:
        bench = Bench(d, budget, "minilm", data, threads=None)
        bench.load()
        test = bench.rows("test", BASE)
        pa, pb = step_predictions(bench, step_a), step_predictions(bench, step_b)
        if pa is None or pb is None:
            missing.append({"dir": str(d), "missing": [s for s, p in ((step_a, pa), (step_b, pb)) if p is None]})
            continue
        ma, mb = bench.evaluate(test, pa, step_a), bench.evaluate(test, pb, step_b)
        cmp = compare_systems(test, pa, pb, bench.registry, n_boot=n_boot, seed=0, label_a=step_a, label_b=step_b)
        rows.append({
            "dir": str(d), "seed": training_seed(bench, step_a), "n_test": len(test),
            "a": {"fisher_z": ma["fisher_z_qwk"], "mean_qwk": ma["mean_qwk"],
                  "mean_kappa": ma["multilabel_mean"].get("mean_kappa")},
            "b": {"fisher_z": mb["fisher_z_qwk"], "mean_qwk": mb["mean_qwk"],
                  "mean_kappa": mb["multilabel_mean"].get("mean_kappa")},
            "diff_fisher_z": cmp.across["fisher_z"]["diff"],
            "ci_fisher_z": [cmp.ci["fisher_z"].low, cmp.ci["fisher_z"].high],
            "share_a_better": cmp.across["fisher_z"]["share_a_better"],
            "per_task_diff": {e.task_id: e.diff for e in cmp.entries}})
    return {"title": title, "budget": budget, "a": step_a, "b": step_b, "runs": rows, "missing": missing}


def summary(g: dict[str, Any]) -> dict[str, Any]:
    r = g["runs"]
    if not r:
        return {}
    za, zb = np.array([x["a"]["fisher_z"] for x in r]), np.array([x["b"]["fisher_z"] for x in r])
    d = za - zb
    sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"))
    return {"n_seeds": len(r), "a_mean": float(za.mean()), "a_sd": sd(za), "b_mean": float(zb.mean()),
            "b_sd": sd(zb), "diff_mean": float(d.mean()), "diff_sd": sd(d), "a_wins": int((d > 0).sum()),
            "per_task_mean_diff": {t: float(np.mean([x["per_task_diff"][t] for x in r])) for t in BASE}}


def write_markdown(path: Path, groups: list[dict[str, Any]], cmd: str, n_boot: int) -> None:
    import os
    import platform

    L = ["## Seeds and paired comparisons of the student's methods\n",
         f"Command: `{cmd}`  ",
         f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores; date {time.strftime('%Y-%m-%d')}.  ",
         f"Fisher-z mean QWK over ASAP-SAS sets 1–8 on the full base test split; A − B with a paired percentile "
         f"bootstrap ({n_boot} resamples of the test responses, within each set) per seed; mean ± SD over the "
         "training seeds (same split, same training rows, same hyper-parameters).\n"]
    for g in groups:
        s = summary(g)
        L.append(f"### {g['title']}: {g['a']} (A) vs {g['b']} (B), budget `{g['budget']}`\n")
        L.append("| training seed | A Fisher-z (mean κ) | B Fisher-z (mean κ) | A − B | 95% paired CI | share of resamples A > B |")
        L.append("|---|---|---|---|---|---|")
        for x in g["runs"]:
            L.append(f"| {x['seed']} | {x['a']['fisher_z']:.3f} ({x['a']['mean_kappa']:.3f}) | "
                     f"{x['b']['fisher_z']:.3f} ({x['b']['mean_kappa']:.3f}) | {x['diff_fisher_z']:+.3f} | "
                     f"[{x['ci_fisher_z'][0]:+.3f}, {x['ci_fisher_z'][1]:+.3f}] | {x['share_a_better']:.2f} |")
        if s and s["n_seeds"] > 1:
            L.append(f"| **mean ± SD** ({s['n_seeds']} seeds) | {s['a_mean']:.3f} ± {s['a_sd']:.3f} | "
                     f"{s['b_mean']:.3f} ± {s['b_sd']:.3f} | {s['diff_mean']:+.3f} ± {s['diff_sd']:.3f} | "
                     f"A ahead in {s['a_wins']} of {s['n_seeds']} seeds | |")
        if s:
            L.append("\nA − B QWK per set" + (" (mean over the seeds)" if s["n_seeds"] > 1 else "") + ": " + ", ".join(
                f"{t.replace('asap-sas-', 'set ')} {v:+.3f}" for t, v in s["per_task_mean_diff"].items()) + ".")
        for m in g["missing"]:
            L.append(f"\n*Not included: `{m['dir']}` has no predictions or checkpoint for {m['missing']}.*")
        L.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", action="append", required=True,
                    help="TITLE|BUDGET|STEP_A|STEP_B|DIR,DIR,... (repeatable)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "asap-sas" / "train.tsv")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test responses")
    ap.add_argument("--md", type=Path, default=REPO / "docs" / "benchmarks" / "student-seeds.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers as JSON")
    a = ap.parse_args(argv)
    groups = []
    for spec in a.compare:
        parts = spec.split("|")
        if len(parts) != 5:
            ap.error(f"--compare needs TITLE|BUDGET|STEP_A|STEP_B|DIRS, got {spec!r}")
        title, budget, sa, sb, dirs = parts
        groups.append(compare_group(title, budget, sa, sb, [Path(d) for d in dirs.split(",") if d], a.data, a.n_boot))
    cmd = "python benchmarks/student_seeds.py " + " ".join(
        f'"{x}"' if "|" in x else x for x in (sys.argv[1:] if argv is None else argv))
    write_markdown(a.md, groups, cmd, a.n_boot)
    if a.json:
        a.json.write_text(json.dumps({"groups": groups, "summaries": [summary(g) for g in groups]}, indent=2))
    log(f"wrote {a.md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
