"""New items on day one, the product side: ``tasks new`` / the template, active selection, ``reviews next``
and the queue's uncertainty order, the zero-shot badge and review threshold of the server, the report's
per-item score source."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from rubricate.cli import app
from rubricate.data.records import Record, write_records
from rubricate.errors import InputError
from rubricate.serve.app import create_app
from rubricate.serve.settings import ServeSettings
from rubricate.student.active import SelectionOptions, select, source_for, task_sources, uncertainty
from rubricate.tasks import load_task
from serve_fakes import TASKS, FakeScorer

runner = CliRunner()


def failure(result) -> str:
    """The user error a verb stopped with (``rubricate.cli.main`` prints it as one line and exits 2)."""
    assert result.exit_code != 0 and isinstance(result.exception, InputError), result.output
    return str(result.exception)


# --- rubricate tasks new / template ----------------------------------------------------------------------
def test_tasks_new_writes_a_task_file_that_validates(tmp_path: Path) -> None:
    out = tmp_path / "tasks" / "bulb-1.yaml"
    levels = "1: Says the bulb is in a closed path\n   with the battery.\n0: Anything else."
    r = runner.invoke(app, ["tasks", "new", "--id", "bulb-1", "--title", "Bulb", "--question", "Why?\nExplain.",
                            "-r", "Bulb A is in a closed path with the battery.", "-r", "The circuit is closed.",
                            "--levels", levels, "--grade", "5", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 reference answer" not in r.output and "2 reference answer(s)" in r.output
    task = load_task(out)
    assert [a.text for a in task.reference_answers] == ["Bulb A is in a closed path with the battery.",
                                                        "The circuit is closed."]
    sc = task.primary_scale
    assert (sc.id, sc.min, sc.max) == ("score", 0, 1) and task.grade == 5 and task.question == "Why?\nExplain."
    assert sc.level(1).description == "Says the bulb is in a closed path with the battery."  # continuation line
    v = runner.invoke(app, ["tasks", "validate", str(out.parent)])
    assert v.exit_code == 0 and "1 valid, 0 problem(s)" in v.output
    again = runner.invoke(app, ["tasks", "new", "--id", "b", "--title", "B", "--question", "q", "--levels", "1: a\n0: b",
                                "-o", str(out)])
    assert "exists" in failure(again)  # never overwrites without --force


def test_tasks_new_criteria_from_a_file_and_errors_name_the_line(tmp_path: Path) -> None:
    crit = tmp_path / "crit.txt"
    crit.write_text("# analytic\nE1: States the claim.\nE2: Cites two properties.\n", encoding="utf-8")
    out = tmp_path / "gas.yaml"
    r = runner.invoke(app, ["tasks", "new", "--id", "gas", "--title", "Gas", "--question", "Same substance?",
                            "--criteria", f"@{crit}", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert [c.id for c in load_task(out).criteria] == ["E1", "E2"]
    crit.write_text("E1: fine\nthis line has no id\n", encoding="utf-8")
    bad = runner.invoke(app, ["tasks", "new", "--id", "gas2", "--title", "Gas", "--question", "q",
                              "--criteria", f"@{crit}", "-o", str(tmp_path / "gas2.yaml")])
    assert "line 2" in failure(bad) and "criteria" in failure(bad)
    assert not (tmp_path / "gas2.yaml").exists()
    none = runner.invoke(app, ["tasks", "new", "--id", "x", "--title", "X", "--question", "q", "-o",
                               str(tmp_path / "x.yaml")])
    assert "rubric" in failure(none)


def test_template_is_a_valid_task_with_reference_answers(tmp_path: Path) -> None:
    out = tmp_path / "t.yaml"
    r = runner.invoke(app, ["tasks", "template", "-o", str(out)])
    assert r.exit_code == 0, r.output
    task = load_task(out)
    assert task.reference_answers and task.primary_scale is not None
    assert "reference_answers" in runner.invoke(app, ["tasks", "template"]).output


# --- active selection ------------------------------------------------------------------------------------
def _probs() -> np.ndarray:
    rng = np.random.default_rng(0)
    sure = np.tile([0.96, 0.02, 0.02], (20, 1))
    unsure = rng.dirichlet([5, 5, 5], size=10)
    return np.vstack([sure, unsure])  # rows 20..29 are the uncertain ones


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "diversity", "hybrid"])
def test_select_is_deterministic_and_honours_exclude(strategy: str) -> None:
    p = _probs()
    a = select(strategy, p, 5, seed=3, exclude=[20, 21])
    assert a == select(strategy, p, 5, seed=3, exclude=[20, 21])
    assert len(a) == len(set(a)) == 5 and not {20, 21} & set(a)
    assert len(select(strategy, p, 100, exclude=range(25))) == 5  # only what is left
    assert select(strategy, p, 0) == []


def test_uncertainty_picks_the_uncertain_answers_under_every_measure() -> None:
    p = _probs()
    for measure in ("entropy", "margin", "least_confidence"):
        picked = select("uncertainty", p, 10, options=SelectionOptions(measure=measure))
        assert set(picked) == set(range(20, 30)), measure
    # cut_distance reads the expected score: 0.5 sits on the cut between 0 and 1; a spread centred on a
    # score counts as certain of that score's side (an ordinal view, unlike entropy)
    u = uncertainty(np.array([[0.5, 0.5, 0.0], [0.9, 0.1, 0.0], [0.25, 0.5, 0.25]]), "cut_distance")
    assert u[0] > u[1] and u[0] > u[2]


def test_diversity_covers_clusters_and_hybrid_stays_in_the_uncertain_pool() -> None:
    emb = np.vstack([np.tile([1.0, 0.0], (10, 1)), np.tile([0.0, 1.0], (10, 1)), np.tile([-1.0, 0.0], (10, 1))])
    emb += np.random.default_rng(1).normal(0, 0.01, emb.shape)
    p = _probs()
    picks = select("diversity", p, 3, embeddings=emb, seed=0)
    assert sorted(i // 10 for i in picks) == [0, 1, 2]
    hybrid = select("hybrid", p, 2, embeddings=emb, options=SelectionOptions(pool_factor=2.0))
    assert set(hybrid) <= set(range(20, 30))
    # the already-scored answers act as centres: a pick never lands in their cluster first
    far = select("diversity", p, 1, embeddings=emb, exclude=list(range(0, 10)) + list(range(20, 30)))
    assert far[0] // 10 == 1


def test_select_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="strategy"):
        select("best", _probs(), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        select("random", np.ones(3), 2)
    with pytest.raises(ValueError, match="exclude"):
        select("random", _probs(), 2, exclude=[99])
    with pytest.raises(ValueError, match="embeddings"):
        select("diversity", _probs(), 2, embeddings=np.ones((3, 2)))


# --- the server: zero-shot badge, stricter threshold, queue order, reviews next -----------------------------
class NewItemScorer(FakeScorer):
    """read-2 is a zero-shot item (the checkpoint's task_sources); texts with 'mid' get confidence 0.7."""

    doc = {"task_sources": {"sci-1": "trained", "read-2": "zero_shot"}}

    def predict(self, task_ids, texts, batch_size=64, response_ids=None):
        out = super().predict(task_ids, texts, batch_size, response_ids)
        for pred, tid, text in zip(out, task_ids, texts):
            if "mid" not in text:
                continue
            enc = self.encodings[tid]
            p = np.full(enc.n_labels, 0.7)
            pred.probs = {n: 0.7 for n in enc.names}
            pred.scores = {k: int(v[0]) for k, v in enc.decode_scores(p[None, :]).items()}
            pred.score_distribution = {s.id: [float(x) for x in enc.score_distribution(p[None, :], s.id)[0]]
                                       for s in enc.scales}
            pred.confidence = 0.7
        return out


@pytest.fixture
def new_item_client(tmp_path: Path):
    settings = ServeSettings(database_url=f"sqlite:///{tmp_path}/serve.db")
    with TestClient(create_app(settings, scorer=NewItemScorer())) as c:
        yield c


def _score(c: TestClient, task_id: str, texts: dict[str, str]) -> list[dict]:
    items = [{"task_id": task_id, "text": t, "response_id": rid} for rid, t in texts.items()]
    r = c.post("/v1/score", json={"items": items})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def test_sources_come_from_the_checkpoint_or_the_scorer() -> None:
    sc = NewItemScorer()
    assert task_sources(sc) == {"sci-1": "trained", "read-2": "zero_shot"}
    assert task_sources(FakeScorer()) == {"sci-1": "trained", "read-2": "trained"}

    class Asks(FakeScorer):
        def source(self, task_id: str) -> str:
            return "few_shot" if task_id == "sci-1" else "zero_shot"

    assert source_for(Asks(), "sci-1") == "few_shot" and task_sources(Asks())["read-2"] == "zero_shot"


def test_zero_shot_item_has_a_badge_and_a_stricter_review_threshold(new_item_client) -> None:
    c = new_item_client
    trained = _score(c, "sci-1", {"a": "mid answer"})[0]
    zero = _score(c, "read-2", {"b": "mid answer"})[0]
    assert trained["confidence"] == zero["confidence"] == pytest.approx(0.7)
    assert not trained["needs_review"] and zero["needs_review"] and zero["review_id"]
    queue = c.get("/v1/reviews").json()["items"]
    assert [q["response_id"] for q in queue] == ["b"]
    assert queue[0]["details"]["threshold"] == ServeSettings().review_confidence_zero_shot
    home = c.get("/").text
    assert "read-2 — Reading (zero-shot)" in home and "sci-1 — Gas densities</option>" in home
    data = json.loads(home.split('id="tasks-data" type="application/json">')[1].split("</script>")[0])
    by_id = {t["id"]: t for t in data}
    assert by_id["read-2"]["source"] == "zero_shot" and by_id["read-2"]["review_threshold"] == 0.8
    assert by_id["sci-1"]["source"] == "trained" and by_id["sci-1"]["review_threshold"] == 0.6
    page = c.get("/reviews").text
    assert 'class="badge source zero_shot"' in page and "least confident first" in page


def test_queue_order_uncertainty_and_reviews_next(new_item_client, tmp_path: Path) -> None:
    c = new_item_client
    _score(c, "read-2", {"m1": "mid one", "u1": "unsure one", "m2": "mid two", "u2": "unsure two", "ok": "clear"})
    plain = [q["response_id"] for q in c.get("/v1/reviews").json()["items"]]
    assert plain == ["m1", "u1", "m2", "u2"]
    ordered = c.get("/v1/reviews?order=uncertainty").json()["items"]
    assert [q["response_id"] for q in ordered][:2] == sorted(["u1", "u2"], key=lambda r: next(
        q["student"]["confidence"] for q in ordered if q["response_id"] == r))
    assert [q["student"]["confidence"] for q in ordered] == sorted(q["student"]["confidence"] for q in ordered)
    assert c.get("/v1/reviews?order=best").status_code == 422
    assert "least confident first" in c.get("/reviews?order=uncertainty").text
    u1 = next(q for q in ordered if q["response_id"] == "u1")
    assert c.post(f"/v1/reviews/{u1['id']}", json={"action": "accept", "rater_id": "ann"}).status_code == 200

    from rubricate.serve.reviews import NextOptions, next_to_score

    url = c.app.state.settings.database_url
    batch = next_to_score(url, "read-2", NextOptions(n=3))
    ids = [it["response_id"] for it in batch.items]
    assert ids[0] == "u2" and "u1" not in ids and batch.n_scored == 1 and batch.n_candidates == 4
    assert batch.items[0]["review_id"] is not None and batch.label_keys == ["score"]
    assert batch.n_without_student == 0
    from rubricate.serve import db

    database = db.Database(url)
    with database.write() as s:  # an answer stored by the agents path only: no student result to rank it by
        s.add(db.Response(task_id="read-2", response_id="agents-only", text="t", text_sha256=db.text_digest("t")))
    database.dispose()
    assert next_to_score(url, "read-2", NextOptions(n=10)).n_without_student == 1
    out = tmp_path / "next.csv"
    r = runner.invoke(app, ["reviews", "next", "--task", "read-2", "-n", "2", "--strategy", "hybrid", "--db", url,
                            "-o", str(out)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 2 and rows[0]["score"] == "" and rows[0]["task_id"] == "read-2" and "u1" not in {
        row["response_id"] for row in rows}
    missing = runner.invoke(app, ["reviews", "next", "--task", "nope", "--db", url])
    assert "no response of task 'nope'" in failure(missing)


def test_reviews_next_ranks_an_analytic_item_on_its_criteria(tmp_path: Path) -> None:
    from rubricate.serve import db
    from rubricate.serve.reviews import distribution_matrix

    p = db.Prediction(probs={"E1": 0.5, "E2": 0.9}, score_distribution={}, scores={}, confidence=0.5)
    m = distribution_matrix([p])
    assert m.shape == (1, 4) and m.sum() == pytest.approx(1.0) and m[0, 3] == pytest.approx(0.45)


# --- the report: where each item's scores came from ------------------------------------------------------
def _report_inputs(tmp_path: Path, sources: dict[str, str | None]) -> tuple[Path, Path, Path]:
    tdir = tmp_path / "tasks"
    tdir.mkdir(exist_ok=True)
    for t in TASKS:
        (tdir / f"{t['id']}.yaml").write_text(yaml.safe_dump(t), encoding="utf-8")
    recs, preds = [], []
    for i in range(12):
        recs.append(Record(f"s{i}", "sci-1", "x", {"E1": i % 2, "E2": 1, "score": i % 3}))
        recs.append(Record(f"r{i}", "read-2", "y", {"score": i % 4}))
        for rid, tid, sc in ((f"s{i}", "sci-1", {"E1": i % 2, "E2": 1, "score": (i + i // 5) % 3}),
                             (f"r{i}", "read-2", {"score": (i + i // 4) % 4})):
            row = {"task_id": tid, "response_id": rid, "scores": sc}
            if sources.get(tid) is not None:
                row["source"] = sources[tid]
            preds.append(row)
    gold = write_records(recs, tmp_path / "gold.jsonl")
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps(p) + "\n" for p in preds), encoding="utf-8")
    return tdir, gold, pred


def test_report_says_per_item_where_the_scores_came_from(tmp_path: Path) -> None:
    tdir, gold, pred = _report_inputs(tmp_path, {"sci-1": None, "read-2": "zero_shot"})
    args = ["report", "--gold", str(gold), "--pred", str(pred), "--tasks", str(tdir), "--out", str(tmp_path / "o"),
            "--n-boot", "0", "--formats", "json,md", "--no-plots"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "o" / "report.json").read_text())
    assert d["settings"]["score_sources"] == {"sci-1": "trained", "read-2": "zero_shot"}
    md = (tmp_path / "o" / "report.md").read_text()
    assert "scores from" in md and "| read-2 | zero-shot |" in md and "Scores from: trained head." in md


def test_report_score_sources_mixed_and_bad(tmp_path: Path) -> None:
    from rubricate.metrics.workflow import score_sources

    tdir, gold, pred = _report_inputs(tmp_path, {"sci-1": "few_shot", "read-2": "zero_shot"})
    lines = pred.read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({**first, "source": "trained"})
    pred.write_text("\n".join(lines) + "\n")
    assert score_sources(pred, ["sci-1", "read-2"]) == {"sci-1": "mixed (few_shot 11, trained 1)",
                                                       "read-2": "zero_shot"}
    lines[2] = json.dumps({**json.loads(lines[2]), "source": "agents"})
    pred.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line 3.*source"):
        score_sources(pred, ["sci-1", "read-2"])


def test_prediction_sources_of_scorer_outputs() -> None:
    from types import SimpleNamespace as NS

    from rubricate.metrics.workflow import prediction_sources

    preds = [NS(task_id="a", source="zero_shot"), NS(task_id="a", source="zero_shot"), NS(task_id="b")]
    assert prediction_sources(preds, ["a", "b", "c"]) == {"a": "zero_shot", "b": "trained", "c": "trained"}


# --- end to end with a real (tiny) task-text student: a task it never trained on is zero-shot ---------------
def test_server_with_a_task_text_student_badges_and_routes_the_new_item(tmp_path: Path) -> None:
    trainer = pytest.importorskip("rubricate.student.task_text_trainer")
    from rubricate.serve.reviews import NextOptions, next_to_score
    from rubricate.serve.app import load_scorer
    from tiny_models import make_tiny_encoder, tiny_records, tiny_tasks

    reg = tiny_tasks()
    args = trainer.TaskTextArguments(encoder=str(make_tiny_encoder(tmp_path / "enc")), output_dir=str(tmp_path / "ck"),
                                     epochs=1, batch_size=16, max_length=48, seed=3)
    recs = tiny_records("tiny-ord", 20) + tiny_records("tiny-crit", 20)
    res = trainer.train_task_text(reg.subset(["tiny-ord", "tiny-crit"]), recs, args)
    tdir = tmp_path / "tasks"  # the server's --tasks: the new item's file beside the trained ones
    tdir.mkdir()
    for t in reg:
        (tdir / f"{t.id}.yaml").write_text(yaml.safe_dump(t.model_dump(mode="json")), encoding="utf-8")
    scorer = load_scorer(ServeSettings(model_dir=res.checkpoint_dir, tasks_dir=tdir))
    assert task_sources(scorer) == {"tiny-ord": "trained", "tiny-crit": "trained", "tiny-new": "zero_shot"}
    # thresholds at the extremes: no trained result needs review, every zero-shot one does
    settings = ServeSettings(database_url=f"sqlite:///{tmp_path}/s.db", review_confidence=0.0,
                             review_confidence_zero_shot=1.0)
    with TestClient(create_app(settings, scorer=scorer)) as c:
        assert "tiny-new — tiny-new (zero-shot)" in c.get("/").text
        new = _score(c, "tiny-new", {f"n{i}": t.text for i, t in enumerate(tiny_records("tiny-new", 6))})
        old = _score(c, "tiny-ord", {"o1": "acid rain and the cell"})
        assert all(r["needs_review"] for r in new) and not old[0]["needs_review"]
        assert {q["details"]["threshold"] for q in c.get("/v1/reviews?limit=50").json()["items"]} == {1.0}
        batch = next_to_score(settings.database_url, "tiny-new", NextOptions(n=3, strategy="hybrid"))
    assert len(batch.items) == 3 and batch.n_candidates == 6 and batch.label_keys == ["score"]
