"""Split user texts into behaviors and cut them into a history window and context periods.

Context periods are either fixed-length (``PeriodSchedule``) or one per context day, read from a
periods file (``DaySchedule``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, ClassVar, Hashable, Sequence

from use.evaluation.io import DayPeriods, EvalFileError, EvalUsers, SkippedRow, log_skipped_rows

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
    kind: ClassVar[str] = "count"

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

    def context_end(self, row: int, period: int) -> int:
        """Return the context behaviors up to the end of 1-based ``period``; the same for every row."""
        return period * self.period_len

    def describe(self) -> str:
        return f"{self.num_periods} period(s) of {self.period_len} behaviors"


@dataclass
class DaySchedule:
    """Window lengths with one context period per day: at most ``max_len`` history behaviors.

    Period k of a user ends at the end of their k-th context day, so users' periods differ in
    length. The context is every behavior of the days in ``days``, whatever ``max_len``.
    """

    max_len: int
    days: DayPeriods
    kind: ClassVar[str] = "day"

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1 behavior, got {self.max_len}")

    @property
    def num_periods(self) -> int:
        return self.days.num_days

    def context_end(self, row: int, period: int) -> int:
        """Return the context behaviors of the user in TSV ``row`` up to the end of their ``period``-th day."""
        return self.days.context_ends[row][period - 1]

    def describe(self) -> str:
        return f"{self.num_periods} period(s) of one day each, from {self.days.path}"


Schedule = PeriodSchedule | DaySchedule


@dataclass
class BehaviorData:
    """Behaviors of the users kept for evaluation.

    ``histories[i]`` is the last ``max_len`` history behaviors of user i and ``contexts[i]`` the
    context behaviors that the last period reaches. ``rows[i]`` is the user's TSV row number.
    """

    rows: list[int]
    histories: list[list[Behavior]]
    contexts: list[list[Behavior]]
    schedule: Schedule

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def num_periods(self) -> int:
        return self.schedule.num_periods

    def period_end(self, user: int, period: int) -> int:
        """Return the number of the user's context behaviors in periods 1..``period`` (0 for period 0)."""
        return self.schedule.context_end(self.rows[user], period) if period > 0 else 0

    def period(self, user: int, period: int) -> list[Behavior]:
        """Return the behaviors of 1-based ``period`` of the user's context."""
        return self.contexts[user][self.period_end(user, period - 1) : self.period_end(user, period)]

    def context_prefix(self, user: int, period: int) -> list[Behavior]:
        """Return the context behaviors of periods 1..``period``."""
        return self.contexts[user][: self.period_end(user, period)]


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
    users: EvalUsers, split: BehaviorSplitter, schedule: Schedule
) -> tuple[BehaviorData, list[SkippedRow]]:
    """Split the users' texts into behaviors and keep the users long enough for every period.

    A user needs at least one history behavior and the context behaviors that their last period
    reaches. Shorter users are returned as skipped rows and logged. When fewer than 2 users remain
    with a PeriodSchedule, an error log line suggests a --max_len and --period_len that fit. With a
    DaySchedule, raises EvalFileError when a user's context length differs from the end of their last day.
    """
    histories = split(users.histories)
    contexts = split(users.contexts)
    if isinstance(schedule, DaySchedule):
        check_day_lengths(users, contexts, schedule)

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
        data.contexts.append(list(context[: schedule.context_end(row, schedule.num_periods)]))

    log_skipped_rows(skipped, users.path)
    if len(data.rows) < 2 and isinstance(schedule, PeriodSchedule):
        _log_fitting_schedule(histories, contexts, schedule, kept=len(data.rows))
    logger.info(
        "History window: last %d behaviors (%d user(s) truncated to it, %d shorter and used whole); context: %s",
        schedule.max_len,
        truncated,
        shorter,
        schedule.describe(),
    )
    return data, skipped


def check_day_lengths(users: EvalUsers, contexts: list[list[Behavior]], schedule: DaySchedule) -> None:
    """Raise EvalFileError unless every user's context has exactly as many behaviors as their days add up to."""
    mismatched = [
        (row, len(context), schedule.days.context_ends[row][-1])
        for row, context in zip(users.rows, contexts)
        if len(context) != schedule.days.context_ends[row][-1]
    ]
    if not mismatched:
        return
    row, length, end = mismatched[0]
    last_day = schedule.days.days[row][-1]
    raise EvalFileError(
        f"{len(mismatched)} of {len(users)} users in {users.path} have a context length that differs from "
        f"the days in {schedule.days.path}: row {row} has {length} context behaviors, but its days end at "
        f"{end} (after {last_day}). The periods file may belong to another TSV (another --seed of "
        "scripts/convert_event_log.py), so pass the eval.periods.json written together with this TSV. "
        "Otherwise the behaviors are not events, but the periods file counts events: pass the word-level "
        "tokenizer of this event log (scripts/build_tokenizer.py) as --tokenizer_path"
    )


def _log_fitting_schedule(
    histories: list[list[Behavior]], contexts: list[list[Behavior]], schedule: PeriodSchedule, kept: int
) -> None:
    """Log an error that suggests a --max_len and --period_len with which at least 2 users are long enough.

    Logs nothing when fewer than 2 users have a history, because no window length helps then.
    """
    lengths = sorted((len(context) for history, context in zip(histories, contexts) if history), reverse=True)
    if len(lengths) < 2 or lengths[1] < 1:
        return
    # Re-identification and classification need 2 users, so the suggestion fits the second-longest context.
    fit = lengths[1]
    max_len, period_len = fitting_window(fit, schedule)
    logger.error(
        "%d user(s) have the %d context behaviors that %s need, but re-identification and classification "
        "need at least 2. "
        "The longest context has %d behaviors, and the two longest have at least %d. "
        "Pass --max_len %d --period_len %d (%d period(s)), which fit the file. --max_len also caps the history window.",
        kept,
        schedule.context_len,
        schedule.describe(),
        lengths[0],
        fit,
        max_len,
        period_len,
        max_len // period_len,
    )


def fitting_window(fit: int, schedule: PeriodSchedule) -> tuple[int, int]:
    """Return a (max_len, period_len) whose periods end within ``fit`` context behaviors (``fit`` >= 1).

    Keeps the schedule's period_len when at least one period fits. Otherwise keeps its number of
    periods, at most ``fit``, and shortens them. max_len is always a multiple of period_len.
    """
    if schedule.period_len <= fit:
        period_len = schedule.period_len
    else:
        period_len = fit // min(schedule.num_periods, fit)
    return fit // period_len * period_len, period_len


def _shortness(history: Sequence, context: Sequence, schedule: Schedule) -> str:
    if not history:
        return "history has no behaviors after tokenization"
    # A DaySchedule user's context length was checked against their days by check_day_lengths.
    if isinstance(schedule, PeriodSchedule) and len(context) < schedule.context_len:
        return (
            f"context shorter than {schedule.context_len} behaviors "
            f"({schedule.num_periods} periods x {schedule.period_len})"
        )
    return ""
