"""Resident memory of ONNX Runtime sessions, one process per setting (where a server's RSS goes).

    python benchmarks/onnx_memory.py --models runs/student/onnx/model.int8.onnx
    python benchmarks/onnx_memory.py --models /tmp/rubricate-bench-serving/individual/*/onnx/model.int8.onnx
    python benchmarks/onnx_memory.py --imports          # RSS added by each library the server imports

Each setting runs in a fresh subprocess: import NumPy + ONNX Runtime (the baseline), build one session per
model with the chosen options, run requests of 1x60, 8x100 and 1x20 tokens through each, and print VmRSS and
VmHWM (peak) from ``/proc/self/status`` after loading and after the requests, as one JSON line per setting.
Options compared: ``default`` (what ``OnnxEngine`` uses), ``noarena`` (CPU memory arena off), ``noarena-noprepack``
(also no weight pre-packing).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

SETTINGS = ("default", "noarena", "noarena-noprepack")

CHILD = r"""
import json, sys
def rss():
    d = {}
    for line in open('/proc/self/status'):
        if line.startswith(('VmRSS', 'VmHWM')):
            d[line.split(':')[0]] = round(int(line.split()[1]) / 1024, 1)
    return d
import numpy as np, onnxruntime as ort
setting, paths = sys.argv[1], sys.argv[2:]
base = rss()
sessions = []
for p in paths:
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads = 2
    if 'noarena' in setting:
        o.enable_cpu_mem_arena = False
    if 'noprepack' in setting:
        o.add_session_config_entry('session.disable_prepacking', '1')
    sessions.append(ort.InferenceSession(p, sess_options=o, providers=['CPUExecutionProvider']))
loaded = rss()
rng = np.random.default_rng(0)
for s in sessions:
    names = {i.name for i in s.get_inputs()}
    for b, t in ((1, 60), (8, 100), (1, 20)):
        feeds = {'input_ids': rng.integers(1000, 2000, (b, t)).astype(np.int64),
                 'attention_mask': np.ones((b, t), np.int64), 'task_index': np.zeros(b, np.int64)}
        s.run(None, {k: v for k, v in feeds.items() if k in names})
print(json.dumps({'setting': setting, 'sessions': len(sessions), 'baseline': base, 'loaded': loaded,
                  'after_requests': rss()}))
"""

IMPORTS = r"""
import json
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
start = rss()
steps, last = {}, start
for name, stmt in [('numpy', 'import numpy'), ('onnxruntime', 'import onnxruntime'),
                   ('tokenizers', 'import tokenizers'), ('fastapi + uvicorn', 'import fastapi, uvicorn'),
                   ('sqlalchemy', 'import sqlalchemy, sqlalchemy.orm'), ('alembic', 'import alembic, alembic.command'),
                   ('jinja2', 'import jinja2'),
                   ('rubricate.serve', 'import rubricate.serve.app, rubricate.serve.service, rubricate.cli')]:
    exec(stmt)
    now = rss()
    steps[name] = round(now - last, 1)
    last = now
print(json.dumps({'python_start_mb': round(start, 1), 'added_mb': steps, 'total_mb': round(last, 1)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=[], help="ONNX files, all loaded into one process")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--imports", action="store_true", help="measure the server's import costs instead")
    a = ap.parse_args()
    if a.imports:
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)
        return 0
    if not a.models:
        ap.error("--models or --imports")
    for setting in a.settings.split(","):
        subprocess.run([sys.executable, "-c", CHILD, setting, *a.models], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
