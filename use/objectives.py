"""Pre-training objectives on last-layer hidden states of any backbone: CLM, FEP and SUP.

- CLM: next-behavior cross-entropy.
- FEP (future W-behavior prediction): multi-label prediction of which behaviors occur among the next
  W tokens, binary cross-entropy with logits.
- SUP (same user prediction): two segments of one user are a positive pair, and the other users in
  the batch are negatives. The loss is a symmetric InfoNCE with a temperature.
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

OBJECTIVES = ("CLM", "FEP", "SUP", "FEP_SUP", "FEP_CLM", "FEP_CLM_SUP")
CONTRASTIVE_TYPES = ("Orig", "HardNeg")
CONTRASTIVE_EMBEDDINGS = ("token", "state", "joint")


def objective_parts(objective: str) -> tuple[str, ...]:
    """Split an objective name such as "FEP_SUP" into its parts ("FEP", "SUP")."""
    if objective not in OBJECTIVES:
        raise ValueError(f"training objective {objective!r} is invalid; expected one of {', '.join(OBJECTIVES)}.")
    return tuple(objective.split("_"))


def masked_mean(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of hidden `(batch, seq, hidden)` over positions where mask `(batch, seq)` is 1, in float32."""
    hidden = hidden.float()
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def clm_loss(hidden: Tensor, embedding_weight: Tensor, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Next-token cross-entropy over pairs of real positions, with the LM head tied to the input embedding.

    Logits are formed only at positions whose next token is real, which saves the `(batch, seq, vocab)`
    tensor for padded batches.
    """
    predict = torch.ones_like(input_ids[:, 1:], dtype=torch.bool)
    if attention_mask is not None:
        predict = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    logits = F.linear(hidden[:, :-1][predict], embedding_weight)  # (predicted positions, vocab)
    return F.cross_entropy(logits.float(), input_ids[:, 1:][predict])


def behavior_mask(input_ids: Tensor, attention_mask: Tensor | None, first_behavior_id: int, unk_token_id: int) -> Tensor:
    """True at real behavior tokens: ids from `first_behavior_id` on, and [UNK] (a real but unknown behavior)."""
    content = (input_ids >= first_behavior_id) | (input_ids == unk_token_id)
    if attention_mask is not None:
        content &= attention_mask.bool()
    return content


def build_fep_targets(
    stream_ids: Tensor,
    content: Tensor,
    window: int,
    num_positions: int,
    first_behavior_id: int,
    num_behaviors: int,
    context_length: int = 0,
    frequency: int = 1,
) -> tuple[Tensor, Tensor]:
    """Build FEP multi-hot targets for the first `num_positions` positions of a token stream.

    Target row t `(num_behaviors,)` marks the behaviors among stream tokens t+1 .. t+W, as class
    `id - first_behavior_id` ([UNK] counts as a real token but marks no class). A position gets loss
    (mask True) only when its whole window lies inside real behavior tokens (`content`), t is at least
    `context_length`, and t + 1 is a multiple of `frequency` (so frequency k keeps the k-th, 2k-th, ...
    positions). `stream_ids` and `content` are `(batch, stream_len)`; the stream may extend past the
    model input, so the last input positions can have complete windows.

    Returns targets `(batch, num_positions, num_behaviors)` bool and mask `(batch, num_positions)` bool.
    On CPU both are tensors over numpy arrays, built by `_packed_fep_targets`. Other devices take the
    torch scatter of `_scatter_fep_targets`, which gives the same values.
    """
    if window < 1:
        raise ValueError(f"FEP window size must be at least 1, got {window}.")
    if frequency < 1:
        raise ValueError(f"FEP loss frequency must be at least 1, got {frequency}.")
    if num_positions < 1:
        raise ValueError(f"FEP targets need at least one position, got num_positions={num_positions}.")
    if content.dtype != torch.bool:
        raise ValueError(f"FEP content mask must be a bool tensor, got {content.dtype}; build it with behavior_mask.")
    # On one CPU thread the packed path was faster than the scatter at every W measured (1, 2, 3, 5, 8,
    # 10, 20 and 100, with batch 16 x 512 and 686 behaviors on a 2-core Xeon, by bench/bench_fep.py).
    # NOTE: other devices take the scatter, because the packed path runs in numpy. No GPU version of
    # the packed path has been written or timed against it.
    arguments = (stream_ids, content, window, num_positions, first_behavior_id, num_behaviors)
    if stream_ids.device.type == "cpu":
        targets, mask = _packed_fep_targets(*arguments)
    else:
        targets, mask = _scatter_fep_targets(*arguments)

    if context_length > 0 or frequency > 1:
        positions = torch.arange(num_positions, device=mask.device)
        keep = (positions >= context_length) & ((positions + 1) % frequency == 0)
        mask &= keep[None, :]
    return targets, mask


def _scatter_fep_targets(
    stream_ids: Tensor, content: Tensor, window: int, num_positions: int, first_behavior_id: int, num_behaviors: int
) -> tuple[Tensor, Tensor]:
    """Build FEP targets by scattering every (position, window slot) pair's class, and the mask, in torch.

    Takes the arguments of `build_fep_targets` but applies neither `context_length` nor `frequency`.
    """
    stream_len = stream_ids.shape[1]
    needed = num_positions + window
    if stream_len < needed:
        pad = needed - stream_len
        stream_ids = F.pad(stream_ids, (0, pad), value=0)
        content = F.pad(content, (0, pad), value=False)

    # The window of position t is stream tokens t+1 .. t+W, so only tokens 1 .. needed-1 matter.
    future_content = content[:, 1:needed]
    classes = stream_ids[:, 1:needed] - first_behavior_id
    is_class = future_content & (classes >= 0) & (classes < num_behaviors)
    # A token that marks no class ([UNK], padding, special and out-of-vocabulary ids) goes to an extra
    # column, which is dropped at the end.
    columns = torch.where(is_class, classes, num_behaviors)  # (batch, num_positions + W - 1)
    class_windows = columns.unfold(1, window, 1)  # (batch, num_positions, W)
    targets = torch.zeros(*class_windows.shape[:2], num_behaviors + 1, dtype=torch.bool, device=columns.device)
    targets.scatter_(2, class_windows, True)

    # A window is complete when it contains no non-content token, so compare running counts W tokens apart.
    missing = F.pad((~future_content).cumsum(dim=1, dtype=torch.int32), (1, 0))  # (batch, needed)
    mask = missing[:, window:needed] == missing[:, :num_positions]
    return targets[..., :num_behaviors], mask


def _packed_fep_targets(
    stream_ids: Tensor, content: Tensor, window: int, num_positions: int, first_behavior_id: int, num_behaviors: int
) -> tuple[Tensor, Tensor]:
    """Build FEP targets and mask on CPU by OR-ing bit-packed token rows over each window, in numpy.

    Takes the arguments of `build_fep_targets` but applies neither `context_length` nor `frequency`.
    Each token becomes a row of 64-bit words with one bit set: its class, or the spare bit
    `num_behaviors` for a token outside `content`, so a window is complete when its OR lacks that bit.
    Runs in numpy, whose operations on arrays this small cost less than torch's, and which has unpackbits.
    """
    batch = stream_ids.shape[0]
    length = num_positions + window - 1  # stream tokens 1 .. length are in some position's window
    present = content.numpy()[:, 1 : length + 1]
    classes = np.subtract(stream_ids.numpy()[:, 1 : length + 1], first_behavior_id, dtype=np.int64)
    # Viewed as unsigned, negative classes are huge, so the minimum maps every id outside the vocabulary,
    # [UNK] included, to the no-class row num_behaviors.
    known = np.minimum(classes.view(np.uint64), num_behaviors).view(np.int64)
    columns = np.where(present, known, num_behaviors + 1)
    if columns.shape[1] < length:
        # Positions past the end of the stream are not content.
        columns = np.pad(columns, ((0, 0), (0, length - columns.shape[1])), constant_values=num_behaviors + 1)

    token_bits = _token_bit_rows(num_behaviors)  # (num_behaviors + 2, words)
    words = token_bits.shape[1]
    windows = np.empty((batch, num_positions, words), dtype=np.uint64)
    sequences_per_chunk = max(1, _PACKED_CHUNK_BYTES // (length * words * 8))
    buffers = np.empty((2, min(batch, sequences_per_chunk) * length, words), dtype=np.uint64)
    for start in range(0, batch, sequences_per_chunk):
        chunk = slice(start, start + sequences_per_chunk)
        rows, spare = buffers[:, : columns[chunk].size]
        # Every index is a row of token_bits, so mode="clip" changes nothing, and it lets take write into
        # `out` directly instead of through a temporary array.
        token_bits.take(columns[chunk].reshape(-1), axis=0, out=rows, mode="clip")
        _or_windows(rows, spare, window, out=windows[chunk])

    window_bytes = windows.view(np.uint8)  # (batch, num_positions, 8 * words)
    mask = (window_bytes[..., num_behaviors // 8] & (128 >> num_behaviors % 8)) == 0
    # Byte b of a row contains classes 8b .. 8b + 7 from the most significant bit down, the order in which
    # unpackbits writes them, so output column c is class c.
    unpacked = np.unpackbits(window_bytes.reshape(-1)).view(np.bool_)
    targets = unpacked.reshape(batch, num_positions, 64 * words)[..., :num_behaviors]
    return torch.from_numpy(targets), torch.from_numpy(mask)


# Size of each of the two row buffers that `_or_windows` works in, so that both fit a 1 MiB L2 cache.
# Chunks of 2 to 6 sequences (110 to 320 KiB per buffer) were about 10-20% faster at W = 100 than one
# pass over the whole batch, and no slower at W = 5 and 20 (bench/bench_fep.py sizes, one thread of a
# Xeon with 2 MiB of L2 per core).
_PACKED_CHUNK_BYTES = 256 * 1024


def _or_windows(rows: np.ndarray, spare: np.ndarray, window: int, out: np.ndarray) -> None:
    """Write into `out` `(sequences, positions, words)` the OR of each window of `window` bit rows.

    `rows` is `(sequences * (positions + window - 1), words)`: the rows of each sequence in turn, where
    window t of a sequence is its rows t .. t + window - 1. `spare` is a buffer of the same shape, and
    both are overwritten. It takes floor(log2(window)) + 1 passes over the rows.
    """
    sequences, num_positions, words = out.shape
    length = num_positions + window - 1
    current = rows

    # Doubling: after each pass, row r of the first `valid` rows is the OR of the `span` rows from r on.
    # Rows whose span runs into the next sequence are wrong, but no window reads them, because every
    # window of a sequence ends by its row length - 1.
    valid = len(rows)
    span = 1
    while 2 * span <= window:
        valid -= span
        np.bitwise_or(current[:valid], current[span : valid + span], out=spare[:valid])
        current, spare = spare, current
        span *= 2

    # span <= W < 2 * span, so the spans from rows t and t + W - span cover exactly the W rows of window t.
    # The last row this reads is row `valid` - 1.
    current = current.reshape(sequences, length, words)
    shift = window - span
    np.bitwise_or(current[:, :num_positions], current[:, shift : shift + num_positions], out=out)


@functools.lru_cache(maxsize=16)
def _token_bit_rows(num_behaviors: int) -> np.ndarray:
    """Build the read-only bit rows `(num_behaviors + 2, words)` uint64 that `_packed_fep_targets` ORs.

    Row c < num_behaviors has bit c set, row num_behaviors (a token that is content but no class)
    has none, and row num_behaviors + 1 (not content) has the spare bit num_behaviors. The bits are
    laid out by byte, as packbits writes them, so they mean the same classes on any byte order.
    """
    words = num_behaviors // 64 + 1  # at least one bit past the classes, for the spare bit
    one_hot = np.zeros((num_behaviors + 2, 64 * words), dtype=bool)
    one_hot[np.arange(num_behaviors), np.arange(num_behaviors)] = True
    one_hot[num_behaviors + 1, num_behaviors] = True
    rows = np.packbits(one_hot, axis=1).view(np.uint64)
    rows.flags.writeable = False
    return rows


def fep_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with logits, mean over kept positions and all behaviors.

    logits and targets are `(kept positions, num_behaviors)`.
    """
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def info_nce_loss(embeddings: Tensor, temperature: float, contrastive_type: str = "Orig") -> Tensor:
    """Symmetric InfoNCE over user pairs in rows (2i, 2i+1) of L2-normalised embeddings `(2 * users, dim)`.

    Both segments of a user act as anchors; the other users' segments in the batch are the negatives.
    "Orig" is the SimCLR loss; "HardNeg" re-weights each anchor's negatives by exp(similarity /
    temperature), normalised to mean 1 and detached, so harder negatives count more. Logits are formed
    in float32 and the loss is a cross-entropy (log-sum-exp), so it is finite for any temperature;
    identical embeddings give ln(users) for both types.
    """
    if embeddings.shape[0] % 2 != 0:
        raise ValueError(
            f"SUP needs two segments per user in adjacent rows, but the batch has {embeddings.shape[0]} rows."
        )
    if temperature <= 0:
        raise ValueError(f"contrastive temperature must be positive, got {temperature}.")
    if contrastive_type not in CONTRASTIVE_TYPES:
        raise ValueError(f"contrastive type {contrastive_type!r} is invalid; expected one of {CONTRASTIVE_TYPES}.")

    embeddings = embeddings.float()
    first, second = embeddings[0::2], embeddings[1::2]
    logits = first @ second.T / temperature  # (users, users); the diagonal contains the positive pairs
    users = logits.shape[0]
    labels = torch.arange(users, device=logits.device)

    losses = []
    for anchor_logits in (logits, logits.T):
        if contrastive_type == "HardNeg" and users > 1:
            anchor_logits = anchor_logits + _hard_negative_log_weights(anchor_logits)
        losses.append(F.cross_entropy(anchor_logits, labels))
    return (losses[0] + losses[1]) / 2


def _hard_negative_log_weights(logits: Tensor) -> Tensor:
    """Log weights that scale each row's negatives by exp(logit), normalised to mean 1; 0 on the diagonal."""
    users = logits.shape[0]
    off_diagonal = ~torch.eye(users, dtype=torch.bool, device=logits.device)
    negatives = logits.detach().masked_fill(~off_diagonal, float("-inf"))
    log_mean = torch.logsumexp(negatives, dim=1, keepdim=True) - torch.log(torch.tensor(users - 1.0))
    return torch.where(off_diagonal, negatives - log_mean, torch.zeros_like(logits))
