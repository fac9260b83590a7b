"""Mean-pooled user embeddings: from scratch, and stateful (continued from a carried RetNet state).

A user's embedding is the mean of last-layer hidden states over their behaviors. The model's input
is [CLS] followed by the behaviors; the [CLS] position is not pooled. With RetNet the sum of hidden
states, the count and the retention state are all a user needs to absorb new behavior, at a cost that
does not grow with the length of their history.
"""

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import CONFIG_NAME, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .model import UserModel
from .retnet import RetNetState

logger = logging.getLogger(__name__)

DEFAULT_GPT2_WINDOW = 500
# The Trainer's checkpoint folder names inside a training output folder.
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def load_model_and_tokenizer(
    model_path: str | Path, tokenizer_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[UserModel, PreTrainedTokenizerBase]:
    """Load a trained `UserModel` in eval mode and its tokenizer, and check that they match.

    Raises FileNotFoundError for a missing folder, or for the output folder of a training run that
    has not finished (the message names its newest checkpoint), and ValueError for a mismatch.
    """
    for name, path in (("model", model_path), ("tokenizer", tokenizer_path)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{name} folder {str(path)!r} does not exist; pass the folder written by training.")
    _check_finished_model(Path(model_path))
    model = AutoModel.from_pretrained(model_path)
    if not isinstance(model, UserModel):
        raise ValueError(
            f"{str(model_path)!r} contains a {type(model).__name__}, not a UserModel; pass a checkpoint written by "
            "train_user_model.py."
        )
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    check_tokenizer_matches(model, tokenizer, tokenizer_path)
    _check_saved_vocabulary(model_path, tokenizer, tokenizer_path)
    return model.to(device).eval(), tokenizer


def _check_finished_model(model_path: Path) -> None:
    """Raise FileNotFoundError when `model_path` has no config.json, naming its newest checkpoint if any.

    Training writes config.json at the top of its output folder only when it finishes, so before that
    the folder contains only `checkpoint-N/` folders.
    """
    if (model_path / CONFIG_NAME).is_file():
        return
    checkpoints = sorted(
        (int(match.group(1)), path)
        for path in model_path.iterdir()
        if path.is_dir() and (match := _CHECKPOINT_NAME.fullmatch(path.name)) and (path / CONFIG_NAME).is_file()
    )
    if not checkpoints:
        raise FileNotFoundError(
            f"model folder {str(model_path)!r} contains no {CONFIG_NAME} and no checkpoint-N folder with one. Pass "
            "the --model-output-path folder of a finished train_user_model.py run."
        )
    newest = checkpoints[-1][1]
    raise FileNotFoundError(
        f"model folder {str(model_path)!r} contains no finished model, because it has checkpoint folders but no "
        f"{CONFIG_NAME}, which training writes when it finishes. The newest checkpoint is {str(newest)!r}. Pass it "
        "as --model_path, or finish the training by rerunning the same train_user_model.py command."
    )


def _check_saved_vocabulary(model_path, tokenizer: PreTrainedTokenizerBase, tokenizer_path) -> None:
    """Raise ValueError when the model folder's own tokenizer maps any token to another id.

    Training saves the tokenizer beside the model, so this catches a tokenizer of the same size
    whose ids are ordered differently, which the size and special-token checks cannot see.
    """
    if not (Path(model_path) / "tokenizer.json").is_file():
        return
    saved_vocabulary = AutoTokenizer.from_pretrained(model_path).get_vocab()
    passed_vocabulary = tokenizer.get_vocab()
    tokens = saved_vocabulary.keys() | passed_vocabulary.keys()
    differing = sorted(token for token in tokens if saved_vocabulary.get(token) != passed_vocabulary.get(token))
    if differing:
        raise ValueError(
            f"tokenizer {str(tokenizer_path)!r} does not match the one saved with the model in {str(model_path)!r}: "
            f"{len(differing)} tokens have other ids (first: {differing[0]!r}). Pass --tokenizer_path {str(model_path)!r}."
        )


def check_tokenizer_matches(model: UserModel, tokenizer: PreTrainedTokenizerBase, tokenizer_path="the tokenizer") -> None:
    """Raise ValueError when the tokenizer's vocabulary or special token ids differ from the model's."""
    config = model.config
    expected = {
        "vocabulary size": (config.vocab_size, len(tokenizer)),
        "[PAD] id": (config.pad_token_id, tokenizer.pad_token_id),
        "[CLS] id": (config.cls_token_id, tokenizer.cls_token_id),
        "[SEP] id": (config.sep_token_id, tokenizer.sep_token_id),
        "[UNK] id": (config.unk_token_id, tokenizer.unk_token_id),
    }
    for what, (model_value, tokenizer_value) in expected.items():
        if model_value != tokenizer_value:
            raise ValueError(
                f"tokenizer {str(tokenizer_path)!r} does not match the model: {what} is {tokenizer_value} in the "
                f"tokenizer but {model_value} in the model. Pass the tokenizer the model was trained with."
            )


def pad_batch(sequences: list[list[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into `input_ids` and `attention_mask`, both `(batch, longest)`."""
    longest = max((len(sequence) for sequence in sequences), default=0)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return input_ids.to(device), attention_mask.to(device)


@dataclass
class EmbeddingState:
    """Embedding state of a batch of users: everything needed to continue their embeddings.

    hidden_sum: `(batch, hidden)` float32 sum of last-layer hidden states over behaviors.
    count: `(batch,)` number of behaviors seen.
    past_states: the RetNet retention state after those behaviors (None for GPT-2).
    """

    hidden_sum: Tensor
    count: Tensor
    past_states: RetNetState | None

    def mean(self) -> Tensor:
        """Mean embedding `(batch, hidden)`; a row with no behaviors yet is a zero vector."""
        return self.hidden_sum / self.count.clamp(min=1)[:, None].to(self.hidden_sum.dtype)


def _model_device(model: UserModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_step(
    model: UserModel, input_ids: Tensor, attention_mask: Tensor, state: EmbeddingState | None = None
) -> EmbeddingState:
    """Absorb behaviors `(batch, seq)` (right-padded, no special tokens) into the users' embedding state.

    Without a state the users start fresh: a [CLS] is prepended and not pooled. With a state (RetNet
    only) each row continues exactly where its state stopped, so k steps over consecutive pieces equal
    one step over their concatenation.
    """
    device = _model_device(model)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    is_retnet = model.config.backbone_type == "retnet"

    if state is None:
        batch = input_ids.shape[0]
        cls = torch.full((batch, 1), model.config.cls_token_id, dtype=input_ids.dtype, device=device)
        model_ids = torch.cat([cls, input_ids], dim=1)
        model_mask = torch.cat([torch.ones_like(cls), attention_mask], dim=1)
        encoded = model.encode(model_ids, model_mask, use_cache=is_retnet)
        hidden = encoded.last_hidden_state[:, 1:]
        hidden_sum = torch.zeros(batch, hidden.shape[-1], device=device)
        count = torch.zeros(batch, dtype=torch.long, device=device)
    else:
        if not is_retnet:
            raise ValueError("GPT-2 keeps no state between calls, so it cannot continue an embedding state.")
        encoded = model.encode(input_ids, attention_mask, past_states=state.past_states, use_cache=True)
        hidden = encoded.last_hidden_state
        hidden_sum, count = state.hidden_sum.to(device), state.count.to(device)

    weights = attention_mask.to(torch.float32)[..., None]
    hidden_sum = hidden_sum + (hidden.float() * weights).sum(dim=1)
    count = count + attention_mask.sum(dim=1)
    return EmbeddingState(hidden_sum=hidden_sum, count=count, past_states=encoded.past_states)


def embed_sequences(
    model: UserModel,
    sequences: list[list[int]],
    batch_size: int = 8,
    window: int | None = None,
    progress: bool = True,
    description: str = "embedding users",
) -> Tensor:
    """Mean embedding `(n, hidden)` float32 of each behavior-id list, computed from scratch.

    RetNet embeds each sequence in one pass (chunkwise beyond `config.chunk_size`, so memory is linear
    in length). GPT-2 embeds consecutive windows of `window` behaviors (default 500, at most its
    context size minus the [CLS]), each from scratch, and pools over all behaviors.
    Sequences are batched by length, longest first, to keep padding low.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1.")
    empty = [index for index, sequence in enumerate(sequences) if len(sequence) == 0]
    if empty:
        raise ValueError(f"{len(empty)} sequences are empty (first at index {empty[0]}); every user needs behaviors.")

    if model.config.backbone_type == "gpt2":
        return _embed_gpt2_windows(model, sequences, batch_size, window, progress, description)

    hidden_size = model.config.hidden_size
    embeddings = torch.zeros(len(sequences), hidden_size)
    order = sorted(range(len(sequences)), key=lambda index: -len(sequences[index]))
    with tqdm(total=len(sequences), desc=description, unit="user", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            input_ids, attention_mask = pad_batch([sequences[row] for row in rows], model.config.pad_token_id)
            embeddings[rows] = embed_step(model, input_ids, attention_mask).mean().cpu()
            bar.update(len(rows))
    return embeddings


def _embed_gpt2_windows(model, sequences, batch_size, window, progress, description) -> Tensor:
    max_window = model.config.max_position_embeddings - 1
    window = window or min(DEFAULT_GPT2_WINDOW, max_window)
    if window > max_window:
        raise ValueError(
            f"window={window} behaviors plus [CLS] exceeds GPT-2's context of {model.config.max_position_embeddings} "
            f"positions; use a window of at most {max_window}."
        )

    # Every window of every sequence is one row; sums are gathered back per sequence.
    pieces = [
        (index, sequence[start : start + window])
        for index, sequence in enumerate(sequences)
        for start in range(0, len(sequence), window)
    ]
    pieces.sort(key=lambda piece: -len(piece[1]))
    hidden_sum = torch.zeros(len(sequences), model.config.hidden_size)
    count = torch.zeros(len(sequences), dtype=torch.long)
    with tqdm(total=len(pieces), desc=description, unit="window", disable=not progress) as bar:
        for start in range(0, len(pieces), batch_size):
            batch = pieces[start : start + batch_size]
            input_ids, attention_mask = pad_batch([piece for _, piece in batch], model.config.pad_token_id)
            state = embed_step(model, input_ids, attention_mask)
            owners = torch.tensor([index for index, _ in batch])
            hidden_sum.index_add_(0, owners, state.hidden_sum.cpu())
            count.index_add_(0, owners, state.count.cpu())
            bar.update(len(batch))
    return hidden_sum / count[:, None].to(hidden_sum.dtype)
