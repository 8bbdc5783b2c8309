"""Kill -9 the real server (``rubricate serve``) in the middle of a client's batch, restart it, finish.

Every response acknowledged before the kill must be in the database exactly once (with the prediction
the client was given), and the client's retries of the rest must complete without duplicates.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from rubricate.serve import db
from serve_fakes import make_tiny_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, url: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RUBRICATE_API_TOKENS", None)
    proc = subprocess.Popen([sys.executable, "-c", "from rubricate.cli import main; main()", "serve", "--model",
                             str(model), "--db", url, "--port", str(port), "--threads", "1", "--backend", "torch"],
                            env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("server did not come up")


@pytest.mark.slow
def test_kill_9_mid_batch_then_restart_is_exactly_once(tmp_path: Path) -> None:
    model = make_tiny_checkpoint(tmp_path / "ck")
    url = f"sqlite:///{tmp_path}/crash.db"
    port = _free_port()
    log = tmp_path / "server.log"
    batches = [[{"task_id": "sci-1" if (b + i) % 2 else "read-2", "text": f"answer {b}-{i} about the gas",
                 "response_id": f"b{b}-{i}"} for i in range(8)] for b in range(40)]
    acked: dict[str, int] = {}  # response id -> prediction id the client was given
    pending = list(range(len(batches)))
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            while pending and not stop.is_set():
                b = pending[0]
                try:
                    r = c.post("/v1/score", json={"items": batches[b]})
                except httpx.HTTPError:
                    time.sleep(0.05)  # the server is down: retry the same batch later
                    continue
                assert r.status_code == 200, r.text
                for x in r.json()["results"]:
                    acked[x["response_id"]] = x["prediction_id"]
                pending.pop(0)

    server = _start(model, url, port, log)
    t = threading.Thread(target=client)
    t.start()
    while len(acked) < 8 * 10 and t.is_alive():
        time.sleep(0.01)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    acked_before = dict(acked)
    assert 0 < len(acked_before) < 8 * len(batches), "the kill must land mid-batch"
    time.sleep(0.5)  # the client keeps retrying against a dead server
    server = _start(model, url, port, log)
    try:
        t.join(timeout=300)
        assert not t.is_alive() and not pending
        # replay everything once more: a client that is unsure must be able to retry safely
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for batch in batches:
                for x in c.post("/v1/score", json={"items": batch}).json()["results"]:
                    assert acked[x["response_id"]] == x["prediction_id"]
    finally:
        stop.set()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    engine = create_engine(url)
    with engine.connect() as conn:
        n_resp = conn.scalar(select(func.count()).select_from(db.Response.__table__))
        n_pred = conn.scalar(select(func.count()).select_from(db.Prediction.__table__))
        rows = dict(conn.execute(select(db.Response.response_id, db.Prediction.id)
                                 .join(db.Prediction, db.Prediction.response_pk == db.Response.id)).all())
    engine.dispose()
    assert n_resp == n_pred == 8 * len(batches)
    for rid, pid in acked_before.items():  # acknowledged before the kill: stored, once, as acknowledged
        assert rows[rid] == pid
    assert rows == acked
