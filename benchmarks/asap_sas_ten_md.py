"""The tables of ``asap_sas_ten.py``, written from its finished steps (``<out>/results/*.json``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from asap_sas_ten import AUTOSCORE_GPT4O, DECODERS, READINESS, TASKS

#: the project's own agents on the same 100-response subsets (docs/benchmarks.md, agents section:
#: measured 2026-11-24 for SmolLM2, 2026-12-01 for Gemma 3); QWK per set, multi-agent / single-call
AGENTS_ROWS = {
    "SmolLM2-135M multi (2026-11-24)": {"asap-sas-2": 0.047, "asap-sas-5": -0.005, "asap-sas-9": 0.079},
    "SmolLM2-135M single (2026-11-24)": {"asap-sas-2": 0.000, "asap-sas-5": 0.122, "asap-sas-9": 0.218},
    "Gemma 3 270M multi (2026-12-01)": {"asap-sas-2": -0.028, "asap-sas-5": 0.046, "asap-sas-9": -0.079},
    "Gemma 3 270M single (2026-12-01)": {"asap-sas-2": -0.020, "asap-sas-5": -0.058, "asap-sas-9": -0.134},
}
DECODER_NAMES = {"threshold": "(a) count p ≥ 0.5", "qwk_cuts": "(b) expected score, QWK-fit cuts",
                 "distribution": "(c) expected score, training-distribution cuts"}


def f(x: Any, d: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    return f"{x:.{d}f}" if isinstance(x, float) else str(x)


def _finished(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    trains, evals = {}, {}
    for p in sorted((out / "results").glob("*.json")):
        if p.stem.startswith("train-"):
            trains[p.stem[6:]] = json.loads(p.read_text())
        elif p.stem.startswith("teacher-"):  # a teacher's cost and settings, shown as its own run
            trains[p.stem] = json.loads(p.read_text())
        elif p.stem.startswith("eval-"):
            evals[p.stem[5:]] = json.loads(p.read_text())
    return trains, evals


def runs_table(L: list[str], trains: dict[str, Any], evals: dict[str, Any]) -> None:
    L += ["| run | method | second rater | decoder | Fisher-z QWK [95% CI] | mean QWK | items ready | train min | load (start→end) |",
          "|---|---|---|---|---|---|---|---|---|"]
    for rid, ev in evals.items():
        tr = trains.get(rid) or trains.get(rid.replace("-selection", ""), {})  # a refit's selection: its run
        st = tr.get("settings", {})
        for kind in DECODERS:
            t = ev[kind]["test"]
            ci = t.get("fisher_z_ci")
            cis = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            L.append(f"| {rid} | {st.get('method')} | {st.get('second_rater')} | {DECODER_NAMES[kind]} | "
                     f"{f(t['fisher_z_qwk'])}{cis} | {f(t['mean_qwk'])} | {t['n_ready']} of {len(t['per_task'])} | "
                     f"{f(tr.get('_seconds', 0) / 60, 1)} | {f(tr.get('_load_start'), 1)}→{f(tr.get('_load_end'), 1)} |")
    L.append("")


def items_table(L: list[str], rid: str, kind: str, ev: dict[str, Any]) -> None:
    t = ev[kind]["test"]
    L += [f"**{rid}, decoder {DECODER_NAMES[kind]}** (test split; human–human on the same rows)", "",
          "| item | n | QWK [95% CI] | exact | SMD | human–human QWK | degradation | QWK ≥ 0.70 | degr. ≤ 0.10 | \\|SMD\\| ≤ 0.15 |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for tid in TASKS:
        m = t["per_task"].get(tid)
        if m is None:
            continue
        ci = m.get("qwk_ci")
        cis = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        r = m["ready"]
        L.append(f"| {tid} | {m['n']} | {f(m['qwk'])}{cis} | {f(m['exact'])} | {m['smd']:+.3f} | {f(m['hh_qwk'])} | "
                 f"{f(m['degradation'])} | {f(r['qwk'])} | {f(r['degradation'])} | {f(r['smd'])} |")
    L += ["", f"Fisher-z mean {f(t['fisher_z_qwk'])} (human–human {f(t['hh_fisher_z_qwk'])}); "
              f"{t['n_ready']} of {len(t['per_task'])} items pass all three thresholds.", ""]


def autoscore_table(L: list[str], evals: dict[str, Any]) -> None:
    sets = list(AUTOSCORE_GPT4O)
    L += ["| scorer | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for rid, ev in evals.items():
        for kind in DECODERS:
            pt = ev[kind]["autoscore"]["per_task"]
            L.append(f"| student {rid}, {kind} | " + " | ".join(f(pt[s]["qwk"]) for s in sets) + " |")
    L.append("| AutoSCORE, GPT-4o (published) | " + " | ".join(f(AUTOSCORE_GPT4O[s]) for s in sets) + " |")
    for name, row in AGENTS_ROWS.items():
        L.append(f"| rubricate agents, {name} | " + " | ".join(f(row[s]) for s in sets) + " |")
    L.append("")


def lengths_table(L: list[str], lengths: dict[str, Any]) -> None:
    L += ["| max_length | share truncated (all) | worst item | p50 / p95 / p99 / max tokens |", "|---|---|---|---|"]
    for ml, s in lengths["at"].items():
        worst = max(s["per_task"].items(), key=lambda kv: kv[1]["share_truncated"])
        L.append(f"| {ml} | {s['share_truncated']:.2%} | {worst[0]} {worst[1]['share_truncated']:.1%} | "
                 f"{s['p50']:.0f} / {s['p95']:.0f} / {s['p99']:.0f} / {s['max']} |")
    L += ["", f"Chosen (`choose_max_length`: smallest multiple of 32 leaving ≥ 99.5% uncut): "
              f"**{lengths['chosen_max_length']}**.", ""]


def write_markdown(b: Any, path: Path, cmd: str, machine: str) -> None:
    trains, evals = _finished(b.out)
    L = ["# Student: all ten ASAP-SAS items as base tasks", "",
         f"Written by `benchmarks/asap_sas_ten.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
         f"Machine: {machine}. Command: `{cmd}` (finished steps of earlier invocations are reused; each step "
         "records its own wall time and load average).", "",
         f"Data: {sum(len(v) for v in b.parts.values())} responses in a persisted 80/10/10 split "
         f"(train {len(b.parts['train'])}, validation {len(b.parts['validation'])}, test {len(b.parts['test'])}); "
         f"the {len(b.autoscore)} responses of AutoSCORE's evaluation subset are held out of every split and "
         "scored apart. Decoders are fit on the validation split only (`rubricate.student.decoding`). "
         f"Operational readiness: QWK ≥ {READINESS['qwk']}, QWK degradation from human–human ≤ "
         f"{READINESS['degradation']}, |SMD| ≤ {READINESS['smd']} (Williamson, Xi & Breyer 2012).", "",
         "## Runs × decoders (test split)", ""]
    runs_table(L, trains, evals)
    L += ["## Per item", ""]
    for rid, ev in evals.items():
        best = max(DECODERS, key=lambda k: ev[k]["test"]["fisher_z_qwk"])
        items_table(L, rid, best, ev)
    L += ["## AutoSCORE's 300-response subset (never trained on)", ""]
    autoscore_table(L, evals)
    L += ["## Response lengths (training split, MiniLM tokens incl. special tokens)", ""]
    lengths_table(L, json.loads((b.out / "results" / "lengths.json").read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L) + "\n", encoding="utf-8")
    print(f"wrote {path}")
