"""Dynamic user re-identification: find each user's history among all histories from their context.

User i's context embedding is compared by cosine similarity with every history embedding.
The rank of the true history counts ties against it: rank = 1 + the number of other users
whose similarity is at least the true one, so identical embeddings never score a hit.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
from sklearn.metrics.pairwise import cosine_similarity

from use.evaluation.strategies import Matrix, UserEmbeddings

logger = logging.getLogger(__name__)

TOP_K = (1, 3, 5, 10)
# Similarities within this distance of the true user's count as ties. It absorbs float64
# rounding differences between equal dot products computed in different BLAS blocks.
TIE_TOLERANCE = 1e-9
# Context rows compared per block; a block holds (rows, users) float64 similarities.
_ROW_BLOCK = 1024


def true_user_ranks(context: Matrix, history: Matrix) -> np.ndarray:
    """Return the 1-based rank of each user's own history by cosine similarity to their context.

    context, history: (users, dim), row i of both belonging to user i. Zero vectors have
    similarity 0 with everything. Returns (users,) int64.
    """
    if context.shape != history.shape:
        raise ValueError(f"context shape {context.shape} differs from history shape {history.shape}")
    for name, matrix in (("context", context), ("history", history)):
        values = matrix.data if sp.issparse(matrix) else matrix
        if not np.isfinite(values).all():
            raise ValueError(f"{name} embeddings contain NaN or inf; check the model checkpoint and its inputs")
    num_users = context.shape[0]
    ranks = np.empty(num_users, dtype=np.int64)
    for start in range(0, num_users, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, num_users)
        # (block, users)
        similarity = cosine_similarity(_as_float64(context[start:stop]), _as_float64(history))
        users = np.arange(start, stop)
        true_similarity = similarity[users - start, users]
        at_least_true = similarity >= (true_similarity - TIE_TOLERANCE)[:, None]
        # The true user always satisfies its own comparison, so it is the "1 +" of the rank.
        ranks[start:stop] = at_least_true.sum(axis=1)
    return ranks


def _as_float64(matrix: Matrix) -> Matrix:
    return matrix.astype(np.float64)


def rank_metrics(ranks: np.ndarray) -> dict[str, float]:
    """Return MRR and top-k accuracy for k in TOP_K, as fractions of users."""
    metrics = {"mrr": float(np.mean(1.0 / ranks))}
    for k in TOP_K:
        metrics[f"top_{k}"] = float(np.mean(ranks <= k))
    return metrics


def evaluate_reid(embeddings: UserEmbeddings) -> dict[str, list[dict[str, float]]]:
    """Return re-identification metrics per strategy, one dict per period (index p - 1)."""
    results: dict[str, list[dict[str, float]]] = {}
    for strategy, periods in embeddings.context.items():
        results[strategy] = []
        for period, context in enumerate(periods, start=1):
            metrics = rank_metrics(true_user_ranks(context, embeddings.history))
            results[strategy].append(metrics)
            logger.info("re-ID %s period %d: MRR %.4f, top-1 %.4f", strategy, period, metrics["mrr"], metrics["top_1"])
    return results
