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


# -- every other endpoint: hostile text (lone surrogates, invisible characters), huge integers, wrong types --
INVISIBLE = ["\u200b", "\ufeff\u2060", "\u200d", " \u3000", "\u202e"]
any_text = st.one_of(st.sampled_from(HOSTILE + INVISIBLE), st.text(max_size=40),
                     st.text(st.characters(exclude_categories=()), max_size=20))  # includes lone surrogates
huge = st.one_of(st.integers(), st.sampled_from([2**31, 2**63, 2**64 + 1, -(2**63) - 1, 10**30]))
confused = st.one_of(any_text, huge, st.booleans(), st.none(), st.floats(), st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
REVIEWS_API = [("status", st.one_of(st.sampled_from(["pending", "all", "accepted"]), any_text)),
               ("limit", st.one_of(huge.map(str), any_text)), ("offset", st.one_of(huge.map(str), any_text))]


def _post(c, url: str, body) -> object:
    return c.post(url, content=json.dumps(body).encode("ascii"), headers={"content-type": "application/json"})


def _query(params: dict[str, str]) -> str:
    from urllib.parse import quote

    return "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in params.items())


def _consistent(app) -> None:
    """Referential integrity and the review invariants, whatever was refused or accepted before."""
    with db.make_sessionmaker(app.state.engine)() as s:
        def count(stmt) -> int:
            return s.scalar(select(func.count()).select_from(stmt.subquery()))

        assert count(select(db.Prediction.id).where(~db.Prediction.response_pk.in_(select(db.Response.id)))) == 0
        assert count(select(db.Review.id).where(~db.Review.response_pk.in_(select(db.Response.id)))) == 0
        assert count(select(db.ReviewDecision.id).where(~db.ReviewDecision.review_id.in_(select(db.Review.id)))) == 0
        decided = select(db.ReviewDecision.review_id)
        assert count(select(db.Review.id).where(db.Review.status == "pending", db.Review.id.in_(decided))) == 0
        assert count(select(db.Review.id).where(db.Review.status != "pending", ~db.Review.id.in_(decided))) == 0


@pytest.fixture(scope="module")
def app2(tmp_path_factory):
    from serve_fakes import fake_agent_runner

    path = tmp_path_factory.mktemp("hyp2") / "h2.db"
    app = create_app(ServeSettings(database_url=f"sqlite:///{path}", max_batch=5, max_text_chars=4000,
                                   max_body_bytes=200_000, agents_sync_wait_s=0.0),
                     scorer=FakeScorer(), agent_runner=fake_agent_runner())
    with TestClient(app, raise_server_exceptions=False) as c:
        app.state.client = c
        c.post("/v1/score", json={"items": [{"task_id": "sci-1", "text": f"unsure {i}", "response_id": f"q{i}"}
                                            for i in range(3)]})
        yield app


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.fixed_dictionaries({}, optional={k: v for k, v in REVIEWS_API}),
       job_id=any_text, page_status=any_text)
def test_get_endpoints_never_500(app2, params, job_id, page_status) -> None:
    from urllib.parse import quote

    c = app2.state.client
    assert c.get("/v1/reviews?" + _query(params)).status_code in (200, 422)
    path = quote(job_id.encode("utf-8", "surrogatepass"), safe="")
    for url in (f"/v1/jobs/{path}", f"/v1/jobs/{path}/results.csv"):
        r = c.get(url)
        assert r.status_code in (404, 422) or (r.status_code == 200 and job_id), (url, r.status_code, r.text)
    assert c.get("/reviews?" + _query({"status": page_status})).status_code == 200
    assert c.get("/healthz").status_code == 200
    _consistent(app2)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.fixed_dictionaries({"action": st.one_of(st.sampled_from(["accept", "override"]), confused),
                                   "rater_id": st.one_of(any_text, confused)},
                                  optional={"scores": st.one_of(confused, st.dictionaries(
                                      st.one_of(st.sampled_from(["score", "E1", "E2"]), any_text), confused,
                                      max_size=3)),
                                      "replace": confused, "source": confused, "comment": confused}),
       review_id=st.one_of(st.integers(1, 4), huge.map(str), any_text))
def test_review_decisions_with_type_confusion_never_500(app2, body, review_id) -> None:
    from urllib.parse import quote

    c = app2.state.client
    rid = quote(str(review_id).encode("utf-8", "surrogatepass"), safe="")
    r = _post(c, f"/v1/reviews/{rid}", body)
    assert r.status_code in (200, 404, 405, 409, 422), r.text  # 405: an empty id is /v1/reviews/
    if r.status_code == 200:  # only real integers (never true or "1") are stored as scores
        assert all(type(v) is int for v in r.json()["final_scores"].values())
    _consistent(app2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.fixed_dictionaries({"task_id": st.one_of(task_ids, confused), "text": st.one_of(texts,
                                             any_text, confused)}, optional={"response_id": st.one_of(rids, confused)}),
                      max_size=4),
       extra=st.fixed_dictionaries({}, optional={"mode": confused, "with_student": confused}))
def test_agents_score_never_500(app2, items, extra) -> None:
    r = _post(app2.state.client, "/v1/agents/score", {"items": items, **extra})
    assert r.status_code in (200, 202, 409, 413, 422), r.text
    _consistent(app2)


csv_cells = st.one_of(any_text, huge.map(str), st.sampled_from(["sci-1", "read-2", '"', '"unterminated', "a,b"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["task_id,text,response_id", "text", "task_id,text", "a,b", "", "text,text"]),
       rows=st.lists(st.lists(csv_cells, min_size=1, max_size=3), max_size=5),
       task=st.one_of(st.none(), st.sampled_from(["sci-1", "nope"]), any_text), raw_tail=st.binary(max_size=20))
def test_batch_upload_never_500(app2, header, rows, task, raw_tail) -> None:
    c = app2.state.client
    text_ = header + "\n" + "".join(",".join(r) + "\n" for r in rows)
    data = text_.encode("utf-8", "surrogatepass") + raw_tail
    form = {} if task is None else {"task_id": task.encode("utf-8", "surrogatepass").decode("utf-8", "replace")}
    with db.make_sessionmaker(app2.state.engine)() as s:
        jobs_before = s.scalar(select(func.count()).select_from(db.Job))
    r = c.post("/v1/batch", files={"file": ("u.csv", data)}, data=form)
    assert r.status_code in (202, 413, 422), r.text
    with db.make_sessionmaker(app2.state.engine)() as s:
        jobs_after = s.scalar(select(func.count()).select_from(db.Job))
    assert jobs_after == jobs_before + (1 if r.status_code == 202 else 0)  # a refused upload is no job
    if r.status_code == 202:
        assert r.json()["rows"] > 0
    _consistent(app2)
