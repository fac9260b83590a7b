"""FEP targets, the SUP loss and the CLM loss on hand-made inputs with known values."""

import math

import pytest
import torch
import torch.nn.functional as F

from use import objectives
from use.objectives import behavior_mask, build_fep_targets, clm_loss, info_nce_loss, objective_parts

FIRST_BEHAVIOR_ID = 5
CLS_ID = 1
SEP_ID = 2
PAD_ID = 3
UNK_ID = 0


def fep_case(window=5, context_length=0, frequency=1):
    """30 behavior tokens then 10 padding positions, ids cycling through 7 behaviors."""
    behaviors = [FIRST_BEHAVIOR_ID + (position * 3) % 7 for position in range(30)]
    ids = torch.tensor([behaviors + [PAD_ID] * 10])
    attention_mask = torch.tensor([[1] * 30 + [0] * 10])
    content = behavior_mask(ids, attention_mask, FIRST_BEHAVIOR_ID, UNK_ID)
    targets, mask = build_fep_targets(
        ids, content, window=window, num_positions=40, first_behavior_id=FIRST_BEHAVIOR_ID, num_behaviors=7,
        context_length=context_length, frequency=frequency,
    )
    return behaviors, targets, mask


def test_fep_targets_hold_next_window_behaviors():
    behaviors, targets, mask = fep_case(window=5)

    # Position t has a complete window when tokens t+1 .. t+5 are all behaviors: t + 5 <= 29.
    assert mask[0].nonzero().flatten().tolist() == list(range(25))
    for position in range(25):
        expected = torch.zeros(7, dtype=torch.bool)
        for token in behaviors[position + 1 : position + 6]:
            expected[token - FIRST_BEHAVIOR_ID] = True
        assert torch.equal(targets[0, position], expected), f"position {position}"


def test_fep_context_length_and_frequency_select_positions():
    _, _, mask = fep_case(window=5, context_length=4, frequency=3)
    # 1-based positions 3, 6, 9, ... are kept, i.e. t = 2, 5, 8, ...; t < 4 is skipped.
    assert mask[0].nonzero().flatten().tolist() == [5, 8, 11, 14, 17, 20, 23]


def test_fep_stream_longer_than_input_completes_last_windows():
    ids = torch.arange(FIRST_BEHAVIOR_ID, FIRST_BEHAVIOR_ID + 12)[None, :]
    content = torch.ones_like(ids, dtype=torch.bool)
    targets, mask = build_fep_targets(ids, content, window=2, num_positions=10, first_behavior_id=5, num_behaviors=12)
    assert mask.all()
    assert targets[0, 9].nonzero().flatten().tolist() == [10, 11]


def test_fep_unknown_token_marks_no_class():
    ids = torch.tensor([[5, 6, UNK_ID, 7, 8, 9]])
    content = behavior_mask(ids, None, FIRST_BEHAVIOR_ID, UNK_ID)
    targets, mask = build_fep_targets(ids, content, window=2, num_positions=4, first_behavior_id=5, num_behaviors=5)
    assert mask[0].tolist() == [True, True, True, True]
    assert targets[0, 1].nonzero().flatten().tolist() == [2]  # window: [UNK], id 7


def test_fep_window_below_one_is_rejected():
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="window size must be at least 1, got 0"):
        build_fep_targets(ids, ids > 0, window=0, num_positions=3, first_behavior_id=5, num_behaviors=3)


def test_fep_zero_positions_are_rejected():
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="at least one position, got num_positions=0"):
        build_fep_targets(ids, ids > 0, window=2, num_positions=0, first_behavior_id=5, num_behaviors=3)


def test_fep_integer_content_is_rejected():
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="must be a bool tensor, got torch.int64"):
        build_fep_targets(ids, torch.ones_like(ids), window=1, num_positions=2, first_behavior_id=5, num_behaviors=3)


@pytest.mark.parametrize("contrastive_type", ["Orig", "HardNeg"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("temperature", [0.01, 0.05, 0.07, 0.1, 0.5, 1.0])
def test_info_nce_of_identical_embeddings_is_log_batch(contrastive_type, dtype, temperature):
    users = 8
    embedding = F.normalize(torch.randn(1, 16), dim=-1)
    embeddings = embedding.expand(2 * users, -1).to(dtype)
    loss = info_nce_loss(embeddings, temperature, contrastive_type)
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(users)) <= 1e-3


@pytest.mark.parametrize("contrastive_type", ["Orig", "HardNeg"])
def test_info_nce_orthogonal_pairs_near_zero(contrastive_type):
    users = 6
    basis = torch.eye(users, 16)
    embeddings = basis.repeat_interleave(2, dim=0)  # rows 2i and 2i+1 are the same unit vector
    loss = info_nce_loss(embeddings, 0.05, contrastive_type)
    # Each negative has logit 0 against a positive of 1 / 0.05 = 20: loss = log(1 + 5 e^-20).
    assert loss.item() == pytest.approx(math.log1p(5 * math.exp(-20)), abs=1e-7)


def test_hard_negative_weighting_raises_loss_for_hard_negatives():
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(8, 16), dim=-1)
    plain = info_nce_loss(embeddings, 0.1, "Orig")
    hard = info_nce_loss(embeddings, 0.1, "HardNeg")
    assert hard > plain


def test_info_nce_rejects_odd_batch():
    with pytest.raises(ValueError, match="7 rows"):
        info_nce_loss(torch.randn(7, 4), 0.07)


def test_clm_loss_skips_padding_pairs():
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    embedding = torch.randn(12, 8)
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 3, 3]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    logits = hidden @ embedding.T
    pairs = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    expected = torch.stack([F.cross_entropy(logits[row, position], ids[row, position + 1]) for row, position in pairs]).mean()
    assert clm_loss(hidden, embedding, ids, mask).item() == pytest.approx(expected.item(), abs=1e-6)


def test_objective_names_split_into_parts():
    assert objective_parts("FEP_CLM_SUP") == ("FEP", "CLM", "SUP")
    with pytest.raises(ValueError, match="'MLM' is invalid"):
        objective_parts("MLM")


@pytest.fixture(params=["packed", "scatter"])
def fep_path(request, monkeypatch):
    """Run `build_fep_targets` on CPU through its numpy path, or through the torch scatter of other devices."""
    if request.param == "scatter":
        monkeypatch.setattr(objectives, "_packed_fep_targets", objectives._scatter_fep_targets)
    return request.param


def explicit_fep_targets(ids, content, window, num_positions, num_behaviors, context_length=0, frequency=1):
    """Build FEP targets and mask from their definition, one window at a time, over Python lists."""
    targets, mask = [], []
    for row_ids, row_content in zip(ids.tolist(), content.tolist()):
        row_targets, row_mask = [], []
        for position in range(num_positions):
            window_ids = row_ids[position + 1 : position + 1 + window]
            window_content = row_content[position + 1 : position + 1 + window]
            complete = len(window_ids) == window and all(window_content)
            row_mask.append(complete and position >= context_length and (position + 1) % frequency == 0)
            marked = [False] * num_behaviors
            for token, is_content in zip(window_ids, window_content):
                behavior = token - FIRST_BEHAVIOR_ID
                if is_content and 0 <= behavior < num_behaviors:
                    marked[behavior] = True
            row_targets.append(marked)
        targets.append(row_targets)
        mask.append(row_mask)
    return torch.tensor(targets, dtype=torch.bool), torch.tensor(mask, dtype=torch.bool)


def test_fep_hand_written_case(fep_path):
    # [CLS], classes 0 2, [UNK], classes 2 1, an out-of-vocabulary id, class 3, then two padding tokens.
    ids = torch.tensor([[CLS_ID, 5, 7, UNK_ID, 7, 6, 20, 8, PAD_ID, PAD_ID]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
    content = behavior_mask(ids, attention_mask, FIRST_BEHAVIOR_ID, UNK_ID)
    arguments = {"window": 3, "num_positions": 8, "first_behavior_id": FIRST_BEHAVIOR_ID, "num_behaviors": 4}

    targets, mask = build_fep_targets(ids, content, **arguments)

    assert targets.shape == (1, 8, 4)
    assert targets[0].int().tolist() == [
        [1, 0, 1, 0],  # tokens 1-3: class 0, class 2, [UNK]
        [0, 0, 1, 0],  # class 2, [UNK], class 2
        [0, 1, 1, 0],
        [0, 1, 1, 0],  # class 2, class 1, out of vocabulary
        [0, 1, 0, 1],
        [0, 0, 0, 1],  # out of vocabulary, class 3, padding
        [0, 0, 0, 1],
        [0, 0, 0, 0],  # padding, then past the end of the stream
    ]
    assert mask[0].tolist() == [True, True, True, True, True, False, False, False]

    _, kept_mask = build_fep_targets(ids, content, context_length=1, frequency=2, **arguments)
    assert kept_mask[0].tolist() == [False, True, False, True, False, False, False, False]


FEP_NUM_BEHAVIORS = 131  # three 64-bit words per packed row, the last one partly used
FEP_NUM_POSITIONS = 80


@pytest.mark.parametrize("window", [1, 2, 5, 9, 10, 63, 64, 65, 100, 129, 200])
@pytest.mark.parametrize("stream", ["runs W past the input", "ends with the input", "ends 5 past the windows"])
def test_fep_targets_match_definition(fep_path, window, stream):
    num_positions = FEP_NUM_POSITIONS - 3 if stream == "ends 5 past the windows" else FEP_NUM_POSITIONS
    stream_length = {
        "runs W past the input": num_positions + window,
        "ends with the input": num_positions,
        "ends 5 past the windows": num_positions + window + 5,
    }[stream]
    generator = torch.Generator().manual_seed(window)
    ids = torch.randint(
        FIRST_BEHAVIOR_ID, FIRST_BEHAVIOR_ID + FEP_NUM_BEHAVIORS, (3, stream_length), generator=generator
    )
    ids[:, 0] = CLS_ID
    ids[0, 7] = UNK_ID
    ids[1, 40] = UNK_ID
    ids[1, 20] = SEP_ID  # a special token inside the stream: not content, so no window over it is complete
    ids[0, 30] = FIRST_BEHAVIOR_ID + FEP_NUM_BEHAVIORS + 3  # out of vocabulary: a behavior token with no class
    attention_mask = torch.ones_like(ids)
    attention_mask[2, stream_length // 2 :] = 0
    ids[2, stream_length // 2 :] = PAD_ID
    content = behavior_mask(ids, attention_mask, FIRST_BEHAVIOR_ID, UNK_ID)

    for context_length, frequency in [(0, 1), (6, 4)]:
        targets, mask = build_fep_targets(
            ids, content, window, num_positions, FIRST_BEHAVIOR_ID, FEP_NUM_BEHAVIORS, context_length, frequency
        )
        expected_targets, expected_mask = explicit_fep_targets(
            ids, content, window, num_positions, FEP_NUM_BEHAVIORS, context_length, frequency
        )
        case = f"context length {context_length}, frequency {frequency}"
        assert targets.shape == expected_targets.shape, case
        assert torch.equal(targets, expected_targets), case
        assert torch.equal(mask, expected_mask), case
        assert mask.any() or window > stream_length, case
