"""Reliability metrics: hand-computed κ / QWK, Fisher-z, SMD, edge cases, bootstrap, subgroups, degradation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

from rubricate.data.records import Record
from rubricate.errors import InputError
from rubricate.metrics import (
    MISSING_GROUP,
    SCORE_METRICS,
    Predicted,
    as_predicted,
    bootstrap_indices,
    bootstrap_multilabel,
    bootstrap_score_metrics,
    compare_systems,
    confusion_counts,
    evaluate,
    fisher_z_mean,
    kappa,
    kappa_from_confusion,
    label_metrics,
    multilabel_metrics,
    quadratic_weighted_kappa,
    rater2_as_predictions,
    score_metrics,
    score_metrics_from_confusion,
    standardized_mean_difference,
)
from rubricate.tasks import TaskRegistry, task_from_dict

# --------------------------------------------------------------------------------------------------------
# Hand-computed example (3 categories 0, 1, 2; n = 6)
#   human   = [0, 0, 1, 1, 2, 2]
#   machine = [0, 1, 1, 1, 2, 0]
# Observed counts O (rows human, columns machine):
#   [[1, 1, 0],
#    [0, 2, 0],
#    [1, 0, 1]]        row sums r = [2, 2, 2], column sums c = [2, 3, 1]
# Expected counts E_ij = r_i * c_j / n = 2 * c_j / 6, the same for every row: [2/3, 1, 1/3]
# Quadratic weights w_ij = (i - j)^2: [[0, 1, 4], [1, 0, 1], [4, 1, 0]]
#   sum w*O = (1*1) + 0 + (4*1) = 5
#   sum w*E = row 0: 1*1 + 4*(1/3) = 7/3; row 1: 1*(2/3) + 1*(1/3) = 1; row 2: 4*(2/3) + 1*1 = 11/3 -> 7
#   QWK = 1 - 5/7 = 2/7
# Unweighted: p_o = (1 + 2 + 1)/6 = 2/3; p_e = sum_c r_c c_c / n^2 = (4 + 6 + 2)/36 = 1/3
#   kappa = (2/3 - 1/3) / (1 - 1/3) = 1/2
# --------------------------------------------------------------------------------------------------------
H = [0, 0, 1, 1, 2, 2]
M = [0, 1, 1, 1, 2, 0]


def test_qwk_and_kappa_match_hand_computed_values() -> None:
    assert quadratic_weighted_kappa(H, M, labels=[0, 1, 2]) == pytest.approx(2 / 7, abs=1e-12)
    assert kappa(H, M, labels=[0, 1, 2])[0] == pytest.approx(1 / 2, abs=1e-12)
    assert confusion_counts(np.array(H), np.array(M), [0, 1, 2]).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # the vectorised version used by the bootstrap gives the same numbers
    c = confusion_counts(np.array(H), np.array(M), [0, 1, 2])
    assert kappa_from_confusion(c, "quadratic") == pytest.approx(2 / 7)
    assert kappa_from_confusion(c, None) == pytest.approx(1 / 2)
    # an unused category at the top of the scale does not change QWK; one in the middle would
    assert quadratic_weighted_kappa(H, M, labels=[0, 1, 2, 3]) == pytest.approx(2 / 7)


def test_binary_label_metrics_hand_computed() -> None:
    # threshold 0.5 -> pred [1,0,0,1,1,0,1,0]; TP=3 FN=1 FP=1 TN=3
    # accuracy 6/8; F1 = 2*3 / (2*3 + 1 + 1) = 0.75; p_o = .75, p_e = .5*.5 + .5*.5 = .5 -> kappa = .5
    y = [1, 1, 0, 0, 1, 0, 1, 0]
    p = [0.9, 0.4, 0.2, 0.6, 0.8, 0.1, 0.7, 0.3]
    lm = label_metrics(y, p, threshold=0.5, name="E1")
    assert (lm.n, lm.accuracy, lm.f1) == (8, 0.75, 0.75)
    assert lm.kappa == pytest.approx(0.5)
    assert lm.gold_rate == 0.5 and lm.pred_rate == 0.5
    # the threshold is a parameter: at 0.35 response 2 (p=.4) becomes positive -> TP=4, FP=1
    assert label_metrics(y, p, threshold=0.35).f1 == pytest.approx(8 / 9)


def test_scores_outside_the_scale_are_an_error_not_dropped() -> None:
    with pytest.raises(ValueError, match="outside the scale"):
        quadratic_weighted_kappa([0, 1, 4], [0, 1, 2], labels=[0, 1, 2])
    with pytest.raises(ValueError, match="outside the scale"):
        score_metrics([0, 1, 2], [0, 1, 3], 0, 2, n_boot=0)


def test_kappa_agrees_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        h = rng.integers(0, 4, 50)
        m = np.clip(h + rng.integers(-2, 3, 50), 0, 3)
        for w in (None, "linear", "quadratic"):
            ours = kappa(h, m, labels=[0, 1, 2, 3], weights=w)[0]
            assert ours == pytest.approx(cohen_kappa_score(h, m, labels=[0, 1, 2, 3], weights=w))
            assert kappa_from_confusion(confusion_counts(h, m, [0, 1, 2, 3]), w) == pytest.approx(ours)


# --------------------------------------------------------------------------------------------------------
def test_fisher_z_mean() -> None:
    z = (math.atanh(0.5) + math.atanh(0.9)) / 2
    assert fisher_z_mean([0.5, 0.9]) == pytest.approx(math.tanh(z))
    # weights normalised to mean 1 (Kaggle): weights 1 and 3
    zw = (math.atanh(0.5) * 1 + math.atanh(0.9) * 3) / 4
    assert fisher_z_mean([0.5, 0.9], [1, 3]) == pytest.approx(math.tanh(zw))
    # kappa 1 is clipped to 0.999 so the transform stays finite
    assert fisher_z_mean([1.0, 0.5]) == pytest.approx(math.tanh((math.atanh(0.999) + math.atanh(0.5)) / 2))
    assert fisher_z_mean([-1.0]) == pytest.approx(-0.999)
    # NaN entries are left out
    assert fisher_z_mean([0.5, float("nan"), 0.9]) == pytest.approx(math.tanh(z))
    # row-wise along an axis (used for bootstrap matrices)
    out = fisher_z_mean(np.array([[0.5, 0.9], [0.2, 0.2]]), axis=1)
    assert out == pytest.approx([math.tanh(z), 0.2])


def test_smd_pooled_and_human() -> None:
    h = np.array([1, 2, 3, 4])  # mean 2.5, var 5/3
    m = np.array([2, 2, 4, 6])  # mean 3.5, var 11/3
    assert standardized_mean_difference(h, m) == pytest.approx(1 / math.sqrt((5 / 3 + 11 / 3) / 2))
    assert standardized_mean_difference(h, m, "human") == pytest.approx(1 / math.sqrt(5 / 3))
    assert math.isnan(standardized_mean_difference(np.array([2, 2]), np.array([2, 2])))
    assert math.isnan(standardized_mean_difference(np.array([2]), np.array([3])))


def test_score_metrics_values() -> None:
    sm = score_metrics(H, M, 0, 2, n_boot=0)
    d = np.array(M) - np.array(H)
    assert sm.n == 6 and sm.qwk == pytest.approx(2 / 7)
    assert sm.exact == pytest.approx(4 / 6)
    assert sm.adjacent == pytest.approx(5 / 6)  # only (2, 0) is 2 apart
    assert sm.mae == pytest.approx(np.abs(d).mean()) and sm.rmse == pytest.approx(math.sqrt((d**2).mean()))
    assert sm.pearson == pytest.approx(stats.pearsonr(H, M).statistic)
    assert sm.spearman == pytest.approx(stats.spearmanr(H, M).statistic)
    assert sm.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert score_metrics(H, M, 0, 2, tolerance=2, n_boot=0).adjacent == 1.0
    # the closed-form-from-confusion version (bootstrap) agrees with sklearn / scipy
    v = score_metrics_from_confusion(np.array(sm.confusion), 0)
    for k in SCORE_METRICS:
        assert float(v[k]) == pytest.approx(sm.get(k)), k


# --------------------------------------------------------------------------------------------------------
# Edge cases: never a silent 0
def test_constant_human_scores_make_kappa_undefined() -> None:
    value, why = kappa([1, 1, 1, 1], [0, 1, 2, 1], labels=[0, 1, 2], weights="quadratic")
    assert math.isnan(value) and "human scores are constant" in why
    sm = score_metrics([1, 1, 1, 1], [0, 1, 2, 1], 0, 2, n_boot=50)
    assert math.isnan(sm.qwk) and "qwk" in sm.notes
    assert math.isnan(sm.pearson) and "constant" in sm.notes["pearson"]
    assert sm.exact == 0.5  # what *is* defined is still reported


def test_constant_prediction_kappa_is_zero_with_note_or_nan_by_policy() -> None:
    value, why = kappa([0, 1, 1, 0], [1, 1, 1, 1], labels=[0, 1])
    assert value == 0.0 and "machine scores are constant" in why
    value, why = kappa([0, 1, 1, 0], [1, 1, 1, 1], labels=[0, 1], constant_prediction="nan")
    assert math.isnan(value) and "constant" in why
    # and the same policy in the vectorised version
    c = confusion_counts(np.array([0, 1, 1, 0]), np.array([1, 1, 1, 1]), [0, 1])
    assert kappa_from_confusion(c) == 0.0 and math.isnan(kappa_from_confusion(c, None, "nan"))


def test_no_responses_and_single_response() -> None:
    sm = score_metrics([], [], 0, 3)
    assert sm.n == 0 and math.isnan(sm.qwk) and math.isnan(sm.mae) and sm.notes["all"] == "no responses"
    sm = score_metrics([2], [1], 0, 3)
    assert sm.n == 1 and sm.mae == 1.0 and math.isnan(sm.pearson) and math.isnan(sm.smd)
    assert sm.notes["pearson"] == "fewer than 2 responses" and sm.ci == {}
    lm = label_metrics([np.nan, np.nan], [1, 0])
    assert lm.n == 0 and math.isnan(lm.kappa)


def test_multilabel_masks_nan_and_counts_skipped_labels() -> None:
    # label a: normal; label b: gold constant 1 -> kappa undefined; label c: all missing except two
    t = np.array([[1, 1, np.nan], [0, 1, np.nan], [1, 1, 1], [0, 1, 0]], dtype=float)
    p = np.array([[0.9, 0.8, 0.7], [0.2, 0.9, 0.1], [0.7, 0.3, 0.9], [0.4, 0.6, 0.2]])
    per, ml = multilabel_metrics(t, p, ["a", "b", "c"])
    assert [m.n for m in per] == [4, 4, 2]
    assert per[0].kappa == 1.0 and math.isnan(per[1].kappa) and per[2].kappa == 1.0
    assert ml.n_kappa_undefined == 1 and ml.mean_kappa == 1.0 and "1 of 3" in ml.notes["mean_kappa"]
    # micro-F1 pools the 10 observed cells: TP = 2 (a) + 3 (b) + 1 (c) = 6, FN = 1 (b), FP = 0
    assert ml.micro_f1 == pytest.approx(12 / 13)
    assert ml.macro_f1 == pytest.approx(np.mean([1.0, 6 / 7, 1.0]))
    assert ml.accuracy == pytest.approx(np.mean([1.0, 0.75, 1.0]))


def test_f1_undefined_without_positives() -> None:
    lm = label_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert math.isnan(lm.f1) and "0/0" in lm.notes["f1"] and math.isnan(lm.kappa)
    assert lm.accuracy == 1.0


# --------------------------------------------------------------------------------------------------------
# Bootstrap
def test_bootstrap_ci_contains_estimate_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    h = rng.integers(0, 4, 300)
    m = np.clip(h + rng.integers(-1, 2, 300), 0, 3)
    a = score_metrics(h, m, 0, 3, n_boot=400, seed=7)
    b = score_metrics(h, m, 0, 3, n_boot=400, seed=7)
    c = score_metrics(h, m, 0, 3, n_boot=400, seed=8)
    for k in SCORE_METRICS:
        assert a.ci[k].contains(a.get(k)), k
        assert a.ci[k] == b.ci[k]
    assert a.ci["qwk"].low != c.ci["qwk"].low
    assert a.ci["qwk"].high - a.ci["qwk"].low < 0.1


def test_vectorised_bootstrap_equals_per_resample_sklearn_scipy() -> None:
    rng = np.random.default_rng(2)
    h = rng.integers(1, 5, 80)
    m = np.clip(h + rng.integers(-1, 2, 80), 1, 4)
    idx = bootstrap_indices(80, 6, seed=3)
    reps = bootstrap_score_metrics(h, m, 1, 4, idx=idx)
    for b in range(6):
        hb, mb = h[idx[b]], m[idx[b]]
        assert reps["qwk"][b] == pytest.approx(
            cohen_kappa_score(hb, mb, labels=[1, 2, 3, 4], weights="quadratic")
        )
        assert reps["spearman"][b] == pytest.approx(stats.spearmanr(hb, mb).statistic)
        assert reps["pearson"][b] == pytest.approx(stats.pearsonr(hb, mb).statistic)
        assert reps["smd"][b] == pytest.approx(standardized_mean_difference(hb, mb))
        assert reps["rmse"][b] == pytest.approx(math.sqrt(((mb - hb) ** 2).mean()))


def test_bootstrap_multilabel_matches_point_estimates_per_resample() -> None:
    rng = np.random.default_rng(4)
    t = rng.integers(0, 2, (60, 3)).astype(float)
    t[rng.random((60, 3)) < 0.1] = np.nan
    p = np.where(rng.random((60, 3)) < 0.8, np.nan_to_num(t), 1 - np.nan_to_num(t))
    reps = bootstrap_multilabel(t, p, n_boot=4, seed=5)
    idx = bootstrap_indices(60, 4, 5)
    for b in range(4):
        _, ml = multilabel_metrics(t[idx[b]], p[idx[b]], ["a", "b", "c"])
        assert reps["mean_kappa"][b] == pytest.approx(ml.mean_kappa)
        assert reps["micro_f1"][b] == pytest.approx(ml.micro_f1)
        assert reps["macro_f1"][b] == pytest.approx(ml.macro_f1)
        assert reps["accuracy"][b] == pytest.approx(ml.accuracy)


# --------------------------------------------------------------------------------------------------------
# evaluate(): joins, label encoding, human-human, subgroups
def _registry() -> TaskRegistry:
    return TaskRegistry(
        [
            task_from_dict(
                {
                    "id": "t1",
                    "title": "T1",
                    "question": "q",
                    "rubric": {
                        "criteria": [{"id": "E1", "description": "d"}, {"id": "E2", "description": "d"}],
                        "scales": [{"id": "score", "min": 0, "max": 3}],
                    },
                }
            ),
            task_from_dict(
                {
                    "id": "t2",
                    "title": "T2",
                    "question": "q",
                    "rubric": {"scales": [{"id": "score", "min": 1, "max": 4}]},
                }
            ),
        ]
    )


def _data(n: int = 60, seed: int = 0) -> tuple[list[Record], list[dict]]:
    rng = np.random.default_rng(seed)
    recs, preds = [], []
    for i in range(n):
        s = int(rng.integers(0, 4))
        e1, e2 = int(s >= 1), int(rng.integers(0, 2))
        r2 = int(np.clip(s + rng.choice([-1, 0, 0, 0, 1]), 0, 3))
        ps = int(np.clip(s + rng.choice([-1, 0, 0, 1]), 0, 3))
        recs.append(
            Record(
                str(i),
                "t1",
                "text",
                {"E1": e1, "E2": e2, "score": s},
                {"score": r2},
                {"school": "A" if i % 3 else "B"},
            )
        )
        preds.append(
            {
                "task_id": "t1",
                "response_id": str(i),
                "scores": {"E1": e1, "E2": 1 - e2 if i % 5 == 0 else e2, "score": ps},
            }
        )
        s2 = int(rng.integers(1, 5))
        recs.append(Record(str(i), "t2", "text", {"score": s2}, None, {"school": "A"} if i % 4 else {}))
        preds.append(
            {
                "task_id": "t2",
                "response_id": str(i),
                "scores": {"score": int(np.clip(s2 + rng.choice([-1, 0, 0, 1]), 1, 4))},
            }
        )
    return recs, preds


def test_evaluate_end_to_end_numbers() -> None:
    recs, preds = _data()
    rep = evaluate(recs, preds, _registry(), n_boot=200, seed=1)
    t1 = rep.task("t1")
    g = [r for r in recs if r.task_id == "t1"]
    p = {x["response_id"]: x for x in preds if x["task_id"] == "t1"}
    h = [r.labels["score"] for r in g]
    m = [p[r.response_id]["scores"]["score"] for r in g]
    sc = t1.scales[0]
    assert sc.machine.qwk == pytest.approx(cohen_kappa_score(h, m, labels=[0, 1, 2, 3], weights="quadratic"))
    # labels: E1, E2, score>=1..3 from the encoding
    assert [lm.name for lm in t1.labels] == ["E1", "E2", "score>=1", "score>=2", "score>=3"]
    e2 = next(lm for lm in t1.labels if lm.name == "E2")
    assert e2.accuracy == pytest.approx(1 - 12 / 60)  # every 5th E2 prediction flipped
    assert t1.multilabel.n_labels == 5
    # human-human and degradation on the double-scored responses
    h2 = [r.rater2["score"] for r in g]
    assert sc.human_human.qwk == pytest.approx(
        cohen_kappa_score(h, h2, labels=[0, 1, 2, 3], weights="quadratic")
    )
    for k in SCORE_METRICS:
        assert sc.degradation[k] == pytest.approx(sc.machine_double_scored.get(k) - sc.human_human.get(k))
    # paired bootstrap interval of the degradation contains it
    for k in SCORE_METRICS:
        assert sc.degradation_ci[k].contains(sc.degradation[k]), k
    deg = rep.across.degradation
    assert deg["mean"] == pytest.approx(sc.machine_double_scored.qwk - sc.human_human.qwk)
    assert rep.across.degradation_ci["mean"].contains(deg["mean"])
    # t2 has no second rater
    assert rep.task("t2").scales[0].human_human is None
    # across tasks
    q = [t.scales[0].machine.qwk for t in rep.tasks]
    assert rep.across.machine.mean == pytest.approx(np.mean(q))
    assert rep.across.machine.fisher_z == pytest.approx(fisher_z_mean(q))
    assert rep.across.machine.ci["fisher_z"].contains(rep.across.machine.fisher_z)
    assert rep.across.human_human.n_entries == 1
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d["tasks"][0]["scales"][0]["machine"]["qwk"] == pytest.approx(sc.machine.qwk)


def test_evaluate_uses_probabilities_when_given() -> None:
    recs, preds = _data(20)
    for x in preds:
        if x["task_id"] == "t1":
            # probabilities saying the opposite of the scores for E1: label metrics must follow probs
            x["probs"] = {
                "E1": 1.0 - x["scores"]["E1"],
                "E2": float(x["scores"]["E2"]),
                "score>=1": 1.0,
                "score>=2": 0.0,
                "score>=3": 0.0,
            }
    rep = evaluate(recs, preds, _registry(), n_boot=0)
    e1 = rep.task("t1").labels[0]
    assert e1.name == "E1" and e1.accuracy == 0.0


def test_subgroups() -> None:
    recs, preds = _data()
    rep = evaluate(recs, preds, _registry(), n_boot=50, group_column="school")
    sub = rep.task("t1").scales[0].subgroups
    assert set(sub) == {"A", "B"} and sub["A"].n + sub["B"].n == 60 and sub["B"].n == 20
    g = [r for r in recs if r.task_id == "t1" and r.metadata["school"] == "B"]
    p = {x["response_id"]: x["scores"]["score"] for x in preds if x["task_id"] == "t1"}
    assert sub["B"].qwk == pytest.approx(
        cohen_kappa_score(
            [r.labels["score"] for r in g],
            [p[r.response_id] for r in g],
            labels=[0, 1, 2, 3],
            weights="quadratic",
        )
    )
    sub2 = rep.task("t2").scales[0].subgroups
    assert set(sub2) == {"A", MISSING_GROUP} and sub2[MISSING_GROUP].n == 15
    with pytest.raises(InputError, match="group column 'nope'"):
        evaluate(recs, preds, _registry(), n_boot=0, group_column="nope")


def test_missing_and_extra_predictions() -> None:
    recs, preds = _data(10)
    with pytest.raises(InputError, match="have no prediction"):
        evaluate(recs, preds[1:], _registry(), n_boot=0)
    rep = evaluate(recs, preds[1:], _registry(), n_boot=0, missing="drop")
    assert rep.task("t1").n_matched == 9 and "coverage" in rep.task("t1").notes
    extra = preds + [{"task_id": "t1", "response_id": "zzz", "scores": {"score": 1}}]
    with pytest.raises(InputError, match="no gold record"):
        evaluate(recs, extra, _registry(), n_boot=0)
    # a failed agent result is a missing score, never a 0
    failed = [dict(x) for x in preds]
    failed[0] = {"task_id": "t1", "response_id": "0", "status": "failed", "score": None, "scores": {}}
    assert as_predicted(failed[0]).scores == {}
    assert as_predicted({"task_id": "t2", "response_id": "1", "score": 2}).scores == {"score": 2}
    with pytest.raises(InputError, match="no response_id"):
        as_predicted({"task_id": "t2", "response_id": None, "scores": {}})
    with pytest.raises(InputError, match="has a gold"):
        evaluate(recs, failed, _registry(), n_boot=0)
    rep = evaluate(recs, failed, _registry(), n_boot=0, missing="drop")
    assert rep.task("t1").scales[0].machine.n == 9


def test_as_predicted_reads_student_and_agent_objects() -> None:
    from rubricate.agents.pipeline import AgentResult
    from rubricate.student.scorer import Prediction

    sp = Prediction("t1", "7", {"score": 2, "E1": 1}, {"E1": 0.9, "score>=1": 0.8}, {}, 0.8)
    p = as_predicted(sp)
    assert (p.key, p.scores, p.probs) == (("t1", "7"), {"score": 2, "E1": 1}, {"E1": 0.9, "score>=1": 0.8})
    ok = AgentResult(task_id="t2", response_id="3", status="ok", score=4, scores={"score": 4})
    bad = AgentResult(task_id="t2", response_id="4", status="failed", error="timeout")
    assert as_predicted(ok).scores == {"score": 4} and as_predicted(bad).scores == {}
    assert as_predicted(bad.model_dump(mode="json")).scores == {}


def test_bad_predictions_are_errors() -> None:
    recs, preds = _data(5)
    bad = [dict(x) for x in preds]
    bad[1] = {"task_id": "t2", "response_id": "0", "scores": {"score": 9}}
    with pytest.raises(InputError, match="must be an integer in 1-4"):
        evaluate(recs, bad, _registry(), n_boot=0)
    with pytest.raises(InputError, match="duplicate prediction"):
        evaluate(recs, preds + [preds[0]], _registry(), n_boot=0)
    with pytest.raises(InputError, match="unknown task"):
        evaluate(recs, preds + [{"task_id": "t9", "response_id": "0", "scores": {}}], _registry(), n_boot=0)


def test_rater2_as_predictions_reproduces_human_human() -> None:
    recs, _ = _data()
    gold, preds = rater2_as_predictions(recs)
    assert all(isinstance(p, Predicted) for p in preds) and len(preds) == len(gold) == 60  # t2 has no rater2
    assert set(gold[0].labels) == {"score"}  # criteria only rater 1 judged are not compared
    assert set(recs[0].labels) == {"E1", "E2", "score"}  # the input records are not modified
    rep = evaluate(gold, preds, _registry(), n_boot=0, compare_rater2=False)
    g = [r for r in recs if r.task_id == "t1"]
    assert rep.task("t1").scales[0].machine.qwk == pytest.approx(
        cohen_kappa_score(
            [r.labels["score"] for r in g],
            [r.rater2["score"] for r in g],
            labels=[0, 1, 2, 3],
            weights="quadratic",
        )
    )


def _noisier(preds: list[dict], every: int, seed: int) -> list[dict]:
    """A copy of ``preds`` whose 'score' is moved by one step on every ``every``-th response."""
    rng = np.random.default_rng(seed)
    out = []
    for i, p in enumerate(preds):
        q = json.loads(json.dumps(p))
        if i % every == 0:
            lo, hi = (0, 3) if q["task_id"] == "t1" else (1, 4)
            q["scores"]["score"] = int(np.clip(q["scores"]["score"] + rng.choice([-1, 1]), lo, hi))
        out.append(q)
    return out


def test_compare_systems_point_values_equal_two_separate_evaluations() -> None:
    recs, preds = _data(n=80)
    worse = _noisier(preds, 2, seed=3)
    cmp = compare_systems(recs, preds, worse, _registry(), n_boot=300, seed=4, label_a="good", label_b="noisy")
    ra, rb = evaluate(recs, preds, _registry(), n_boot=0), evaluate(recs, worse, _registry(), n_boot=0)
    for e in cmp.entries:
        qa = ra.task(e.task_id).scales[0].machine.qwk
        qb = rb.task(e.task_id).scales[0].machine.qwk
        assert (e.qwk_a, e.qwk_b) == (pytest.approx(qa), pytest.approx(qb))
        assert e.diff == pytest.approx(qa - qb) and e.n == 80
    assert cmp.across["fisher_z"]["a"] == pytest.approx(ra.across.machine.fisher_z)
    assert cmp.across["fisher_z"]["b"] == pytest.approx(rb.across.machine.fisher_z)
    assert cmp.across["mean"]["diff"] == pytest.approx(ra.across.machine.mean - rb.across.machine.mean)
    # half the responses moved by one step: A is clearly better, and the paired interval says so
    assert cmp.across["fisher_z"]["diff"] > 0
    assert cmp.ci["fisher_z"].low > 0 and cmp.across["fisher_z"]["share_a_better"] > 0.97
    d = cmp.to_dict()
    assert d["label_a"] == "good" and d["entries"][0]["ci"]["n_boot"] == 300
    json.dumps(d)


def test_compare_systems_is_paired_and_antisymmetric() -> None:
    recs, preds = _data(n=80)
    other = _noisier(preds, 4, seed=5)
    ab = compare_systems(recs, preds, other, _registry(), n_boot=200, seed=0)
    ba = compare_systems(recs, other, preds, _registry(), n_boot=200, seed=0)
    assert ba.across["fisher_z"]["diff"] == pytest.approx(-ab.across["fisher_z"]["diff"])
    assert ba.ci["fisher_z"].low == pytest.approx(-ab.ci["fisher_z"].high)
    # a scorer against itself: every resample gives a difference of exactly 0
    same = compare_systems(recs, preds, preds, _registry(), n_boot=100, seed=0)
    assert same.ci["fisher_z"].low == 0 == same.ci["fisher_z"].high
    assert same.across["fisher_z"]["share_a_better"] == 0
    # pairing: the interval of the difference is narrower than either scorer's own interval
    ra = evaluate(recs, preds, _registry(), n_boot=200, seed=0)
    width_own = ra.across.machine.ci["fisher_z"].high - ra.across.machine.ci["fisher_z"].low
    assert ab.ci["fisher_z"].high - ab.ci["fisher_z"].low < width_own


def test_compare_systems_missing_predictions_are_errors() -> None:
    recs, preds = _data(n=20)
    with pytest.raises(InputError, match="B: task 't1': 1 gold responses have no prediction"):
        compare_systems(recs, preds, [p for p in preds if (p["task_id"], p["response_id"]) != ("t1", "3")],
                        _registry(), n_boot=10)
    with pytest.raises(InputError, match="A: duplicate prediction"):
        compare_systems(recs, preds + preds[:1], preds, _registry(), n_boot=10)
    with pytest.raises(ValueError, match="n_boot"):
        compare_systems(recs, preds, preds, _registry(), n_boot=0)
    # only the tasks both scorers cover are compared
    only_t1 = [p for p in preds if p["task_id"] == "t1"]
    assert {e.task_id for e in compare_systems(recs, only_t1, preds, _registry(), n_boot=10).entries} == {"t1"}


def test_compare_systems_score_outside_the_scale_names_the_response() -> None:
    recs, preds = _data(n=10)
    bad = [dict(p, scores={"score": 9}) if (p["task_id"], p["response_id"]) == ("t2", "4") else p for p in preds]
    with pytest.raises(InputError, match="B: prediction for response '4'"):
        compare_systems(recs, preds, bad, _registry(), n_boot=10)
