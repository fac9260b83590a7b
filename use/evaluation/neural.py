"""History and context-period embeddings from a trained RetNet or GPT-2 user model.

Users are processed in batches and only their per-period mean embeddings are kept, so memory
is O(users x periods x hidden) whatever the sequence length. Token-level hidden states exist
only for the batch being embedded.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm.auto import tqdm

from use.embedding import embed_sequences, embed_step, pad_batch
from use.evaluation.behaviors import BehaviorData
from use.evaluation.cache import EmbeddingCache, load_or_compute
from use.evaluation.strategies import STRATEGIES, UserEmbeddings, pool_periods
from use.model import UserModel

logger = logging.getLogger(__name__)


def neural_embeddings(
    model: UserModel,
    data: BehaviorData,
    strategies: list[str],
    batch_size: int,
    cache: EmbeddingCache | None = None,
) -> UserEmbeddings:
    """Embed each user's history window and context periods with every requested strategy.

    The history embedding is the mean of last-layer hidden states over the history window
    (GPT-2: over consecutive windows of its context size, see ``use.embedding.embed_sequences``).
    Strategies are defined in ``use.evaluation.strategies``. With a ``cache``, the history and
    each strategy's periods are loaded from it when a matching file exists, else computed and
    saved. ``pool`` is never stored, because it is the running mean of the ``recent`` periods.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if "stateful" in strategies and model.config.backbone_type != "retnet":
        raise ValueError(f"strategy 'stateful' needs a RetNet model, got backbone {model.config.backbone_type!r}")
    unknown = [strategy for strategy in strategies if strategy not in _PERIOD_EMBEDDERS and strategy != "pool"]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")

    hidden_size = model.config.hidden_size
    history = load_or_compute(
        cache, "history", data.rows, (len(data), hidden_size),
        lambda: embed_sequences(
            model, data.histories, batch_size=batch_size, progress=True, description="history embeddings"
        ).numpy(),
    )
    embeddings = UserEmbeddings(history=history)

    # (periods, users, hidden)
    periods_shape = (data.schedule.num_periods, len(data), hidden_size)
    by_strategy: dict[str, list[np.ndarray]] = {}
    for strategy in dict.fromkeys("recent" if strategy == "pool" else strategy for strategy in strategies):
        embed_batch = _PERIOD_EMBEDDERS[strategy]
        stacked = load_or_compute(
            cache, strategy, data.rows, periods_shape,
            lambda: np.stack(_embed_periods(model, data, strategy, batch_size, embed_batch)),
        )
        by_strategy[strategy] = list(stacked)

    for strategy in strategies:
        if strategy == "pool":
            embeddings.context[strategy] = pool_periods(by_strategy["recent"])
            logger.info("pool embeddings: running means of the recent embeddings")
        else:
            embeddings.context[strategy] = by_strategy[strategy]
    return embeddings


def _embed_periods(
    model: UserModel, data: BehaviorData, strategy: str, batch_size: int, embed_batch
) -> list[np.ndarray]:
    """Run ``embed_batch`` over batches of users and gather one (users, hidden) array per period."""
    num_periods = data.schedule.num_periods
    periods = [np.empty((len(data), model.config.hidden_size), dtype=np.float32) for _ in range(num_periods)]
    with tqdm(total=len(data), desc=f"{strategy} embeddings", unit="user") as progress:
        for start in range(0, len(data), batch_size):
            users = list(range(start, min(start + batch_size, len(data))))
            # (periods, batch, hidden)
            batch_embeddings = embed_batch(model, data, users, batch_size)
            for index in range(num_periods):
                periods[index][start : start + len(users)] = batch_embeddings[index]
            progress.update(len(users))
    return periods


def _recent_batch(model: UserModel, data: BehaviorData, users: list[int], batch_size: int) -> list[np.ndarray]:
    num_periods = data.schedule.num_periods
    pieces = [data.period(user, period) for period in range(1, num_periods + 1) for user in users]
    # (periods * batch, hidden), period-major
    flat = embed_sequences(model, pieces, batch_size=batch_size, progress=False).numpy()
    return [flat[index * len(users) : (index + 1) * len(users)] for index in range(num_periods)]


def _stateful_batch(model: UserModel, data: BehaviorData, users: list[int], batch_size: int) -> list[np.ndarray]:
    """Feed the periods in order, carrying the retention state; each step costs the same."""
    state = None
    per_period = []
    for period in range(1, data.schedule.num_periods + 1):
        input_ids, attention_mask = pad_batch([data.period(user, period) for user in users], model.config.pad_token_id)
        state = embed_step(model, input_ids, attention_mask, state)
        per_period.append(state.mean().cpu().numpy())
    return per_period


def _recompute_batch(model: UserModel, data: BehaviorData, users: list[int], batch_size: int) -> list[np.ndarray]:
    per_period = []
    for period in range(1, data.schedule.num_periods + 1):
        prefixes = [data.context_prefix(user, period) for user in users]
        per_period.append(embed_sequences(model, prefixes, batch_size=batch_size, progress=False).numpy())
    return per_period


# The batch function that embeds the periods of each stored strategy. Pool has none, because it is
# the running mean of recent.
_PERIOD_EMBEDDERS = {"recent": _recent_batch, "stateful": _stateful_batch, "recompute": _recompute_batch}
