"""Issue 16: the server under hostile input and failing disks - no 500s, no lost acknowledgements.

Each test here failed before its fix: a vanished or read-only SQLite database acknowledged writes (or
answered a plain-text 500), a lone surrogate in an override key and a huge offset were 500s, override
scores were coerced, a second review decision was stored silently, whitespace tokens passed, uploads
skipped the id limit, and the CLI created databases on read paths and printed tracebacks.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from rubricate.errors import InputError
from rubricate.serve import db
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings, load_settings
from serve_fakes import FakeScorer, ZeroScorer, fake_agent_runner

TOKEN = "a-long-enough-token-0123"


def item(i: int = 0, **kw) -> dict:
    d = {"task_id": "sci-1", "text": f"gas a and d have the same density {i}", "response_id": f"r{i}"}
    d.update(kw)
    return d


def raw_json(body) -> dict:
    """A JSON body that may hold lone surrogates (json.dumps escapes them as \\udXXX)."""
    return {"content": json.dumps(body).encode("ascii"), "headers": {"content-type": "application/json"}}


@pytest.fixture
def make(tmp_path: Path):
    def _make(path: Path | None = None, **kw):
        path = path or tmp_path / "serve.db"
        scorer, runner = kw.pop("scorer", FakeScorer()), kw.pop("agent_runner", None)
        return create_app(ServeSettings(database_url=f"sqlite:///{path}", **kw), scorer=scorer, agent_runner=runner)

    return _make


def n_rows(path: Path, table=db.Response) -> int:
    engine = db.make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(table.__table__))
    finally:
        engine.dispose()


# -- 1. acknowledged means durable -------------------------------------------------------------------------
def test_removed_database_directory_is_503_not_an_acknowledgement(make, tmp_path: Path) -> None:
    folder = tmp_path / "dbdir"
    folder.mkdir()
    with TestClient(make(folder / "f.db"), raise_server_exceptions=False) as c:
        assert c.post("/v1/score", json={"items": [item(1, text="unsure 1")]}).status_code == 200
        shutil.rmtree(folder)
        for i in range(2, 6):
            r = c.post("/v1/score", json={"items": [item(i)]})
            assert r.status_code == 503, r.text
            assert "no longer exists" in r.json()["detail"] and "\n" not in r.json()["detail"]
        h = c.get("/healthz")
        assert h.status_code == 503 and h.json()["database"]["ok"] is False
        assert "no longer exists" in h.json()["database"]["reason"]
        assert c.get("/v1/reviews").status_code == 200  # reads it can still serve
    assert not folder.exists()


def test_read_only_database_is_503_and_recovers(make, tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with TestClient(make(path), raise_server_exceptions=False) as c:
        assert c.post("/v1/score", json={"items": [item(1)]}).status_code == 200
        mode = path.stat().st_mode
        path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        try:
            r = c.post("/v1/score", json={"items": [item(2)]})
            assert r.status_code == 503 and "read-only" in r.json()["detail"]
            assert c.get("/healthz").json()["database"]["ok"] is False
            assert c.get("/v1/reviews?status=all").status_code == 200
        finally:
            path.chmod(mode)
        assert c.post("/v1/score", json={"items": [item(2)]}).status_code == 200
        assert c.get("/healthz").status_code == 200
    assert n_rows(path) == 2


def test_replaced_database_file_is_503(make, tmp_path: Path) -> None:
    path = tmp_path / "swap.db"
    with TestClient(make(path), raise_server_exceptions=False) as c:
        assert c.post("/v1/score", json={"items": [item(1)]}).status_code == 200
        path.rename(tmp_path / "moved.db")
        shutil.copy(tmp_path / "moved.db", path)  # same content, another file: not what the server writes to
        r = c.post("/v1/score", json={"items": [item(2)]})
        assert r.status_code == 503 and "replaced" in r.json()["detail"]


def test_healthz_is_json_with_database_state(make) -> None:
    with TestClient(make()) as c:
        h = c.get("/healthz").json()
        assert h["database"] == {"ok": True, "reason": None, "revision": db.head_revision()}


# -- 2, 3. no 500 on hostile values -------------------------------------------------------------------------
def test_lone_surrogate_in_override_key_is_422(make) -> None:
    with TestClient(make(), raise_server_exceptions=False) as c:
        rid = c.post("/v1/score", json={"items": [item(1, text="unsure")]}).json()["results"][0]["review_id"]
        r = c.post(f"/v1/reviews/{rid}", **raw_json({"action": "override", "rater_id": "x",
                                                     "scores": {"\ud800": 1}}))
        assert r.status_code == 422, r.text
        assert "\\ud800" in r.json()["detail"][0]["msg"]
        r = c.post(f"/v1/reviews/{rid}", **raw_json({"action": "accept", "rater_id": "\ud800"}))
        assert r.status_code == 422
        r = c.post("/v1/score", **raw_json({"items": [item(2, task_id="\udfff")]}))
        assert r.status_code == 422


@pytest.mark.parametrize("query", ["offset=9223372036854775808", "offset=-1", "limit=99999999999999999999",
                                   "offset=1e3", "limit=0"])
def test_integer_query_parameters_are_bounded(make, query) -> None:
    with TestClient(make(), raise_server_exceptions=False) as c:
        assert c.get(f"/v1/reviews?{query}").status_code == 422


def test_huge_ids_in_paths_are_4xx(make) -> None:
    with TestClient(make(), raise_server_exceptions=False) as c:
        assert c.post("/v1/reviews/9223372036854775808", json={"action": "accept", "rater_id": "x"}).status_code == 422
        assert c.get("/v1/jobs/" + "x" * 5000).status_code == 422


# -- 4, 5. one definition of empty; strict integers ---------------------------------------------------------
@pytest.mark.parametrize("text", ["\u200b", "\ufeff\u2060", " \u3000 ", "\u200d\n"])
def test_invisible_text_is_empty(make, text) -> None:
    with TestClient(make()) as c:
        r = c.post("/v1/score", json={"items": [item(1, text=text)]})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "empty_text"
        up = c.post("/v1/batch", files={"file": ("e.csv", f"task_id,text\nsci-1,{text}\n".encode())})
        assert up.status_code == 422


@pytest.mark.parametrize("value", [True, "1", 1.0, 2**40, None])
def test_override_scores_are_strict_integers(make, value) -> None:
    with TestClient(make()) as c:
        rid = c.post("/v1/score", json={"items": [item(1, text="unsure")]}).json()["results"][0]["review_id"]
        r = c.post(f"/v1/reviews/{rid}", json={"action": "override", "rater_id": "x", "scores": {"score": value}})
        assert r.status_code == 422, r.text
        with db.make_sessionmaker(c.app.state.engine)() as s:
            assert s.scalar(select(func.count()).select_from(db.ReviewDecision)) == 0


# -- 6. decisions: 409 unless replacing ---------------------------------------------------------------------
def test_second_decision_is_409_unless_it_replaces(make) -> None:
    with TestClient(make()) as c:
        rid = c.post("/v1/score", json={"items": [item(1, text="unsure")]}).json()["results"][0]["review_id"]
        url = f"/v1/reviews/{rid}"
        assert c.post(url, json={"action": "accept", "rater_id": "ann"}).status_code == 200
        again = c.post(url, json={"action": "accept", "rater_id": "ann"})
        assert again.status_code == 409 and "replace" in again.json()["detail"][0]["msg"]
        r = c.post(url, json={"action": "override", "rater_id": "bob", "scores": {"score": 2, "E1": 1, "E2": 1},
                              "replace": True})
        assert r.status_code == 200 and r.json()["status"] == "overridden"
        done = c.get("/v1/reviews?status=all").json()["items"][0]
        assert [(d["rater_id"], d["replaces_previous"]) for d in done["decisions"]] == [("ann", False), ("bob", True)]
        assert done["final_scores"]["score"] == 2


# -- 7. tokens -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens", [[" "], [""], ["short"], [TOKEN, "  "]])
def test_bad_tokens_are_refused_from_a_config_file(tmp_path: Path, tokens) -> None:
    cfg = tmp_path / "serve.json"
    cfg.write_text(json.dumps({"tokens": tokens, "host": "0.0.0.0"}))
    with pytest.raises(InputError, match="token"):
        load_settings(cfg, env={})
    with pytest.raises(InputError, match="token"):
        load_settings(env={"RUBRICATE_API_TOKENS": ",".join(tokens) + ",x"})


def test_tokens_are_stripped_from_every_source(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"tokens: ['  {TOKEN}  ']\n")
    assert load_settings(cfg, env={}).tokens == [TOKEN]
    assert load_settings(env={"RUBRICATE_API_TOKENS": f" {TOKEN} "}).tokens == [TOKEN]


# -- 8. uploads share /v1/score's validation ----------------------------------------------------------------
def test_upload_applies_the_id_limit_and_refuses_an_all_bad_file(make) -> None:
    with TestClient(make()) as c:
        long_id = "x" * 201
        csv_text = f"task_id,text,response_id\nsci-1,fine answer,{long_id}\nsci-1,another answer,ok-1\n"
        r = c.post("/v1/batch", files={"file": ("in.csv", csv_text.encode())})
        assert r.status_code == 202 and r.json()["rows"] == 1
        assert [(p["line"], p["field"]) for p in r.json()["problems"]] == [(2, "response_id")]
        assert c.post("/v1/score", json={"items": [item(1, response_id=long_id)]}).status_code == 422
        bad = c.post("/v1/batch", files={"file": ("bad.csv", b"task_id,text\nnope,x\nsci-1,\n")})
        assert bad.status_code == 422
        assert [d["loc"][2] for d in bad.json()["detail"]] == [2, 3]
        with db.make_sessionmaker(c.app.state.engine)() as s:
            assert s.scalar(select(func.count()).select_from(db.Job)) == 1


def test_upload_with_an_unterminated_quote_reports_the_row(make) -> None:
    with TestClient(make()) as c:
        csv_text = 'task_id,text\nsci-1,"never closed\nsci-1,second answer\nsci-1,third answer\n'
        r = c.post("/v1/batch", files={"file": ("q.csv", csv_text.encode())})
        assert r.status_code == 202, r.text
        assert r.json()["rows"] == 2 and r.json()["problems"][0]["line"] == 2


# -- 10. one-line database errors, no database created on a read path ---------------------------------------
def test_cli_read_paths_never_create_a_database(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rubricate.cli import app

    path = tmp_path / "missing.db"
    for args in (["reviews", "export", "-o", str(tmp_path / "o.jsonl")], ["db", "current"]):
        r = CliRunner().invoke(app, [*args, "--db", f"sqlite:///{path}"])
        assert isinstance(r.exception, db.DatabaseUnavailable), r.output
        assert "no database file" in str(r.exception) and "\n" not in str(r.exception)
        assert not path.exists()


def test_cli_prints_one_line_for_a_database_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "from rubricate.cli import main; main()", "reviews", "export",
                        "-o", str(tmp_path / "o.jsonl"), "--db", f"sqlite:///{tmp_path}/nope/x.db"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no database file" in r.stderr


def test_start_up_on_a_read_only_database_is_one_error(make, tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    db.upgrade(f"sqlite:///{path}")
    path.chmod(stat.S_IRUSR)
    try:
        with pytest.raises(db.DatabaseUnavailable, match="read-only"):
            make(path)
        with pytest.raises(db.DatabaseUnavailable, match="unable to open|no database"):
            make(tmp_path / "no" / "such" / "dir.db")
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


# -- 11. wording, Markdown, time zones ----------------------------------------------------------------------
def test_bind_refusal_names_the_setting_not_a_column() -> None:
    with pytest.raises(InputError) as e:
        ServeSettings(host="0.0.0.0").check_binding()
    assert "column" not in str(e.value) and "RUBRICATE_API_TOKENS" in str(e.value)


def test_timestamps_are_utc_with_offset(make) -> None:
    with TestClient(make()) as c:
        rid = c.post("/v1/score", json={"items": [item(1, text="unsure")]}).json()["results"][0]["review_id"]
        c.post(f"/v1/reviews/{rid}", json={"action": "accept", "rater_id": "x"})
        rv = c.get("/v1/reviews?status=all").json()["items"][0]
        assert rv["created_at"].endswith("+00:00") and rv["decisions"][0]["created_at"].endswith("+00:00")
        up = c.post("/v1/batch", files={"file": ("t.csv", b"task_id,text\nsci-1,an answer\n")}).json()
        assert c.get(up["status_url"]).json()["created_at"].endswith("+00:00")


def test_markdown_tables_in_questions_are_rendered(make) -> None:
    from rubricate.tasks import TaskRegistry, task_from_dict
    from serve_fakes import TASKS

    class TableScorer(FakeScorer):
        def __init__(self) -> None:
            super().__init__()
            t = dict(TASKS[0], question="Compare the gases.\n\n| gas | density |\n|---|---|\n| A | 1.2 |\n\n"
                                        "<script>alert(1)</script>")
            self.tasks = TaskRegistry([task_from_dict(t), task_from_dict(TASKS[1])])

    with TestClient(make(scorer=TableScorer())) as c:
        c.post("/v1/score", json={"items": [item(1, text="unsure")]})
        for page in ("/", "/reviews"):
            html = c.get(page).text
            assert "<script>alert(1)" not in html, page
            assert "<table" in html.replace("\\u003c", "<"), page


# -- 12. the review card holds everything a decision needs ---------------------------------------------------
def test_review_card_shows_task_rubric_distribution_evidence_and_history(make) -> None:
    with TestClient(make(scorer=ZeroScorer(), agent_runner=fake_agent_runner(score_offset=2))) as c:
        c.post("/v1/agents/score", json={"items": [item(1, text="Gas A and D have the same density")]})
        html = c.get("/reviews").text
        for expected in ("Which gases could be the same substance", "Uses density as the evidence", "Both",
                         "distribution of score", "confidence", "<mark>Gas A and</mark>", "Override with these scores",
                         'tabindex="0"'):
            assert expected in html, expected
        rid = c.get("/v1/reviews").json()["items"][0]["id"]
        assert c.post(f"/v1/reviews/{rid}", json={"action": "accept", "rater_id": "ann", "comment": "ok"}
                      ).status_code == 200
        decided = c.get("/reviews?status=all").text
        assert "Override with these scores" not in decided and "Decisions" in decided and "ann" in decided
        assert "Decided: <strong>accepted</strong>" in decided


def test_concurrent_double_submit_stores_one_decision(make) -> None:
    import threading

    from rubricate.serve.validation import Conflict

    with TestClient(make()) as c:
        reviews = c.app.state.ctx.reviews
        ids = [r["review_id"] for r in c.post("/v1/score", json={"items": [item(i, text=f"unsure {i}")
                                                                           for i in range(5)]}).json()["results"]]
        for rid in ids:
            barrier, outcomes = threading.Barrier(2), []

            def submit(rater: str) -> None:
                barrier.wait()
                try:
                    reviews.decide(rid, "accept", rater)
                    outcomes.append("ok")
                except Conflict:
                    outcomes.append("409")

            threads = [threading.Thread(target=submit, args=(r,)) for r in ("ann", "bob")]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes) == ["409", "ok"], outcomes
        with db.make_sessionmaker(c.app.state.engine)() as s:
            assert s.scalar(select(func.count()).select_from(db.ReviewDecision)) == len(ids)


def test_login_form_never_500(make) -> None:
    with TestClient(make(tokens=[TOKEN]), raise_server_exceptions=False) as c:
        for token, nxt in (("\ud800", "/"), (" " + TOKEN, "//evil"), ("", "\u202e"), (TOKEN, "/reviews?x=\udfff")):
            r = c.post("/login", content=f"token={token}&next={nxt}".encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
            assert r.status_code in (303, 401, 422), (token, nxt, r.status_code)
