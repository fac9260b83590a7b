"""Split user texts into behaviors and cut them into a history window and context periods."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

from use.evaluation.io import EvalUsers, SkippedRow, log_skipped_rows

logger = logging.getLogger(__name__)

# Texts tokenized per call; bounds the memory of one fast-tokenizer batch.
_TOKENIZE_BATCH = 256

Behavior = Hashable
BehaviorSplitter = Callable[[list[str]], list[list[Behavior]]]


@dataclass
class PeriodSchedule:
    """Window lengths: at most ``max_len`` history behaviors, ``num_periods`` context periods of ``period_len``."""

    max_len: int
    period_len: int

    def __post_init__(self) -> None:
        if self.period_len < 1:
            raise ValueError(f"period_len must be at least 1 behavior, got {self.period_len}")
        if self.max_len < self.period_len:
            raise ValueError(
                f"max_len ({self.max_len}) is shorter than period_len ({self.period_len}); "
                "raise --max_len or lower --period_len"
            )

    @property
    def num_periods(self) -> int:
        return self.max_len // self.period_len

    @property
    def context_len(self) -> int:
        """Context behaviors that the last period reaches."""
        return self.num_periods * self.period_len


@dataclass
class BehaviorData:
    """Behaviors of the users kept for evaluation.

    ``histories[i]`` is the last ``max_len`` history behaviors of user i and ``contexts[i]`` the
    first ``schedule.context_len`` context behaviors. ``rows[i]`` is the user's TSV row number.
    """

    rows: list[int]
    histories: list[list[Behavior]]
    contexts: list[list[Behavior]]
    schedule: PeriodSchedule

    def __len__(self) -> int:
        return len(self.rows)

    def period(self, user: int, period: int) -> list[Behavior]:
        """Return the behaviors of 1-based ``period`` of the user's context."""
        start = (period - 1) * self.schedule.period_len
        return self.contexts[user][start : start + self.schedule.period_len]

    def context_prefix(self, user: int, period: int) -> list[Behavior]:
        """Return the context behaviors of periods 1..``period``."""
        return self.contexts[user][: period * self.schedule.period_len]


def character_splitter(texts: list[str]) -> list[list[Behavior]]:
    """Split each text into characters, one behavior per character."""
    return [list(text) for text in texts]


def tokenizer_splitter(tokenizer) -> BehaviorSplitter:
    """Return a splitter that maps each text to its token ids, without special tokens."""

    def split(texts: list[str]) -> list[list[Behavior]]:
        ids: list[list[Behavior]] = []
        for start in range(0, len(texts), _TOKENIZE_BATCH):
            batch = texts[start : start + _TOKENIZE_BATCH]
            ids.extend(tokenizer(batch, add_special_tokens=False)["input_ids"])
        return ids

    return split


def prepare_behaviors(
    users: EvalUsers, split: BehaviorSplitter, schedule: PeriodSchedule
) -> tuple[BehaviorData, list[SkippedRow]]:
    """Split the users' texts into behaviors and keep the users long enough for every period.

    A user needs at least one history behavior and ``schedule.context_len`` context
    behaviors. Shorter users are returned as skipped rows and logged.
    """
    histories = split(users.histories)
    contexts = split(users.contexts)

    data = BehaviorData(rows=[], histories=[], contexts=[], schedule=schedule)
    skipped: list[SkippedRow] = []
    truncated = shorter = 0
    for row, history, context in zip(users.rows, histories, contexts):
        reason = _shortness(history, context, schedule)
        if reason:
            skipped.append(SkippedRow(row, reason))
            continue
        truncated += len(history) > schedule.max_len
        shorter += len(history) < schedule.max_len
        data.rows.append(row)
        data.histories.append(list(history[-schedule.max_len :]))
        data.contexts.append(list(context[: schedule.context_len]))

    log_skipped_rows(skipped, users.path)
    if skipped and not data.rows:
        longest = max(len(context) for context in contexts) if contexts else 0
        logger.error(
            "No user has %d context behaviors; the longest context has %d. Pass a --max_len (and --period_len) "
            "that fits the file, for example --max_len %d.",
            schedule.context_len,
            longest,
            max(longest // schedule.period_len * schedule.period_len, schedule.period_len),
        )
    logger.info(
        "History window: last %d behaviors (%d user(s) truncated to it, %d shorter and used whole); "
        "context: %d period(s) of %d behaviors",
        schedule.max_len,
        truncated,
        shorter,
        schedule.num_periods,
        schedule.period_len,
    )
    return data, skipped


def _shortness(history: Sequence, context: Sequence, schedule: PeriodSchedule) -> str:
    if not history:
        return "history has no behaviors after tokenization"
    if len(context) < schedule.context_len:
        return (
            f"context shorter than {schedule.context_len} behaviors "
            f"({schedule.num_periods} periods x {schedule.period_len})"
        )
    return ""
