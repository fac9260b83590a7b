"""Pre-training objectives on last-layer hidden states of any backbone: CLM, FEP and SUP.

- CLM: next-behavior cross-entropy.
- FEP (future W-behavior prediction): multi-label prediction of which behaviors occur among the next
  W tokens, binary cross-entropy with logits.
- SUP (same user prediction): two segments of one user are a positive pair, and the other users in
  the batch are negatives. The loss is a symmetric InfoNCE with a temperature.
"""

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
    """
    if window < 1:
        raise ValueError(f"FEP window size must be at least 1, got {window}.")
    if frequency < 1:
        raise ValueError(f"FEP loss frequency must be at least 1, got {frequency}.")
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
    if window < PACKED_MIN_WINDOW or classes.device.type != "cpu":
        targets = _scatter_window_classes(classes, is_class, window, num_behaviors)
    else:
        targets = _packed_window_classes(classes, is_class, window, num_positions, num_behaviors)

    # A window is complete when it contains no non-content token, so compare running counts W tokens apart.
    missing = F.pad((~future_content).cumsum(dim=1, dtype=torch.int32), (1, 0))  # (batch, needed)
    mask = missing[:, window:needed] == missing[:, :num_positions]
    if context_length > 0 or frequency > 1:
        positions = torch.arange(num_positions, device=stream_ids.device)
        keep = (positions >= context_length) & ((positions + 1) % frequency == 0)
        mask &= keep[None, :]
    return targets, mask


# On CPU, below this window size one scatter of every (position, window slot) pair is the fastest way
# to fill the targets. From it on, OR-ing bit-packed rows wins, because that costs log2(W) passes over
# the packed rows instead of W scattered writes per position. Both take about the same time near W = 9
# (batch 16 x 512, 686 behaviors, one thread of a 2-core Xeon, timed like bench/bench_fep.py).
# NOTE: other devices always take the scatter path, because the packed path unpacks bits with numpy.
# No GPU version of the packed path has been written or timed against it.
PACKED_MIN_WINDOW = 10


def _scatter_window_classes(classes: Tensor, is_class: Tensor, window: int, num_behaviors: int) -> Tensor:
    """Build multi-hot windows `(batch, positions, num_behaviors)` by scattering each window's classes.

    `classes` and `is_class` are `(batch, positions + window - 1)`, starting at the first window's token.
    """
    # A non-behavior token goes to an extra column that is dropped at the end.
    columns = torch.where(is_class, classes, torch.full_like(classes, num_behaviors))
    class_windows = columns.unfold(1, window, 1)  # (batch, positions, window)
    targets = torch.zeros(*class_windows.shape[:2], num_behaviors + 1, dtype=torch.bool, device=classes.device)
    targets.scatter_(2, class_windows, True)
    return targets[..., :num_behaviors]


def _packed_window_classes(
    classes: Tensor, is_class: Tensor, window: int, num_positions: int, num_behaviors: int
) -> Tensor:
    """Build multi-hot windows `(batch, num_positions, num_behaviors)` by OR-ing bit-packed token rows, on CPU.

    Each token becomes a row of ceil(C / 8) bytes with bit c % 8 of byte c // 8 set for its class c.
    Runs in numpy, whose small-array operations cost less than torch's here and which has unpackbits.
    """
    batch, length = classes.shape
    num_bytes = (num_behaviors + 7) // 8
    token_rows = np.flatnonzero(is_class.numpy())  # behavior tokens, as rows of the sequences laid end to end
    token_classes = classes.numpy().reshape(-1)[token_rows]
    packed = np.zeros((batch * length, num_bytes), dtype=np.uint8)
    packed[token_rows, token_classes >> 3] = np.left_shift(1, token_classes & 7).astype(np.uint8)

    # Doubling: after each step, row r is the OR of the `span` rows from r on. Rows whose span runs into
    # the next sequence are wrong, but no window reads them, because every window of a sequence ends
    # by its row length - 1.
    rows = packed.reshape(-1)
    span = 1
    while 2 * span <= window:
        rows = rows[: -span * num_bytes] | rows[span * num_bytes :]
        span *= 2
    # span <= W < 2 * span, so the spans from rows t and t + W - span cover exactly the W rows of window t.
    shift = (window - span) * num_bytes
    if shift:
        rows = rows[:-shift] | rows[shift:]
    windows = np.lib.stride_tricks.as_strided(
        rows, (batch, num_positions, num_bytes), (length * num_bytes, num_bytes, 1), writeable=False
    )

    # bitorder="little" puts bit i of byte j at column 8j + i, which is class 8j + i.
    unpacked = np.unpackbits(np.ascontiguousarray(windows).reshape(-1), bitorder="little")
    return torch.from_numpy(unpacked).view(torch.bool).view(batch, num_positions, 8 * num_bytes)[..., :num_behaviors]


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
