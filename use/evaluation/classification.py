"""Dynamic user classification: one class per user, trained on histories, tested on contexts.

A StandardScaler + MLPClassifier pipeline is fitted on the history embeddings (one sample
per user) and predicts the class of each period's context embedding. Scores are one-vs-rest
ROC AUC on the predicted probabilities and macro F1, both over the classes of the fitted
classifier, repeated for each seed of the MLP.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import f1_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from use.evaluation.strategies import Matrix, UserEmbeddings

logger = logging.getLogger(__name__)


@dataclass
class MLPSettings:
    """MLPClassifier settings; the defaults are those of the USE paper (arXiv 2403.13344)."""

    hidden_layer_sizes: tuple[int, ...] = (1024,)
    max_iter: int = 3000
    alpha: float = 0.01


def build_classifier(seed: int, settings: MLPSettings, sparse_input: bool = False) -> Pipeline:
    """Return the unfitted scaler + MLP pipeline with ``seed`` as the MLP's random_state.

    Sparse input is scaled without centering, because centering would make it dense.
    """
    return make_pipeline(
        StandardScaler(with_mean=not sparse_input),
        # learning_rate only takes effect with solver="sgd", so with sklearn's default solver
        # "adam" used here it changes nothing. It is set to match the configuration reproduced.
        MLPClassifier(
            hidden_layer_sizes=settings.hidden_layer_sizes,
            learning_rate="adaptive",
            alpha=settings.alpha,
            max_iter=settings.max_iter,
            random_state=seed,
        ),
    )


def fit_classifier(features: Matrix, labels: np.ndarray, seed: int, settings: MLPSettings) -> Pipeline:
    """Fit the pipeline, logging instead of printing sklearn's convergence warning."""
    classifier = build_classifier(seed, settings, sparse_input=sp.issparse(features))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        classifier.fit(features, labels)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning(
            "MLP (seed %d) stopped at max_iter=%d before converging; raise --mlp_max_iter for a tighter fit",
            seed,
            settings.max_iter,
        )
    return classifier


def ovr_roc_auc(y_true: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    """Return the macro one-vs-rest ROC AUC over the classifier's classes.

    probabilities: (samples, classes), columns in the order of ``classes``. Samples whose class
    the classifier never saw are left out (logged). Classes without a test sample have no AUC
    and are left out of the average (logged). With two classes this is the binary AUC of the
    positive class ``classes[1]``. Returns NaN when fewer than two classes have test samples.
    The value equals scikit-learn's ``roc_auc_score`` up to float rounding (tested against 1.9.1,
    called with ``multi_class="ovr"`` when every class has test samples). It ranks all columns at
    once in O(samples x classes x log samples) time. Unlike ``multi_class="ovr"``, it accepts
    rows that do not sum to 1.
    """
    if not np.isfinite(probabilities).all():
        raise ValueError(
            f"Invalid probabilities for AUC: {int((~np.isfinite(probabilities)).sum())} NaN or infinite "
            "value(s). Check the classifier's predict_proba output."
        )
    known = np.isin(y_true, classes)
    if not known.all():
        logger.warning("AUC leaves out %d sample(s) whose class is not among the fitted classes", int((~known).sum()))
        y_true, probabilities = y_true[known], probabilities[known]
    present = np.isin(classes, y_true)
    if present.sum() < 2:
        logger.warning("AUC is undefined: %d class(es) have test samples, at least 2 are needed", int(present.sum()))
        return float("nan")

    sorter = np.argsort(classes)
    # (samples,): index into ``classes`` of each sample's class
    class_index = sorter[np.searchsorted(classes, y_true, sorter=sorter)]
    if len(classes) == 2:
        return float(_binary_auc_per_column(class_index, probabilities)[1])
    if present.all():
        return float(np.mean(_binary_auc_per_column(class_index, probabilities)))

    logger.warning(
        "AUC averages over %d of %d classes; the others have no test sample", int(present.sum()), len(classes)
    )
    # One binary AUC per present class column, averaged: the one-vs-rest macro average of
    # multi_class="ovr", restricted to the classes it is defined for.
    present_index = np.cumsum(present) - 1
    return float(np.mean(_binary_auc_per_column(present_index[class_index], probabilities[:, present])))


def _binary_auc_per_column(column_of_sample: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return the ROC AUC of each column c of ``scores``, with the samples of column c as positives.

    The samples with ``column_of_sample == c`` are the positives of column c and all others its
    negatives. column_of_sample: (samples,) ints in [0, columns), scores: (samples, columns). Every column
    needs at least one positive and one negative. The AUC is the Mann-Whitney U over P positives
    and N negatives, U / (P N), where a tied positive-negative pair counts one half, as in the
    trapezoidal area under the ROC curve.
    """
    samples, columns = scores.shape
    # (columns, samples): each column's scores in ascending order
    sorted_scores = scores.T.copy()
    sorted_scores.sort(axis=1)
    # (samples,): each sample's score in the column where it is the positive
    own_scores = scores[np.arange(samples), column_of_sample]
    below = _searchsorted_rows(sorted_scores, column_of_sample, own_scores, side="left")
    at_or_below = _searchsorted_rows(sorted_scores, column_of_sample, own_scores, side="right")

    # For a positive, below + at_or_below is twice the count of lower scores plus half the tied
    # ones, its own score included. Over a column's P positives, positive pairs add exactly P^2 / 2.
    twice_counts = np.bincount(column_of_sample, weights=below + at_or_below, minlength=columns)
    num_positive = np.bincount(column_of_sample, minlength=columns)
    mann_whitney_u = twice_counts / 2 - num_positive * num_positive / 2
    return mann_whitney_u / (num_positive * (samples - num_positive))


def _searchsorted_rows(sorted_rows: np.ndarray, rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """Return ``np.searchsorted(sorted_rows[rows[q]], values[q], side)`` for every query q at once.

    sorted_rows: (num_rows, length), each row ascending; rows, values: (queries,). A binary
    search over all queries in parallel, so it costs O(queries x log length).
    """
    length = sorted_rows.shape[1]
    goes_right = np.less if side == "left" else np.less_equal
    low = np.zeros(len(rows), dtype=np.intp)
    high = np.full(len(rows), length, dtype=np.intp)
    # Each step halves every open interval [low, high) of the length + 1 possible results.
    for _ in range(length.bit_length()):
        middle = (low + high) // 2
        open_interval = low < high
        # Closed intervals may have middle == length, which is clipped and then ignored.
        right = goes_right(sorted_rows[rows, np.minimum(middle, length - 1)], values)
        low = np.where(open_interval & right, middle + 1, low)
        high = np.where(open_interval & ~right, middle, high)
    return low


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> float:
    """Return macro F1 over ``classes``; classes neither present nor predicted are left out of the mean."""
    return float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=np.nan))


def score_classifier(classifier: Pipeline, features: Matrix, labels: np.ndarray) -> dict[str, float]:
    """Return ``{"auc": ..., "macro_f1": ...}`` of the fitted classifier on (features, labels)."""
    classes = classifier.classes_
    # (samples, classes)
    probabilities = classifier.predict_proba(features)
    predictions = classes[np.argmax(probabilities, axis=1)]
    return {
        "auc": ovr_roc_auc(labels, probabilities, classes),
        "macro_f1": macro_f1(labels, predictions, classes),
    }


def evaluate_classification(
    embeddings: UserEmbeddings, seeds: list[int], settings: MLPSettings
) -> dict[str, list[dict[str, float | list[float]]]]:
    """Return classification scores per strategy, one dict per period (index p - 1).

    Each dict contains ``auc_mean``, ``auc_std``, ``macro_f1_mean``, ``macro_f1_std`` (population
    standard deviation over seeds) and the per-seed values ``auc_per_seed``, ``macro_f1_per_seed``.
    """
    if not seeds:
        raise ValueError("classification needs at least one seed; pass --seeds")
    labels = np.arange(embeddings.history.shape[0])
    # scores[strategy][period index][metric] -> one value per seed
    scores = {
        strategy: [{"auc": [], "macro_f1": []} for _ in periods] for strategy, periods in embeddings.context.items()
    }
    for seed in tqdm(seeds, desc="classifier seeds", unit="seed"):
        classifier = fit_classifier(embeddings.history, labels, seed, settings)
        for strategy, periods in embeddings.context.items():
            for index, context in enumerate(periods):
                for metric, value in score_classifier(classifier, context, labels).items():
                    scores[strategy][index][metric].append(value)

    results: dict[str, list[dict[str, float | list[float]]]] = {}
    for strategy, periods in scores.items():
        results[strategy] = [_summarize(period_scores) for period_scores in periods]
        for period, summary in enumerate(results[strategy], start=1):
            logger.info(
                "classification %s period %d: AUC %.4f +- %.4f, macro F1 %.4f +- %.4f",
                strategy,
                period,
                summary["auc_mean"],
                summary["auc_std"],
                summary["macro_f1_mean"],
                summary["macro_f1_std"],
            )
    return results


def _summarize(per_seed: dict[str, list[float]]) -> dict[str, float | list[float]]:
    summary: dict[str, float | list[float]] = {}
    for metric, values in per_seed.items():
        summary[f"{metric}_mean"] = float(np.mean(values))
        summary[f"{metric}_std"] = float(np.std(values))
        summary[f"{metric}_per_seed"] = [float(v) for v in values]
    return summary
