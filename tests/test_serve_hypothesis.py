"""Property-based request validation: random and hostile bodies never produce a 500, and the database
stays consistent (a failed request writes nothing; an accepted one writes exactly its responses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from rubricate.serve import db
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings
from serve_fakes import FakeScorer

HOSTILE = [
    "", " ", "\x00", "\ud800", "'; DROP TABLE responses; --", "<script>alert(1)</script>", "{{7*7}}", "${jndi:x}",
    "\u202e\u0645\u0631\u062d\u0628\u0627", "😀" * 50, "a" * 5000, "\r\n\t", "NULL", "null", "../../etc/passwd",
    "%s%s%n", "\\", '"', "Robert'); DELETE FROM reviews;--",
]
texts = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=300), st.binary(max_size=100).map(
    lambda b: b.decode("latin-1")))
task_ids = st.one_of(st.sampled_from(["sci-1", "read-2", "nope", "", "SCI-1"]), st.text(max_size=20))
rids = st.one_of(st.none(), st.sampled_from(["r1", "r2", "", " ", "x" * 300]), st.text(max_size=30))
items = st.fixed_dictionaries({"task_id": task_ids, "text": texts}, optional={"response_id": rids})
junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=10)
bodies = st.one_of(st.fixed_dictionaries({"items": st.lists(items, max_size=6)}),
                   st.fixed_dictionaries({"items": st.lists(st.one_of(items, junk), max_size=4)}), junk)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    path = tmp_path_factory.mktemp("hyp") / "h.db"
    app = create_app(ServeSettings(database_url=f"sqlite:///{path}", max_batch=5, max_text_chars=4000,
                                   max_body_bytes=200_000), scorer=FakeScorer())
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.client = c
        yield app


def _state(app) -> tuple[int, int, int]:
    with db.make_sessionmaker(app.state.engine)() as s:
        n_resp = s.scalar(select(func.count()).select_from(db.Response))
        n_pred = s.scalar(select(func.count()).select_from(db.Prediction))
        orphans = s.scalar(select(func.count()).select_from(db.Prediction).where(
            ~db.Prediction.response_pk.in_(select(db.Response.id))))
        return n_resp, n_pred, orphans


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_score_never_500s_and_keeps_the_database_consistent(app, body) -> None:
    c = app.state.client
    before = _state(app)
    r = c.post("/v1/score", content=json.dumps(body).encode("utf-8", "surrogatepass"),
               headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    after = _state(app)
    assert after[2] == 0
    assert after[0] == after[1]  # one prediction per stored response (one model version)
    if r.status_code != 200:
        assert after == before, f"a failed request ({r.status_code}) wrote to the database"
        detail = r.json()["detail"]
        if r.status_code == 422:
            assert all("loc" in d and "msg" in d for d in detail)
    else:
        results = r.json()["results"]
        assert len(results) == len(body["items"])
        new_keys = {(x["task_id"], x["response_id"]) for x in results}
        assert after[0] - before[0] <= len(new_keys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=400))
def test_raw_bytes_never_500(app, raw) -> None:
    before = _state(app)
    r = app.state.client.post("/v1/score", content=raw, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413, 422), r.text
    assert _state(app) == before


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.one_of(st.sampled_from(["accept", "override"]), st.text(max_size=10)),
       rater=st.one_of(st.sampled_from(HOSTILE), st.text(max_size=50)),
       scores=st.one_of(st.none(), st.dictionaries(st.sampled_from(["score", "E1", "E2", "zzz", ""]),
                                                   st.integers(-5, 10), max_size=3)),
       review_id=st.one_of(st.just(1), st.integers(-3, 10 ** 12)))
def test_review_decisions_never_500(app, action, rater, scores, review_id) -> None:
    c = app.state.client
    c.post("/v1/score", json={"items": [{"task_id": "sci-1", "text": "unsure about this", "response_id": "rv"}]})
    with db.make_sessionmaker(app.state.engine)() as s:
        before = s.scalar(select(func.count()).select_from(db.ReviewDecision))
    body = {"action": action, "rater_id": rater}
    if scores is not None:
        body["scores"] = scores
    r = c.post(f"/v1/reviews/{review_id}", content=json.dumps(body).encode("utf-8", "surrogatepass"),
               headers={"content-type": "application/json"})
    assert r.status_code < 500, r.text
    with db.make_sessionmaker(app.state.engine)() as s:
        after = s.scalar(select(func.count()).select_from(db.ReviewDecision))
    assert after == before + (1 if r.status_code == 200 else 0)
    if "\x00" in rater or review_id > 2**31 - 1:
        assert r.status_code in (400, 404, 422)
