"""RetNet backbone as a `transformers` model: pre-LayerNorm blocks of multi-scale retention and a GELU FFN."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_retnet import RetNetConfig
from .retention import (
    apply_rotary,
    chunkwise_retention,
    decay_log_gammas,
    parallel_retention,
    recurrent_retention,
    rotary_cos_sin,
)


@dataclass
class RetNetState:
    """Retention state of a batch after the positions it has consumed.

    `states[layer]` is S = sum_m gamma^(t - m) k_m^T v_m, `(batch, heads, head_dim, head_dim)`, and
    `offsets` `(batch,)` counts the real positions consumed per row, which is the absolute rotary
    position of the row's next token.
    """

    states: list[Tensor]
    offsets: Tensor

    @classmethod
    def zeros(cls, config: RetNetConfig, batch_size: int, device=None, dtype=torch.float32) -> "RetNetState":
        shape = (batch_size, config.num_heads, config.head_dim, config.head_dim)
        states = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        return cls(states=states, offsets=torch.zeros(batch_size, dtype=torch.long, device=device))

    def select(self, rows: Tensor | list[int]) -> "RetNetState":
        """Return the state of the given batch rows."""
        return RetNetState([state[rows] for state in self.states], self.offsets[rows])

    @classmethod
    def stack(cls, parts: list["RetNetState"]) -> "RetNetState":
        """Concatenate the rows of several states into one batch."""
        num_layers = len(parts[0].states)
        states = [torch.cat([part.states[layer] for part in parts]) for layer in range(num_layers)]
        return cls(states, torch.cat([part.offsets for part in parts]))


@dataclass
class RetNetOutput(ModelOutput):
    """Output of `RetNetModel.forward`.

    last_hidden_state: `(batch, seq, hidden)` after the final LayerNorm.
    hidden_states: input embeddings and each block's output, when requested.
    past_states: the retention state after this call, when `use_cache` or `past_states` was given.
    """

    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    past_states: RetNetState | None = None


class MultiScaleRetention(nn.Module):
    """Multi-scale retention: one decay rate per head, GroupNorm per head, swish gate, output projection."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.g_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.group_norm = nn.GroupNorm(config.num_heads, config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        lengths: Tensor,
        real: Tensor | None,
        state: Tensor | None,
        mode: str,
        chunk_size: int,
    ) -> tuple[Tensor, Tensor | None]:
        """Retain over x `(batch, seq, hidden)`; return the output and the new state (None if not needed).

        `positions` `(batch, seq)` are absolute rotary positions, `lengths` `(batch,)` the real
        positions per row, `real` `(batch, seq)` the padding mask (None when there is no padding).
        """
        batch, seq_len, hidden = x.shape
        split = "b n (h d) -> b h n d"
        q = rearrange(self.q_proj(x), split, h=self.num_heads)
        k = rearrange(self.k_proj(x), split, h=self.num_heads)
        v = rearrange(self.v_proj(x), split, h=self.num_heads)

        cos, sin = rotary_cos_sin(positions, self.head_dim, q.dtype)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin) * self.head_dim**-0.5
        if real is not None:
            # Padding must not enter the carried state.
            keep = rearrange(real, "b n -> b 1 n 1").to(k.dtype)
            k = k * keep
            v = v * keep

        log_gamma = decay_log_gammas(self.num_heads, device=x.device)
        if mode == "parallel" and state is None:
            output, new_state = parallel_retention(q, k, v, log_gamma), None
        elif mode == "parallel":
            output, new_state = chunkwise_retention(q, k, v, state, log_gamma, lengths)
        elif mode == "chunkwise":
            output, new_state = self._chunkwise(q, k, v, state, log_gamma, lengths, chunk_size)
        else:
            output, new_state = self._recurrent(q, k, v, state, log_gamma, real)

        # GroupNorm per head and per position: fold positions into the batch.
        output = rearrange(output, "b h n d -> (b n) (h d)")
        output = rearrange(self.group_norm(output), "(b n) c -> b n c", b=batch)
        output = self.out_proj(F.silu(self.g_proj(x)) * output)
        return output, new_state

    def _chunkwise(self, q, k, v, state, log_gamma, lengths, chunk_size):
        outputs = []
        for start in range(0, q.shape[2], chunk_size):
            end = start + chunk_size
            chunk_lengths = (lengths - start).clamp(0, chunk_size)
            output, state = chunkwise_retention(
                q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], state, log_gamma, chunk_lengths
            )
            outputs.append(output)
        return torch.cat(outputs, dim=2), state

    def _recurrent(self, q, k, v, state, log_gamma, real):
        outputs = []
        for step in range(q.shape[2]):
            step_mask = None if real is None else real[:, step]
            output, state = recurrent_retention(
                q[:, :, step], k[:, :, step], v[:, :, step], state, log_gamma, step_mask
            )
            outputs.append(output)
        return torch.stack(outputs, dim=2), state


class RetNetBlock(nn.Module):
    """Pre-LayerNorm block: x + retention(LN(x)), then x + FFN(LN(x)) with GELU and dropout."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.retention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.retention = MultiScaleRetention(config)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Linear(config.intermediate_size, config.hidden_size),
        )
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x, positions, lengths, real, state, mode, chunk_size):
        retained, new_state = self.retention(self.retention_norm(x), positions, lengths, real, state, mode, chunk_size)
        x = x + self.dropout(retained)
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, new_state


class RetNetPreTrainedModel(PreTrainedModel):
    config_class = RetNetConfig
    base_model_prefix = "retnet"
    supports_gradient_checkpointing = False
    _no_split_modules = ["RetNetBlock"]

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class RetNetModel(RetNetPreTrainedModel):
    """RetNet encoder of token ids into last-layer hidden states, with a carried retention state."""

    def __init__(self, config: RetNetConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList([RetNetBlock(config) for _ in range(config.num_hidden_layers)])
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding):
        self.embed_tokens = value

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past_states: RetNetState | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        forward_mode: str | None = None,
        **kwargs,
    ) -> RetNetOutput:
        """Encode `input_ids` `(batch, seq)`, continuing from `past_states` when given.

        `attention_mask` `(batch, seq)` marks real positions with 1; padding must come after each row's
        real positions (right padding), which leaves real positions' outputs and the carried state
        exactly as if the row ran alone. `forward_mode` overrides `config.forward_mode`.
        """
        batch, seq_len = input_ids.shape
        mode = self._resolve_mode(forward_mode or self.config.forward_mode, seq_len)
        use_cache = use_cache or past_states is not None
        real, lengths = _padding_lengths(attention_mask, batch, seq_len, input_ids.device)

        if past_states is None:
            offsets = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
        else:
            offsets = past_states.offsets.to(input_ids.device)
            if offsets.shape != (batch,):
                raise ValueError(
                    f"past_states contains {offsets.shape[0]} rows but input_ids has batch size {batch}; "
                    "pass the state of exactly these rows (RetNetState.select)."
                )
        positions = offsets[:, None] + torch.arange(seq_len, device=input_ids.device)[None, :]

        x = self.dropout(self.embed_tokens(input_ids))
        states = self._initial_states(past_states, use_cache or mode != "parallel", batch, x)

        all_hidden = (x,) if output_hidden_states else None
        new_states = []
        for layer, state in zip(self.layers, states):
            x, new_state = layer(x, positions, lengths, real, state, mode, self.config.chunk_size)
            new_states.append(new_state)
            if output_hidden_states:
                all_hidden = all_hidden + (x,)
        x = self.final_norm(x)

        past = RetNetState(new_states, offsets + lengths) if use_cache else None
        return RetNetOutput(last_hidden_state=x, hidden_states=all_hidden, past_states=past)

    def _resolve_mode(self, mode: str, seq_len: int) -> str:
        if mode == "auto":
            return "parallel" if seq_len <= self.config.chunk_size else "chunkwise"
        if mode not in ("parallel", "chunkwise", "recurrent"):
            raise ValueError(f"forward_mode={mode!r} is invalid; expected auto, parallel, chunkwise or recurrent.")
        return mode

    def _initial_states(self, past_states, need_states, batch, x) -> list[Tensor | None]:
        if past_states is not None:
            if len(past_states.states) != self.config.num_hidden_layers:
                raise ValueError(
                    f"past_states has {len(past_states.states)} layers but the model has "
                    f"{self.config.num_hidden_layers}; it was computed with another model."
                )
            return [state.to(device=x.device, dtype=x.dtype) for state in past_states.states]
        if need_states:
            return RetNetState.zeros(self.config, batch, device=x.device, dtype=x.dtype).states
        return [None] * self.config.num_hidden_layers


def _padding_lengths(attention_mask, batch, seq_len, device) -> tuple[Tensor | None, Tensor]:
    """Return the padding mask (None without padding) and real lengths, checking for right padding."""
    if attention_mask is None:
        return None, torch.full((batch,), seq_len, dtype=torch.long, device=device)
    real = attention_mask.to(device=device, dtype=torch.bool)
    if bool((real[:, 1:] & ~real[:, :-1]).any()):
        raise ValueError(
            "attention_mask has a real position after padding; RetNet expects right padding (all real "
            "positions of a row first, padding after). Pad on the right (tokenizer padding_side='right')."
        )
    lengths = real.sum(dim=1)
    if bool(real.all()):
        return None, lengths
    return real, lengths
