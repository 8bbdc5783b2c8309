"""The HTTP API: scoring, idempotency, validation (422 naming the field, nothing written), limits (413),
auth (401), review queue, agents jobs, CSV batch jobs, migrations, reviews export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from rubricate.serve import db
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings, load_settings
from serve_fakes import FakeScorer, ZeroScorer, fake_agent_runner

S3CRET, OTHER = "s3cret-token-0123456789", "other-token-0123456789"  # at least min_token_length
TABLES = (db.Response, db.Prediction, db.Review, db.ReviewDecision, db.AgentResultRow, db.Job)


def counts(app) -> dict[str, int]:
    with db.make_sessionmaker(app.state.engine)() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in TABLES}


@pytest.fixture
def make(tmp_path: Path):
    def _make(**kw):
        agent_runner = kw.pop("agent_runner", None)
        scorer = kw.pop("scorer", FakeScorer())
        settings = ServeSettings(database_url=f"sqlite:///{tmp_path}/serve.db", **kw)
        return create_app(settings, scorer=scorer, agent_runner=agent_runner)

    return _make


@pytest.fixture
def client(make):
    with TestClient(make()) as c:
        yield c


def item(i: int = 0, **kw) -> dict:
    d = {"task_id": "sci-1", "text": f"gas a and d have the same density {i}", "response_id": f"r{i}"}
    d.update(kw)
    return d


def test_health_and_tasks(client) -> None:
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["model"]["model_version"] == "v1" and h["database_revision"] == db.head_revision()
    tasks = client.get("/v1/tasks").json()["tasks"]
    assert [t["id"] for t in tasks] == ["sci-1", "read-2"]
    assert tasks[0]["rubric"]["criteria"][0]["id"] == "E1" and tasks[0]["question"]
    assert client.get("/openapi.json").json()["paths"]["/v1/score"]["post"]


def test_score_returns_everything_and_stores_it(client) -> None:
    r = client.post("/v1/score", json={"items": [item(1), item(2, task_id="read-2", text="unsure what the idea is")]})
    assert r.status_code == 200
    a, b = r.json()["results"]
    assert set(a["scores"]) == {"E1", "E2", "score"} and set(a["probs"]) == {"E1", "E2", "score>=1", "score>=2"}
    assert a["gate_weights"] == [[0.7, 0.3], [0.4, 0.6]] and a["model_id"] == "fake-student"
    assert abs(sum(a["score_distribution"]["score"]) - 1) < 1e-6
    assert a["needs_review"] is False and a["review_id"] is None
    assert b["needs_review"] is True and b["confidence"] < 0.6 and b["review_id"] is not None
    c = counts(client.app)
    assert (c["responses"], c["predictions"], c["reviews"]) == (2, 2, 1)
    with db.make_sessionmaker(client.app.state.engine)() as s:
        p = s.scalar(select(db.Prediction).where(db.Prediction.id == a["prediction_id"]))
        assert p.scores == a["scores"] and p.model.model_version == "v1" and p.response.text == item(1)["text"]


def test_replay_is_idempotent_and_conflicts_are_409(client) -> None:
    scorer = client.app.state.service.scorer
    first = client.post("/v1/score", json={"items": [item(1), item(2)]}).json()["results"]
    calls = scorer.calls
    again = client.post("/v1/score", json={"items": [item(2), item(1), item(3)]}).json()["results"]
    assert [x["prediction_id"] for x in again[:2]] == [first[1]["prediction_id"], first[0]["prediction_id"]]
    assert scorer.calls == calls + 1  # only item 3 was scored
    assert counts(client.app)["predictions"] == 3
    r = client.post("/v1/score", json={"items": [item(4), item(1, text="a different answer")]})
    assert r.status_code == 409
    assert r.json()["detail"][0]["loc"] == ["body", "items", 1, "response_id"]
    assert counts(client.app)["responses"] == 3  # item 4 was not written either


@pytest.mark.parametrize("body,loc,msg", [
    ({"items": [{"text": "x"}]}, ["body", "items", 0, "task_id"], "Field required"),
    ({"items": [item(0), item(1, task_id="nope")]}, ["body", "items", 1, "task_id"], "unknown task 'nope'"),
    ({"items": [item(0, text="   ")]}, ["body", "items", 0, "text"], "empty response text"),
    ({"items": [item(0, text=5)]}, ["body", "items", 0, "text"], "string"),
    ({"items": [item(0), item(0)]}, ["body", "items", 1, "response_id"], "duplicate"),
    ({"items": [item(0, text="a\x00b")]}, ["body", "items", 0, "text"], "NUL"),
    ({"items": []}, ["body", "items"], "at least 1"),
    ({"items": [item(0, extra=1)]}, ["body", "items", 0, "extra"], "Extra inputs"),
])
def test_validation_errors_name_the_field_and_write_nothing(client, body, loc, msg) -> None:
    r = client.post("/v1/score", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"] == loc and msg in d["msg"] for d in detail), detail
    assert sum(counts(client.app).values()) == 0


def test_invalid_json_and_wrong_types_are_422(client) -> None:
    r = client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = client.post("/v1/score", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert r.status_code == 400  # undecodable bytes: FastAPI's "error parsing the body"
    assert client.post("/v1/score", json=[1, 2]).status_code == 422
    assert sum(counts(client.app).values()) == 0


def test_limits_give_413(make) -> None:
    with TestClient(make(max_batch=3, max_body_bytes=5000, max_text_chars=100)) as c:
        r = c.post("/v1/score", json={"items": [item(i) for i in range(4)]})
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
        r = c.post("/v1/score", json={"items": [item(0, text="x" * 6000)]})
        assert r.status_code == 413

        def chunks():  # no Content-Length: the limit is enforced while streaming
            yield b'{"items": [{"task_id": "sci-1", "text": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}]}'

        r = c.post("/v1/score", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = c.post("/v1/score", json={"items": [item(0, text="z" * 101)]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items", 0, "text"]
        assert sum(counts(c.app).values()) == 0


def test_bearer_auth(make) -> None:
    with TestClient(make(tokens=[S3CRET, OTHER])) as c:
        assert c.get("/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": S3CRET}):
            r = c.post("/v1/score", json={"items": [item()]}, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert c.get("/v1/reviews", headers=headers).status_code == 401
        assert sum(counts(c.app).values()) == 0
        ok = {"Authorization": "Bearer " + OTHER}
        assert c.post("/v1/score", json={"items": [item()]}, headers=ok).status_code == 200
        page = c.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert c.post("/login", data={"token": "nope", "next": "/"}).status_code == 401
        r = c.post("/login", data={"token": S3CRET, "next": "/reviews"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/reviews"
        assert c.get("/reviews").status_code == 200  # the cookie now authenticates the page and its API calls
        assert c.get("/v1/reviews").status_code == 200


def test_no_tokens_means_loopback_only() -> None:
    from rubricate.errors import InputError

    with pytest.raises(InputError, match="127.0.0.1"):
        ServeSettings(host="0.0.0.0").check_binding()
    ServeSettings(host="127.0.0.1").check_binding()
    ServeSettings(host="0.0.0.0", tokens=[S3CRET]).check_binding()
    s = load_settings(env={"RUBRICATE_API_TOKENS": f"{S3CRET}, {OTHER}", "RUBRICATE_DATABASE_URL": "sqlite:///x.db"},
                      port=9)
    assert s.tokens == [S3CRET, OTHER] and s.database_url == "sqlite:///x.db" and s.port == 9


def test_review_queue_accept_override_and_export(client, tmp_path: Path) -> None:
    from rubricate.data.records import read_records
    from rubricate.serve.reviews import export_reviews

    res = client.post("/v1/score", json={"items": [item(1, text="unsure 1"), item(2, text="unsure 2"),
                                                   item(3)]}).json()["results"]
    queue = client.get("/v1/reviews").json()
    assert queue["total"] == 2 and {q["response_id"] for q in queue["items"]} == {"r1", "r2"}
    q1, q2 = queue["items"]
    assert q1["reason"] == "low_confidence" and q1["proposed_scores"] == res[0]["scores"]
    r = client.post(f"/v1/reviews/{q1['id']}", json={"action": "accept", "rater_id": "ann", "comment": "fine"})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    bad = client.post(f"/v1/reviews/{q2['id']}", json={"action": "override", "rater_id": "bob",
                                                       "scores": {"score": 7}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "scores"]
    assert client.post(f"/v1/reviews/{q2['id']}", json={"action": "override", "scores": {"score": 2}}).status_code == 422
    r = client.post(f"/v1/reviews/{q2['id']}", json={"action": "override", "rater_id": "bob", "comment": "better",
                                                     "scores": {"score": 2, "E1": 1, "E2": 1}})
    assert r.status_code == 200 and r.json()["final_scores"] == {"score": 2, "E1": 1, "E2": 1}
    assert client.post("/v1/reviews/9999", json={"action": "accept", "rater_id": "x"}).status_code == 404
    assert client.get("/v1/reviews").json()["total"] == 0
    done = client.get("/v1/reviews?status=all").json()["items"]
    assert [d["decisions"][0]["rater_id"] for d in done] == ["ann", "bob"]
    path, n = export_reviews(client.app.state.settings.database_url, tmp_path / "reviewed.jsonl")
    recs = {r.response_id: r for r in read_records(path)}
    assert n == 2 and recs["r2"].labels == {"score": 2, "E1": 1, "E2": 1}
    assert recs["r1"].labels == res[0]["scores"] and recs["r1"].metadata["rater_id"] == "ann"
    assert recs["r2"].text == "unsure 2" and recs["r2"].task_id == "sci-1"


def test_agents_inline_with_evidence_and_disagreement_review(make) -> None:
    with TestClient(make(agent_runner=fake_agent_runner(score_offset=2))) as c:
        r = c.post("/v1/agents/score", json={"items": [item(1)]})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["status"] == "done" and job["status_url"] == f"/v1/jobs/{job['id']}"
        res = job["results"][0]
        assert res["components"]["same_gas"]["evidence"] == ["gas a and"]
        assert res["student_scores"] is not None
        if abs(res["score"] - res["student_scores"]["score"]) >= 1:
            assert res["review_ids"], "a disagreement must enter the review queue"
            queue = c.get("/v1/reviews").json()["items"]
            dis = [q for q in queue if q["reason"] == "disagreement"]
            assert dis and dis[0]["evidence"]["same_gas"]["evidence"] == ["gas a and"]
            acc = c.post(f"/v1/reviews/{dis[0]['id']}", json={"action": "accept", "rater_id": "x", "source": "agents"})
            assert acc.json()["final_scores"]["score"] == res["score"]
        cnt = counts(c.app)
        assert cnt["agent_results"] == 1 and cnt["predictions"] == 1 and cnt["jobs"] == 1


def test_agents_disagreement_is_queued(make) -> None:
    def runner(task, records, mode):
        return [{"task_id": r.task_id, "response_id": r.response_id, "status": "ok", "score": 2, "scores": {"score": 2},
                 "components": {}, "mode": mode} for r in records]

    with TestClient(make(agent_runner=runner, scorer=ZeroScorer())) as c:
        res = c.post("/v1/agents/score", json={"items": [item(1)]}).json()["results"][0]
        assert res["review_ids"]
        q = c.get("/v1/reviews").json()["items"]
        assert [x["reason"] for x in q] == ["disagreement"]
        assert q[0]["details"]["differences"] == {"score": 2}


def test_slow_agents_job_answers_202_with_status_url(make) -> None:
    def slow(task, records, mode):
        time.sleep(0.5)
        return fake_agent_runner()(task, records, mode)

    with TestClient(make(agent_runner=slow, agents_sync_wait_s=0.0)) as c:
        r = c.post("/v1/agents/score", json={"items": [item(1), item(2, task_id="read-2")], "with_student": False})
        assert r.status_code == 202
        url = r.json()["status_url"]
        for _ in range(100):
            job = c.get(url).json()
            if job["status"] == "done":
                break
            time.sleep(0.1)
        assert job["status"] == "done" and job["done"] == 2 and len(job["results"]) == 2
        assert counts(c.app)["predictions"] == 0


def test_agents_failures_are_recorded_not_scores(make) -> None:
    def broken(task, records, mode):
        raise RuntimeError("LLM server down")

    with TestClient(make(agent_runner=broken)) as c:
        job = c.post("/v1/agents/score", json={"items": [item(1)]}).json()
        res = job["results"][0]
        assert res["status"] == "failed" and res["score"] is None and "LLM server down" in res["error"]
    with TestClient(make()) as c:
        assert c.post("/v1/agents/score", json={"items": [item(1)]}).status_code == 503


def test_batch_upload_reports_lines_and_scores_the_rest(client) -> None:
    csv_text = "task_id,text,response_id\nsci-1,hello gas,a\nnope,x,b\nread-2,,c\nread-2,\"multi\nline\",d\n"
    r = client.post("/v1/batch", files={"file": ("in.csv", csv_text.encode())})
    assert r.status_code == 202
    body = r.json()
    assert body["rows"] == 2
    assert [(p["line"], p["field"]) for p in body["problems"]] == [(3, "task_id"), (4, "text")]
    for _ in range(100):
        job = client.get(body["status_url"]).json()
        if job["status"] == "done":
            break
        time.sleep(0.05)
    assert job["done"] == 2 and job["results_url"]
    text = client.get(job["results_url"]).text.splitlines()
    assert text[0].startswith("task_id,response_id,scores") and len(text) == 3
    bad = client.post("/v1/batch", files={"file": ("x.csv", b"a,b\n1,2\n")})
    assert bad.status_code == 422 and "text" in bad.json()["detail"][0]["msg"]


def test_pages_render(client) -> None:
    client.post("/v1/score", json={"items": [item(1, text="unsure")]})
    home = client.get("/").text
    assert "Score an answer" in home and "Gas densities" in home and 'for="text"' in home
    assert "Upload a CSV" in client.get("/batch").text
    rv = client.get("/reviews").text
    assert "unsure" in rv and "Override" in rv and "low confidence" in rv


def test_orm_models_match_the_migrations(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    url = f"sqlite:///{tmp_path}/m.db"
    assert db.upgrade(url) == db.head_revision()
    engine = db.make_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.Base.metadata) == []
    engine.dispose()
    assert db.upgrade(url) == db.head_revision()  # idempotent


def test_cli_db_and_reviews_export(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rubricate.cli import app

    url = f"sqlite:///{tmp_path}/c.db"
    r = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
    assert r.exit_code == 0 and db.head_revision() in r.output
    r = CliRunner().invoke(app, ["reviews", "export", "--db", url, "-o", str(tmp_path / "o.jsonl")])
    assert r.exit_code == 0 and "wrote 0" in r.output
    assert (tmp_path / "o.jsonl").read_text() == ""
