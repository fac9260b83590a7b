"""Re-identification ranks and metrics on hand-made embeddings with known results."""

import numpy as np
import pytest
import scipy.sparse as sp

from use.evaluation.reid import evaluate_reid, rank_metrics, true_user_ranks
from use.evaluation.strategies import UserEmbeddings


def test_perfect_embeddings_rank_first():
    history = np.random.default_rng(0).standard_normal((6, 8))
    ranks = true_user_ranks(history.copy(), history)

    assert ranks.tolist() == [1, 1, 1, 1, 1, 1]
    assert rank_metrics(ranks) == {"mrr": 1.0, "top_1": 1.0, "top_3": 1.0, "top_5": 1.0, "top_10": 1.0}


def test_identical_embeddings_give_mrr_one_over_n():
    num_users = 7
    same = np.tile(np.random.default_rng(1).standard_normal(16), (num_users, 1))
    ranks = true_user_ranks(same, same)
    metrics = rank_metrics(ranks)

    assert ranks.tolist() == [num_users] * num_users
    assert metrics["mrr"] == pytest.approx(1 / num_users, abs=1e-12)
    assert metrics["top_1"] == 0.0
    assert metrics["top_5"] == 0.0
    assert metrics["top_10"] == 1.0


def test_tie_with_another_user_counts_against():
    history = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    context = np.array([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])

    assert true_user_ranks(context, history).tolist() == [2, 3, 1]


def test_known_preference_orders_give_known_ranks():
    # History i is the one-hot e_i, so the cosine of context i with history j is proportional
    # to the weight context i gives j. Each context lists users from most to least similar.
    orders = [
        [0, 1, 2, 3, 4],
        [3, 1, 0, 2, 4],
        [4, 0, 2, 1, 3],
        [3, 0, 1, 2, 4],
        [0, 1, 2, 3, 4],
    ]
    history = np.eye(5)
    context = np.zeros((5, 5))
    for user, order in enumerate(orders):
        for position, other in enumerate(order):
            context[user, other] = 5 - position
    ranks = true_user_ranks(context, history)
    metrics = rank_metrics(ranks)

    assert ranks.tolist() == [1, 2, 3, 1, 5]
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 + 1 / 5) / 5, abs=1e-12)
    assert metrics["top_1"] == pytest.approx(2 / 5)
    assert metrics["top_3"] == pytest.approx(4 / 5)
    assert metrics["top_5"] == 1.0


def test_shifted_permutation_ranks_last():
    # Context i equals history i+1 (mod 4) and histories are orthogonal, so every true user
    # ties at similarity 0 with two others and loses to one: rank 4.
    history = np.eye(4)
    context = np.roll(history, -1, axis=0)

    assert true_user_ranks(context, history).tolist() == [4, 4, 4, 4]


def test_zero_context_vector_ranks_last():
    history = np.eye(3)
    context = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    assert true_user_ranks(context, history).tolist() == [3, 1, 1]


def test_sparse_matches_dense_ranks():
    rng = np.random.default_rng(2)
    history = rng.poisson(1.0, (30, 12)).astype(float)
    context = history + rng.poisson(1.0, (30, 12))
    dense = true_user_ranks(context, history)
    sparse = true_user_ranks(sp.csr_matrix(context), sp.csr_matrix(history))

    assert sparse.tolist() == dense.tolist()


def test_ranks_reject_nan_and_shape_mismatch():
    history = np.eye(3)
    with pytest.raises(ValueError, match="context embeddings contain NaN or inf"):
        true_user_ranks(np.full((3, 3), np.nan), history)
    with pytest.raises(ValueError, match=r"context shape \(2, 3\) differs from history shape \(3, 3\)"):
        true_user_ranks(np.eye(3)[:2], history)


def test_evaluate_reid_per_strategy_and_period():
    history = np.eye(3)
    embeddings = UserEmbeddings(
        history=history,
        context={"recent": [np.tile([1.0, 0.0, 0.0], (3, 1)), history.copy()]},
    )
    results = evaluate_reid(embeddings)

    assert list(results) == ["recent"]
    assert [period["mrr"] for period in results["recent"]] == pytest.approx([(1 + 1 / 3 + 1 / 3) / 3, 1.0])
