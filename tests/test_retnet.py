"""The three retention forms agree, the model is causal, and right padding changes nothing real."""

import pytest
import torch
from transformers import AutoModel

from use import RetNetModel, RetNetState
from use.retnet.retention import (
    chunkwise_retention,
    decay_log_gammas,
    decay_mask,
    parallel_retention,
    recurrent_retention,
)

from .conftest import tiny_retnet

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def random_ids(batch, length, seed=1, vocab=40):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(5, vocab, (batch, length), generator=generator)


def test_decay_gammas_match_formula():
    gammas = decay_log_gammas(4).exp()
    expected = 1 - torch.tensor([1 / 32, (1 / 32) ** (2 / 3) * (1 / 512) ** (1 / 3), (1 / 32) ** (1 / 3) * (1 / 512) ** (2 / 3), 1 / 512], dtype=torch.float64)
    assert torch.allclose(gammas, expected, rtol=0, atol=1e-12)


def test_parallel_form_matches_explicit_sum():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64) for _ in range(3))
    log_gamma = decay_log_gammas(2)
    output = parallel_retention(q, k, v, log_gamma)

    gamma = log_gamma.exp()
    for head in range(2):
        for n in range(7):
            expected = sum(gamma[head] ** (n - m) * (q[0, head, n] @ k[0, head, m]) * v[0, head, m] for m in range(n + 1))
            assert torch.allclose(output[0, head, n], expected, atol=1e-12)


def test_tensor_forms_agree_with_state():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, dtype=torch.float64) for _ in range(3))
    log_gamma = decay_log_gammas(3)
    parallel = parallel_retention(q, k, v, log_gamma)

    state = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    chunks = []
    for start in (0, 4, 8):
        output, state = chunkwise_retention(q[:, :, start:start + 4], k[:, :, start:start + 4], v[:, :, start:start + 4], state, log_gamma)
        chunks.append(output)
    recurrent_state = torch.zeros_like(state)
    steps = []
    for step in range(10):
        output, recurrent_state = recurrent_retention(q[:, :, step], k[:, :, step], v[:, :, step], recurrent_state, log_gamma)
        steps.append(output)

    assert (torch.cat(chunks, dim=2) - parallel).abs().max() <= 1e-12
    assert (torch.stack(steps, dim=2) - parallel).abs().max() <= 1e-12
    assert (state - recurrent_state).abs().max() <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("length,chunk_size", [(1000, 250), (1000, 1), (1000, 3), (1000, 1000), (1003, 250)])
def test_model_forms_agree_at_every_position(dtype, length, chunk_size):
    model = tiny_retnet(dtype=dtype, chunk_size=chunk_size)
    ids = random_ids(2, length)
    with torch.no_grad():
        parallel = model(ids, forward_mode="parallel").last_hidden_state
        chunkwise = model(ids, forward_mode="chunkwise", use_cache=True)

    # Per-position maximum, so a jump at a chunk border cannot hide behind a small average.
    per_position = (chunkwise.last_hidden_state - parallel).abs().amax(dim=(0, 2))
    assert per_position.max() <= TOLERANCE[dtype]
    assert chunkwise.past_states.offsets.tolist() == [length, length]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recurrent_form_agrees_with_parallel(dtype):
    model = tiny_retnet(dtype=dtype, chunk_size=250)
    ids = random_ids(2, 1003)
    with torch.no_grad():
        parallel = model(ids, forward_mode="parallel", use_cache=True)
        recurrent = model(ids, forward_mode="recurrent", use_cache=True)

    assert (recurrent.last_hidden_state - parallel.last_hidden_state).abs().max() <= TOLERANCE[dtype]
    for recurrent_state, parallel_state in zip(recurrent.past_states.states, parallel.past_states.states):
        scale = parallel_state.abs().max()
        assert (recurrent_state - parallel_state).abs().max() <= TOLERANCE[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["parallel", "chunkwise", "recurrent"])
def test_past_states_continue_across_calls(dtype, mode):
    model = tiny_retnet(dtype=dtype, chunk_size=250)
    ids = random_ids(2, 1003)
    with torch.no_grad():
        whole = model(ids, forward_mode="parallel", use_cache=True)
        pieces, state = [], None
        for start, end in ((0, 250), (250, 251), (251, 777), (777, 1003)):
            output = model(ids[:, start:end], past_states=state, use_cache=True, forward_mode=mode)
            pieces.append(output.last_hidden_state)
            state = output.past_states

    assert (torch.cat(pieces, dim=1) - whole.last_hidden_state).abs().max() <= TOLERANCE[dtype]
    assert state.offsets.tolist() == [1003, 1003]
    for piece_state, whole_state in zip(state.states, whole.past_states.states):
        assert (piece_state - whole_state).abs().max() <= TOLERANCE[dtype] * whole_state.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["auto", "parallel"])
def test_future_tokens_leave_past_outputs_bit_identical(dtype, mode):
    model = tiny_retnet(dtype=dtype, chunk_size=512)
    ids = random_ids(1, 4096)
    changed = ids.clone()
    cut = 1500
    changed[:, cut + 1:] = random_ids(1, 4096 - cut - 1, seed=7)
    with torch.no_grad():
        before = model(ids, forward_mode=mode).last_hidden_state
        after = model(changed, forward_mode=mode).last_hidden_state

    assert torch.equal(before[:, : cut + 1], after[:, : cut + 1])
    assert not torch.equal(before[:, cut + 1:], after[:, cut + 1:])
    assert torch.isfinite(before).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_decay_mask_is_finite_with_zero_upper_triangle(dtype):
    mask = decay_mask(4096, decay_log_gammas(8), dtype)
    assert torch.isfinite(mask).all()
    assert (mask.triu(diagonal=1) == 0).all()
    assert (mask.diagonal(dim1=-2, dim2=-1) == 1).all()


def test_right_padding_matches_sequence_alone():
    model = tiny_retnet(chunk_size=128)
    ids = random_ids(3, 512)
    mask = torch.ones_like(ids)
    mask[0, 300:] = 0
    mask[2, 45:] = 0
    with torch.no_grad():
        batch = model(ids, attention_mask=mask, use_cache=True)
        alone = model(ids[:1, :300], use_cache=True)

    def pooled(hidden, weights):
        return (hidden * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)

    assert (pooled(batch.last_hidden_state[:1], mask[:1].float()) - alone.last_hidden_state.mean(1)).abs().max() <= 1e-5
    assert (batch.last_hidden_state[0, :300] - alone.last_hidden_state[0]).abs().max() <= 1e-5
    assert batch.past_states.offsets.tolist() == [300, 512, 45]
    for batch_state, alone_state in zip(batch.past_states.states, alone.past_states.states):
        assert (batch_state[:1] - alone_state).abs().max() <= 1e-5 * alone_state.abs().max()


def test_left_padding_is_rejected():
    model = tiny_retnet()
    ids = random_ids(1, 10)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="right padding"):
        model(ids, attention_mask=mask)


def test_state_of_other_batch_is_rejected():
    model = tiny_retnet()
    state = RetNetState.zeros(model.config, batch_size=3)
    with pytest.raises(ValueError, match="contains 3 rows"):
        model(random_ids(2, 10), past_states=state)


def test_save_and_load_with_auto_model(tmp_path):
    model = tiny_retnet()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    ids = random_ids(2, 700)
    assert isinstance(loaded, RetNetModel)
    assert (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        assert torch.equal(model(ids).last_hidden_state, loaded(ids).last_hidden_state)
