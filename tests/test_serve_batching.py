"""Dynamic batching (serve/batcher.py): concurrent /v1/score requests share forward passes, each still gets
exactly its own results, and one failing request does not fail the others gathered with it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rubricate.serve.app import create_app
from rubricate.serve.batcher import Batcher
from rubricate.serve.settings import ServeSettings
from serve_fakes import FakeScorer

N_CLIENTS = 16


class SlowScorer(FakeScorer):
    """A forward pass with a fixed cost (so requests pile up) that fails on a text containing 'boom'."""

    def __init__(self, delay_s: float = 0.03) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.sizes: list[int] = []

    def predict(self, task_ids, texts, batch_size=64, response_ids=None):
        self.sizes.append(len(texts))
        time.sleep(self.delay_s)
        if any("boom" in t for t in texts):
            raise RuntimeError("the model failed on this batch")
        return super().predict(task_ids, texts, batch_size, response_ids)


def _client(tmp_path: Path, name: str, scorer: FakeScorer, **kw) -> TestClient:
    settings = ServeSettings(database_url=f"sqlite:///{tmp_path}/{name}.db", **kw)
    return TestClient(create_app(settings, scorer=scorer), raise_server_exceptions=False)


def _item(i: int, text: str | None = None) -> dict:
    return {"task_id": "sci-1" if i % 2 else "read-2", "text": text or f"answer number {i} about density",
            "response_id": f"r{i}"}


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("prediction_id", "review_id")}


def test_batcher_gives_each_caller_its_own_results_in_order() -> None:
    calls: list[int] = []

    def double(xs: list[int]) -> list[int]:
        calls.append(len(xs))
        time.sleep(0.02)
        return [2 * x for x in xs]

    b = Batcher(double, max_wait_ms=20, max_items=64)
    with ThreadPoolExecutor(N_CLIENTS) as pool:
        got = list(pool.map(lambda i: b.submit([i, i + 100, i + 200]), range(N_CLIENTS)))
    assert got == [[2 * i, 2 * (i + 100), 2 * (i + 200)] for i in range(N_CLIENTS)]
    assert len(calls) < N_CLIENTS and max(calls) > 3  # requests were gathered
    assert max(calls) <= 64


def test_batcher_isolates_the_failing_request() -> None:
    def fn(xs: list[int]) -> list[int]:
        time.sleep(0.01)
        if -1 in xs:
            raise ValueError("bad item")
        return xs

    b = Batcher(fn, max_wait_ms=20, max_items=64)
    barrier = threading.Barrier(8)

    def call(i: int):
        barrier.wait()
        try:
            return b.submit([-1] if i == 3 else [i])
        except ValueError as e:
            return str(e)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(call, range(8)))
    assert got == [[i] if i != 3 else "bad item" for i in range(8)]


def test_lone_request_does_not_wait() -> None:
    b = Batcher(lambda xs: xs, max_wait_ms=500, max_items=8)
    t0 = time.perf_counter()
    assert b.submit([1]) == [1]
    assert time.perf_counter() - t0 < 0.25


def test_concurrent_requests_equal_single_requests(tmp_path: Path) -> None:
    """16 threads at once through the batcher = the same items one by one without it (and fewer forwards)."""
    items = [_item(i) for i in range(N_CLIENTS)]
    with _client(tmp_path, "alone", FakeScorer(), max_wait_ms=0) as c:
        alone = [_strip(c.post("/v1/score", json={"items": [it]}).json()["results"][0]) for it in items]
    scorer = SlowScorer()
    with _client(tmp_path, "batched", scorer, max_wait_ms=20) as c:
        with ThreadPoolExecutor(N_CLIENTS) as pool:
            replies = list(pool.map(lambda it: c.post("/v1/score", json={"items": [it]}), items))
        assert all(r.status_code == 200 for r in replies)
        batched = [_strip(r.json()["results"][0]) for r in replies]
        # stored before the reply: every response is readable as soon as its request returned
        replay = [_strip(c.post("/v1/score", json={"items": [it]}).json()["results"][0]) for it in items]
    assert batched == alone and replay == alone
    assert len(scorer.sizes) < N_CLIENTS and max(scorer.sizes) > 1


def test_a_failing_request_does_not_fail_its_neighbours(tmp_path: Path) -> None:
    scorer = SlowScorer()
    items = [_item(i, "boom" if i == 5 else None) for i in range(N_CLIENTS)]
    with _client(tmp_path, "boom", scorer, max_wait_ms=20) as c:
        barrier = threading.Barrier(N_CLIENTS)

        def post(it: dict):
            barrier.wait()
            return c.post("/v1/score", json={"items": [it]})

        with ThreadPoolExecutor(N_CLIENTS) as pool:
            replies = list(pool.map(post, items))
    codes = [r.status_code for r in replies]
    assert codes[5] >= 500 and all(code == 200 for i, code in enumerate(codes) if i != 5)
    for it, r in zip(items, replies):
        if r.status_code == 200:
            assert r.json()["results"][0]["response_id"] == it["response_id"]


@pytest.mark.parametrize("wait", [0, 2.0])
def test_max_wait_ms_is_a_setting(wait: float) -> None:
    assert ServeSettings(max_wait_ms=wait).max_wait_ms == wait
    with pytest.raises(ValueError):
        ServeSettings(max_wait_ms=-1)
