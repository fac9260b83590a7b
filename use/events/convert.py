"""Turn an event log into the training CSV and the evaluation TSV, with disjoint users.

Each user's events are sorted by time. The evaluation users are drawn at random (seeded) among the
users long enough for the requested context. An evaluation user's context is their most recent
events, and their history is everything before. All other users with enough events go to training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path

from .log import EventLog, EventLogError, resolve_timezone

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.csv"
EVAL_FILE = "eval.tsv"
PERIODS_FILE = "eval.periods.json"
EVAL_USERS_FILE = "eval_users.txt"
STATS_FILE = "stats.json"
PERIOD_MODES = ("count", "day")


@dataclass
class UserEvents:
    """One user's events sorted by time; events with equal timestamps keep their order in the log."""

    user_id: str
    names: list[str]
    times: list[float]

    def __len__(self) -> int:
        return len(self.names)


def group_by_user(log: EventLog) -> list[UserEvents]:
    """Return each user's time-sorted events, users in order of their first row in the log."""
    indices: dict[str, list[int]] = {}
    for index, user in enumerate(log.users):
        indices.setdefault(user, []).append(index)

    users = []
    for user, user_indices in indices.items():
        # sorted() is stable, so events with equal timestamps stay in file order.
        ordered = sorted(user_indices, key=lambda index: log.times[index])
        users.append(UserEvents(user, [log.names[i] for i in ordered], [log.times[i] for i in ordered]))
    return users


@dataclass
class ConversionSettings:
    """Options that turn a log into training and evaluation files.

    With ``period="count"`` the context is a user's last ``context_events`` events. With
    ``period="day"`` it is the events of the user's last ``context_days`` active days (calendar days
    in ``timezone`` on which the user has events), and each such day is one period. ``eval_size``
    below 1 is a fraction of the users eligible for evaluation, from 1 on a number of users.
    """

    period: str = "count"
    context_events: int = 32
    context_days: int = 1
    min_history: int = 1
    min_train_events: int = 2
    eval_size: float = 0.1
    seed: int = 0
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if self.period not in PERIOD_MODES:
            raise EventLogError(f"period {self.period!r} is invalid; choose one of {', '.join(PERIOD_MODES)}")
        for name in ("context_events", "context_days", "min_history", "min_train_events"):
            if getattr(self, name) < 1:
                raise EventLogError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.eval_size <= 0 or (self.eval_size >= 1 and not float(self.eval_size).is_integer()):
            raise EventLogError(
                f"eval size {self.eval_size} is invalid; pass a fraction between 0 and 1 or a whole number of users"
            )
        if self.eval_size >= 1:
            self.eval_size = int(self.eval_size)


@dataclass
class EvalUser:
    """An evaluation user's history and context, and the context events at the end of each context day."""

    user_id: str
    history: list[str]
    context: list[str]
    days: list[str] = field(default_factory=list)
    context_ends: list[int] = field(default_factory=list)


def context_start(user: UserEvents, settings: ConversionSettings, zone: tzinfo) -> int | None:
    """Return the index of the user's first context event, or None when the user is too short to evaluate.

    A user qualifies with at least ``min_history`` history events before the context and, with
    ``period="day"``, at least one active day before the last ``context_days``.
    """
    if settings.period == "count":
        start = len(user) - settings.context_events
        return start if start >= settings.min_history else None

    days = [_day_of(moment, zone) for moment in user.times]
    distinct = list(dict.fromkeys(days))
    if len(distinct) <= settings.context_days:
        return None
    start = days.index(distinct[-settings.context_days])
    return start if start >= settings.min_history else None


def _day_of(moment: float, zone: tzinfo) -> str:
    try:
        return datetime.fromtimestamp(moment, zone).date().isoformat()
    except (OverflowError, OSError, ValueError) as error:
        raise EventLogError(
            f"timestamp {moment:.0f} seconds after 1970 has no calendar date ({error}); check --time-unit"
        ) from None


def build_eval_user(user: UserEvents, start: int, settings: ConversionSettings, zone: tzinfo) -> EvalUser:
    """Cut the user at ``start`` into history and context; day mode also records the day boundaries."""
    eval_user = EvalUser(user.user_id, user.names[:start], user.names[start:])
    if settings.period == "day":
        context_days = [_day_of(moment, zone) for moment in user.times[start:]]
        for position, day in enumerate(context_days):
            if position + 1 == len(context_days) or context_days[position + 1] != day:
                eval_user.days.append(day)
                eval_user.context_ends.append(position + 1)
    return eval_user


def number_of_eval_users(eval_size: float, eligible: int) -> int:
    """Return how many users to evaluate: ``eval_size`` as a fraction of ``eligible`` or as a count."""
    count = round(eval_size * eligible) if eval_size < 1 else int(eval_size)
    if count > eligible:
        raise EventLogError(
            f"eval size {eval_size:g} asks for {count} evaluation users but only {eligible} are long enough; "
            "lower --eval-size, --context-events, --context-days or --min-history"
        )
    if count < 2:
        raise EventLogError(
            f"eval size {eval_size:g} of {eligible} eligible users gives {count} evaluation user(s); "
            "re-identification and classification need at least 2. Raise --eval-size or lower the context length"
        )
    return count


@dataclass
class Split:
    """Disjoint training and evaluation users, each in order of first appearance in the log."""

    train: list[UserEvents]
    eval: list[EvalUser]
    eligible: int
    dropped_short: int


def split_users(users: list[UserEvents], settings: ConversionSettings) -> Split:
    """Choose the evaluation users at random (seeded) among those long enough; the rest train.

    Users neither evaluated nor with ``min_train_events`` events are dropped and counted.
    """
    zone = resolve_timezone(settings.timezone)
    starts = {user.user_id: context_start(user, settings, zone) for user in users}
    eligible = [user.user_id for user in users if starts[user.user_id] is not None]
    chosen = set(random.Random(settings.seed).sample(eligible, number_of_eval_users(settings.eval_size, len(eligible))))

    split = Split(train=[], eval=[], eligible=len(eligible), dropped_short=0)
    for user in users:
        if user.user_id in chosen:
            split.eval.append(build_eval_user(user, starts[user.user_id], settings, zone))
        elif len(user) >= settings.min_train_events:
            split.train.append(user)
        else:
            split.dropped_short += 1
    if split.dropped_short:
        logger.warning(
            "Dropped %d user(s) with fewer than %d events from training (--min-train-events)",
            split.dropped_short,
            settings.min_train_events,
        )
    if not split.train:
        raise EventLogError("no training users remain; lower --eval-size or --min-train-events")
    return split


def write_training_csv(path: Path, users: list[UserEvents]) -> None:
    """Write the training CSV: header ``sequence,user_id``, events joined by single spaces."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sequence", "user_id"])
        for user in users:
            writer.writerow([" ".join(user.names), user.user_id])


def write_eval_tsv(path: Path, users: list[EvalUser]) -> None:
    """Write the evaluation TSV with the csv module: header ``history<TAB>context``, one row per user."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["history", "context"])
        for user in users:
            writer.writerow([" ".join(user.history), " ".join(user.context)])


def write_periods_json(path: Path, users: list[EvalUser], settings: ConversionSettings, eval_tsv: Path) -> None:
    """Write the day boundaries of every evaluation user's context, one user per line.

    ``users[i]`` describes TSV row ``i + 2`` (the header is row 1): ``days`` are its context days and
    ``context_ends[j]`` the number of context events up to the end of ``days[j]``. The head stores the
    SHA-256 of the bytes of ``eval_tsv``, which must already be written, so that the evaluation can
    reject this file when it is passed with another TSV.
    """
    with open(eval_tsv, "rb") as handle:
        tsv_sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    head = {
        "period": "day",
        "timezone": settings.timezone,
        "context_days": settings.context_days,
        "eval_tsv_sha256": tsv_sha256,
    }
    entries = [
        json.dumps({"row": row, "user_id": user.user_id, "days": user.days, "context_ends": user.context_ends})
        for row, user in enumerate(users, start=2)
    ]
    # The head's closing brace is replaced by the users list, so the file stays one JSON object.
    text = json.dumps(head)[:-1] + ', "users": [\n' + ",\n".join(entries) + "\n]}\n"
    path.write_text(text, encoding="utf-8")


def convert_event_log(log: EventLog, output_dir: str | Path, settings: ConversionSettings) -> dict:
    """Write ``train.csv``, ``eval.tsv``, ``eval_users.txt``, ``stats.json`` and, with ``period="day"``,
    ``eval.periods.json`` into ``output_dir``.

    Returns the statistics that ``stats.json`` contains: the settings and the user and event counts.
    """
    output_dir = Path(output_dir)
    split = split_users(group_by_user(log), settings)
    output_dir.mkdir(parents=True, exist_ok=True)

    write_training_csv(output_dir / TRAIN_FILE, split.train)
    write_eval_tsv(output_dir / EVAL_FILE, split.eval)
    eval_user_ids = "".join(f"{user.user_id}\n" for user in split.eval)
    (output_dir / EVAL_USERS_FILE).write_text(eval_user_ids, encoding="utf-8")
    if settings.period == "day":
        write_periods_json(output_dir / PERIODS_FILE, split.eval, settings, output_dir / EVAL_FILE)

    stats = {
        "input": str(log.path),
        "settings": asdict(settings),
        "events_read": len(log),
        "users_read": len(set(log.users)),
        "blank_lines_skipped": log.empty_lines,
        "events_renamed": log.renamed_events,
        "users_dropped_short": split.dropped_short,
        "train": {"users": len(split.train), "events": sum(len(user) for user in split.train)},
        "eval": {
            "users": len(split.eval),
            "eligible_users": split.eligible,
            "history_events": sum(len(user.history) for user in split.eval),
            "context_events": sum(len(user.context) for user in split.eval),
        },
    }
    (output_dir / STATS_FILE).write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    logger.info(
        "Wrote to %s: training users: %d (%d events); evaluation users: %d of %d eligible",
        output_dir,
        stats["train"]["users"],
        stats["train"]["events"],
        stats["eval"]["users"],
        split.eligible,
    )
    return stats
