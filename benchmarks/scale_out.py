"""Scale-out benchmark: rows/s of ``predict`` on the local engine vs Ray with 1 and 2 actors, per-actor overhead.

    python benchmarks/scale_out.py                       # the trained ten-item student, 20 000 responses
    python benchmarks/scale_out.py --rows 2000 --smoke   # a quick check that every configuration runs

What it measures, on ASAP-SAS responses (``shared/data/asap-sas/train.tsv``, repeated to ``--rows``), with the
ONNX int8 graph of a student checkpoint (exported into a copy of ``--model`` when it has none):

* **local**: :func:`rubricate.batch.predict_file` in this process, one ONNX Runtime thread (the per-core rate)
  and all cores;
* **ray, 1 and 2 actors**: :func:`rubricate.batch.ray_engine.predict_on_ray` on a local Ray started by the
  script (``num_cpus`` = this machine's cores), one thread per actor. Reported: scoring rows/s as the run
  reports it (from the first read to the last commit, actor start-up included), the wall time, and per
  actor the start-up seconds (Scorer load) and the peak RSS.

On a 2-core machine the 2-actor run can at best double the 1-actor rate, and only when nothing else runs:
Ray's own processes (GCS, raylet, read tasks) share the same two cores. The per-core rate is what the 1 M
estimate in ``docs/scale-out.md`` scales. Results: a JSON file and ``docs/benchmarks/scale_out.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RUBRICATE_SHARED_DATA", REPO.parent / "shared" / "data"))
DEFAULT_MODEL = REPO / "runs" / "bench_ten" / "runs" / "unimoe-soft"


def exported_copy(model: Path, work: Path) -> Path:
    """``model`` itself when it has the int8 graph, else a copy of it with one (the original is never written)."""
    if (model / "onnx" / "model.int8.onnx").exists():
        return model
    from rubricate.student.export import export_checkpoint

    dst = work / "model"
    shutil.copytree(model, dst)
    export_checkpoint(dst, int8=True)
    return dst


def write_input(path: Path, rows: int) -> Path:
    """ASAP-SAS responses (all ten items) repeated to ``rows`` rows of JSONL with unique ids."""
    from rubricate.data.loaders import load_asap_sas

    recs = load_asap_sas(SHARED / "asap-sas" / "train.tsv")
    with path.open("w", encoding="utf-8") as f:
        for i in range(rows):
            r = recs[i % len(recs)]
            f.write(json.dumps({"task_id": r.task_id, "text": r.text, "response_id": f"{r.response_id}-{i}"}) + "\n")
    return path


def run_local(model: Path, inp: Path, out: Path, threads: int, chunk: int) -> dict[str, Any]:
    from rubricate.batch import PredictOptions, predict_file
    from rubricate.student.scorer import Scorer

    t0 = time.perf_counter()
    scorer = Scorer.from_pretrained(model, backend="onnx", quantize=True, num_threads=threads)
    load = time.perf_counter() - t0
    s = predict_file(scorer, inp, out, PredictOptions(chunk_size=chunk, progress=False))
    return {"engine": "local", "threads": threads, "rows_per_s": s.responses_per_s, "scored": s.scored,
            "wall_s": time.perf_counter() - t0, "startup_s": load}


def run_ray(model: Path, inp: Path, out: Path, workers: int, chunk: int) -> dict[str, Any]:
    from rubricate.batch import PredictOptions
    from rubricate.batch.ray_engine import RayPredictOptions, predict_on_ray

    t0 = time.perf_counter()
    s = predict_on_ray(model, inp, out, PredictOptions(chunk_size=chunk, progress=False),
                       RayPredictOptions(workers=workers, threads_per_actor=1))
    return {"engine": "ray", "actors": workers, "rows_per_s": s.responses_per_s, "scored": s.scored,
            "wall_s": time.perf_counter() - t0, "per_actor": s.actors}


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Scale-out: local vs Ray ({res['rows']} ASAP-SAS responses, ONNX int8)", "",
             f"Machine: {res['machine']}; {res['cpus']} cores; load average (1/5/15 min) before the runs "
             f"{' / '.join(f'{x:.2f}' for x in res['load_before'])}.", "",
             "| engine | threads / actors | rows/s | wall s | actor start-up s | actor peak RSS MB |",
             "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        acts = r.get("per_actor", [])
        start = ", ".join(f"{a['startup_s']:.1f}" for a in acts) or f"{r.get('startup_s', 0):.1f}"
        rss = ", ".join(f"{a['rss_mb']:.0f}" for a in acts) or "-"
        who = f"{r['threads']} thread(s)" if r["engine"] == "local" else f"{r['actors']} actor(s)"
        lines.append(f"| {r['engine']} | {who} | {r['rows_per_s']:.1f} | {r['wall_s']:.1f} | {start} | {rss} |")
    lines += ["", "rows/s: scored rows over the scoring time the run reports (local: model loaded before; "
              "Ray: from the first block read to the last commit, actor start-up included)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--chunk-size", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="do not write docs/benchmarks/scale_out.md")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks" / "scale_out.json")
    args = ap.parse_args()
    import ray

    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="scale-out-"))
    try:
        model = exported_copy(args.model, work)
        inp = write_input(work / "in.jsonl", args.rows)
        res: dict[str, Any] = {"rows": args.rows, "cpus": cpus, "machine": platform.platform(),
                               "load_before": os.getloadavg(), "model": str(args.model), "runs": []}
        for threads in sorted({1, cpus}):
            res["runs"].append(run_local(model, inp, work / f"local-{threads}.parquet", threads, args.chunk_size))
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="warning")
        for workers in (1, 2):
            res["runs"].append(run_ray(model, inp, work / f"ray-{workers}", workers, args.chunk_size))
        ray.shutdown()
        print(json.dumps(res, indent=1))
        if not args.smoke:
            args.out.write_text(json.dumps(res, indent=1), encoding="utf-8")
            args.out.with_suffix(".md").write_text(markdown(res), encoding="utf-8")
        else:
            print(markdown(res))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
