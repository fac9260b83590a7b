"""Context embedding strategies and the container for the embeddings they produce.

At period p (1-based) the user's context so far is periods 1..p, and each strategy embeds it
differently:

- ``recent``: only period p, embedded on its own.
- ``pool``: the mean of the ``recent`` embeddings of periods 1..p.
- ``stateful``: RetNet only. Periods run one after another with the retention state carried,
  and the embedding is the running mean of all hidden states so far. Each update costs the
  same whatever p is.
- ``recompute``: periods 1..p embedded from scratch as one sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

STRATEGIES = ("recent", "pool", "stateful", "recompute")
NEURAL_METHODS = ("retnet", "gpt2")
BASELINE_METHODS = ("tf", "tf-idf", "n-grams", "random")
METHODS = NEURAL_METHODS + BASELINE_METHODS

# A dense (users, dim) array, or a sparse CSR matrix for the count-based baselines.
Matrix = np.ndarray | sp.csr_matrix


@dataclass
class UserEmbeddings:
    """History embeddings and, per strategy, one context embedding matrix per period.

    ``history`` is (users, dim). ``context[strategy][p - 1]`` is (users, dim) for period p.
    Rows follow ``BehaviorData.rows``.
    """

    history: Matrix
    context: dict[str, list[Matrix]] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return list(self.context)


def applicable_strategies(method: str) -> tuple[str, ...]:
    """Return the strategies that ``method`` supports, in report order."""
    if method == "retnet":
        return STRATEGIES
    if method in METHODS:
        return tuple(s for s in STRATEGIES if s != "stateful")
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def select_strategies(method: str, requested: list[str] | None) -> list[str]:
    """Return the requested strategies that apply to ``method``, logging the ones that do not.

    ``None`` selects every applicable strategy. Raises ValueError for an unknown name or when
    none of the requested strategies applies.
    """
    applicable = applicable_strategies(method)
    if requested is None:
        if "stateful" not in applicable:
            logger.info(
                "Strategy 'stateful' does not apply to %s: it needs a RetNet retention state to carry between periods",
                method,
            )
        return list(applicable)

    unknown = [s for s in requested if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    selected = [s for s in applicable if s in requested]
    dropped = [s for s in dict.fromkeys(requested) if s not in applicable]
    if dropped:
        logger.warning(
            "Skipping strategies %s for %s: 'stateful' needs a RetNet retention state to carry between periods",
            dropped,
            method,
        )
    if not selected:
        raise ValueError(
            f"none of the strategies {requested} applies to {method}; choose from {', '.join(applicable)}"
        )
    return selected


def pool_periods(recent: list[Matrix]) -> list[Matrix]:
    """Return the running means of per-period embeddings: entry p-1 averages periods 1..p."""
    pooled: list[Matrix] = []
    running_sum = None
    for index, matrix in enumerate(recent, start=1):
        running_sum = matrix.copy() if running_sum is None else running_sum + matrix
        mean = running_sum / index
        pooled.append(sp.csr_matrix(mean) if sp.issparse(mean) else mean)
    return pooled
