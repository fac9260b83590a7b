"""Non-neural baseline embeddings of the same history and context-period behaviors.

- ``tf``: relative frequency of each behavior (L1-normalized counts).
- ``tf-idf``: sklearn TfidfVectorizer with single behaviors as terms.
- ``n-grams``: tf-idf over runs of 1 to 3 consecutive behaviors.
- ``random``: seeded Gaussian vectors, the chance baseline.

The vocabularies and idf weights are fitted on the histories only, so behaviors seen only in
contexts are ignored. The count-based embeddings stay sparse: (users, vocabulary) CSR matrices.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from tqdm.auto import tqdm

from use.evaluation.behaviors import Behavior, BehaviorData
from use.evaluation.strategies import BASELINE_METHODS, Matrix, UserEmbeddings, pool_periods

logger = logging.getLogger(__name__)

RANDOM_EMBEDDING_DIM = 256
NGRAM_RANGE = (1, 3)
# Users vectorized per call; bounds the memory of the documents built at once.
_USER_BATCH = 512


def _single_behaviors(behaviors: list[Behavior]) -> list[Behavior]:
    return behaviors


def _behavior_ngrams(behaviors: list[Behavior]) -> Iterator[tuple[Behavior, ...]]:
    low, high = NGRAM_RANGE
    for n in range(low, high + 1):
        for start in range(len(behaviors) - n + 1):
            yield tuple(behaviors[start : start + n])


def build_vectorizer(method: str) -> TfidfVectorizer:
    """Return the unfitted vectorizer of a count-based baseline.

    The analyzer receives a list of behaviors (characters or token ids) instead of a string,
    so sklearn's own tokenization and lowercasing are bypassed.
    """
    if method == "tf":
        return TfidfVectorizer(analyzer=_single_behaviors, use_idf=False, norm="l1")
    if method == "tf-idf":
        return TfidfVectorizer(analyzer=_single_behaviors)
    if method == "n-grams":
        return TfidfVectorizer(analyzer=_behavior_ngrams)
    raise ValueError(f"{method!r} is not a count-based baseline; choose tf, tf-idf or n-grams")


def baseline_embeddings(method: str, data: BehaviorData, strategies: list[str], seed: int = 0) -> UserEmbeddings:
    """Embed histories and context periods with a non-neural baseline.

    ``seed`` only affects ``random``. ``stateful`` is not accepted because a baseline has no
    state to carry.
    """
    if method not in BASELINE_METHODS:
        raise ValueError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINE_METHODS)}")
    if "stateful" in strategies:
        raise ValueError(f"strategy 'stateful' does not apply to the {method} baseline")
    if method == "random":
        return _random_embeddings(data, strategies, seed)

    vectorizer = build_vectorizer(method)
    history = vectorizer.fit_transform(data.histories)
    logger.info("%s vocabulary fitted on %d histories: %d terms", method, len(data), len(vectorizer.vocabulary_))

    embeddings = UserEmbeddings(history=history)
    recent: list[Matrix] | None = None
    for strategy in strategies:
        if strategy == "recompute":
            embeddings.context[strategy] = _vectorize_periods(vectorizer, data, strategy, data.context_prefix)
            continue
        if recent is None:
            recent = _vectorize_periods(vectorizer, data, "recent", data.period)
        embeddings.context[strategy] = recent if strategy == "recent" else pool_periods(recent)
    return embeddings


def _vectorize_periods(vectorizer, data: BehaviorData, strategy: str, behaviors_of) -> list[Matrix]:
    """Vectorize ``behaviors_of(user, period)`` for every user and period, in batches of users."""
    num_periods = data.schedule.num_periods
    blocks: list[list[Matrix]] = [[] for _ in range(num_periods)]
    with tqdm(total=len(data), desc=f"{strategy} embeddings", unit="user") as progress:
        for start in range(0, len(data), _USER_BATCH):
            users = range(start, min(start + _USER_BATCH, len(data)))
            for period in range(1, num_periods + 1):
                blocks[period - 1].append(vectorizer.transform([behaviors_of(user, period) for user in users]))
            progress.update(len(users))
    return [sp.vstack(period_blocks, format="csr") for period_blocks in blocks]


def _random_embeddings(data: BehaviorData, strategies: list[str], seed: int) -> UserEmbeddings:
    rng = np.random.default_rng(seed)
    num_users, num_periods = len(data), data.schedule.num_periods

    def draw() -> list[np.ndarray]:
        return [rng.standard_normal((num_users, RANDOM_EMBEDDING_DIM)) for _ in range(num_periods)]

    embeddings = UserEmbeddings(history=rng.standard_normal((num_users, RANDOM_EMBEDDING_DIM)))
    recent = draw()
    for strategy in strategies:
        if strategy == "recent":
            embeddings.context[strategy] = recent
        elif strategy == "pool":
            embeddings.context[strategy] = pool_periods(recent)
        else:
            embeddings.context[strategy] = draw()
    logger.info("random baseline: %d-dimensional Gaussian vectors, seed %d", RANDOM_EMBEDDING_DIM, seed)
    return embeddings
