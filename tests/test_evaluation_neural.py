"""Neural context strategies: stateful RetNet updates equal recomputing from scratch."""

import numpy as np
import pytest
import torch

from use import UserModel, UserModelConfig
from use.embedding import embed_sequences
from use.evaluation.behaviors import BehaviorData, PeriodSchedule
from use.evaluation.neural import neural_embeddings

VOCAB_SIZE = 40
FIRST_BEHAVIOR_ID = 5


def random_user_model(backbone_type: str, chunk_size: int = 16) -> UserModel:
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone_type=backbone_type, vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_heads=4,
        dropout=0.0, objective="CLM", chunk_size=chunk_size, max_position_embeddings=64,
    )
    return UserModel(config).eval()


def random_behaviors(num_users: int, history_len: int, context_len: int, seed: int = 0) -> BehaviorData:
    rng = np.random.default_rng(seed)

    def ids(length):
        return rng.integers(FIRST_BEHAVIOR_ID, VOCAB_SIZE, length).tolist()

    # Histories of different lengths, so batches contain right padding.
    histories = [ids(history_len - 3 * user) for user in range(num_users)]
    return BehaviorData(
        rows=list(range(2, 2 + num_users)),
        histories=histories,
        contexts=[ids(context_len) for _ in range(num_users)],
        schedule=PeriodSchedule(max_len=context_len, period_len=context_len // 4),
    )


@pytest.fixture(scope="module")
def retnet_embeddings():
    model = random_user_model("retnet")
    # Periods of 10 behaviors against chunks of 16, so period borders fall inside chunks.
    data = random_behaviors(num_users=5, history_len=45, context_len=40)
    return model, data, neural_embeddings(model, data, ["recent", "pool", "stateful", "recompute"], batch_size=2)


def test_stateful_equals_recompute_for_retnet(retnet_embeddings):
    _, _, embeddings = retnet_embeddings
    for period, (stateful, recompute) in enumerate(
        zip(embeddings.context["stateful"], embeddings.context["recompute"]), start=1
    ):
        difference = np.abs(stateful - recompute).max()
        assert difference < 1e-4, f"period {period}: stateful and recompute differ by {difference}"


def test_every_strategy_equals_recent_at_period_one(retnet_embeddings):
    _, _, embeddings = retnet_embeddings
    recent = embeddings.context["recent"][0]
    for strategy in ("pool", "stateful", "recompute"):
        np.testing.assert_allclose(embeddings.context[strategy][0], recent, atol=1e-5, err_msg=strategy)


def test_recent_differs_from_recompute_later(retnet_embeddings):
    _, _, embeddings = retnet_embeddings
    assert np.abs(embeddings.context["recent"][3] - embeddings.context["recompute"][3]).max() > 1e-3


def test_pool_is_mean_of_recent(retnet_embeddings):
    _, _, embeddings = retnet_embeddings
    recent = embeddings.context["recent"]
    np.testing.assert_allclose(embeddings.context["pool"][2], (recent[0] + recent[1] + recent[2]) / 3, atol=1e-6)


def test_history_embedding_is_mean_over_window(retnet_embeddings):
    model, data, embeddings = retnet_embeddings
    expected = embed_sequences(model, [data.histories[4]], batch_size=1, progress=False).numpy()

    assert embeddings.history.shape == (5, 32)
    np.testing.assert_allclose(embeddings.history[4:5], expected, atol=1e-5)


def test_recent_period_matches_single_sequence(retnet_embeddings):
    model, data, embeddings = retnet_embeddings
    expected = embed_sequences(model, [data.period(3, 2)], batch_size=1, progress=False).numpy()

    np.testing.assert_allclose(embeddings.context["recent"][1][3:4], expected, atol=1e-5)


def test_gpt2_strategies_without_state():
    model = random_user_model("gpt2")
    data = random_behaviors(num_users=3, history_len=100, context_len=80)
    embeddings = neural_embeddings(model, data, ["recent", "recompute"], batch_size=2)

    assert embeddings.strategies == ["recent", "recompute"]
    assert len(embeddings.context["recompute"]) == 4
    np.testing.assert_allclose(embeddings.context["recompute"][0], embeddings.context["recent"][0], atol=1e-5)
    with pytest.raises(ValueError, match="'stateful' needs a RetNet model"):
        neural_embeddings(model, data, ["stateful"], batch_size=2)
