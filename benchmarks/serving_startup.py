"""Start-up to a healthy ``/healthz``, repeated, for one or more exported checkpoints (issue 17's 1.5 s target).

    python benchmarks/serving_startup.py DIR [DIR ...] --repeats 5 [--int8] [--out results.json]

``benchmarks/serving.py`` measures start-up once per run, which cannot separate a graph's cost from a slow run;
this script alternates the given checkpoints ``--repeats`` times (A B A B ...) so that both see the same
machine, and prints each start-up, the median and the range. Each DIR is a student checkpoint with ``onnx/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import _cli, _start_server, _stop  # noqa: E402  (the same start and stop as the full benchmark)


def measure(models: list[Path], repeats: int, int8: bool, port: int) -> dict[str, list[float]]:
    """Seconds from process start to ``/healthz`` 200, per model, alternating models each round."""
    times: dict[str, list[float]] = {str(m): [] for m in models}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for m in models:
                db = Path(tmp) / f"s{r}.db"
                cmd = _cli() + ["serve", "--model", str(m), "--db", f"sqlite:///{db}", "--port", str(port),
                                "--backend", "onnx"] + (["--int8"] if int8 else [])
                proc, seconds = _start_server(cmd, port, Path(tmp) / "server.log")
                _stop(proc)
                times[str(m)].append(round(seconds, 3))
                print(f"  round {r} {m.name}: {seconds:.3f} s", flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--int8", action="store_true", help="serve the int8 graph (as benchmarks/serving.py does)")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    times = measure(args.models, args.repeats, args.int8, args.port)
    load = os.getloadavg()[0]
    summary = {m: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t), "runs": t}
               for m, t in times.items()}
    for m, s in summary.items():
        print(f"{m}: median {s['median_s']:.3f} s (range {s['min_s']:.3f}-{s['max_s']:.3f}), {args.repeats} runs")
    print(f"load average (1 min) at the end: {load:.2f}")
    if args.out:
        args.out.write_text(json.dumps({"int8": args.int8, "load_end": load, "models": summary}, indent=2))


if __name__ == "__main__":
    main()
