"""Serving benchmark: `rubricate predict` throughput, /v1/score latency, server memory, vs the Individual set.

    python benchmarks/serving.py                      # the trained ten-item checkpoint (runs/bench_ten/...)
    python benchmarks/serving.py --quick              # a smoke run (few responses and requests, no memory runs)
    python benchmarks/serving.py --model untrained    # self-contained (untrained-head MiniLM students)

What it measures (on ASAP-SAS responses, ``shared/data/asap-sas/train.tsv``):

* **export steps**, one row each (what paid): fp32 as exported, + ONNX Runtime's transformer optimizer,
  + block-wise int8 (8-bit table), + a 4-bit table; in-process responses/s, file size, max |dprob| vs
  fp32 and QWK on the benchmark split's test rows (``runs/bench_ten/split.json``);
* **throughput** of ``rubricate predict`` (real CLI subprocess, JSONL in, CSV out) for torch fp32,
  ONNX fp32 and ONNX int8, in responses/s as the command reports it (model load excluded;
  the wall time including start-up is reported too);
* **latency** of ``POST /v1/score`` with one response per request at concurrency 1, 8 and 32, from a
  bounded async load generator (httpx) on loopback, against the real ``rubricate serve`` process with
  its SQLite database (every request is stored, as in production): p50/p95/p99 and errors;
* **memory and start-up**: peak RSS of the server process (VmHWM) and the time until /healthz answers;
* **the alternative**: the same server code serving the *Individual set* - one model per task, all
  loaded (untrained-head MiniLM encoders without MoE, one per ASAP-SAS item, same backend).

Without ``--model`` the student is a MiniLM encoder + MoE (4 experts x 2 layers) + 10 heads with
untrained heads: weights do not change speed or memory, and the report says which model was used.
Results go to a JSON file and a Markdown section (``docs/benchmarks/serving.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RUBRICATE_SHARED_DATA", REPO.parent / "shared" / "data"))
#: issue 17's targets (2-core machine, trained ten-item student)
TARGETS = {"onnx_int8_rps": 300.0, "p50_ms_c1": 10.0, "rps_c32": 150.0, "p99_ms_c32": 400.0, "errors_c32": 0,
           "int8_mb": 25.0, "server_rss_mb": 180.0, "predict_rss_mb": 300.0, "startup_s": 1.5, "rss_ratio": 0.2}
TRAINED = REPO / "runs" / "bench_ten" / "runs" / "unimoe-soft"
SPLIT = REPO / "runs" / "bench_ten" / "split.json"
#: ``Int8Options.embedding_hot_rows`` settings measured in the per-step table (token counts from the train rows)
HOT_ROWS = (4096, 8192)


# --------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------
def _save_untrained(out: Path, task_ids: list[str], use_moe: bool, model_id: str) -> Path:
    from transformers import AutoTokenizer

    from rubricate.labels import LabelEncoding
    from rubricate.student.modeling import StudentConfig, StudentModel, resolve_encoder, save_model
    from rubricate.tasks import TaskRegistry

    reg = TaskRegistry.from_dir(REPO / "tasks" / "asap_sas").subset(task_ids)
    encs = {t: LabelEncoding.from_task(reg.get(t)) for t in task_ids}
    cfg = StudentConfig(task_ids=list(task_ids), n_labels=[encs[t].n_labels for t in task_ids], encoder="minilm",
                        use_moe=use_moe)
    import torch

    torch.manual_seed(0)
    model = StudentModel.from_encoder(cfg)
    tok = AutoTokenizer.from_pretrained(str(resolve_encoder("minilm")))
    doc = {"model_id": model_id, "tasks": reg.snapshot(),
           "label_encodings": {t: encs[t].to_dict() for t in task_ids}, "metrics": {}, "note": "untrained heads"}
    save_model(model, tok, out, doc)
    return out


def _export(ck: Path) -> dict[str, Any]:
    from rubricate.student.checkpoint import TOKEN_COUNTS_NAME
    from rubricate.student.export import export_checkpoint

    if not (ck / "onnx" / "model.int8.onnx").exists():
        # hot rows (the default) count tokens from the checkpoint's token_counts.json; an older checkpoint has
        # none, so the persisted split's train rows stand in (never the test rows)
        stored = (ck / TOKEN_COUNTS_NAME).exists() or not SPLIT.exists()
        export_checkpoint(ck, int8=True, frequency_texts=None if stored else [r.text for r in _split_rows("train")])
    return json.loads((ck / "onnx" / "export.json").read_text())


# --------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------
def _responses(n: int, seed: int = 0) -> list[dict[str, str]]:
    from rubricate.data.loaders import load_asap_sas

    recs = load_asap_sas(SHARED / "asap-sas" / "train.tsv")
    rng = random.Random(seed)
    rng.shuffle(recs)
    return [{"task_id": r.task_id, "text": r.text, "response_id": r.response_id} for r in recs[:n]]


# --------------------------------------------------------------------------------------------------------
# export steps: what each optimisation pays
# --------------------------------------------------------------------------------------------------------
def _split_rows(part: str) -> list[Any]:
    from rubricate.data.loaders import load_asap_sas

    which = {(a["task_id"], a["response_id"]): a["split"] for a in json.loads(SPLIT.read_text())["assignments"]}
    return [r for r in load_asap_sas(SHARED / "asap-sas" / "train.tsv")
            if which.get((r.task_id, r.response_id)) == part]


def _test_rows() -> list[Any]:
    return _split_rows("test")


def _step_row(scorer: Any, rows: list[Any], ref: Any) -> tuple[dict[str, Any], Any]:
    """In-process responses/s (start-up apart), QWK per item on ``rows``, max |dprob| against ``ref``."""
    import numpy as np

    from rubricate.metrics.formulas import qwk

    tids, texts = [r.task_id for r in rows], [r.text for r in rows]
    scorer.predict(tids[:64], texts[:64], batch_size=32)  # warm-up
    t0 = time.perf_counter()
    preds = scorer.predict(tids, texts, batch_size=32)
    rps = len(rows) / (time.perf_counter() - t0)
    probs = [p.probs for p in preds]
    qwks = []
    for t in sorted(set(tids)):
        idx = [i for i, x in enumerate(tids) if x == t]
        sc = scorer.encodings[t].scales[0]
        qwks.append(qwk([rows[i].labels["score"] for i in idx], [preds[i].scores[sc.id] for i in idx], sc.min, sc.max))
    dp = 0.0 if ref is None else max(abs(a[k] - b[k]) for a, b in zip(ref, probs) for k in a)
    return {"responses_per_s": round(rps, 1), "qwk_mean": round(float(np.mean(qwks)), 4),
            "max_abs_dprob_vs_fp32": round(dp, 4)}, probs


def bench_steps(model: Path, work: Path, threads: int | None, n_rows: int | None) -> list[dict[str, Any]]:
    """One export per step into ``work/steps/<name>`` (a copy of the checkpoint), each scored in process."""
    from rubricate.student.export import export_checkpoint
    from rubricate.student.onnx_tools import Int8Options
    from rubricate.student.scorer import Scorer

    rows = _test_rows()[:n_rows] if n_rows else _test_rows()
    steps = [("fp32, as exported", False, None), ("+ transformer optimizer", True, None),
             ("+ block int8, 8-bit table", True, Int8Options(embedding_hot_rows=None)),
             ("+ block int8, 4-bit table", True, Int8Options(embedding_bits=4, embedding_hot_rows=None))]
    default = Int8Options().embedding_hot_rows
    steps += [(f"+ block int8, {n} frequent rows 8-bit, rest 4-bit" + (" (default)" if n == default else ""),
               True, Int8Options(embedding_hot_rows=n)) for n in HOT_ROWS]
    train_texts = [r.text for r in _split_rows("train")]  # token counts: the training rows, never the test rows
    out, ref = [], None
    for name, optimize, int8 in steps:
        d = work / "steps" / re.sub(r"\W+", "-", name).strip("-")
        if not (d / "config.json").exists():
            shutil.copytree(model, d, ignore=shutil.ignore_patterns("onnx"))
        freq = train_texts if int8 is not None and int8.embedding_hot_rows else None
        rep = export_checkpoint(d, int8=int8 is not None, optimize=optimize, int8_options=int8, strict=False,
                                frequency_texts=freq)
        scorer = Scorer.from_pretrained(d, backend="onnx", quantize=int8 is not None, num_threads=threads)
        row, probs = _step_row(scorer, rows, ref)
        ref = probs if ref is None else ref
        f = "model.int8.onnx" if int8 is not None else "model.onnx"
        out.append({"step": name, "size_mb": rep.size_mb[f], "parity_max_abs_dprob": rep.max_abs_dprob_int8
                    if int8 is not None else rep.max_abs_dprob_fp32, "n_rows": len(rows), **row})
        print(f"  step {out[-1]}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------------
# throughput of `rubricate predict`
# --------------------------------------------------------------------------------------------------------
def _cli() -> list[str]:
    return [sys.executable, "-c", "from rubricate.cli import main; main()"]


def bench_predict(model: Path, inp: Path, work: Path, threads: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, backend, int8 in (("torch fp32", "torch", False), ("onnx fp32", "onnx", False),
                                ("onnx int8", "onnx", True)):
        dst = work / f"pred-{backend}-{'int8' if int8 else 'fp32'}.csv"
        cmd = _cli() + ["predict", "--model", str(model), "--input", str(inp), "--output", str(dst), "--backend",
                        backend, "--overwrite", "--no-progress", "--chunk-size", "1000", "--batch-size", "32"]
        if int8:
            cmd.append("--int8")
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise RuntimeError(f"{name}: {res.stderr[-2000:]}")
        said = (res.stdout + res.stderr).replace("\n", " ")  # the summary line goes to the console (stdout)
        m = re.search(r"scored\s+(\d+)\s+responses.*?\(([\d.]+)\s+responses/s", said)  # rich wraps lines
        if m is None:
            raise RuntimeError(f"{name}: no summary line in the output: {said[-500:]}")
        out[name] = {"responses": int(m.group(1)), "responses_per_s": float(m.group(2)), "wall_s": round(wall, 2)}
        print(f"  predict {name}: {out[name]}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------------
# server latency
# --------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _start_server(cmd: list[str], port: int, log: Path) -> tuple[subprocess.Popen, float]:
    import httpx

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            time.sleep(0.1)
        if time.perf_counter() - t0 > 600:
            proc.kill()
            raise RuntimeError("server did not start within 600 s")


async def _load(port: int, items: list[dict[str, str]], concurrency: int, n: int, tag: str,
                timeout_s: float) -> dict[str, Any]:
    """Bounded load: exactly ``n`` requests, at most ``concurrency`` in flight, each with a deadline."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout_s, limits=limits) as c:
        async def one(i: int) -> None:
            it = dict(items[i % len(items)])
            it["response_id"] = f"{tag}-{i}"
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/score", json={"items": [it]})
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}")
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                lat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    lat_ms = sorted(x * 1000 for x in lat)

    def q(p: float) -> float:
        return round(lat_ms[min(len(lat_ms) - 1, int(round(p * (len(lat_ms) - 1))))], 1)

    return {"requests": n, "errors": len(errors), "error_kinds": sorted(set(errors))[:5], "p50_ms": q(0.50),
            "p95_ms": q(0.95), "p99_ms": q(0.99), "mean_ms": round(statistics.mean(lat_ms), 1),
            "requests_per_s": round(n / wall, 1)}


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench_server(cmd: list[str], port: int, work: Path, items: list[dict[str, str]], name: str,
                 plan: dict[int, int]) -> dict[str, Any]:
    log = work / f"server-{name}.log"
    proc, load_s = _start_server(cmd, port, log)
    out: dict[str, Any] = {"load_s": round(load_s, 2), "rss_after_load_mb": round(_vm_hwm_mb(proc.pid), 1)}
    try:
        asyncio.run(_load(port, items, 2, 20, f"{name}-warm", 60))
        for conc, n in plan.items():
            out[f"c{conc}"] = asyncio.run(_load(port, items, conc, n, f"{name}-c{conc}", 120))
            print(f"  {name} c={conc}: {out[f'c{conc}']}", flush=True)
        out["peak_rss_mb"] = round(_vm_hwm_mb(proc.pid), 1)
    finally:
        _stop(proc)
    return out


def server_memory(cmd: list[str], port: int, work: Path, items: list[dict[str, str]], name: str,
                  warm: int = 200) -> dict[str, Any]:
    """Peak RSS of one server after start-up and ``warm`` requests at concurrency 8 (no latency runs)."""
    proc, load_s = _start_server(cmd, port, work / f"server-{name}.log")
    try:
        if warm:
            asyncio.run(_load(port, items, 8, warm, f"{name}-mem", 120))
        return {"load_s": round(load_s, 2), "peak_rss_mb": round(_vm_hwm_mb(proc.pid), 1)}
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------------------------
# the Individual set: one model per task behind the same server code
# --------------------------------------------------------------------------------------------------------
class IndividualScorer:
    """Routes each response to its task's own Scorer (all loaded at start), same Scorer contract."""

    def __init__(self, root: Path, backend: str, quantize: bool, threads: int | None = None) -> None:
        from rubricate.student.scorer import Scorer
        from rubricate.tasks import TaskRegistry

        self.scorers = {d.name: Scorer.from_pretrained(d, backend=backend, quantize=quantize,  # type: ignore[arg-type]
                                                       num_threads=threads)
                        for d in sorted(root.iterdir()) if (d / "config.json").exists()}
        self.tasks = TaskRegistry([s.tasks.get(t) for t, s in self.scorers.items()])
        self.model_id, self.model_version, self.backend = "individual-set", "bench", backend

    def predict(self, task_ids, texts, batch_size=64, response_ids=None):
        out: list[Any] = [None] * len(texts)
        for tid in dict.fromkeys(task_ids):
            idx = [i for i, t in enumerate(task_ids) if t == tid]
            preds = self.scorers[tid].predict([tid] * len(idx), [texts[i] for i in idx], batch_size,
                                              None if response_ids is None else [response_ids[i] for i in idx])
            for i, p in zip(idx, preds):
                out[i] = p
        return out


def serve_individual(root: Path, port: int, db_url: str, backend: str, int8: bool, threads: int | None) -> None:
    import uvicorn

    from rubricate.serve.app import create_app
    from rubricate.serve.settings import ServeSettings

    scorer = IndividualScorer(root, backend, int8, threads)
    uvicorn.run(create_app(ServeSettings(database_url=db_url), scorer=scorer), host="127.0.0.1", port=port,
                log_level="warning")


# --------------------------------------------------------------------------------------------------------
def _markdown(r: dict[str, Any]) -> str:
    t = r["predict"]
    s, ind = r["server"], r.get("individual")
    lines = [
        "# Serving benchmark",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']}  ",
        f"Date: {r['date']}; total run time {r['total_s']:.0f} s  ",
        f"Model: {r['model']}  ",
        f"Data: {r['n_responses']} ASAP-SAS responses (all 10 items, shuffled with seed 0).",
        "",
        f"Load average (1 min) at start / end: {r['loadavg'][0]:.1f} / {r['loadavg'][1]:.1f} "
        "(above the core count means other work shared the CPUs: timings are then pessimistic).",
        "",
        "## Export steps (in-process Scorer, ONNX, batch 32; QWK on the split's test rows)",
        "",
        "| step | file MB | responses/s | max abs dprob vs fp32 (test rows) | parity max abs dprob (export) | "
        "test QWK (mean of items) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {x['step']} | {x['size_mb']:.1f} | {x['responses_per_s']:.1f} | {x['max_abs_dprob_vs_fp32']:.4f} | "
          f"{x['parity_max_abs_dprob']:.4f} | {x['qwk_mean']:.4f} |" for x in r.get("steps") or []],
        "",
        "## Batch scoring throughput (`rubricate predict`, JSONL -> CSV, batch 32)",
        "",
        "| backend | responses/s | wall time incl. start-up (s) |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {k} | {v['responses_per_s']:.1f} | {v['wall_s']:.1f} |" for k, v in t.items()]
    lines += ["", f"Target: ONNX int8 >= {TARGETS['onnx_int8_rps']:.0f} responses/s -> "
              f"**{'met' if t['onnx int8']['responses_per_s'] >= TARGETS['onnx_int8_rps'] else 'NOT met'}** "
              f"({t['onnx int8']['responses_per_s']:.1f}).", "",
              f"ONNX parity (export report): max |dprob| fp32 {r['export']['max_abs_dprob_fp32']:.1e}, int8 "
              f"{r['export']['max_abs_dprob_int8']:.4f}; sizes {r['export']['size_mb']} MB.", "",
              f"## `/v1/score` latency, one response per request ({r['server_backend']}, SQLite, loopback)", "",
              "| server | concurrency | requests | errors | p50 ms | p95 ms | p99 ms | requests/s |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, block in (("student", s), ("Individual set", ind)):
        if not block:
            continue
        for k, v in block.items():
            if k.startswith("c") and isinstance(v, dict):
                lines.append(f"| {label} | {k[1:]} | {v['requests']} | {v['errors']} | {v['p50_ms']} | {v['p95_ms']} | "
                             f"{v['p99_ms']} | {v['requests_per_s']} |")
    lines += ["", "## Memory and start-up", "", "| server | models loaded | start-up to /healthz (s) | peak RSS (MB) |",
              "| --- | ---: | ---: | ---: |", f"| student | 1 | {s['load_s']} | {s['peak_rss_mb']} |"]
    if ind:
        lines.append(f"| Individual set | {ind['n_models']} | {ind['load_s']} | {ind['peak_rss_mb']} |")
    mem = r.get("memory")
    if mem:
        base = mem["empty_server"]["peak_rss_mb"]
        lines += ["", "### Peak RSS by precision (start-up + 200 requests at concurrency 8)", "",
                  f"An empty server (same app, no model, so no ONNX Runtime either) peaks at {base} MB: Python, "
                  "FastAPI, SQLAlchemy, Alembic and NumPy. That fixed part is paid once by either deployment, so the "
                  "whole-process ratio cannot fall below it; the last column divides what the models add on top.",
                  "", "| ONNX precision | student (MB) | Individual set (MB) | ratio | student - empty | "
                  "Individual - empty | model-memory ratio |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for prec, m in mem["by_precision"].items():
            st, iv = m["student"]["peak_rss_mb"], m["individual"]["peak_rss_mb"]
            lines.append(f"| {prec} | {st} | {iv} | {st / iv:.2f} | {st - base:.0f} | {iv - base:.0f} | "
                         f"{(st - base) / (iv - base):.2f} |")
    lines += ["", "## Targets", ""]
    c1, c32 = s.get("c1", {}), s.get("c32", {})
    T = TARGETS
    int8_mb = r["export"]["size_mb"].get("model.int8.onnx", 1e9)
    checks = [(f"ONNX int8 batch scoring >= {T['onnx_int8_rps']:.0f} responses/s",
               t["onnx int8"]["responses_per_s"] >= T["onnx_int8_rps"], f"{t['onnx int8']['responses_per_s']:.1f}/s"),
              (f"p50 <= {T['p50_ms_c1']:.0f} ms at concurrency 1", c1.get("p50_ms", 1e9) <= T["p50_ms_c1"],
               f"{c1.get('p50_ms')} ms"),
              (f"concurrency 32: >= {T['rps_c32']:.0f} requests/s, p99 <= {T['p99_ms_c32']:.0f} ms, 0 errors in "
               f"{c32.get('requests')}", c32.get("requests_per_s", 0) >= T["rps_c32"]
               and c32.get("p99_ms", 1e9) <= T["p99_ms_c32"] and c32.get("errors", 1) == 0,
               f"{c32.get('requests_per_s')}/s, p99 {c32.get('p99_ms')} ms, {c32.get('errors')} errors"),
              (f"int8 file <= {T['int8_mb']:.0f} MB", int8_mb <= T["int8_mb"], f"{int8_mb:.1f} MB"),
              (f"server peak RSS <= {T['server_rss_mb']:.0f} MB", s["peak_rss_mb"] <= T["server_rss_mb"],
               f"{s['peak_rss_mb']} MB"),
              (f"start-up to /healthz <= {T['startup_s']} s", s["load_s"] <= T["startup_s"], f"{s['load_s']} s")]
    if ind:
        ratio = s["peak_rss_mb"] / ind["peak_rss_mb"]
        checks.append(("student RSS <= 1/5 of the Individual set's", ratio <= 0.2,
                       f"ratio {ratio:.2f} with {r['server_backend']}" + "".join(
                           f"; {p}: {m['student']['peak_rss_mb'] / m['individual']['peak_rss_mb']:.2f}"
                           for p, m in (r.get("memory") or {}).get("by_precision", {}).items())))
    lines += [f"- {name}: **{'met' if ok else 'NOT met'}** ({val})" for name, ok, val in checks]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(TRAINED), help="trained student checkpoint (copied, then exported), or "
                    "'untrained' to build an untrained-head one")
    ap.add_argument("--quick", action="store_true", help="smoke run: 300 responses, 1:50,32:200 requests, 300 "
                    "test rows for the steps, no Individual set or memory runs")
    ap.add_argument("--skip-steps", action="store_true", help="skip the per-step export table")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="the student server's dynamic batching window "
                    "(default: ServeSettings.max_wait_ms)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rubricate-bench-serving"))
    ap.add_argument("--n-predict", type=int, default=2000, help="responses for the throughput runs")
    ap.add_argument("--requests", type=str, default="1:300,8:600,32:2000", help="concurrency:requests,...")
    ap.add_argument("--server-backend", default="onnx-int8", choices=["onnx-int8", "onnx-fp32", "torch-fp32"])
    ap.add_argument("--threads", type=int, default=None, help="model threads (default: all cores)")
    ap.add_argument("--skip-individual", action="store_true")
    ap.add_argument("--skip-memory", action="store_true", help="skip the per-precision peak-RSS comparison")
    ap.add_argument("--out-md", type=Path, default=REPO / "docs" / "benchmarks" / "serving.md")
    ap.add_argument("--out-json", type=Path, default=REPO / "docs" / "benchmarks" / "serving.json")
    ap.add_argument("--serve-individual", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.n_predict, args.requests, args.skip_individual, args.skip_memory = 300, "1:50,32:200", True, True
    backend, _, prec = args.server_backend.partition("-")
    if args.serve_individual:  # internal: the Individual-set server process
        serve_individual(args.serve_individual, args.port, args.db, backend, prec == "int8", args.threads)
        return

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if not (SHARED / "asap-sas" / "train.tsv").exists():
        sys.exit(f"ASAP-SAS not found under {SHARED} (set RUBRICATE_SHARED_DATA)")
    task_ids = [f"asap-sas-{i}" for i in range(1, 11)]
    if args.model != "untrained":
        model, model_desc = work / "student-trained", f"trained checkpoint {args.model}"
        if not (model / "config.json").exists():  # the checkpoint stays read-only: export a copy
            shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("onnx"))
    else:
        model = work / "student"
        if not (model / "config.json").exists():
            print("building the untrained-head MiniLM student ...", flush=True)
            _save_untrained(model, task_ids, True, "bench-minilm-moe")
        model_desc = "MiniLM-L6 + MoE (4 experts x 2 layers) + 10 heads, untrained heads (speed/memory only)"
    steps = None
    if not args.skip_steps and args.model != "untrained":
        print("export steps ...", flush=True)
        steps = bench_steps(model, work, args.threads, 300 if args.quick else None)
    print("exporting ONNX fp32 + int8 ...", flush=True)
    export = _export(model)

    data = _responses(args.n_predict)
    inp = work / "responses.jsonl"
    inp.write_text("".join(json.dumps(d) + "\n" for d in data), encoding="utf-8")
    print("throughput of rubricate predict ...", flush=True)
    predict = bench_predict(model, inp, work, args.threads)

    plan = {int(a): int(b) for a, b in (p.split(":") for p in args.requests.split(","))}
    db_path = work / "bench.db"
    for p in work.glob("bench*.db*"):
        p.unlink()
    port = _free_port()
    cmd = _cli() + ["serve", "--model", str(model), "--db", f"sqlite:///{db_path}", "--port", str(port),
                    "--backend", backend] + (["--int8"] if prec == "int8" else []) + \
        (["--threads", str(args.threads)] if args.threads else []) + \
        (["--max-wait-ms", str(args.max_wait_ms)] if args.max_wait_ms is not None else [])
    print("server latency (student) ...", flush=True)
    server = bench_server(cmd, port, work, data, "student", plan)

    individual = None
    if not args.skip_individual:
        root = work / "individual"
        for t in task_ids:
            d = root / t
            if not (d / "config.json").exists():
                print(f"building individual model {t} ...", flush=True)
                _save_untrained(d, [t], False, f"individual-{t}")
            if backend == "onnx":
                _export(d)
        port = _free_port()
        db2 = work / "bench-individual.db"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-individual", str(root), "--port", str(port),
               "--db", f"sqlite:///{db2}", "--server-backend", args.server_backend] + \
            (["--threads", str(args.threads)] if args.threads else [])
        print("server latency (Individual set) ...", flush=True)
        individual = bench_server(cmd, port, work, data, "individual", plan)
        individual["n_models"] = len(task_ids)

    memory = None
    if not args.skip_individual and not args.skip_memory and backend == "onnx":
        print("peak RSS by precision ...", flush=True)
        port = _free_port()
        memory = {"empty_server": server_memory(_cli() + ["serve", "--db", f"sqlite:///{work / 'bench-empty.db'}",
                                                          "--port", str(port)], port, work, data, "empty", warm=0),
                  "by_precision": {}}
        for p in ("int8", "fp32"):
            flag = ["--int8"] if p == "int8" else ["--fp32"]
            thr = ["--threads", str(args.threads)] if args.threads else []
            port = _free_port()
            st = server_memory(_cli() + ["serve", "--model", str(model), "--db", f"sqlite:///{work / 'bench-mem.db'}",
                                         "--port", str(port), "--backend", "onnx"] + flag + thr,
                               port, work, data, f"student-{p}")
            port = _free_port()
            iv = server_memory([sys.executable, str(Path(__file__).resolve()), "--serve-individual",
                                str(work / "individual"), "--port", str(port), "--db",
                                f"sqlite:///{work / 'bench-mem-ind.db'}", "--server-backend", f"onnx-{p}"] + thr,
                               port, work, data, f"individual-{p}")
            memory["by_precision"][p] = {"student": st, "individual": iv}
            print(f"  {p}: student {st['peak_rss_mb']} MB, Individual set {iv['peak_rss_mb']} MB", flush=True)

    import multiprocessing

    result = {
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} cores, "
                   f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "model": model_desc, "n_responses": len(data),
        "export": export, "steps": steps, "predict": predict, "server_backend": args.server_backend, "server": server,
        "individual": individual, "memory": memory, "total_s": time.perf_counter() - t_start,
        "loadavg": [load_start, os.getloadavg()[0]],
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    args.out_md.write_text(_markdown(result), encoding="utf-8")
    print(_markdown(result))
    if args.model == "untrained" and os.environ.get("RUBRICATE_BENCH_CLEAN"):
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
