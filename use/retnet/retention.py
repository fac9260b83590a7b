"""Retention (Sun et al., 2023, "Retentive Network", arXiv 2307.08621) in its three equivalent forms.

Every function takes per-head tensors in `(batch, heads, seq, head_dim)` layout, after the rotary
rotation of q and k and the 1/sqrt(head_dim) scaling of k, and a per-head log decay `log_gamma` of
shape `(heads,)`. All three forms compute, for query position n and key positions m <= n,

    o_n = sum_m gamma^(n - m) (q_n . k_m) v_m,

and the recurrent and chunkwise forms carry the state S_t = sum_{m <= t} gamma^(t - m) k_m^T v_m of
shape `(batch, heads, head_dim, head_dim)`.

Decay factors are always built as exp(exponent) from float32 (or float64) exponents, with future
positions set to an exponent of -inf, so the upper triangle is exactly zero and no gamma^(negative)
is ever formed: a 0/1 mask times gamma^(negative) overflows to inf * 0 = NaN at long lengths.
"""

import math

import torch
from einops import rearrange
from torch import Tensor


def decay_log_gammas(num_heads: int, device: torch.device | None = None) -> Tensor:
    """Return log(gamma_h) for gamma_h = 1 - exp(linspace(log(1/32), log(1/512), heads)), in float64."""
    exponents = torch.linspace(math.log(1 / 32), math.log(1 / 512), num_heads, dtype=torch.float64, device=device)
    return torch.log1p(-torch.exp(exponents))


def rotary_cos_sin(positions: Tensor, head_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Return cos and sin of the rotary angles position * theta_i, each `(batch, 1, seq, head_dim / 2)`.

    theta_i = 10000^(-i / (head_dim / 2)) for channel pair i. Angles are formed in float64 because
    positions reach tens of thousands, where a float32 product loses about 1e-3 rad.
    """
    half = head_dim // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=positions.device) / half)
    angles = positions.to(torch.float64)[..., None] * theta  # (batch, seq, half)
    angles = rearrange(angles, "b n d -> b 1 n d")
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + head_dim / 2) of x `(batch, heads, seq, head_dim)` by the given angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def _exponent_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def decay_mask(seq_len: int, log_gamma: Tensor, dtype: torch.dtype) -> Tensor:
    """Return D[h, n, m] = gamma_h^(n - m) for m <= n and exactly 0 for m > n, `(heads, seq, seq)`."""
    exponent_dtype = _exponent_dtype(dtype)
    index = torch.arange(seq_len, device=log_gamma.device, dtype=exponent_dtype)
    distance = index[:, None] - index[None, :]  # (seq, seq): n - m
    exponent = distance * log_gamma.to(exponent_dtype)[:, None, None]
    exponent = exponent.masked_fill(distance < 0, float("-inf"))
    return torch.exp(exponent).to(dtype)


def parallel_retention(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor) -> Tensor:
    """Parallel form: O = (Q K^T * D) V, with the full `(heads, seq, seq)` decay mask D."""
    mask = decay_mask(q.shape[-2], log_gamma, q.dtype)
    scores = (q @ k.transpose(-1, -2)) * mask  # (batch, heads, seq, seq)
    return scores @ v


def chunkwise_retention(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_gamma: Tensor, lengths: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Chunkwise form for one chunk: parallel retention inside the chunk plus the carried state.

        O_j = (q_j K^T * D_j) V + gamma^(j + 1) q_j S
        S'  = gamma^L S + sum_{j < L} gamma^(L - 1 - j) k_j^T v_j

    `state` is S after the previous chunk, `(batch, heads, head_dim, head_dim)`. `lengths` `(batch,)`
    contains each row's number of real positions L in this chunk (right padding after them); padded
    positions must already have zero k and v. A row with L = 0 keeps its state unchanged, so the state
    of a padded row equals the state of the same row run alone.
    """
    batch, _, chunk_len, _ = q.shape
    exponent_dtype = _exponent_dtype(q.dtype)
    log_gamma = log_gamma.to(exponent_dtype)
    if lengths is None:
        lengths = torch.full((batch,), chunk_len, device=q.device)

    inner = parallel_retention(q, k, v, log_gamma)

    index = torch.arange(chunk_len, device=q.device, dtype=exponent_dtype)
    query_decay = torch.exp((index + 1)[None, :] * log_gamma[:, None]).to(q.dtype)  # (heads, chunk)
    cross = (q * query_decay[None, :, :, None]) @ state

    steps_to_end = lengths.to(exponent_dtype)[:, None] - 1 - index[None, :]  # (batch, chunk): L - 1 - j
    key_exponent = steps_to_end[:, None, :] * log_gamma[None, :, None]  # (batch, heads, chunk)
    key_exponent = key_exponent.masked_fill(steps_to_end[:, None, :] < 0, float("-inf"))
    key_decay = torch.exp(key_exponent).to(q.dtype)
    state_decay = torch.exp(lengths.to(exponent_dtype)[:, None] * log_gamma[None, :]).to(q.dtype)  # (batch, heads)
    new_state = state * state_decay[..., None, None] + (k * key_decay[..., None]).transpose(-1, -2) @ v

    return inner + cross, new_state


def recurrent_retention(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, log_gamma: Tensor, step_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Recurrent form for one step: S_t = gamma S_(t-1) + k_t^T v_t and o_t = q_t S_t.

    q, k, v are `(batch, heads, head_dim)`; `step_mask` `(batch,)` is False for padding, where the
    state is kept as it is (no decay and, because k and v are zero there, no new term).
    """
    gamma = torch.exp(log_gamma.to(_exponent_dtype(q.dtype))).to(q.dtype)  # (heads,)
    gamma = gamma[None, :].expand(q.shape[0], -1)
    if step_mask is not None:
        gamma = torch.where(step_mask[:, None], gamma, torch.ones_like(gamma))
    new_state = state * gamma[..., None, None] + k[..., :, None] * v[..., None, :]
    output = (q[..., None, :] @ new_state).squeeze(-2)
    return output, new_state
