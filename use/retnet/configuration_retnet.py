"""Configuration of the RetNet backbone (a `transformers` v5 dataclass config)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

FORWARD_MODES = ("auto", "parallel", "chunkwise", "recurrent")


@strict
class RetNetConfig(PreTrainedConfig):
    """Size and retention settings of a `RetNetModel`.

    `forward_mode="auto"` runs the parallel form for inputs of at most `chunk_size` positions and the
    chunkwise form (chunks of `chunk_size`) beyond, so memory grows linearly with input length.
    `intermediate_size=None` means 4 x `hidden_size`.
    """

    model_type = "retnet"

    vocab_size: int = 100
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None
    hidden_dropout: float | int = 0.1
    layer_norm_eps: float = 1e-5
    chunk_size: int = 128
    forward_mode: str = "auto"
    initializer_range: float = 0.02
    pad_token_id: int | None = 3
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}.")
        if (self.hidden_size // self.num_heads) % 2 != 0:
            raise ValueError(
                f"head_dim = hidden_size / num_heads = {self.hidden_size // self.num_heads} must be even for the "
                "rotary positions; choose num_heads so that hidden_size / num_heads is even."
            )
        if self.forward_mode not in FORWARD_MODES:
            raise ValueError(f"forward_mode={self.forward_mode!r} is invalid; expected one of {FORWARD_MODES}.")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size} must be at least 1.")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads
