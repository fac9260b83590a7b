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
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler, label_binarize
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
    """
    known = np.isin(y_true, classes)
    if not known.all():
        logger.warning("AUC leaves out %d sample(s) whose class is not among the fitted classes", int((~known).sum()))
    y_true, probabilities = y_true[known], probabilities[known]
    present = np.isin(classes, y_true)
    if present.sum() < 2:
        logger.warning("AUC is undefined: %d class(es) have test samples, at least 2 are needed", int(present.sum()))
        return float("nan")

    if len(classes) == 2:
        return float(roc_auc_score(y_true == classes[1], probabilities[:, 1]))
    if present.all():
        return float(roc_auc_score(y_true, probabilities, multi_class="ovr", labels=classes))

    logger.warning(
        "AUC averages over %d of %d classes; the others have no test sample", int(present.sum()), len(classes)
    )
    # One binary AUC per present class column, averaged: the same one-vs-rest macro average
    # that multi_class="ovr" computes, restricted to the classes it is defined for.
    indicator = label_binarize(y_true, classes=classes)
    return float(roc_auc_score(indicator[:, present], probabilities[:, present], average="macro"))


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
