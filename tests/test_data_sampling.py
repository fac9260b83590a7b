"""Segment sampling and the collator that turns users into model batches with FEP targets."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from use.data import Segment, SegmentCollator, SegmentSettings, sample_segments
from use.model import UserModelConfig

REPO = Path(__file__).resolve().parents[1]
DNA_TOKENIZER = REPO / "tokenizer" / "dna"


def settings(**overrides) -> SegmentSettings:
    values = dict(max_input_size=22, min_input_size=12, gap=5, fep_window=3, pairs=False, random_start=False)
    values.update(overrides)
    return SegmentSettings(**values)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DNA_TOKENIZER)


def model_config(tokenizer, objective="FEP", **overrides) -> UserModelConfig:
    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=8,
        num_hidden_layers=1,
        num_heads=2,
        objective=objective,
        fep_window_size=3,
    )
    values.update(overrides)
    return UserModelConfig(**values)


def encode(tokenizer, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_single_segment_from_start():
    rng = np.random.default_rng(0)
    assert sample_segments(100, settings(), rng) == [Segment(0, 20, 3)]
    assert sample_segments(21, settings(), rng) == [Segment(0, 20, 1)]
    assert sample_segments(10, settings(), rng) == [Segment(0, 10, 0)]
    assert sample_segments(100, settings(fep_window=0), rng) == [Segment(0, 20, 0)]


def test_random_single_segment_keeps_future_window():
    rng = np.random.default_rng(0)
    draws = [sample_segments(100, settings(random_start=True), rng)[0] for _ in range(2000)]
    starts = {segment.start for segment in draws}
    assert starts == set(range(0, 100 - 20 - 3 + 1))
    assert all(segment.length == 20 and segment.future == 3 for segment in draws)


def test_pair_lengths_gap_and_windows():
    rng = np.random.default_rng(0)
    pair_settings = settings(pairs=True)
    first_lengths = set()
    for _ in range(500):
        first, second = sample_segments(100, pair_settings, rng)
        first_lengths.add(first.length)
        assert first.start == 0
        assert first.future == 3
        assert second.start == first.length + 5
        assert second.length == 20
        assert second.future == 3
    assert first_lengths == set(range(10, 21))


def test_pair_at_minimum_user_length():
    pair_settings = settings(pairs=True)
    assert pair_settings.min_user_length == 25
    first, second = sample_segments(25, pair_settings, np.random.default_rng(0))
    assert first == Segment(0, 10, 3)
    assert second == Segment(15, 10, 0)


def test_random_pair_stays_inside_user():
    rng = np.random.default_rng(1)
    pair_settings = settings(pairs=True, random_start=True)
    starts = set()
    for _ in range(500):
        first, second = sample_segments(60, pair_settings, rng)
        starts.add(first.start)
        assert second.start == first.start + first.length + 5
        assert second.start + second.length + second.future <= 60
        assert first.start + first.length + first.future <= second.start
    assert len(starts) > 10


def test_too_short_user_is_rejected():
    with pytest.raises(ValueError, match="shorter than the 25"):
        sample_segments(24, settings(pairs=True), np.random.default_rng(0))


def test_collator_builds_cls_sep_and_padding(tokenizer):
    config = model_config(tokenizer, objective="CLM")
    collator = SegmentCollator(config, settings(fep_window=0), seed=0)
    long_user = encode(tokenizer, "ACGT" * 10)
    short_user = encode(tokenizer, "GATTACA")
    batch = collator([{"input_ids": long_user, "row_id": 0}, {"input_ids": short_user, "row_id": 1}])
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, 22)
    assert batch["input_ids"][0].tolist() == [1] + long_user[:20].tolist() + [2]
    assert batch["input_ids"][1].tolist() == [1] + short_user.tolist() + [2] + [3] * 13
    assert batch["attention_mask"][1].tolist() == [1] * 9 + [0] * 13


def test_fep_targets_match_future_windows(tokenizer):
    config = model_config(tokenizer, objective="FEP")
    collator = SegmentCollator(config, settings(), seed=0)
    user = encode(tokenizer, "ACGTTGCANNACGGTCCATGACAGT")  # 25 behaviors: 20 input + 3 future
    short = encode(tokenizer, "ACGTAC")
    batch = collator([{"input_ids": user, "row_id": 0}, {"input_ids": short, "row_id": 1}])
    targets, mask = batch["fep_targets"], batch["fep_mask"]
    assert targets.shape == (2, 22, 5)
    assert targets.dtype == torch.bool

    stream = np.concatenate([[1], user[:23]])
    expected_mask = [position + 3 < len(stream) for position in range(22)]
    assert mask[0].tolist() == expected_mask
    assert mask[0].sum() == 21
    assert not mask[0, 21]  # [SEP] has no complete window
    for position in range(21):
        expected = torch.zeros(5, dtype=torch.bool)
        expected[stream[position + 1 : position + 4] - 5] = True
        assert torch.equal(targets[0, position], expected), position

    # The short user has no future behaviors: only positions whose 3 next tokens are behaviors count.
    assert mask[1].tolist() == [True, True, True, True] + [False] * 18


def test_fep_unknown_behavior_counts_in_window_without_class(tokenizer):
    config = model_config(tokenizer, objective="FEP")
    collator = SegmentCollator(config, settings(max_input_size=8), seed=0)
    user = encode(tokenizer, "AAXCCCCC")
    assert user[2] == tokenizer.unk_token_id
    batch = collator([{"input_ids": user, "row_id": 0}])
    assert batch["fep_mask"][0].tolist() == [True, True, True, True, True, True, False, False]
    # The window of position 1 ("A") is A, [UNK], C, which marks the classes of A and C only.
    assert batch["fep_targets"][0, 1].tolist() == [True, True, False, False, False]


def test_fep_context_length_and_frequency(tokenizer):
    config = model_config(tokenizer, objective="FEP", fep_context_length=4, fep_loss_frequency=3)
    collator = SegmentCollator(config, settings(), seed=0)
    batch = collator([{"input_ids": encode(tokenizer, "ACGT" * 10), "row_id": 0}])
    positions_with_loss = torch.nonzero(batch["fep_mask"][0]).flatten().tolist()
    assert positions_with_loss == [5, 8, 11, 14, 17, 20]


def test_sup_pairs_are_adjacent_rows(tokenizer):
    config = model_config(tokenizer, objective="FEP_SUP")
    collator = SegmentCollator(config, settings(pairs=True, random_start=True), seed=0)
    users = [encode(tokenizer, base * 60) for base in "ACGT"]
    batch = collator([{"input_ids": ids, "row_id": index} for index, ids in enumerate(users)])
    assert batch["input_ids"].shape[0] == 8
    for row in range(8):
        real = batch["input_ids"][row][batch["attention_mask"][row].bool()]
        behaviors = set(real[1:-1].tolist())
        assert behaviors == {5 + row // 2}, row
    first_lengths = batch["attention_mask"][0::2].sum(dim=1)
    assert all(12 <= length <= 22 for length in first_lengths.tolist())


def test_training_draws_change_with_epoch(tokenizer):
    config = model_config(tokenizer, objective="CLM")
    random_settings = settings(fep_window=0, random_start=True)
    features = [{"input_ids": encode(tokenizer, "ACGTTGCA" * 20), "row_id": index} for index in range(4)]

    train_collator = SegmentCollator(config, random_settings, seed=0)
    first = train_collator(features)
    # Each user's draw depends only on (seed, epoch, row_id), not on earlier calls or on the rest of the batch.
    assert torch.equal(train_collator(features)["input_ids"], first["input_ids"])
    alone = train_collator(features[2:3])
    assert torch.equal(alone["input_ids"][0], first["input_ids"][2])
    assert len({tuple(row.tolist()) for row in first["input_ids"]}) > 1

    train_collator.set_epoch(1)
    assert not torch.equal(train_collator(features)["input_ids"], first["input_ids"])
    train_collator.set_epoch(0)
    assert torch.equal(train_collator(features)["input_ids"], first["input_ids"])

    other_seed = SegmentCollator(config, random_settings, seed=1)
    assert not torch.equal(other_seed(features)["input_ids"], first["input_ids"])


def test_evaluation_draws_repeat(tokenizer):
    config = model_config(tokenizer, objective="CLM")
    random_settings = settings(fep_window=0, random_start=True)
    features = [{"input_ids": encode(tokenizer, "ACGTTGCA" * 20), "row_id": index} for index in range(4)]
    eval_collator = SegmentCollator(config, random_settings, seed=0, deterministic=True)
    first = eval_collator(features)
    eval_collator.set_epoch(3)
    assert torch.equal(eval_collator(features)["input_ids"], first["input_ids"])


def test_collator_rejects_settings_of_another_objective(tokenizer):
    with pytest.raises(ValueError, match="pairs=False"):
        SegmentCollator(model_config(tokenizer, objective="SUP"), settings(fep_window=0), seed=0)
    with pytest.raises(ValueError, match="needs 3"):
        SegmentCollator(model_config(tokenizer, objective="FEP"), settings(fep_window=5), seed=0)
