"""AutoSCORE-style benchmark: single-call vs multi-agent scoring with the local GGUF models.

Data (read-only, from ``../shared/data``): ASAP-SAS sets 2, 5, 9 on AutoSCORE's 100-response subsets
(``asap-sas/autoscore-prompts/autoscore_eval_subset_ids.csv``) and ASAP-AES set 1 on its 100 essays
(``asap-aes/autoscore-prompts/autoscore_eval_subset_ids.csv``). Tasks: the shipped task files (components
and scoring rules) with the question and rubric texts replaced by AutoSCORE's (``question.txt``,
``rubric.txt`` in the shared folders). AES set 1 is scored on one rater's 1-6 scale against rater 1.

Metrics (rubricate.metrics.score_metrics, on the responses that did not fail): QWK, exact accuracy,
Pearson, Spearman, MAE, RMSE; plus the share of failed outputs (never scored), the evidence grounding
rate (multi-agent) and wall-clock seconds per response. Every run writes a resumable results JSONL, so
an interrupted benchmark continues where it stopped::

    python benchmarks/autoscore_asap.py --models smollm2,gemma3 --limit 5

writes ``docs/benchmarks/agents.md`` and ``docs/benchmarks/agents_qwk_vs_seconds.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SETS = {"sas2": ("asap-sas", 2), "sas5": ("asap-sas", 5), "sas9": ("asap-sas", 9), "aes1": ("asap-aes", 1)}


def bench_task(tasks_dir: Path, data: Path, key: str):
    """The shipped task with AutoSCORE's question and rubric texts (components and rules kept)."""
    from rubricate.tasks import TaskRegistry

    corpus, n = SETS[key]
    reg = TaskRegistry.from_dir(tasks_dir)
    task = reg.get(f"{corpus}-{n}")
    folder = data / corpus / "autoscore-prompts" / (f"DataSet{n}" if corpus == "asap-sas" else f"EssaySet{n}")
    question = (folder / "question.txt").read_text(encoding="utf-8").strip()
    rubric_text = (folder / "rubric.txt").read_text(encoding="utf-8").strip()
    rubric = task.rubric.model_copy(update={"notes": rubric_text})
    if corpus == "asap-aes":  # score one rater's 1-6 rubric scale (AutoSCORE's), not the 2-12 sum
        rubric = rubric.model_copy(update={"scales": [task.scale("rater_score")], "scoring_rules": []})
    # the passage of set 9 is inside AutoSCORE's question text; keep the task's own context only if absent
    context = None if len(question) > 1500 else task.context
    return task.model_copy(update={"question": question, "context": context, "rubric": rubric})


def subset_records(data: Path, key: str, limit: int | None) -> list:
    from rubricate.data.loaders import load_asap_aes, load_asap_sas

    corpus, n = SETS[key]
    ids_file = data / corpus / "autoscore-prompts" / "autoscore_eval_subset_ids.csv"
    with ids_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    id_col = "Id" if corpus == "asap-sas" else "essay_id"
    set_col = "EssaySet" if corpus == "asap-sas" else "essay_set"
    wanted = [str(int(r[id_col])) for r in rows if int(r[set_col]) == n]
    recs = (load_asap_sas(data / corpus / "train.tsv", sets=[n]) if corpus == "asap-sas"
            else load_asap_aes(data / corpus / "training_set_rel3.tsv", sets=[n]))
    by_id = {r.response_id: r for r in recs}
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise SystemExit(f"{ids_file}: ids not found in the data: {missing[:5]}")
    out = [by_id[i] for i in wanted]
    return out[:limit] if limit else out


def evaluate(task, records, results) -> dict[str, Any]:
    from rubricate.agents.pipeline import summarize
    from rubricate.metrics import score_metrics

    scale = task.primary_scale
    human = {r.response_id: r.labels[scale.id] for r in records}
    ok = [r for r in results if r.status == "ok"]
    s = summarize(results)
    row: dict[str, Any] = {"n": s["n"], "failed_share": s["failed_share"], "grounding": s["grounding_rate"],
                           "sec_per_response": s["seconds_per_response"], "tokens_out": s["tokens_out"]}
    if len(ok) >= 2:
        m = score_metrics([human[r.response_id] for r in ok], [r.score for r in ok], scale.min, scale.max, n_boot=0)
        row.update(qwk=m.qwk, accuracy=m.exact, pearson=m.pearson, spearman=m.spearman, mae=m.mae, rmse=m.rmse)
    rule = [r for r in ok if r.rule_score is not None]
    if len(rule) >= 2:
        m = score_metrics([human[r.response_id] for r in rule], [r.rule_score for r in rule], scale.min, scale.max,
                          n_boot=0)
        row["rule_qwk"] = m.qwk
    return row


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def per_set_note(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The rows may come from invocations with different --limit: say so instead of quoting this one's."""
    ns = sorted({r["n"] for r in rows})
    if len(ns) > 1:
        return f"{' or '.join(map(str, ns))} (see the n column; earlier invocations used other --limit values)"
    return str(ns[0]) if ns else str(args.limit or "all (100)")


def row_order(r: dict[str, Any]) -> tuple:
    """Tables read model by model, then single / multi / multi-spans, then the sets in SETS order."""
    models, modes = ["smollm2", "gemma3"], ["single", "multi", "multi-spans"]
    return (models.index(r["model"]) if r["model"] in models else len(models), r["model"],
            modes.index(r["mode"]) if r["mode"] in modes else len(modes), r["mode"],
            list(SETS).index(r["set"]) if r["set"] in SETS else len(SETS))


def threads_note(rows: list[dict[str, Any]]) -> str:
    """Rows may come from invocations with different --threads: the header names every count used."""
    ts = sorted({str(r.get("threads", "?")) for r in rows})
    return " or ".join(ts) if ts else "?"


def write_doc(rows: list[dict[str, Any]], args: argparse.Namespace, plot: Path | None, wall_s: float) -> None:
    cmd = "python benchmarks/autoscore_asap.py " + " ".join(sys.argv[1:])
    lines = [
        "## Rubric-aligned LLM agents (AutoSCORE) on ASAP-SAS 2/5/9 and ASAP-AES 1",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores ({platform.processor() or 'cpu'}), "
        f"llama.cpp threads per process {threads_note(rows)}, load average at the end "
        f"{os.getloadavg()[0]:.1f}; Python {platform.python_version()}; date "
        f"{dt.date.today().isoformat()}; wall time of this invocation {wall_s / 60:.1f} min (rows of earlier "
        "invocations on the same --out-dir are included; their seconds are their own, and `measured` is "
        "their date).  ",
        f"Responses per set: {per_set_note(rows, args)} of AutoSCORE's evaluation subset; temperature 0; "
        "grammar-constrained JSON (llama.cpp); scoring agent = LLM, `rule QWK` = the task's deterministic "
        "scoring rules applied to the same extraction.",
        "",
        "Metrics are computed on the responses that did not fail; `failed` is the share of responses whose "
        "output never validated (they get no score, never a default one). `grounding` = share of evidence "
        "quotes that occur in the response. Seconds are wall-clock per response on this machine.",
        "",
        "| model | mode | set | n | failed | QWK | accuracy | Pearson | Spearman | MAE | RMSE | rule QWK | grounding "
        "| s/response | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['set']} | {r['n']} | {fmt(r['failed_share'], 2)} | "
                     f"{fmt(r.get('qwk'))} | {fmt(r.get('accuracy'))} | {fmt(r.get('pearson'))} | "
                     f"{fmt(r.get('spearman'))} | {fmt(r.get('mae'))} | {fmt(r.get('rmse'))} | "
                     f"{fmt(r.get('rule_qwk'))} | {fmt(r.get('grounding'), 2)} | {fmt(r['sec_per_response'], 1)} | "
                     f"{r.get('date', '-')} |")
    lines += ["", "Averaged over sets (QWK: mean of the per-set values):", "",
              "| model | mode | mean QWK | failed | s/response |", "|---|---|---|---|---|"]
    for (model, mode), agg in aggregate(rows).items():
        lines.append(f"| {model} | {mode} | {fmt(agg['qwk'])} | {fmt(agg['failed'], 2)} | {fmt(agg['sec'], 1)} |")
    if plot is not None:
        lines += ["", f"![QWK against seconds per response]({plot.name})"]
    lines += ["", "Small local models (135M-270M parameters) are expected to score poorly; the same pipeline is "
              "pointed at a GPT-4o-class server with `--backend openai --base-url ... --model ...`.", ""]
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text("\n".join(lines), encoding="utf-8")


def aggregate(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key in dict.fromkeys((r["model"], r["mode"]) for r in rows):
        rs = [r for r in rows if (r["model"], r["mode"]) == key]
        q = [r["qwk"] for r in rs if r.get("qwk") is not None and not math.isnan(r["qwk"])]
        out[key] = {"qwk": sum(q) / len(q) if q else math.nan,
                    "failed": sum(r["failed_share"] * r["n"] for r in rs) / max(1, sum(r["n"] for r in rs)),
                    "sec": sum(r["sec_per_response"] * r["n"] for r in rs) / max(1, sum(r["n"] for r in rs))}
    return out


def make_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"single": "o", "multi": "s", "multi-spans": "^"}
    for (model, mode), agg in aggregate(rows).items():
        ax.scatter(agg["sec"], 0.0 if math.isnan(agg["qwk"]) else agg["qwk"], marker=markers.get(mode, "x"), s=60,
                   label=f"{model} {mode}")
        ax.annotate(f"{model}/{mode}", (agg["sec"], 0.0 if math.isnan(agg["qwk"]) else agg["qwk"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("seconds per response (wall clock, CPU)")
    ax.set_ylabel("mean QWK over sets")
    ax.set_title("AutoSCORE pipeline: agreement vs cost")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("RUBRICATE_SHARED_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--tasks", type=Path, default=REPO / "tasks")
    ap.add_argument("--models", default="smollm2,gemma3", help="comma-separated: smollm2, gemma3 or GGUF paths")
    ap.add_argument("--modes", default="single,multi,multi-spans",
                    help="single, multi, multi-spans (evidence restricted to the response's sentences)")
    ap.add_argument("--sets", default="sas2,sas5,sas9,aes1")
    ap.add_argument("--limit", type=int, default=None, help="responses per set (default: all 100)")
    ap.add_argument("--samples", type=int, default=1, help="self-consistency samples of the scoring step")
    ap.add_argument("--rationale-chars", type=int, default=200)
    ap.add_argument("--max-quotes", type=int, default=2, help="evidence quotes per component")
    ap.add_argument("--quote-chars", type=int, default=100, help="characters per evidence quote")
    ap.add_argument("--extract-tokens", type=int, default=600,
                    help="token cap of the extraction (a reply cut off there is retried at the same cap)")
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (default: the backend's, min(4, cores)). Two 1-thread processes side "
                         "by side were only about 1.2x faster in all (4 Gemma multi responses each) than one 2-thread process here, and each row's "
                         "seconds then count a shared machine: run one process at a time")
    ap.add_argument("--out-dir", type=Path, default=REPO / "runs" / "autoscore", help="results JSONL + request cache")
    ap.add_argument("--no-cache", action="store_true",
                    help="call the model even when the request cache has the answer (to re-time rows)")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks" / "agents.md")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks" / "agents_qwk_vs_seconds.png")
    args = ap.parse_args()

    from rubricate.agents.backends import make_backend
    from rubricate.agents.cache import RequestCache
    from rubricate.agents.pipeline import PipelineConfig, score_responses

    t0 = time.perf_counter()
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"unknown sets {unknown}; choose from {list(SETS)}")
    tasks = {s: bench_task(args.tasks, args.data, s) for s in sets}
    records = {s: subset_records(args.data, s, args.limit) for s in sets}
    cache = None if args.no_cache else RequestCache(args.out_dir / "cache")
    rows: list[dict[str, Any]] = []
    for model in [m for m in args.models.split(",") if m]:
        backend = make_backend("local", model=model, n_ctx=args.n_ctx, n_threads=args.threads)
        for mode in [m for m in args.modes.split(",") if m]:
            # "multi-spans": the multi-agent pipeline with quotes restricted to the response's sentences
            base_mode, _, ev = mode.partition("-")
            cfg = PipelineConfig(mode=base_mode, samples=args.samples, rationale_chars=args.rationale_chars,  # type: ignore[arg-type]
                                 max_quotes=args.max_quotes, quote_chars=args.quote_chars, length_growth=1.0,
                                 evidence=ev or "free",  # type: ignore[arg-type]
                                 max_tokens={"extract": args.extract_tokens})
            for s in sets:
                out = args.out_dir / backend.model / mode / f"{s}.jsonl"
                print(f"[{model} {mode} {s}] {len(records[s])} responses -> {out}", flush=True)
                res = score_responses(tasks[s], records[s], backend, cfg, cache=cache, output=out, progress=True)
                row = {"model": backend.model, "mode": mode, "set": s, "threads": backend.n_threads,
                       "date": dt.date.today().isoformat(),
                       **evaluate(tasks[s], records[s], res)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        del backend
    # rows of earlier invocations on the same out-dir are kept (same model/mode/set: this run's row wins),
    # so a benchmark can be built up in parts, e.g. one model at a time
    summary = args.out_dir / "summary.json"
    done = {(r["model"], r["mode"], r["set"]) for r in rows}
    if summary.exists():
        rows = [r for r in json.loads(summary.read_text()) if (r["model"], r["mode"], r["set"]) not in done] + rows
    rows.sort(key=row_order)
    summary.write_text(json.dumps(rows, indent=1))
    plot = make_plot(rows, args.plot)
    write_doc(rows, args, plot, time.perf_counter() - t0)
    print(f"wrote {args.doc} and {plot}")


if __name__ == "__main__":
    main()
