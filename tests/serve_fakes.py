"""Test doubles for the serving tests: two small tasks, a deterministic scorer, a fake agents runner.

The fake scorer follows the Scorer contract (docs/DEVELOPING.md) and decodes with the real
LabelEncoding, so scores, distributions and confidence are consistent; texts containing "unsure" get
probabilities near 0.5 (low confidence), so tests can steer what enters the review queue.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rubricate.labels import LabelEncoding
from rubricate.tasks import TaskRegistry, task_from_dict

TASKS = [
    {"id": "sci-1", "title": "Gas densities", "question": "Which gases could be the same substance? Explain.",
     "rubric": {"criteria": [{"id": "E1", "description": "States that gas A and D could be the same"},
                             {"id": "E2", "description": "Uses density as the evidence"}],
                "scales": [{"id": "score", "min": 0, "max": 2,
                            "levels": [{"score": 0, "description": "Neither"}, {"score": 1, "description": "One"},
                                       {"score": 2, "description": "Both"}]}],
                "components": [{"id": "same_gas", "description": "A and D named as the same", "type": "boolean"}]}},
    {"id": "read-2", "title": "Reading", "question": "What is the main idea of the passage?",
     "rubric": {"scales": [{"id": "score", "min": 0, "max": 3}]}},
]


def registry() -> TaskRegistry:
    return TaskRegistry([task_from_dict(t) for t in TASKS])


@dataclass
class FakePrediction:
    task_id: str
    response_id: str | None
    scores: dict[str, int]
    probs: dict[str, float]
    score_distribution: dict[str, list[float]]
    confidence: float
    gate_weights: list[list[float]] = field(default_factory=list)
    model_id: str = ""
    model_version: str = ""


class FakeScorer:
    model_id = "fake-student"
    model_version = "v1"
    backend = "fake"

    def __init__(self) -> None:
        self.tasks = registry()
        self.encodings = {t.id: LabelEncoding.from_task(t) for t in self.tasks}
        self.calls = 0

    def predict(self, task_ids, texts, batch_size=64, response_ids=None) -> list[FakePrediction]:
        self.calls += 1
        out = []
        for i, (tid, text) in enumerate(zip(task_ids, texts)):
            enc = self.encodings[tid]
            h = hashlib.sha256(text.encode("utf-8")).digest()
            if "unsure" in text.lower():
                p = np.array([0.45 + 0.1 * (h[j] / 255) for j in range(enc.n_labels)])
            else:
                p = np.array([0.02 + 0.96 * (h[j] > 127) for j in range(enc.n_labels)])
            scores = {k: int(v[0]) for k, v in enc.decode_scores(p[None, :]).items()}
            dist = {s.id: [float(x) for x in enc.score_distribution(p[None, :], s.id)[0]] for s in enc.scales}
            parts = [max(d) for d in dist.values()] + [max(p[j], 1 - p[j]) for j, s in enumerate(enc.specs)
                                                       if s.kind == "criterion"]
            out.append(FakePrediction(tid, None if response_ids is None else response_ids[i], scores,
                                      {n: float(p[j]) for j, n in enumerate(enc.names)}, dist, float(min(parts)),
                                      [[0.7, 0.3], [0.4, 0.6]], self.model_id, self.model_version))
        return out


class ZeroScorer(FakeScorer):
    """Always scores 0 on the main scale: with agents that score higher, every response is a disagreement."""

    def predict(self, task_ids, texts, batch_size=64, response_ids=None) -> list[FakePrediction]:
        out = super().predict(task_ids, texts, batch_size, response_ids)
        for p in out:
            p.scores = {**p.scores, "score": 0}
        return out


def serve_in_thread(app, log_level: str = "warning"):
    """Run ``app`` with uvicorn on a free loopback port in a daemon thread: ``(server, thread, base_url)``."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.02)
    return srv, th, f"http://127.0.0.1:{port}"


def fake_agent_runner(score_offset: int = 1):
    """An agents runner that quotes the first 3 words as evidence and scores student+offset (capped)."""

    def run(task, records, mode):
        out = []
        for r in records:
            words = r.text.split()
            quote = " ".join(words[:3])
            scale = task.primary_scale
            score = min(scale.max, (len(words) % (scale.max + 1)) + score_offset) if scale else None
            out.append({"task_id": r.task_id, "response_id": r.response_id, "status": "ok", "score": score,
                        "scores": {scale.id: score} if scale else {},
                        "components": {"same_gas": {"value": True, "evidence": [quote], "grounded": [True]}},
                        "grounding_rate": 1.0, "mode": mode, "backend": "fake", "model": "fake-llm",
                        "raw_outputs": {"extract": "{}"}})
        return out

    return run


def make_tiny_checkpoint(root, steps: int = 2):
    """A real student checkpoint over the two test tasks: tiny random BERT, trained for a few steps."""
    from pathlib import Path

    from rubricate.data.records import Record
    from tiny_models import make_tiny_encoder
    from rubricate.student.trainer import TrainingArguments, train

    root = Path(root)
    enc = make_tiny_encoder(root / "encoder")
    reg = registry()
    recs = []
    for i in range(12):
        recs.append(Record(f"s{i}", "sci-1", f"gas a and d have the same density {i}",
                           {"E1": i % 2, "E2": (i // 2) % 2, "score": i % 2 + (i // 2) % 2}))
        recs.append(Record(f"r{i}", "read-2", f"the main idea is energy and water {i}", {"score": i % 4}))
    args = TrainingArguments(method="unimoe", encoder=str(enc), output_dir=str(root / "student"), max_steps=steps,
                             batch_size=8,
                             epochs=1, max_length=64, n_experts=2, n_moe_layers=2, gate_hidden=16, task_emb_dim=8,
                             head_hidden=16, progress=False, num_threads=1)
    return Path(train(args, registry=reg, train_records=recs).checkpoint_dir)
