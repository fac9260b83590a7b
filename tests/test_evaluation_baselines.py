"""Strategy selection, pooling, the non-neural baselines and the report outputs."""

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

from use.evaluation import report
from use.evaluation.baselines import RANDOM_EMBEDDING_DIM, baseline_embeddings, build_vectorizer
from use.evaluation.behaviors import BehaviorData, PeriodSchedule
from use.evaluation.strategies import pool_periods, select_strategies


def behavior_data(histories, contexts, max_len, period_len):
    return BehaviorData(
        rows=list(range(2, 2 + len(histories))),
        histories=[list(h) for h in histories],
        contexts=[list(c) for c in contexts],
        schedule=PeriodSchedule(max_len=max_len, period_len=period_len),
    )


def dense(matrix):
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def test_default_strategies_per_method(caplog):
    assert select_strategies("retnet", None) == ["recent", "pool", "stateful", "recompute"]
    with caplog.at_level(logging.INFO):
        assert select_strategies("gpt2", None) == ["recent", "pool", "recompute"]
    assert "'stateful' does not apply to gpt2" in caplog.text
    assert select_strategies("tf-idf", None) == ["recent", "pool", "recompute"]


def test_requested_strategies_drop_stateful_for_baselines(caplog):
    with caplog.at_level(logging.WARNING):
        assert select_strategies("tf", ["stateful", "recompute"]) == ["recompute"]
    assert "Skipping strategies ['stateful'] for tf" in caplog.text
    with pytest.raises(ValueError, match=r"none of the strategies \['stateful'\] applies to random"):
        select_strategies("random", ["stateful"])
    with pytest.raises(ValueError, match="unknown strategies"):
        select_strategies("retnet", ["latest"])
    with pytest.raises(ValueError, match="unknown method"):
        select_strategies("lstm", None)


def test_pool_is_running_mean():
    recent = [np.array([[2.0, 0.0]]), np.array([[0.0, 4.0]]), np.array([[1.0, 1.0]])]
    pooled = pool_periods(recent)

    assert [p.tolist() for p in pooled] == [[[2.0, 0.0]], [[1.0, 2.0]], [[1.0, 5 / 3]]]
    sparse_pooled = pool_periods([sp.csr_matrix(m) for m in recent])
    assert sp.issparse(sparse_pooled[2])
    assert np.allclose(dense(sparse_pooled[2]), [[1.0, 5 / 3]])


def test_tf_is_relative_behavior_frequency():
    data = behavior_data(["aab", "bbc"], ["abzz", "cccc"], max_len=4, period_len=2)
    embeddings = baseline_embeddings("tf", data, ["recent", "recompute"])

    # Vocabulary from histories: a, b, c (z never occurs in a history and is ignored).
    np.testing.assert_allclose(dense(embeddings.history), [[2 / 3, 1 / 3, 0.0], [0.0, 2 / 3, 1 / 3]], atol=1e-12)
    assert dense(embeddings.context["recent"][1]).tolist() == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert dense(embeddings.context["recompute"][1]).tolist() == [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]


def test_tfidf_weights_come_from_histories():
    data = behavior_data(["aab", "bbc"], ["abab", "cccc"], max_len=4, period_len=2)
    embeddings = baseline_embeddings("tf-idf", data, ["recompute"])
    # Smoothed idf: ln((1 + 2) / (1 + df)) + 1, df(a) = 1, df(b) = 2.
    idf_a, idf_b = np.log(3 / 2) + 1, 1.0
    expected = np.array([idf_a, idf_b, 0.0]) / np.hypot(idf_a, idf_b)

    assert dense(embeddings.context["recompute"][1])[0] == pytest.approx(expected)


def test_ngram_vocabulary_counts_runs_up_to_three():
    vectorizer = build_vectorizer("n-grams")
    vectorizer.fit([list("abcd")])

    assert len(vectorizer.vocabulary_) == 4 + 3 + 2
    assert ("b", "c", "d") in vectorizer.vocabulary_


def test_baselines_accept_token_id_behaviors():
    data = behavior_data([[7, 8, 8], [9, 9, 7]], [[7, 8, 9, 9], [9, 9, 9, 9]], max_len=4, period_len=2)
    embeddings = baseline_embeddings("n-grams", data, ["recent", "pool"])

    assert embeddings.history.shape[0] == 2
    assert len(embeddings.context["pool"]) == 2
    assert np.allclose(dense(embeddings.context["pool"][0]), dense(embeddings.context["recent"][0]))


def test_random_baseline_is_seeded():
    data = behavior_data(["ab"] * 3, ["abcd"] * 3, max_len=4, period_len=2)
    first = baseline_embeddings("random", data, ["recent", "pool", "recompute"], seed=5)
    again = baseline_embeddings("random", data, ["recent", "pool", "recompute"], seed=5)
    other = baseline_embeddings("random", data, ["recent"], seed=6)

    assert first.history.shape == (3, RANDOM_EMBEDDING_DIM)
    assert np.array_equal(first.history, again.history)
    assert np.array_equal(first.context["recompute"][1], again.context["recompute"][1])
    assert not np.array_equal(first.history, other.history)
    assert np.array_equal(first.context["pool"][0], first.context["recent"][0])


def test_baseline_rejects_stateful():
    data = behavior_data(["ab"] * 2, ["abcd"] * 2, max_len=4, period_len=2)
    with pytest.raises(ValueError, match="'stateful' does not apply to the tf baseline"):
        baseline_embeddings("tf", data, ["stateful"])


def test_table_lists_periods_and_strategies():
    results = {"recent": [{"mrr": 0.5}, {"mrr": 0.25}], "recompute": [{"mrr": 1.0}, {"mrr": 0.75}]}
    table = report.format_table("MRR", results, 250, lambda m: f"{m['mrr']:.2f}")

    assert table.splitlines() == [
        "MRR",
        "period  behaviors  recent  recompute",
        "     1        250    0.50       1.00",
        "     2        500    0.25       0.75",
    ]


def test_json_report_writes_nan_as_null(tmp_path):
    results = {"recent": [{"auc_mean": float("nan"), "auc_std": 0.0}]}
    built = report.build_report("classification", {"seeds": [0]}, {"users_evaluated": 2}, results, 10)
    report.write_json(built, tmp_path / "out" / "results.json")
    loaded = json.loads((tmp_path / "out" / "results.json").read_text())

    assert loaded["results"]["recent"] == [{"period": 1, "context_behaviors": 10, "auc_mean": None, "auc_std": 0.0}]
    assert loaded["periods"] == [{"period": 1, "context_behaviors": 10}]


def test_plot_writes_png(tmp_path):
    results = {"recent": [{"mrr": 0.5}, {"mrr": 0.7}], "pool": [{"mrr": 0.6}, {"mrr": 0.8}]}
    report.plot_metric(results, "mrr", "MRR", "re-ID", tmp_path / "mrr.png", period_len=250)

    assert (tmp_path / "mrr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
