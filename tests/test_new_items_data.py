"""Datasets of many items (issue 19): SemEval / Mohler / SAF converters, folds by question, baselines, metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rubricate.data.new_items import (
    fold_tasks,
    load_mohler,
    load_saf,
    load_semeval_2way,
    question_folds,
    round_half_up,
    summary,
    write_task_files,
)
from rubricate.data.records import Record
from rubricate.errors import InputError, TaskFileError
from rubricate.metrics.baselines import (
    baseline_scores,
    cross_validate_baseline,
    fit_cut_points,
    reference_texts,
    target,
    token_overlap,
)
from rubricate.metrics.formulas import classification_metrics
from rubricate.tasks import ReferenceAnswer, TaskRegistry, task_from_dict

BEETLE = """<?xml version="1.0"?>
<question qtype="Q_EXPLAIN_SPECIFIC" id="BULB_Q1" module="FaultFinding" stype="EVALUATE">
  <questionText>Explain why bulb A is off.</questionText>
  <referenceAnswers>
    <referenceAnswer category="BEST" id="answer1" fileID="X">Bulb A is in a damaged path</referenceAnswer>
    <referenceAnswer category="MINIMAL" id="answer2" fileID="Y">the path is broken</referenceAnswer>
  </referenceAnswers>
  <studentAnswers>
    <studentAnswer count="2" answerMatch="answer1" id="b.1" accuracy="correct">A is in a damaged path</studentAnswer>
    <studentAnswer count="1" id="b.2" accuracy="incorrect">the battery is dead</studentAnswer>
  </studentAnswers>
</question>
"""
SCIENTSBANK = """<?xml version="1.0"?>
<question id="ME_65a" module="ME">
  <questionText>What happens to the other bulbs if the middle bulb burns out?</questionText>
  <referenceAnswers><referenceAnswer id="ME_65a-a1">The other bulbs stay lit.</referenceAnswer></referenceAnswers>
  <studentAnswers>
    <studentAnswer id="s.1" accuracy="correct">They stay lit.</studentAnswer>
    <studentAnswer id="s.2" accuracy="incorrect">All of them go out.</studentAnswer>
    <studentAnswer id="s.3" accuracy="correct">The other bulbs stay lit too.</studentAnswer>
  </studentAnswers>
</question>
"""
SAF = """<?xml version='1.0' encoding='utf-8'?>
<question id="5.12">
  <questionText>Name a method against duplicate packets.</questionText>
  <referenceAnswers><referenceAnswer id="5.12.a1">Use sequence numbers.</referenceAnswer></referenceAnswers>
  <studentAnswers>
    <studentAnswer id="5.12.7">
      <response>sequence numbers</response>
      <response_feedback>The response is correct.</response_feedback>
      <score>1.5</score>
      <verification_feedback>Correct</verification_feedback>
    </studentAnswer>
    <studentAnswer id="5.12.8">
      <response>checksums</response>
      <response_feedback>Wrong.</response_feedback>
      <score>0.0</score>
      <verification_feedback>Incorrect</verification_feedback>
    </studentAnswer>
  </studentAnswers>
</question>
"""
MOHLER_HEADER = "id,question,desired_answer,student_answer,score_me,score_other,score_avg\n"


def _semeval_root(tmp_path: Path, beetle: str = BEETLE, scientsbank: str = SCIENTSBANK) -> Path:
    root = tmp_path / "2way"
    for corpus, xml in (("beetle", beetle), ("sciEntsBank", scientsbank)):
        (root / corpus).mkdir(parents=True)
        (root / corpus / "q.xml").write_text(xml, encoding="utf-8")
    return root


# --- the task schema's reference answers ---------------------------------------------------------------------
def _task_doc(**extra) -> dict:
    return {"id": "t", "title": "T", "question": "Q?", "rubric": {"criteria": [{"id": "c", "description": "d"}]},
            **extra}


def test_reference_answers_default_empty_and_validated() -> None:
    assert task_from_dict(_task_doc()).reference_answers == []
    t = task_from_dict(_task_doc(reference_answers=[{"text": "A", "category": "BEST", "id": "r1"}, {"text": "B"}]))
    assert t.reference_answers[0] == ReferenceAnswer(text="A", category="BEST", id="r1")
    with pytest.raises(TaskFileError, match="repeated: \\['r1'\\]"):
        task_from_dict(_task_doc(reference_answers=[{"text": "A", "id": "r1"}, {"text": "B", "id": "r1"}]))
    with pytest.raises(TaskFileError, match="reference_answers.0.text"):
        task_from_dict(_task_doc(reference_answers=[{"text": "   "}]))
    with pytest.raises(TaskFileError, match="reference_answers.0.grade"):
        task_from_dict(_task_doc(reference_answers=[{"text": "A", "grade": 1}]))


# --- SemEval ------------------------------------------------------------------------------------------------
def test_semeval_converts_questions_references_and_labels(tmp_path: Path) -> None:
    tasks, records = load_semeval_2way(_semeval_root(tmp_path))
    assert [t.id for t in tasks] == ["semeval-beetle-BULB_Q1", "semeval-scientsbank-ME_65a"]
    beetle = tasks[0]
    assert beetle.question == "Explain why bulb A is off."
    assert [(r.text, r.category, r.id) for r in beetle.reference_answers] == [
        ("Bulb A is in a damaged path", "BEST", "answer1"), ("the path is broken", "MINIMAL", "answer2")]
    assert beetle.label_keys == ["correct"] and beetle.metadata["module"] == "FaultFinding"
    assert [(r.response_id, r.labels) for r in records[:2]] == [("b.1", {"correct": 1}), ("b.2", {"correct": 0})]
    assert records[0].metadata == {"corpus": "beetle", "answerMatch": "answer1", "count": 2}
    assert summary(records) == {"records": 5, "tasks": 2, "labels": {"correct": {0: 2, 1: 3}}}


def test_semeval_task_files_round_trip(tmp_path: Path) -> None:
    tasks, records = load_semeval_2way(_semeval_root(tmp_path))
    write_task_files(tasks, tmp_path / "tasks")
    reg = TaskRegistry.from_dir(tmp_path / "tasks")
    assert reg.ids == sorted(t.id for t in tasks)
    for t in tasks:
        again = reg.get(t.id)
        assert again.reference_answers == t.reference_answers and again.rubric == t.rubric
        assert again.question == t.question
    assert all(not reg.get(r.task_id).check_labels(r.labels) for r in records)


@pytest.mark.parametrize(("old", "new", "line", "column", "message"), [
    ('id="s.1" accuracy="correct"', 'id="s.1" accuracy="maybe"', 6, "studentAnswer@accuracy", "accuracy 'maybe'"),
    (">They stay lit.<", "> <", 6, "studentAnswer", "empty <studentAnswer> text"),
    ('id="s.3"', 'id="s.1"', 8, "studentAnswer@id", "duplicate response id 's.1'"),
    ('<question id="ME_65a"', '<question id="ME 65a"', 2, "question@id", "cannot be a task id"),
])
def test_semeval_errors_name_file_line_and_element(tmp_path: Path, old: str, new: str, line: int, column: str,
                                                   message: str) -> None:
    root = _semeval_root(tmp_path, scientsbank=SCIENTSBANK.replace(old, new, 1))
    with pytest.raises(InputError, match=message) as e:
        load_semeval_2way(root)
    assert e.value.file.endswith("sciEntsBank/q.xml")
    assert (e.value.line, e.value.column) == (line, column)


def test_semeval_malformed_xml_names_the_line(tmp_path: Path) -> None:
    root = _semeval_root(tmp_path, beetle=BEETLE.replace("</questionText>", "</questionTxt>"))
    with pytest.raises(InputError, match="malformed XML") as e:
        load_semeval_2way(root)
    assert e.value.line == 3 and e.value.file.endswith("beetle/q.xml")
    with pytest.raises(InputError, match="folder not found"):
        load_semeval_2way(tmp_path / "nowhere")


def test_cli_convert_writes_records_and_task_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rubricate.cli import app
    from rubricate.data.records import read_records

    root, out, tasks_dir = _semeval_root(tmp_path), tmp_path / "r.jsonl", tmp_path / "tasks"
    res = CliRunner().invoke(app, ["data", "convert", str(root), "--format", "semeval-2way", "--out", str(out),
                                   "--tasks-out", str(tasks_dir)])
    assert res.exit_code == 0, res.output
    assert "5 records written" in res.output and "2 task files written" in res.output
    assert [r.response_id for r in read_records(out)] == ["b.1", "b.2", "s.1", "s.2", "s.3"]
    assert len(TaskRegistry.from_dir(tasks_dir)) == 2
    res = CliRunner().invoke(app, ["data", "convert", str(root), "--format", "table", "--out", str(out),
                                   "--tasks-out", str(tasks_dir)])
    assert res.exit_code == 2  # a usage error: only the converters make task files


# --- Mohler -------------------------------------------------------------------------------------------------------
def test_mohler_scores_on_half_points_rounded_half_up(tmp_path: Path) -> None:
    path = tmp_path / "mohler.csv"
    path.write_text(MOHLER_HEADER
                    + '1.1,What is a prototype?,"A model, to simulate.",a model,4,3,3.5\n'
                    + '1.1,What is a prototype?,"A model, to simulate.","multi\nline",4.5,3.75,4.125\n'
                    + '1.1,What is a prototype?,"A model, to simulate.",x,4.5,4,4.25\n'
                    + '2.3,Define stack.,LIFO list.,lifo,5,5,5\n', encoding="utf-8")
    tasks, records = load_mohler(path)
    assert [t.id for t in tasks] == ["mohler-1.1", "mohler-2.3"]
    assert tasks[0].primary_scale.max == 10 and tasks[0].reference_answers[0].text == "A model, to simulate."
    assert [(r.response_id, r.labels["score"]) for r in records] == [("1.1.1", 7), ("1.1.2", 8), ("1.1.3", 9),
                                                                     ("2.3.1", 10)]
    assert records[3].metadata["line"] == 6 and records[1].metadata["score_other"] == 3.75
    assert load_mohler(path, points_per_unit=1)[1][2].labels == {"score": 4}
    assert round_half_up(8.5) == 9 and round(8.5) == 8


@pytest.mark.parametrize(("row", "column", "message"), [
    ("1.1,Q?,A.,ans,4,3,3.0", "score_avg", "not the mean"),
    ("1.1,Q?,A.,ans,6,5,5.5", "score_me", "outside 0-5"),
    ("1.1,Other question?,A.,ans,4,4,4", "question", "differs from the question of question 1.1 on line 2"),
    ("1.1,Q?,A.,  ,4,4,4", "student_answer", "empty response text"),
    ("1 1,Q?,A.,ans,4,4,4", "id", "cannot be part of a task id"),
])
def test_mohler_errors_name_row_and_column(tmp_path: Path, row: str, column: str, message: str) -> None:
    path = tmp_path / "mohler.csv"
    path.write_text(MOHLER_HEADER + "1.1,Q?,A.,first,5,5,5\n" + row + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=message) as e:
        load_mohler(path)
    assert (e.value.line, e.value.column) == (3, column)


# --- SAF ------------------------------------------------------------------------------------------------------------
def test_saf_verification_label_is_the_ordinal_score(tmp_path: Path) -> None:
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "5.12.xml").write_text(SAF, encoding="utf-8")
    tasks, records = load_saf(tmp_path / "training")
    assert tasks[0].id == "saf-5.12" and tasks[0].primary_scale.max == 2
    assert [lv.score for lv in tasks[0].primary_scale.levels] == [0, 1, 2]
    assert [(r.response_id, r.labels, r.metadata["points"]) for r in records] == [
        ("5.12.7", {"score": 2}, 1.5), ("5.12.8", {"score": 0}, 0.0)]
    bad = SAF.replace("<verification_feedback>Incorrect", "<verification_feedback>Wrong")
    (tmp_path / "training" / "5.12.xml").write_text(bad, encoding="utf-8")
    with pytest.raises(InputError, match="verification label 'Wrong'") as e:
        load_saf(tmp_path / "training")
    assert (e.value.line, e.value.column) == (16, "verification_feedback")


# --- folds --------------------------------------------------------------------------------------------------------
def _records(n_tasks: int, per_task: int) -> list[Record]:
    return [Record(f"t{t}-{i}", f"t{t}", f"answer {i}", {"correct": i % 2}) for t in range(n_tasks)
            for i in range(per_task + t % 3)]


def test_question_folds_group_by_task_and_are_deterministic() -> None:
    records = _records(11, 4)
    folds = question_folds(records, 5, seed=3)
    assert len(folds) == 5 and folds == question_folds(records, 5, seed=3)
    assert folds != question_folds(records, 5, seed=4)
    tested = sorted(i for _, test in folds for i in test)
    assert tested == list(range(len(records)))  # every record tested exactly once
    for train, test in folds:
        assert not {records[i].task_id for i in train} & {records[i].task_id for i in test}
        assert sorted(train + test) == list(range(len(records)))
    with pytest.raises(ValueError, match="between 2 and the number of tasks"):
        question_folds(records, 12)


# --- baselines --------------------------------------------------------------------------------------------------
def _binary_task(tid: str, ref: str) -> dict:
    return _task_doc(id=tid, rubric={"criteria": [{"id": "correct", "description": "right"}]},
                     reference_answers=[{"text": ref}, {"text": "unrelated words"}])


def test_token_overlap_measures() -> None:
    assert token_overlap("The cat sat", "the cat") == pytest.approx(0.8)
    assert token_overlap("cat cat dog", "cat dog bird", "jaccard") == pytest.approx(2 / 3)
    assert token_overlap("...", "cat") == 0.0


def test_overlap_baseline_fits_threshold_on_training_only() -> None:
    train_tasks = [task_from_dict(_binary_task("a", "the bulbs stay lit")),
                   task_from_dict(_binary_task("b", "the path is closed"))]
    train = [Record("a1", "a", "the bulbs stay lit", {"correct": 1}), Record("a2", "a", "nothing", {"correct": 0}),
             Record("b1", "b", "path is closed", {"correct": 1}), Record("b2", "b", "no idea at all", {"correct": 0})]
    test_tasks = [task_from_dict(_binary_task("c", "voltage is zero"))]
    test = [Record("c1", "c", "the voltage is zero", {"correct": 1}), Record("c2", "c", "blue", {"correct": 0})]
    assert baseline_scores("overlap", train_tasks, train, test_tasks, test) == {"c1": 1, "c2": 0}
    # the majority is pooled over the training tasks: 3 of 4 correct -> 1 for everyone
    train[3].labels["correct"] = 1
    assert baseline_scores("majority", train_tasks, train, test_tasks, test) == {"c1": 1, "c2": 1}


def test_ordinal_cut_points_follow_the_training_distribution_across_scales() -> None:
    sim = np.linspace(0, 1, 101)
    cuts = fit_cut_points(sim, np.array([0] * 50 + [1] * 30 + [2] * 21), 3)
    assert np.bincount((sim[:, None] >= cuts[None, :]).sum(axis=1)).tolist() == [50, 30, 21]
    level_docs = [{"score": 3, "description": "names three key elements"}]
    train_task = task_from_dict(_task_doc(id="tr", rubric={"scales": [{"max": 3, "levels": level_docs}]}))
    assert reference_texts(train_task) == ["names three key elements"] and target(train_task) == ("score", 0, 3)
    # training scores 0 and 3 on 0-3 are fractions 0 and 1: levels 0 and 2 of a 0-2 test item
    train = [Record(f"r{i}", "tr", text, {"score": s}) for i, (text, s) in
             enumerate([("nothing", 0), ("blue", 0), ("names three key elements", 3), ("three key elements", 3)])]
    test_task = task_from_dict(_task_doc(id="te", reference_answers=[{"text": "cells divide"}],
                                         rubric={"scales": [{"max": 2}]}))
    test = [Record("x1", "te", "cells divide fast", {"score": 2}), Record("x2", "te", "rocks", {"score": 0})]
    assert baseline_scores("overlap", [train_task], train, [test_task], test) == {"x1": 2, "x2": 0}


def test_cross_validate_baseline_reports_pooled_and_per_fold() -> None:
    tasks = [task_from_dict(_binary_task(f"t{t}", "stay lit")) for t in range(6)]
    records = [Record(f"t{t}-{i}", f"t{t}", "stay lit" if i % 2 else "go out", {"correct": i % 2})
               for t in range(6) for i in range(4)]
    result = cross_validate_baseline("overlap", tasks, records, n_folds=3)
    assert result["pooled"] == {"accuracy": 1.0, "macro_f1": 1.0, "weighted_f1": 1.0}
    assert len(result["folds"]) == 3 and len(result["predictions"]) == len(records)


def test_cosine_baseline_embeds_once_and_scores_identical_text_as_similar(tmp_path: Path) -> None:
    from tiny_models import make_tiny_encoder

    from rubricate.metrics.baselines import TextEmbedder

    embedder = TextEmbedder(str(make_tiny_encoder(tmp_path / "enc")), max_length=32, batch_size=2)
    vecs = embedder(["the cell", "acid rain is more", "the cell"])
    assert vecs.shape == (3, 32) and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vecs[0], vecs[2]) and len(embedder._cache) == 2
    train_tasks = [task_from_dict(_binary_task("a", "the cell membrane"))]
    train = [Record("a1", "a", "the cell membrane", {"correct": 1}), Record("a2", "a", "7 9 5 x", {"correct": 0})]
    test_tasks = [task_from_dict(_binary_task("b", "acid rain"))]
    test = [Record("b1", "b", "acid rain", {"correct": 1}), Record("b2", "b", "7 9 5 x", {"correct": 0})]
    assert baseline_scores("cosine", train_tasks, train, test_tasks, test, embedder=embedder) == {"b1": 1, "b2": 0}


def test_classification_metrics_match_definitions() -> None:
    m = classification_metrics([1, 1, 1, 0], [1, 1, 0, 0])
    f1_pos, f1_neg = 2 * 2 / (2 * 2 + 0 + 1), 2 * 1 / (2 * 1 + 1 + 0)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((f1_pos + f1_neg) / 2)
    assert m["weighted_f1"] == pytest.approx(0.75 * f1_pos + 0.25 * f1_neg)
    assert classification_metrics([1, 1], [1, 1], labels=[0, 1])["macro_f1"] == 0.5
    assert all(math.isnan(v) for v in classification_metrics([], []).values())


# --- the real datasets (skipped without ../shared/data) -----------------------------------------------------------
def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def test_real_semeval_counts_match_readme(shared_data: Path) -> None:
    root = _need(shared_data / "semeval2013-task7-2way" / "training" / "2way")
    tasks, records = load_semeval_2way(root)
    corpus = {c: [r for r in records if r.metadata["corpus"] == c] for c in ("beetle", "sciEntsBank")}
    assert summary(corpus["beetle"]) == {"records": 3941, "tasks": 47, "labels": {"correct": {0: 2276, 1: 1665}}}
    assert summary(corpus["sciEntsBank"]) == {"records": 4969, "tasks": 135, "labels": {"correct": {0: 2961, 1: 2008}}}
    assert sum(len(t.reference_answers) for t in tasks) == 205 + 135
    assert sum("answerMatch" in r.metadata for r in corpus["beetle"]) == 2917
    train, test = question_folds(records, 5, seed=0)[0]
    train_tasks, _ = fold_tasks(tasks, records, train)
    test_tasks, _ = fold_tasks(tasks, records, test)
    assert not {t.id for t in train_tasks} & {t.id for t in test_tasks}


def test_real_mohler_and_saf_counts_match_readme(shared_data: Path) -> None:
    tasks, records = load_mohler(_need(shared_data / "mohler" / "mohler_dataset_edited.csv"))
    assert (len(tasks), len(records)) == (81, 2273)
    per_task = {t.id: sum(r.task_id == t.id for r in records) for t in tasks}
    assert (min(per_task.values()), max(per_task.values())) == (24, 31)
    assert np.mean([r.metadata["score_avg"] for r in records]) == pytest.approx(4.165, abs=5e-4)
    tasks, records = load_saf(_need(shared_data / "saf" / "v2.0" / "training"))
    assert summary(records) == {"records": 2127, "tasks": 26, "labels": {"score": {0: 110, 1: 702, 2: 1315}}}
