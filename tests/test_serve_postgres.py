"""The PostgreSQL path, against a real server on loopback.

The server comes from ``RUBRICATE_TEST_POSTGRES_URL`` or is started here with ``scripts/start_postgres.sh``
(Debian's postgresql; CI installs it). The tests skip - saying why - only when no server can start.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text

from rubricate.serve import db
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings
from serve_fakes import FakeScorer, fake_agent_runner

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed")


@pytest.fixture(scope="module")
def pg_server() -> str:
    url = os.environ.get("RUBRICATE_TEST_POSTGRES_URL")
    if url:
        yield db.normalize_url(url)
        return
    data_dir = tempfile.mkdtemp(prefix="rubricate-pg.")
    res = subprocess.run(["bash", str(REPO / "scripts" / "start_postgres.sh"), data_dir], capture_output=True,
                         text=True, timeout=180)
    if res.returncode != 0:
        subprocess.run(["bash", str(REPO / "scripts" / "stop_postgres.sh"), data_dir], capture_output=True)
        pytest.skip(f"PostgreSQL could not be started on loopback: {res.stderr.strip()[-500:]}")
    try:
        yield res.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "stop_postgres.sh"), data_dir], capture_output=True)


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A fresh, empty database on the server for each test."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    base, _, _ = pg_server.rpartition("/")
    yield f"{base}/{name}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _count(app, table) -> int:
    with db.make_sessionmaker(app.state.engine)() as s:
        return s.scalar(select(func.count()).select_from(table))


def test_migrations_on_postgres_match_the_models(pg_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert db.upgrade(pg_url) == db.head_revision() == db.current_revision(pg_url)
    engine = db.make_engine(pg_url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.Base.metadata) == []
    engine.dispose()


def test_full_flow_on_postgres(pg_url: str, tmp_path: Path) -> None:
    from rubricate.data.records import read_records
    from rubricate.serve.reviews import export_reviews

    app = create_app(ServeSettings(database_url=pg_url), scorer=FakeScorer(), agent_runner=fake_agent_runner())
    with TestClient(app) as c:
        assert c.get("/healthz").json()["database_revision"] == db.head_revision()
        items = [{"task_id": "sci-1", "text": "unsure 😀 ünïcode", "response_id": "a"},
                 {"task_id": "read-2", "text": "the main idea", "response_id": "b"}]
        res = c.post("/v1/score", json={"items": items}).json()["results"]
        assert c.post("/v1/score", json={"items": items}).json()["results"] == res  # idempotent replay
        bad = c.post("/v1/score", json={"items": [{"task_id": "sci-1", "text": "new", "response_id": "c"},
                                                  {"task_id": "nope", "text": "x"}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "items", 1, "task_id"]
        assert c.post("/v1/score", json={"items": [{**items[0], "text": "changed"}]}).status_code == 409
        nul = c.post("/v1/score", json={"items": [{"task_id": "sci-1", "text": "a\x00b"}]})
        assert nul.status_code == 422
        assert _count(app, db.Response) == 2 and _count(app, db.Prediction) == 2
        job = c.post("/v1/agents/score", json={"items": [items[1]]}).json()
        assert job["status"] == "done" and job["results"][0]["components"]["same_gas"]["evidence"]
        review = c.get("/v1/reviews").json()["items"][0]
        r = c.post(f"/v1/reviews/{review['id']}", json={"action": "override", "rater_id": "pg",
                                                        "scores": {"score": 2, "E1": 1, "E2": 1}})
        assert r.status_code == 200
        assert c.post("/v1/reviews/2147483647", json={"action": "accept", "rater_id": "x"}).status_code == 404
    path, n = export_reviews(pg_url, tmp_path / "reviews.jsonl")
    assert n == 1 and read_records(path)[0].labels == {"score": 2, "E1": 1, "E2": 1}


def test_concurrent_replays_store_one_row(pg_url: str) -> None:
    app = create_app(ServeSettings(database_url=pg_url), scorer=FakeScorer())
    body = {"items": [{"task_id": "sci-1", "text": f"same answer {i}", "response_id": f"k{i}"} for i in range(5)]}
    codes: list[int] = []
    with TestClient(app) as c:
        def hit() -> None:
            codes.append(c.post("/v1/score", json=body).status_code)

        threads = [threading.Thread(target=hit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = {tuple(x["prediction_id"] for x in c.post("/v1/score", json=body).json()["results"])}
    assert codes == [200] * 6 and len(ids) == 1
    assert _count(app, db.Response) == 5 and _count(app, db.Prediction) == 5


def test_hostile_texts_on_postgres(pg_url: str) -> None:
    from hypothesis import HealthCheck, given, settings

    from test_serve_hypothesis import bodies

    app = create_app(ServeSettings(database_url=pg_url, max_batch=5, max_text_chars=4000), scorer=FakeScorer())
    with TestClient(app, raise_server_exceptions=False) as c:
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(body=bodies)
        def run(body) -> None:
            before = (_count(app, db.Response), _count(app, db.Prediction))
            r = c.post("/v1/score", content=json.dumps(body).encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})
            assert r.status_code < 500, r.text
            after = (_count(app, db.Response), _count(app, db.Prediction))
            assert after[0] == after[1]
            if r.status_code != 200:
                assert after == before

        run()
