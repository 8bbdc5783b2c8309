"""Decoders fit to the metric, the second rater in training, and refit (issue: agreement with human raters)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from rubricate.data.records import Record
from rubricate.labels import LabelEncoding
from rubricate.student.data import EncodedSet, add_second_rater, concat_sets
from rubricate.student.decoding import (
    Decoder,
    DecoderArguments,
    cut_scores,
    fit_decoder,
    fit_distribution_cuts,
    fit_qwk_cuts,
    rounding_cuts,
)
from rubricate.student.scorer import Scorer
from tiny_models import make_tiny_encoder, tiny_records, tiny_tasks
from rubricate.student.trainer import TrainingArguments, chosen_epochs, train


def _qwk(y, p, lo, hi) -> float:
    return cohen_kappa_score(y, p, weights="quadratic", labels=list(range(lo, hi + 1)))


def test_rounding_cuts_round_the_expected_score() -> None:
    assert rounding_cuts(0, 3) == [0.5, 1.5, 2.5]
    assert cut_scores(np.array([0.0, 0.49, 0.5, 1.7, 2.99]), rounding_cuts(0, 3), 0).tolist() == [0, 0, 1, 2, 3]


def test_qwk_cuts_fix_a_biased_model_and_shrinkage_keeps_rounding() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 4, size=400)
    expected = np.clip(gold * 0.6 + 0.1 + rng.normal(0, 0.15, size=400), 0, 3)  # compressed toward 0
    base = _qwk(gold, cut_scores(expected, rounding_cuts(0, 3), 0), 0, 3)
    cuts = fit_qwk_cuts(expected, gold, 0, 3, DecoderArguments(kind="qwk_cuts", shrinkage=0.0))
    assert cuts == sorted(cuts)
    assert _qwk(gold, cut_scores(expected, cuts, 0), 0, 3) > base + 0.05
    # a huge penalty keeps the rounding cuts; too few rows keep them too
    assert fit_qwk_cuts(expected, gold, 0, 3, DecoderArguments(kind="qwk_cuts", shrinkage=1e6)) == [0.5, 1.5, 2.5]
    assert fit_qwk_cuts(expected[:5], gold[:5], 0, 3, DecoderArguments(kind="qwk_cuts")) == [0.5, 1.5, 2.5]


def test_distribution_cuts_reproduce_the_training_shares() -> None:
    rng = np.random.default_rng(1)
    expected = rng.uniform(0, 2, size=1000)
    train = np.array([0] * 500 + [1] * 300 + [2] * 200)
    cuts = fit_distribution_cuts(expected, train, 0, 2, DecoderArguments(kind="distribution"))
    shares = np.bincount(cut_scores(expected, cuts, 0), minlength=3) / 1000
    assert shares == pytest.approx([0.5, 0.3, 0.2], abs=0.01)


def test_decoder_round_trip_and_criteria_use_the_threshold() -> None:
    enc = LabelEncoding.from_task(tiny_tasks().get("tiny-ord"))
    dec = Decoder("qwk_cuts", 0.5, {"tiny-ord": {"score": [0.2, 0.4, 0.6]}})
    again = Decoder.from_dict(json.loads(json.dumps(dec.to_dict())))
    assert again == dec
    p = np.array([[0.3, 0.2, 0.0] + [0.0] * (enc.n_labels - 3)])[:, : enc.n_labels]
    e = enc.expected_scores(p)["score"][0]
    assert dec.decode_scores("tiny-ord", enc, p)["score"][0] == int(np.searchsorted([0.2, 0.4, 0.6], e, "right"))
    assert Decoder.from_dict(None) == Decoder()  # checkpoints from before decoders: threshold 0.5
    with pytest.raises(ValueError, match="decoder must be one of"):
        DecoderArguments(kind="nope")  # type: ignore[arg-type]


def test_fit_decoder_threshold_has_no_cuts() -> None:
    enc = LabelEncoding.from_task(tiny_tasks().get("tiny-ord"))
    dec = fit_decoder(DecoderArguments(), {"tiny-ord": enc}, {}, {}, {})
    assert dec.kind == "threshold" and dec.cuts == {}


def _set(targets: list[list[float]]) -> EncodedSet:
    t = np.array(targets, dtype=np.float32)
    return EncodedSet([("t", str(i)) for i in range(len(t))], [[1, 2]] * len(t), np.zeros(len(t), dtype=np.int64), t,
                      teacher=np.zeros_like(t))


def test_second_rater_soft_duplicate_and_ignore() -> None:
    task = tiny_tasks().get("tiny-ord")
    enc = LabelEncoding.from_task(task)
    recs = [Record("0", "tiny-ord", "x", {"score": 2}, rater2={"score": 1}), Record("1", "tiny-ord", "y", {"score": 0})]
    rows = [enc.encode(r.labels).tolist() for r in recs]
    soft = _set(rows)
    assert add_second_rater(soft, recs, {"tiny-ord": enc}, "soft") == 1
    assert soft.targets[0, :2].tolist() == [1.0, 0.5] and soft.targets[1].tolist() == rows[1]
    dup = _set(rows)
    add_second_rater(dup, recs, {"tiny-ord": enc}, "duplicate")
    assert len(dup) == 3 and dup.keys[2] == dup.keys[0] and dup.targets[2, :2].tolist() == [1.0, 0.0]
    assert dup.teacher is not None and dup.teacher.shape[0] == 3
    ign = _set(rows)
    add_second_rater(ign, recs, {"tiny-ord": enc}, "ignore")
    assert ign.targets.tolist() == rows
    assert len(concat_sets(ign, dup)) == 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    enc = make_tiny_encoder(root / "enc")
    reg = tiny_tasks()
    tr = tiny_records("tiny-ord", 120) + tiny_records("tiny-crit", 120)
    for r in tr[::3]:
        r.rater2 = dict(r.labels)
    va = tiny_records("tiny-ord", 40, seed=1, prefix="v") + tiny_records("tiny-crit", 40, seed=1, prefix="v")
    args = TrainingArguments(encoder=str(enc), method="unimoe", output_dir=str(root / "ck"), epochs=3,
                             batch_size=16, lr_encoder=1e-3, lr_new=3e-3, progress=False, seed=3,
                             decoder={"kind": "qwk_cuts"}, second_rater="soft")
    return {"root": root, "reg": reg, "tr": tr, "va": va, "args": args,
            "res": train(args, registry=reg, train_records=tr, val_records=va)}


def test_checkpoint_stores_the_fitted_decoder_and_the_scorer_uses_it(trained) -> None:
    ck = Path(trained["res"].checkpoint_dir)
    doc = json.loads((ck / "config.json").read_text())
    scale = doc["label_encodings"]["tiny-ord"]["scales"][0]
    assert doc["decoder"]["kind"] == "qwk_cuts"
    assert len(doc["decoder"]["cuts"]["tiny-ord"]["score"]) == scale["max"] - scale["min"]
    assert doc["recipe"]["decoder"]["kind"] == "qwk_cuts" and doc["recipe"]["second_rater"] == "soft"
    assert doc["metrics"]["second_rater_rows"] == 80
    assert 0.0 <= doc["metrics"]["lengths"]["share_truncated"] <= 1.0
    s = Scorer.from_pretrained(ck, backend="torch")
    assert s.decoder.kind == "qwk_cuts"
    va = [r for r in trained["va"] if r.task_id == "tiny-ord"]
    preds = s.predict([r.task_id for r in va], [r.text for r in va])
    enc = s.encodings["tiny-ord"]
    for p in preds:
        probs = np.array([[p.probs[n] for n in enc.names]])
        e = enc.expected_scores(probs)["score"][0]
        cuts = s.decoder.cuts["tiny-ord"]["score"]
        assert p.scores["score"] == cut_scores(np.array([e]), cuts, enc.scales[0].min)[0]


def test_decoder_needs_validation_data(trained, tmp_path) -> None:
    from rubricate.errors import InputError

    args = replace(trained["args"], output_dir=str(tmp_path / "x"), max_steps=2)
    with pytest.raises(InputError, match="fit on validation data"):
        train(args, registry=trained["reg"], train_records=trained["tr"], val_records=None)


def test_refit_trains_on_train_plus_validation_for_the_chosen_epochs(trained, tmp_path) -> None:
    args = replace(trained["args"], output_dir=str(tmp_path / "refit"), refit=True, epochs=2)
    res = train(args, registry=trained["reg"], train_records=trained["tr"], val_records=trained["va"])
    m = res.metrics
    assert (Path(res.checkpoint_dir) / "selection" / "config.json").exists()
    assert m["refit"]["n_train"] == len(trained["tr"]) + len(trained["va"])  # soft: no extra rows
    assert m["refit"]["epochs"] == pytest.approx(chosen_epochs(m | {"history": [h for h in res.history
                                                                                   if not h.get("refit")]},
                                                               len(trained["tr"]), args.batch_size))
    sel = json.loads((Path(res.checkpoint_dir) / "selection" / "config.json").read_text())
    final = json.loads((Path(res.checkpoint_dir) / "config.json").read_text())
    assert final["decoder"] == sel["decoder"]  # the cut points chosen on validation are kept
    rows = {n: json.loads((Path(res.checkpoint_dir) / d / "token_counts.json").read_text())["n_rows"]
            for n, d in (("selection", "selection"), ("final", "."))}
    assert rows == {"selection": len(trained["tr"]), "final": len(trained["tr"]) + len(trained["va"])}


def test_cross_fitted_students_never_see_their_rows_and_the_ensemble_scores_the_rest(trained, tmp_path) -> None:
    from rubricate.data.teacher_file import read_teacher_file
    from rubricate.student.teachers import cross_fit_students, mix_teachers

    args = replace(trained["args"], method="mtl", decoder={"kind": "threshold"}, output_dir=str(tmp_path / "folds"),
                   epochs=1, second_rater="ignore")
    tr, va = trained["tr"], trained["va"]
    extra = tiny_records("tiny-ord", 10, seed=5, prefix="x")
    path = cross_fit_students(args, trained["reg"], tr, tmp_path / "t.jsonl", folds=2, val_records=va,
                              predict_records=va + extra)
    rows = read_teacher_file(path)
    assert len(rows) == len(tr) + len(va) + len(extra)
    folds = {r.extra["fold"] for r in rows.values()}
    assert folds == {0, 1, "ensemble"}
    # a fold model did not train on the rows it predicts: its training set excludes exactly its fold
    fold0 = json.loads((tmp_path / "folds" / "fold0" / "config.json").read_text())["metrics"]["n_train"]
    n0 = sum(1 for r in rows.values() if r.extra["fold"] == 0)
    assert fold0 == len(tr) - n0
    # the ensemble row is the mean of the two fold models
    s0, s1 = (Scorer.from_pretrained(tmp_path / "folds" / f"fold{k}", backend="torch") for k in (0, 1))
    r = extra[0]
    n = len(rows[r.key].label_names)
    p = [1 / (1 + np.exp(-s.predict_logits([r.task_id], [r.text])[0][0, :n])) for s in (s0, s1)]
    assert rows[r.key].as_probs() == pytest.approx((p[0] + p[1]) / 2, abs=1e-5)
    mixed = read_teacher_file(mix_teachers([path, path], [1.0, 3.0], tmp_path / "m.jsonl"))
    assert mixed[r.key].as_probs() == pytest.approx(rows[r.key].as_probs(), abs=1e-6)
