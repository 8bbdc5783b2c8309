"""The task-text-conditioned student (issue 19) on tiny random models: statements, shapes, checkpoint round trip,
zero-shot scoring of a task never trained on, few-shot heads that leave every other task unchanged."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rubricate.errors import UnknownTaskError
from rubricate.labels import LabelEncoding
from rubricate.student.scorer import Prediction, Scorer
from rubricate.student.task_text import TaskTextConfig, TaskTextModel, pool_logits
from rubricate.student.task_text_data import (
    TaskTextOptions,
    label_statements,
    pair_ids,
    pool_units,
    reference_texts,
    task_statements,
)
from rubricate.student.task_text_scorer import TaskTextScorer
from rubricate.student.task_text_trainer import (
    FewShotArguments,
    TaskTextArguments,
    fit_few_shot,
    fit_head,
    save_few_shot,
    train_task_text,
)
from tiny_models import make_tiny_encoder, tiny_records, tiny_tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_text")
    enc = make_tiny_encoder(root / "enc")
    reg = tiny_tasks()
    train_reg = reg.subset(["tiny-ord", "tiny-crit"])
    recs = tiny_records("tiny-ord", 60) + tiny_records("tiny-crit", 60)
    args = TaskTextArguments(encoder=str(enc), output_dir=str(root / "ck"), epochs=8, batch_size=16,
                             lr_encoder=3e-3, lr_head=3e-3, max_length=48, seed=3)
    res = train_task_text(train_reg, recs, args)
    return {"root": root, "enc": enc, "reg": reg, "res": res, "args": args}


def test_statements_follow_the_rubric_kind() -> None:
    reg = tiny_tasks()
    opts = TaskTextOptions()
    ordinal = reg.get("tiny-ord")
    enc = LabelEncoding.from_task(ordinal)
    assert [label_statements(ordinal, enc, s, 3) for s in enc.specs] == [
        ["score at least 1 of 2: 1 key words"], ["score at least 2 of 2: 2 key words"]]
    crit = reg.get("tiny-crit")
    enc = LabelEncoding.from_task(crit)
    assert label_statements(crit, enc, enc.specs[1], 3) == ["criterion: mentions energy"]
    # a 2-way item with reference answers: one statement per reference, best categories first, capped
    refs = [SimpleNamespace(text="keyword answer", category="KEYWORD"), SimpleNamespace(text="best", category="BEST"),
            SimpleNamespace(text="good one", category="GOOD"), SimpleNamespace(text="no category")]
    two_way = SimpleNamespace(reference_answers=refs, criteria=[SimpleNamespace(id="correct", description="x")])
    assert reference_texts(two_way, opts.max_references) == ["best", "good one", "keyword answer"]
    one = LabelEncoding("t", [enc.specs[0]], [])
    assert label_statements(two_way, one, one.specs[0], 2) == ["reference answer: best", "reference answer: good one"]


def test_reference_answers_of_an_ordinal_item_precede_its_question() -> None:
    from transformers import BertTokenizerFast

    from rubricate.tasks import Task, task_from_dict

    if "reference_answers" not in Task.model_fields:
        pytest.skip("the task schema has no reference_answers yet")
    task = task_from_dict({"id": "t", "title": "t", "question": "why is rain acid",
                           "reference_answers": [{"text": "gas in the water"}],
                           "rubric": {"scales": [{"id": "score", "min": 0, "max": 2}]}})
    from tiny_models import tiny_vocab

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(tiny_vocab())}, do_lower_case=True)
    st = task_statements(task, tok, TaskTextOptions())
    assert tok.decode(st.question_ids).startswith("reference answers : gas in the water question : why")
    assert [tok.decode(x) for x in st.statement_ids] == ["score at least 1 of 2", "score at least 2 of 2"]
    assert st.label_of == [0, 1]


def test_pair_ids_truncate_the_question_first() -> None:
    st, q, r = [10, 11], list(range(100, 140)), [20, 21, 22]
    ids = pair_ids(st, q, r, cls_id=1, sep_id=2, max_length=16)
    assert len(ids) == 16
    assert ids[:3] == [1, 10, 11] and ids[-5:] == [2, 20, 21, 22, 2]  # statement and response intact
    assert ids[3:-5] == q[:8]
    short = pair_ids(st, [100], r, 1, 2, 64)
    assert short == [1, 10, 11, 100, 2, 20, 21, 22, 2]


def test_model_shapes_and_pooling(setup) -> None:
    from transformers import AutoModel

    cfg = TaskTextConfig(encoder=str(setup["enc"]), head_hidden=8)
    model = TaskTextModel(cfg, AutoModel.from_pretrained(str(setup["enc"]), add_pooling_layer=False)).eval()
    ids = torch.randint(5, 40, (5, 7))
    mask = torch.ones(5, 7, dtype=torch.long)
    mask[0, 4:] = 0
    out = model(ids, mask)
    assert out.logits.shape == (5,) and out.pooled.shape == (5, cfg.hidden_size)
    unit = torch.tensor([0, 0, 1, 2, 2])
    z = torch.tensor([1.0, 3.0, -1.0, 0.0, 2.0])
    assert pool_logits(z, unit, 3, "max").tolist() == [3.0, -1.0, 2.0]
    assert pool_logits(z, unit, 3, "mean").tolist() == [2.0, -1.0, 1.0]
    np_z, pick = pool_units(z.numpy(), unit.numpy(), 3, "max")
    assert np_z.tolist() == [3.0, -1.0, 2.0] and pick.tolist() == [1, 2, 4]


def test_training_writes_a_task_text_checkpoint(setup) -> None:
    res = setup["res"]
    doc = json.loads((res.checkpoint_dir / "config.json").read_text())
    assert doc["architecture"] == "task_text"
    assert doc["task_sources"] == {"tiny-ord": "trained", "tiny-crit": "trained"}
    assert res.n_units == 60 * 2 + 60 * 2  # two labels per response in both tasks
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < losses[0]


def test_scorer_round_trip_and_zero_shot_task(setup) -> None:
    ck = setup["res"].checkpoint_dir
    scorer = Scorer.from_pretrained(ck, tasks=setup["reg"])
    assert isinstance(scorer, TaskTextScorer)
    texts = ["acid rain and the cell", "water gas light energy", "the plant is black"]
    tids = ["tiny-ord", "tiny-crit", "tiny-new"]
    preds = scorer.predict(tids, texts, response_ids=["a", "b", "c"])
    assert all(isinstance(p, Prediction) for p in preds)
    assert [p.source for p in preds] == ["trained", "trained", "zero_shot"]
    assert set(preds[2].scores) == {"score"} and 0 <= preds[2].scores["score"] <= 3
    assert len(preds[2].score_distribution["score"]) == 4
    assert abs(sum(preds[2].score_distribution["score"]) - 1.0) < 1e-6
    assert set(preds[1].probs) == {"E1", "E2"} and preds[2].response_id == "c"
    again = TaskTextScorer.from_pretrained(ck, tasks=setup["reg"]).predict(tids, texts)
    assert [p.probs for p in again] == [p.probs for p in preds]
    # batch composition does not change a row's prediction
    alone = scorer.predict(["tiny-new"], [texts[2]])[0]
    assert alone.probs == pytest.approx(preds[2].probs, abs=1e-5)
    # without the registry the checkpoint knows only its training tasks
    with pytest.raises(UnknownTaskError):
        Scorer.from_pretrained(ck).predict(["tiny-new"], ["water"])


def test_few_shot_leaves_other_tasks_unchanged(setup, tmp_path) -> None:
    import shutil

    ck = tmp_path / "ck"
    shutil.copytree(setup["res"].checkpoint_dir, ck)
    reg = setup["reg"]
    probe = tiny_records("tiny-ord", 8, seed=5) + tiny_records("tiny-crit", 8, seed=5)
    before = Scorer.from_pretrained(ck, tasks=reg).predict([r.task_id for r in probe], [r.text for r in probe])
    scorer = TaskTextScorer.from_pretrained(ck)  # the new task comes with its labelled answers only
    shots = tiny_records("tiny-new", 25, seed=9)
    assert "tiny-new" not in scorer.tasks
    head = fit_few_shot(scorer, reg.get("tiny-new"), shots, FewShotArguments(l2=0.1))
    save_few_shot(ck, reg.get("tiny-new"), head)
    after_scorer = Scorer.from_pretrained(ck)
    after = after_scorer.predict([r.task_id for r in probe], [r.text for r in probe])
    assert [p.probs for p in after] == [p.probs for p in before]
    assert after_scorer.predict(["tiny-new"], ["water gas"])[0].source == "few_shot"
    # the head fits its examples better than the zero-shot logits did
    enc = LabelEncoding.from_task(reg.get("tiny-new"))
    y = enc.encode_many([r.labels for r in shots])
    z0, h = after_scorer.zero_shot_outputs(["tiny-new"] * len(shots), [r.text for r in shots])
    fitted, _ = after_scorer.predict_logits(["tiny-new"] * len(shots), [r.text for r in shots])

    def logloss(z: np.ndarray) -> float:
        p = 1 / (1 + np.exp(-z))
        return float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))

    assert logloss(fitted[:, :3].astype(np.float64)) < logloss(z0[:, :3])


def test_fit_head_prior_and_features() -> None:
    rng = np.random.default_rng(0)
    n, H = 80, 6
    h = rng.normal(size=(n, 1, H))
    y = (h[:, 0, 2] > 0).astype(float)[:, None]
    z0 = np.zeros((n, 1))
    full = fit_head(z0, h, y, FewShotArguments(l2=0.01))
    assert np.argmax(np.abs(full.w[0])) == 2
    calib = fit_head(z0, h, y, FewShotArguments(features=False))
    assert np.all(calib.w == 0)
    # a label with no examples keeps the zero-shot prior exactly
    empty = fit_head(z0, h, np.full((n, 1), np.nan), FewShotArguments())
    assert empty.a.tolist() == [1.0] and empty.b.tolist() == [0.0]


def test_cli_train_task_text_and_few_shot(setup, tmp_path) -> None:
    import yaml
    from typer.testing import CliRunner

    from rubricate.cli import app
    from rubricate.data.records import write_records

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for t in setup["reg"].snapshot():
        (tasks_dir / f"{t['id']}.yaml").write_text(yaml.safe_dump(t))
    data = write_records(tiny_records("tiny-ord", 20), tmp_path / "train.jsonl")
    runner = CliRunner()
    ck = tmp_path / "ck"
    res = runner.invoke(app, ["train-task-text", "-t", str(tasks_dir / "tiny-ord.yaml"), "-d", str(data),
                              "-o", str(ck), "-s", f"encoder={setup['enc']}", "-s", "max_steps=2",
                              "-s", "max_length=32"])
    assert res.exit_code == 0, res.output
    line = res.output[res.output.index('{"checkpoint"'):].splitlines()[0]  # HF progress bars share the output
    assert json.loads(line)["units"] == 20 * 2  # two cumulative labels per response
    shots = write_records(tiny_records("tiny-new", 10), tmp_path / "shots.jsonl")
    res = runner.invoke(app, ["few-shot", "-m", str(ck), "--task", str(tasks_dir / "tiny-new.yaml"),
                              "-d", str(shots)])
    assert res.exit_code == 0, res.output
    doc = json.loads((ck / "config.json").read_text())
    assert doc["task_sources"] == {"tiny-ord": "trained", "tiny-new": "few_shot"}
    assert doc["few_shot"]["tiny-new"]["n_examples"] == 10


def test_predict_scores_a_new_task_file_zero_shot(setup, tmp_path) -> None:
    """`rubricate predict --tasks DIR` with a task-text checkpoint scores an item it never saw, and says so."""
    import csv

    from typer.testing import CliRunner

    from rubricate.cli import app
    from rubricate.data.new_items import write_task_files

    tasks_dir = tmp_path / "tasks"
    write_task_files(list(setup["reg"]), tasks_dir)
    inp = tmp_path / "in.csv"
    inp.write_text("response_id,task_id,text\na,tiny-new,the plant is black\nb,tiny-ord,acid rain and the cell\n")
    out = tmp_path / "out.csv"
    r = CliRunner().invoke(app, ["predict", "--model", str(setup["res"].checkpoint_dir), "--input", str(inp),
                                 "--output", str(out), "--tasks", str(tasks_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    rows = {row["response_id"]: row for row in csv.DictReader(out.open())}
    assert rows["a"]["source"] == "zero_shot" and rows["b"]["source"] == "trained"
    assert rows["a"]["score.score"] != ""
