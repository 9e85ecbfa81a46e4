import numpy as np
import pytest

from geobimors.train.retrieval import average_precision, class_retrieval_metrics


def test_average_precision_by_hand():
    # Ranking: r, n, r, n, r -> precisions at hits 1/1, 2/3, 3/5.
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    relevant = np.array([True, False, True, False, True])
    assert average_precision(scores, relevant) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # The same items given in another order rank the same way.
    perm = np.array([4, 2, 0, 3, 1])
    assert average_precision(scores[perm], relevant[perm]) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision(scores, np.array([False, False, False, False, True])) == pytest.approx(1 / 5)
    assert np.isnan(average_precision(scores, np.zeros(5, dtype=bool)))


def test_average_precision_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    relevant = rng.random(200) < 0.2
    assert average_precision(scores, relevant) == pytest.approx(
        sklearn_metrics.average_precision_score(relevant, scores)
    )


def test_class_retrieval_metrics_by_hand():
    targets = np.array([0, 0, 1, 1])
    scores = np.array(
        [
            [0.9, 0.1, 0.8, 0.2],  # class 0: ranking 0(r) 2 3 1(r) -> AP (1 + 2/4) / 2 = 0.75
            [0.1, 0.2, 0.3, 0.4],  # class 1: ranking 3(r) 2(r) -> AP 1
        ]
    )
    report = class_retrieval_metrics(scores, targets, ["a", "b"], ks=(1, 2))
    assert report["per_class_AP"] == {"a": pytest.approx(0.75), "b": pytest.approx(1.0)}
    assert report["mAP"] == pytest.approx(0.875)
    assert report["R@1"] == 1.0 and report["R@2"] == 1.0
    assert report["P@2"] == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError):
        class_retrieval_metrics(scores[:1], targets, ["a", "b"])
