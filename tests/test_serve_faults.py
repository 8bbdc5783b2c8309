"""A failing disk under load: four clients keep scoring while the SQLite database is write-protected or
its directory removed. Nothing may be acknowledged (200) that a restart cannot find, and every refusal is a
503 whose one-line reason says what happened to the database.
"""

from __future__ import annotations

import shutil
import stat
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from rubricate.serve import db
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings
from serve_fakes import FakeScorer, serve_in_thread

CLIENTS = 4


class Load:
    """``CLIENTS`` threads posting small batches; records what was acknowledged and what was refused."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # response id -> prediction id the client was given
        self.acked_after: list[str] = []  # acknowledged although sent after the fault was complete
        self.refusals: list[str] = []
        self.fault_done_at: float | None = None
        self.threads = [threading.Thread(target=self._client, args=(k,)) for k in range(CLIENTS)]

    def _client(self, k: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as c:
            n = 0
            while not self.stop.is_set():
                items = [{"task_id": "sci-1", "text": f"answer {k}-{n}-{i} about density", "response_id": f"c{k}-{n}-{i}"}
                         for i in range(3)]
                n += 1
                sent = time.monotonic()
                r = c.post("/v1/score", json={"items": items})
                with self.lock:
                    if r.status_code == 200:
                        for x in r.json()["results"]:
                            self.acked[x["response_id"]] = x["prediction_id"]
                        if self.fault_done_at is not None and sent > self.fault_done_at:
                            self.acked_after += [x["response_id"] for x in r.json()["results"]]
                    else:
                        assert r.status_code == 503, r.text
                        self.refusals.append(r.json()["detail"])

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def wait_for(self, n_acked: int) -> None:
        deadline = time.monotonic() + 30
        while len(self.acked) < n_acked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.acked) >= n_acked


def _serve(url: str):
    app = create_app(ServeSettings(database_url=url), scorer=FakeScorer())
    return (app, *serve_in_thread(app, log_level="critical"))


def _stored(url: str) -> dict[str, int]:
    """What a restart finds: response id -> prediction id, read through a fresh engine."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(db.Response.response_id, db.Prediction.id)
                                     .join(db.Prediction, db.Prediction.response_pk == db.Response.id)).all())
    finally:
        engine.dispose()


def test_write_protected_database_under_load_loses_no_acknowledgement(tmp_path: Path) -> None:
    path = tmp_path / "load.db"
    url = f"sqlite:///{path}"
    app, srv, th, base = _serve(url)
    mode = path.stat().st_mode
    try:
        with Load(base) as load:
            load.wait_for(60)
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            load.fault_done_at = time.monotonic()
            time.sleep(0.5)
            assert httpx.get(base + "/healthz").json()["database"]["ok"] is False
    finally:
        srv.should_exit = True
        th.join(timeout=10)
    assert load.refusals and all("read-only" in r and "\n" not in r for r in load.refusals)
    assert load.acked_after == []
    stored = _stored(url)
    missing = {rid for rid in load.acked if stored.get(rid) != load.acked[rid]}
    assert not missing, f"{len(missing)} acknowledged responses are not in the database"
    path.chmod(mode)
    app2, srv2, th2, base2 = _serve(url)  # after the operator fixes the permissions, retries are exactly-once
    try:
        with httpx.Client(base_url=base2, timeout=30) as c:
            rid = next(iter(load.acked))
            k, n, i = rid[1:].split("-")
            r = c.post("/v1/score", json={"items": [{"task_id": "sci-1", "text": f"answer {k}-{n}-{i} about density",
                                                     "response_id": rid}]})
            assert r.status_code == 200 and r.json()["results"][0]["prediction_id"] == load.acked[rid]
    finally:
        srv2.should_exit = True
        th2.join(timeout=10)


def test_removed_database_directory_under_load_acknowledges_nothing_after(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    url = f"sqlite:///{folder}/load.db"
    _app, srv, th, base = _serve(url)
    try:
        with Load(base) as load:
            load.wait_for(60)
            shutil.rmtree(folder)
            load.fault_done_at = time.monotonic()
            time.sleep(0.5)
            h = httpx.get(base + "/healthz")
            assert h.status_code == 503 and "no longer exists" in h.json()["database"]["reason"]
    finally:
        srv.should_exit = True
        th.join(timeout=10)
    # a request that was mid-commit when the folder went gets SQLite's own error; every refusal is one line
    # naming the database, and the guard's reason is among them
    odd = [r for r in load.refusals if "no longer exists" not in r]
    assert load.refusals and any("no longer exists" in r for r in load.refusals), load.refusals[:3]
    assert all("\n" not in r and url in r for r in load.refusals), odd[:3]
    assert load.acked_after == [], f"{len(load.acked_after)} responses acknowledged into a deleted database"
    with pytest.raises(db.DatabaseUnavailable) as e:  # the restart says why, in one line
        create_app(ServeSettings(database_url=url), scorer=FakeScorer())
    assert "\n" not in str(e.value)
