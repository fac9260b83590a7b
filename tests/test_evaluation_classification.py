"""User classification: AUC and F1 definitions, separable data, absent classes, two users."""

import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import label_binarize

from use.evaluation.classification import (
    MLPSettings,
    _searchsorted_rows,
    build_classifier,
    evaluate_classification,
    fit_classifier,
    macro_f1,
    ovr_roc_auc,
    score_classifier,
)
from use.evaluation.strategies import UserEmbeddings

FAST_MLP = MLPSettings(hidden_layer_sizes=(64,), max_iter=300)


def separable_users(num_users=20, dim=16, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((num_users, dim))
    return centers, centers + noise * rng.standard_normal((num_users, dim))


def test_default_settings_match_paper_pipeline():
    pipeline = build_classifier(seed=7, settings=MLPSettings())
    scaler, mlp = pipeline.named_steps["standardscaler"], pipeline.named_steps["mlpclassifier"]

    assert scaler.with_mean is True
    assert mlp.hidden_layer_sizes == (1024,)
    assert mlp.learning_rate == "adaptive"
    assert mlp.alpha == 0.01
    assert mlp.max_iter == 3000
    assert mlp.random_state == 7


def test_separable_embeddings_score_near_perfect():
    history, context = separable_users()
    labels = np.arange(len(history))
    classifier = fit_classifier(history, labels, seed=0, settings=FAST_MLP)
    scores = score_classifier(classifier, context, labels)

    assert scores["auc"] > 0.99
    assert scores["macro_f1"] == 1.0


def test_ovr_auc_matches_sklearn_when_all_classes_present():
    rng = np.random.default_rng(3)
    probabilities = rng.dirichlet(np.ones(4), size=12)
    y_true = np.array([0, 1, 2, 3] * 3)
    classes = np.arange(4)
    expected = roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes)

    assert ovr_roc_auc(y_true, probabilities, classes) == pytest.approx(expected, abs=1e-12)


def test_ovr_auc_averages_present_classes_only():
    rng = np.random.default_rng(4)
    probabilities = rng.dirichlet(np.ones(4), size=9)
    y_true = np.array([0, 1, 2] * 3)
    classes = np.arange(4)
    per_class = [roc_auc_score(y_true == c, probabilities[:, c]) for c in (0, 1, 2)]

    assert ovr_roc_auc(y_true, probabilities, classes) == pytest.approx(np.mean(per_class), abs=1e-12)


def test_ovr_auc_drops_samples_of_unknown_classes():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    y_true = np.array([0, 1, 2, 9])

    assert ovr_roc_auc(y_true, probabilities, np.arange(3)) == 1.0


def test_binary_auc_uses_positive_class_column():
    classes = np.array([0, 1])
    right = np.array([[0.8, 0.2], [0.3, 0.7]])

    assert ovr_roc_auc(np.array([0, 1]), right, classes) == 1.0
    assert ovr_roc_auc(np.array([0, 1]), right[:, ::-1], classes) == 0.0


def test_auc_with_one_present_class_is_nan():
    probabilities = np.array([[0.6, 0.2, 0.2], [0.5, 0.3, 0.2]])

    assert np.isnan(ovr_roc_auc(np.array([0, 0]), probabilities, np.arange(3)))


def sklearn_ovr_roc_auc(y_true, probabilities, classes):
    """Return the AUC the way scikit-learn's roc_auc_score computes it for each ovr_roc_auc case."""
    known = np.isin(y_true, classes)
    y_true, probabilities = y_true[known], probabilities[known]
    present = np.isin(classes, y_true)
    if len(classes) == 2:
        return roc_auc_score(y_true == classes[1], probabilities[:, 1])
    if present.all():
        return roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes)
    indicator = label_binarize(y_true, classes=classes)
    return roc_auc_score(indicator[:, present], probabilities[:, present], average="macro")


def tied_probabilities(rng, num_samples, num_classes):
    """Return (samples, classes) rows that sum to 1 and are multiples of 1 / (2 * classes), so many tie."""
    resolution = 2 * num_classes
    counts = rng.multinomial(resolution, rng.dirichlet(np.ones(num_classes)), size=num_samples)
    return counts / resolution


def has_tied_column(probabilities):
    return any(len(np.unique(column)) < len(column) for column in probabilities.T)


@pytest.mark.parametrize("num_classes", [3, 7, 40, 300])
@pytest.mark.parametrize("samples_per_class", [1, 4])
def test_ovr_auc_equals_sklearn_with_ties(num_classes, samples_per_class):
    rng = np.random.default_rng(num_classes * 10 + samples_per_class)
    classes = np.arange(num_classes)
    y_true = rng.permutation(np.repeat(classes, samples_per_class))
    probabilities = tied_probabilities(rng, len(y_true), num_classes)

    assert has_tied_column(probabilities)
    expected = sklearn_ovr_roc_auc(y_true, probabilities, classes)
    assert abs(ovr_roc_auc(y_true, probabilities, classes) - expected) <= 1e-12


@pytest.mark.parametrize("num_classes", [3, 7, 40, 300])
@pytest.mark.parametrize("samples_per_class", [1, 3])
def test_ovr_auc_equals_sklearn_with_absent_classes(num_classes, samples_per_class):
    rng = np.random.default_rng(num_classes * 10 + samples_per_class + 5)
    # Labels with gaps, so column indices differ from class labels.
    classes = 3 * np.arange(num_classes) + 1
    absent = rng.choice(classes, size=max(1, num_classes // 3), replace=False)
    y_true = rng.permutation(np.repeat(np.setdiff1d(classes, absent), samples_per_class))
    probabilities = tied_probabilities(rng, len(y_true), num_classes)

    expected = sklearn_ovr_roc_auc(y_true, probabilities, classes)
    assert abs(ovr_roc_auc(y_true, probabilities, classes) - expected) <= 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_binary_auc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    classes = np.array([2, 5])
    y_true = rng.choice(classes, size=30)
    positive_scores = rng.integers(0, 6, size=30) / 5
    probabilities = np.column_stack([1 - positive_scores, positive_scores])

    expected = sklearn_ovr_roc_auc(y_true, probabilities, classes)
    assert abs(ovr_roc_auc(y_true, probabilities, classes) - expected) <= 1e-12


def test_binary_auc_ignores_the_negative_column():
    classes = np.array([0, 1])
    y_true = np.array([0, 0, 1, 1])
    # Column 0 ranks the samples the wrong way round; only column 1 counts.
    probabilities = np.array([[0.9, 0.1], [0.1, 0.5], [0.9, 0.5], [0.1, 0.9]])

    assert ovr_roc_auc(y_true, probabilities, classes) == pytest.approx(0.875, abs=1e-15)


def test_ovr_auc_hand_computed_ties():
    classes = np.arange(3)
    y_true = np.array([0, 1, 2, 0])
    probabilities = np.array([[0.5, 0.25, 0.25], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.25, 0.5, 0.25]])
    # Class 0: positives 0.5, 0.25 vs negatives 0.5, 0.25 -> (0.5 + 0 + 1 + 0.5) / 4.
    # Class 1: positive 0.5 vs 0.25, 0.25, 0.5 -> (1 + 1 + 0.5) / 3.
    # Class 2: positive 0.5 vs 0.25, 0.0, 0.25 -> 1.
    expected = (0.5 + 2.5 / 3 + 1.0) / 3

    assert ovr_roc_auc(y_true, probabilities, classes) == pytest.approx(expected, abs=1e-15)


def test_ovr_auc_logs_dropped_samples_and_classes(caplog):
    classes = np.arange(4)
    y_true = np.array([0, 1, 2, 9, 9])
    probabilities = np.full((5, 4), 0.25)

    with caplog.at_level(logging.WARNING, logger="use.evaluation.classification"):
        auc = ovr_roc_auc(y_true, probabilities, classes)

    assert auc == 0.5
    assert "AUC leaves out 2 sample(s) whose class is not among the fitted classes" in caplog.messages
    assert "AUC averages over 3 of 4 classes; the others have no test sample" in caplog.messages


def test_ovr_auc_rejects_nan_probabilities():
    probabilities = np.array([[0.5, 0.5, 0.0], [np.nan, 0.5, 0.5], [0.2, 0.2, 0.6]])

    with pytest.raises(ValueError, match="1 NaN or infinite"):
        ovr_roc_auc(np.arange(3), probabilities, np.arange(3))


@pytest.mark.parametrize("side", ["left", "right"])
def test_searchsorted_rows_matches_numpy(side):
    rng = np.random.default_rng(11)
    for length in (1, 2, 5, 64, 100):
        sorted_rows = np.sort(rng.integers(0, 8, size=(6, length)).astype(float), axis=1)
        rows = rng.integers(0, 6, size=50)
        values = rng.integers(-1, 10, size=50).astype(float)
        expected = [np.searchsorted(sorted_rows[row], value, side) for row, value in zip(rows, values)]

        assert _searchsorted_rows(sorted_rows, rows, values, side).tolist() == expected


def test_macro_f1_leaves_out_absent_unpredicted_classes():
    classes = np.arange(3)

    assert macro_f1(np.array([0, 1, 1]), np.array([0, 1, 1]), classes) == 1.0
    # Class 2 is predicted but absent: F1 0 for it, 1 for classes 0 and 1.
    assert macro_f1(np.array([0, 1, 1]), np.array([0, 1, 2]), classes) == pytest.approx((1 + 2 / 3 + 0) / 3)


def test_classifier_with_absent_test_classes():
    history, context = separable_users(num_users=6)
    labels = np.arange(6)
    classifier = fit_classifier(history, labels, seed=0, settings=FAST_MLP)
    scores = score_classifier(classifier, context[:4], labels[:4])

    assert scores["auc"] > 0.99
    assert scores["macro_f1"] == 1.0


def test_two_users_give_binary_scores():
    history, context = separable_users(num_users=2)
    embeddings = UserEmbeddings(history=history, context={"recent": [context]})
    results = evaluate_classification(embeddings, seeds=[0, 1], settings=FAST_MLP)
    period = results["recent"][0]

    assert period["auc_mean"] == 1.0
    assert period["macro_f1_mean"] == 1.0
    assert period["auc_per_seed"] == [1.0, 1.0]


def test_evaluate_classification_reports_mean_and_std():
    history, context = separable_users(num_users=8)
    swapped = context[::-1].copy()
    embeddings = UserEmbeddings(history=history, context={"recent": [context, swapped]})
    results = evaluate_classification(embeddings, seeds=[0, 1, 2], settings=FAST_MLP)
    first, second = results["recent"]

    assert sorted(first) == [
        "auc_mean", "auc_per_seed", "auc_std", "macro_f1_mean", "macro_f1_per_seed", "macro_f1_std",
    ]
    assert len(first["auc_per_seed"]) == 3
    assert first["auc_mean"] == pytest.approx(np.mean(first["auc_per_seed"]))
    assert first["auc_std"] == pytest.approx(np.std(first["auc_per_seed"]))
    assert first["macro_f1_mean"] == 1.0
    # Reversed contexts are predicted as the mirrored user, so no user is right.
    assert second["macro_f1_mean"] == 0.0


def test_evaluate_classification_needs_a_seed():
    history, context = separable_users(num_users=3)
    with pytest.raises(ValueError, match="at least one seed"):
        evaluate_classification(UserEmbeddings(history=history, context={"recent": [context]}), [], FAST_MLP)
