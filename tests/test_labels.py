"""Label encoding: rubric <-> multi-label binary targets, cumulative ordinal indicators, monotone decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rubricate.labels import LabelEncoding
from rubricate.tasks import task_from_dict


def _task(criteria=(), scales=()):
    return task_from_dict({
        "id": "t", "title": "t", "question": "q",
        "rubric": {"criteria": [{"id": c, "description": c} for c in criteria],
                   "scales": [{"id": s, "min": lo, "max": hi} for s, lo, hi in scales]},
    })


def test_analytic_maps_one_to_one() -> None:
    enc = LabelEncoding.from_task(_task(criteria=["E1", "E2", "E3"]))
    assert enc.names == ["E1", "E2", "E3"]
    np.testing.assert_array_equal(enc.encode({"E1": 1, "E2": 0, "E3": 1}), [1, 0, 1])
    assert enc.decode_targets(enc.encode({"E1": 1, "E2": 0, "E3": 1})) == [{"E1": 1, "E2": 0, "E3": 1}]


def test_ordinal_uses_cumulative_indicators() -> None:
    enc = LabelEncoding.from_task(_task(scales=[("score", 0, 3)]))
    assert enc.names == ["score>=1", "score>=2", "score>=3"]
    np.testing.assert_array_equal(enc.encode({"score": 0}), [0, 0, 0])
    np.testing.assert_array_equal(enc.encode({"score": 2}), [1, 1, 0])
    np.testing.assert_array_equal(enc.encode({"score": 3}), [1, 1, 1])


def test_scale_not_starting_at_zero() -> None:
    enc = LabelEncoding.from_task(_task(scales=[("rater_score", 1, 6)]))
    assert enc.names[0] == "rater_score>=2" and enc.n_labels == 5
    np.testing.assert_array_equal(enc.encode({"rater_score": 1}), [0] * 5)
    assert enc.decode_targets(enc.encode({"rater_score": 4})) == [{"rater_score": 4}]


def test_missing_labels_are_nan_and_left_out_when_decoding() -> None:
    enc = LabelEncoding.from_task(_task(criteria=["E1"], scales=[("score", 0, 2)]))
    v = enc.encode({"score": 1})
    assert np.isnan(v[0]) and list(v[1:]) == [1, 0]
    assert enc.decode_targets(v) == [{"score": 1}]
    assert np.isnan(enc.encode(None)).all()


def test_multi_trait_concatenates_scales() -> None:
    enc = LabelEncoding.from_task(_task(criteria=["C1"], scales=[("ideas", 1, 4), ("conventions", 0, 2)]))
    assert enc.names == ["C1", "ideas>=2", "ideas>=3", "ideas>=4", "conventions>=1", "conventions>=2"]
    labels = {"C1": 0, "ideas": 3, "conventions": 2}
    np.testing.assert_array_equal(enc.encode(labels), [0, 1, 1, 0, 1, 1])
    assert enc.decode_targets(enc.encode(labels)) == [labels]
    assert enc.scale_slice("conventions") == slice(4, 6)


def test_monotone_decoding_fixes_inconsistent_probabilities() -> None:
    enc = LabelEncoding.from_task(_task(scales=[("score", 0, 3)]))
    probs = np.array([[0.9, 0.2, 0.8]])  # P(>=3) > P(>=2) is impossible
    np.testing.assert_allclose(enc.monotone(probs), [[0.9, 0.2, 0.2]])
    assert enc.decode(probs) == [{"score": 1}]  # not 2, as naive counting of p>=0.5 would give
    dist = enc.score_distribution(probs, "score")[0]
    np.testing.assert_allclose(dist, [0.1, 0.7, 0.0, 0.2])
    assert dist.sum() == pytest.approx(1.0)
    assert enc.expected_scores(probs)["score"][0] == pytest.approx(0.7 + 3 * 0.2)


def test_threshold_is_a_parameter() -> None:
    enc = LabelEncoding.from_task(_task(criteria=["E1"]))
    assert enc.decode(np.array([[0.4]]))[0] == {"E1": 0}
    assert enc.decode(np.array([[0.4]]), threshold=0.3)[0] == {"E1": 1}


def test_dict_round_trip() -> None:
    enc = LabelEncoding.from_task(_task(criteria=["E1"], scales=[("score", 0, 2)]))
    assert LabelEncoding.from_dict(enc.to_dict()) == enc


@settings(max_examples=60, deadline=None)
@given(
    lo=st.integers(-2, 3), width=st.integers(1, 6), n_crit=st.integers(0, 4),
    data=st.data(),
)
def test_round_trip_and_monotone_property(lo: int, width: int, n_crit: int, data) -> None:
    crit = [f"E{i}" for i in range(n_crit)]
    enc = LabelEncoding.from_task(_task(criteria=crit, scales=[("score", lo, lo + width)]))
    labels = {c: data.draw(st.integers(0, 1)) for c in crit}
    labels["score"] = data.draw(st.integers(lo, lo + width))
    assert enc.decode_targets(enc.encode(labels)) == [labels]
    assert enc.decode(enc.encode(labels)[None, :]) == [labels]
    probs = np.array([data.draw(st.lists(st.floats(0, 1), min_size=enc.n_labels, max_size=enc.n_labels))])
    mono = enc.monotone(probs)[0, enc.scale_slice("score")]
    assert np.all(np.diff(mono) <= 1e-12)
    # Raising any one probability can never lower the decoded score.
    base = enc.decode_scores(probs)["score"][0]
    bumped = probs.copy()
    bumped[0, enc.scale_slice("score")] = np.minimum(1.0, bumped[0, enc.scale_slice("score")] + 0.3)
    assert enc.decode_scores(bumped)["score"][0] >= base
    dist = enc.score_distribution(probs, "score")[0]
    assert dist.sum() == pytest.approx(1.0) and (dist >= 0).all()
