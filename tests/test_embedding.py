"""Stateful embeddings equal one pass over the whole history; padding and GPT-2 windows pool correctly."""

from pathlib import Path

import pytest
import torch

from use.embedding import EmbeddingState, embed_sequences, embed_step, pad_batch

from .conftest import tiny_user_model


def random_sequences(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 40, (length,), generator=generator).tolist() for length in lengths]


def test_pad_batch_right_pads():
    input_ids, attention_mask = pad_batch([[5, 6, 7], [8]], pad_id=3)
    assert input_ids.tolist() == [[5, 6, 7], [8, 3, 3]]
    assert attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("cuts", [(0, 250, 500, 1000), (0, 1, 2, 640, 999, 1000), (0, 1000)])
def test_stateful_steps_equal_one_pass(retnet_user_model, cuts):
    sequences = random_sequences([1000, 1000])
    whole = embed_sequences(retnet_user_model, sequences, batch_size=2, progress=False)

    state = None
    for start, end in zip(cuts[:-1], cuts[1:]):
        input_ids, attention_mask = pad_batch([sequence[start:end] for sequence in sequences], pad_id=3)
        state = embed_step(retnet_user_model, input_ids, attention_mask, state)

    assert state.count.tolist() == [1000, 1000]
    assert (state.mean() - whole).abs().max() <= 1e-4


def test_padded_batch_equals_users_one_by_one(retnet_user_model):
    sequences = random_sequences([300, 37, 129, 1])
    together = embed_sequences(retnet_user_model, sequences, batch_size=4, progress=False)
    alone = torch.cat([embed_sequences(retnet_user_model, [sequence], progress=False) for sequence in sequences])
    assert (together - alone).abs().max() <= 1e-5


def test_stateful_batch_of_uneven_updates_matches_single_users(retnet_user_model):
    histories = random_sequences([200, 5, 90], seed=1)
    updates = random_sequences([3, 150, 0], seed=2)
    state = embed_step(retnet_user_model, *pad_batch(histories, 3))
    state = embed_step(retnet_user_model, *pad_batch(updates, 3), state)

    expected = embed_sequences(retnet_user_model, [h + u for h, u in zip(histories, updates)], progress=False)
    assert state.count.tolist() == [203, 155, 90]
    assert (state.mean() - expected).abs().max() <= 1e-4


def test_cls_position_is_not_pooled(retnet_user_model):
    sequence = random_sequences([20])[0]
    state = embed_step(retnet_user_model, *pad_batch([sequence], 3))
    ids = torch.tensor([[retnet_user_model.config.cls_token_id] + sequence])
    with torch.no_grad():
        hidden = retnet_user_model.encode(ids).last_hidden_state
    assert torch.allclose(state.mean(), hidden[:, 1:].mean(dim=1), atol=1e-6)


def test_gpt2_embedding_averages_windows():
    model = tiny_user_model("gpt2", "CLM")
    sequence = random_sequences([250])[0]
    embedding = embed_sequences(model, [sequence], window=100, progress=False)

    total = torch.zeros(32)
    for start in (0, 100, 200):
        piece = sequence[start : start + 100]
        ids = torch.tensor([[model.config.cls_token_id] + piece])
        with torch.no_grad():
            total += model.encode(ids).last_hidden_state[0, 1:].sum(dim=0)
    assert torch.allclose(embedding[0], total / 250, atol=1e-5)


def test_gpt2_cannot_continue_a_state():
    model = tiny_user_model("gpt2", "CLM")
    state = EmbeddingState(torch.zeros(1, 32), torch.ones(1, dtype=torch.long), None)
    with pytest.raises(ValueError, match="GPT-2 keeps no state"):
        embed_step(model, *pad_batch([[5, 6]], 3), state)


def test_gpt2_window_beyond_context_is_rejected():
    model = tiny_user_model("gpt2", "CLM")
    with pytest.raises(ValueError, match="window=2000"):
        embed_sequences(model, [[5] * 10], window=2000, progress=False)


def test_empty_sequence_is_rejected(retnet_user_model):
    with pytest.raises(ValueError, match="first at index 1"):
        embed_sequences(retnet_user_model, [[5, 6], []], progress=False)


def test_tokenizer_with_permuted_ids_is_rejected(tmp_path):
    import json
    import shutil

    from use.embedding import load_model_and_tokenizer

    dna = Path(__file__).resolve().parents[1] / "tokenizer" / "dna"
    model = tiny_user_model("retnet", "CLM", vocab_size=10)
    model.save_pretrained(tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(dna / name, tmp_path / "model" / name)
    loaded, _ = load_model_and_tokenizer(tmp_path / "model", dna)
    assert loaded.config.vocab_size == 10

    permuted = tmp_path / "permuted"
    shutil.copytree(dna, permuted)
    spec = json.loads((permuted / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["A"], vocab["C"] = vocab["C"], vocab["A"]
    (permuted / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="2 tokens have other ids"):
        load_model_and_tokenizer(tmp_path / "model", permuted)
