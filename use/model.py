"""The user model: a backbone (RetNet or GPT-2) with the CLM, FEP and SUP heads, as one checkpoint format."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, GPT2Config, GPT2Model, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .objectives import (
    CONTRASTIVE_EMBEDDINGS,
    CONTRASTIVE_TYPES,
    behavior_mask,
    build_fep_targets,
    clm_loss,
    fep_loss,
    info_nce_loss,
    masked_mean,
    objective_parts,
)
from .retnet import RetNetConfig, RetNetModel, RetNetState

BACKBONES = ("retnet", "gpt2")


@strict
class UserModelConfig(PreTrainedConfig):
    """Backbone size, objective and head settings of a `UserModel`.

    `num_heads` is the number of retention heads for RetNet and attention heads for GPT-2.
    `max_position_embeddings` and `chunk_size` apply to GPT-2 and RetNet respectively. Token ids follow
    the project's tokenizers: [UNK]=0 [CLS]=1 [SEP]=2 [PAD]=3 [MASK]=4, behaviors from
    `first_behavior_id` on, so FEP predicts `vocab_size - first_behavior_id` behaviors.
    """

    model_type = "use"

    backbone_type: str = "retnet"
    vocab_size: int = 100
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None
    dropout: float | int = 0.1
    max_position_embeddings: int = 1024
    chunk_size: int = 128
    forward_mode: str = "auto"
    objective: str = "FEP_SUP"
    fep_window_size: int = 5
    fep_context_length: int = 0
    fep_loss_frequency: int = 1
    first_behavior_id: int = 5
    contrastive_embedding: str = "token"
    contrastive_type: str = "Orig"
    contrastive_temperature: float = 0.07
    contrastive_head_size: int = 128
    initializer_range: float = 0.02
    unk_token_id: int = 0
    cls_token_id: int = 1
    sep_token_id: int = 2
    pad_token_id: int | None = 3
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if self.backbone_type not in BACKBONES:
            raise ValueError(f"backbone_type={self.backbone_type!r} is invalid; expected one of {BACKBONES}.")
        parts = objective_parts(self.objective)
        if "FEP" in parts and self.fep_window_size < 1:
            raise ValueError(f"fep_window_size={self.fep_window_size} must be at least 1 with objective {self.objective}.")
        if self.fep_loss_frequency < 1:
            raise ValueError(f"fep_loss_frequency={self.fep_loss_frequency} must be at least 1.")
        if self.contrastive_embedding not in CONTRASTIVE_EMBEDDINGS:
            raise ValueError(
                f"contrastive_embedding={self.contrastive_embedding!r} is invalid; expected one of {CONTRASTIVE_EMBEDDINGS}."
            )
        if self.backbone_type == "gpt2" and self.contrastive_embedding != "token":
            raise ValueError(
                f"contrastive_embedding={self.contrastive_embedding!r} needs a retention state, which GPT-2 has not; "
                "use contrastive_embedding='token' with GPT-2."
            )
        if self.contrastive_type not in CONTRASTIVE_TYPES:
            raise ValueError(f"contrastive_type={self.contrastive_type!r} is invalid; expected one of {CONTRASTIVE_TYPES}.")
        if self.contrastive_temperature <= 0:
            raise ValueError(f"contrastive_temperature={self.contrastive_temperature} must be positive.")
        if self.vocab_size <= self.first_behavior_id:
            raise ValueError(
                f"vocab_size={self.vocab_size} leaves no behavior tokens after first_behavior_id={self.first_behavior_id}."
            )

    @property
    def num_behaviors(self) -> int:
        return self.vocab_size - self.first_behavior_id

    def backbone_config(self) -> RetNetConfig | GPT2Config:
        """Build the backbone's own config from these settings."""
        token_ids = dict(pad_token_id=self.pad_token_id, bos_token_id=self.cls_token_id, eos_token_id=self.sep_token_id)
        if self.backbone_type == "retnet":
            return RetNetConfig(
                vocab_size=self.vocab_size,
                hidden_size=self.hidden_size,
                num_hidden_layers=self.num_hidden_layers,
                num_heads=self.num_heads,
                intermediate_size=self.intermediate_size,
                hidden_dropout=self.dropout,
                chunk_size=self.chunk_size,
                forward_mode=self.forward_mode,
                initializer_range=self.initializer_range,
                **token_ids,
            )
        return GPT2Config(
            vocab_size=self.vocab_size,
            n_positions=self.max_position_embeddings,
            n_embd=self.hidden_size,
            n_layer=self.num_hidden_layers,
            n_head=self.num_heads,
            n_inner=self.intermediate_size,
            resid_pdrop=self.dropout,
            embd_pdrop=self.dropout,
            attn_pdrop=self.dropout,
            initializer_range=self.initializer_range,
            tie_word_embeddings=False,
            **token_ids,
        )


@dataclass
class BackboneOutput(ModelOutput):
    """Last-layer hidden states `(batch, seq, hidden)` and, for RetNet, the carried retention state."""

    last_hidden_state: Tensor | None = None
    past_states: RetNetState | None = None


@dataclass
class UserModelOutput(ModelOutput):
    """Total loss (the sum of the objective's parts), each part's loss, and the last hidden states."""

    loss: Tensor | None = None
    clm_loss: Tensor | None = None
    fep_loss: Tensor | None = None
    sup_loss: Tensor | None = None
    last_hidden_state: Tensor | None = None


class UserModel(PreTrainedModel):
    """A behavior-sequence backbone with the heads of its pre-training objective.

    The CLM head is the transposed input embedding (tied by construction, so it stays tied through
    `save_pretrained`/`from_pretrained`). FEP adds a linear head to one logit per behavior; SUP adds a
    projection MLP hidden -> hidden -> `contrastive_head_size` on the sequence embedding.
    """

    config_class = UserModelConfig
    base_model_prefix = "user_model"
    # The Trainer divides the loss by the accumulation steps itself; the losses are per-batch means.
    accepts_loss_kwargs = False

    def __init__(self, config: UserModelConfig):
        super().__init__(config)
        self.parts = objective_parts(config.objective)
        backbone_config = config.backbone_config()
        self.backbone = RetNetModel(backbone_config) if config.backbone_type == "retnet" else GPT2Model(backbone_config)

        hidden = config.hidden_size
        if "FEP" in self.parts:
            self.fep_head = nn.Linear(hidden, config.num_behaviors)
        if "SUP" in self.parts:
            if config.contrastive_embedding in ("state", "joint"):
                state_size = config.num_heads * (hidden // config.num_heads) ** 2
                self.state_proj = nn.Linear(state_size, hidden)
            if config.contrastive_embedding == "joint":
                self.joint_proj = nn.Linear(2 * hidden, hidden)
            self.contrastive_head = nn.Sequential(
                nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.contrastive_head_size)
            )
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding):
        self.backbone.set_input_embeddings(value)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past_states: RetNetState | None = None,
        use_cache: bool = False,
    ) -> BackboneOutput:
        """Run the backbone; RetNet continues from `past_states` and returns its state when asked."""
        if self.config.backbone_type == "retnet":
            output = self.backbone(input_ids, attention_mask=attention_mask, past_states=past_states, use_cache=use_cache)
            return BackboneOutput(last_hidden_state=output.last_hidden_state, past_states=output.past_states)
        if past_states is not None:
            raise ValueError("GPT-2 keeps no state between calls; pass the whole sequence instead of past_states.")
        output = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return BackboneOutput(last_hidden_state=output.last_hidden_state)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        fep_targets: Tensor | None = None,
        fep_mask: Tensor | None = None,
        return_loss: bool = True,
    ) -> UserModelOutput:
        """Compute the objective's losses for a batch `(batch, seq)`.

        FEP targets `(batch, seq, num_behaviors)` and mask `(batch, seq)` normally come from the collator,
        built from a token stream that extends W behaviors past the input. Without them they are built
        from `input_ids` alone, so only positions whose window fits inside the input get loss. SUP expects
        the two segments of each user in rows 2i and 2i+1.
        """
        config = self.config
        need_state = "SUP" in self.parts and config.contrastive_embedding != "token"
        encoded = self.encode(input_ids, attention_mask, use_cache=need_state)
        hidden = encoded.last_hidden_state

        losses = {}
        if "CLM" in self.parts:
            losses["clm_loss"] = clm_loss(hidden, self.get_input_embeddings().weight, input_ids, attention_mask)
        if "FEP" in self.parts:
            losses["fep_loss"] = self._fep_loss(hidden, input_ids, attention_mask, fep_targets, fep_mask)
        if "SUP" in self.parts:
            embeddings = self.contrastive_embeddings(hidden, attention_mask, encoded.past_states)
            losses["sup_loss"] = info_nce_loss(embeddings, config.contrastive_temperature, config.contrastive_type)

        loss = torch.stack(list(losses.values())).sum()
        return UserModelOutput(loss=loss, last_hidden_state=hidden, **losses)

    def _fep_loss(self, hidden, input_ids, attention_mask, targets, mask) -> Tensor:
        config = self.config
        if targets is None:
            content = behavior_mask(input_ids, attention_mask, config.first_behavior_id, config.unk_token_id)
            targets, mask = build_fep_targets(
                input_ids,
                content,
                window=config.fep_window_size,
                num_positions=input_ids.shape[1],
                first_behavior_id=config.first_behavior_id,
                num_behaviors=config.num_behaviors,
                context_length=config.fep_context_length,
                frequency=config.fep_loss_frequency,
            )
        mask = mask.bool()
        if not bool(mask.any()):
            # No position has a complete window: a zero loss that keeps every FEP parameter in the graph,
            # which DDP needs to find a gradient for each parameter.
            return self.fep_head(hidden[:, 0]).sum() * 0.0
        logits = self.fep_head(hidden[mask])  # (kept positions, num_behaviors)
        return fep_loss(logits, targets[mask])

    def contrastive_embeddings(self, hidden: Tensor, attention_mask: Tensor | None, past_states: RetNetState | None) -> Tensor:
        """L2-normalised SUP embeddings `(batch, contrastive_head_size)` of each row."""
        kind = self.config.contrastive_embedding
        token = masked_mean(hidden, attention_mask).to(hidden.dtype)
        if kind == "token":
            sequence = token
        else:
            state = past_states.states[-1].flatten(start_dim=1).to(hidden.dtype)  # (batch, heads * d * d)
            state = self.state_proj(state)
            sequence = state if kind == "state" else self.joint_proj(torch.cat([token, state], dim=-1))
        return F.normalize(self.contrastive_head(sequence).float(), dim=-1)


AutoConfig.register("use", UserModelConfig)
AutoModel.register(UserModelConfig, UserModel)
