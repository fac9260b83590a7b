"""Read an event log (CSV or TSV, one event per row: user id, timestamp, event name).

Row numbers in messages count the non-blank CSV records, the header being row 1. They differ from
line numbers when blank lines precede a row or a quoted field contains a newline, so errors give both.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
# Seconds per unit of a numeric timestamp.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
# Numeric timestamps above this many seconds (year 5138) are almost certainly in ms or us.
_MAX_PLAUSIBLE_SECONDS = 1e11
# Python's csv module rejects fields over 131072 characters by default; sequences are longer.
FIELD_SIZE_LIMIT = 2**31 - 1
WHITESPACE = re.compile(r"\s+")


class EventLogError(ValueError):
    """Invalid event log, training file or conversion setting."""


@dataclass(frozen=True)
class ColumnNames:
    """Header names of the user id, timestamp and event name columns."""

    user: str = "user_id"
    time: str = "timestamp"
    event: str = "event"


@dataclass
class EventLog:
    """Events read from a log, in file order.

    ``times`` are seconds since the Unix epoch. ``rows`` are non-blank record numbers in the file, the
    header being row 1. ``renamed_events`` counts events whose name contained whitespace.
    """

    path: Path
    users: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    empty_lines: int = 0
    renamed_events: int = 0

    def __len__(self) -> int:
        return len(self.names)


def resolve_timezone(name: str) -> tzinfo:
    """Return the time zone called ``name`` (an IANA name such as ``Europe/Berlin``, or ``UTC``)."""
    if name.upper() == "UTC":
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise EventLogError(f"time zone {name!r} not found; pass an IANA name such as UTC or Europe/Berlin") from error


def parse_timestamp(text: str, unit_seconds: float = 1.0, zone: tzinfo = timezone.utc) -> float:
    """Return ``text`` as seconds since the Unix epoch.

    A number counts units of ``unit_seconds`` since the epoch. Anything else must be ISO 8601
    (``2024-03-01T12:30:00``, optionally with ``Z`` or an offset). An ISO time without an offset
    is taken as local time in ``zone``. Raises ValueError for other text and non-finite numbers.
    """
    value = text.strip()
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise ValueError(f"timestamp {value!r} is not a finite number")
        return number * unit_seconds

    # datetime.fromisoformat accepts a trailing "Z" only from Python 3.11 on.
    iso = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.timestamp()


def clean_event_name(name: str) -> str:
    """Return ``name`` stripped, with every run of whitespace inside it replaced by ``_``."""
    return WHITESPACE.sub("_", name.strip())


def detect_delimiter(path: Path) -> str:
    """Return the delimiter that the file extension implies: tab for .tsv/.tab, comma for .csv."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return "\t"
    if suffix == ".csv":
        return ","
    raise EventLogError(
        f"the delimiter of {path} is unknown for the extension {suffix or '(none)'!r}; "
        "pass --delimiter ',' or --delimiter tab"
    )


def read_event_log(
    path: str | Path,
    columns: ColumnNames = ColumnNames(),
    delimiter: str | None = None,
    time_unit: str = "s",
    zone: tzinfo = timezone.utc,
) -> EventLog:
    """Read a CSV or TSV event log with a header row.

    Blank lines are skipped and counted. Whitespace inside event names becomes ``_`` (counted and
    logged). Raises EventLogError, naming the row, for a missing column, a row with the wrong number
    of fields, an empty user, timestamp or event, an unparsable timestamp, or an event named like a
    special token.
    """
    path = Path(path)
    if time_unit not in TIME_UNITS:
        raise EventLogError(f"time unit {time_unit!r} is invalid; choose one of {', '.join(TIME_UNITS)}")
    delimiter = delimiter or detect_delimiter(path)
    log = EventLog(path=path)

    previous_limit = csv.field_size_limit(FIELD_SIZE_LIMIT)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            try:
                _read_records(log, reader, columns, TIME_UNITS[time_unit], zone)
            except csv.Error as error:
                raise EventLogError(f"line {reader.line_num} of {path} is not valid CSV: {error}") from error
            except UnicodeDecodeError as error:
                raise EventLogError(
                    f"{path} is not valid UTF-8 near line {reader.line_num + 1}: {error}; re-encode it as UTF-8"
                ) from error
    finally:
        csv.field_size_limit(previous_limit)

    _log_reading(log)
    return log


def _read_records(log: EventLog, reader, columns: ColumnNames, unit_seconds: float, zone: tzinfo) -> None:
    header = None
    row = 0
    for record in reader:
        if not record:
            log.empty_lines += 1
            continue
        row += 1
        if header is None:
            header = record
            positions = _column_positions(log.path, header, columns)
            continue
        if len(record) != len(header):
            raise EventLogError(
                f"row {row} (line {reader.line_num}) of {log.path} has {len(record)} field(s) but the header has "
                f"{len(header)}; check the delimiter and quote fields that contain it"
            )
        _add_event(log, record, positions, row, reader.line_num, unit_seconds, zone)

    if header is None:
        raise EventLogError(f"{log.path} is empty; expected a header row with columns {_column_list(columns)}")
    if not log.names:
        raise EventLogError(f"{log.path} contains a header but no events")


def _column_list(columns: ColumnNames) -> str:
    return ", ".join(repr(name) for name in (columns.user, columns.time, columns.event))


def _column_positions(path: Path, header: list[str], columns: ColumnNames) -> tuple[int, int, int]:
    names = [name.strip() for name in header]
    positions = []
    flags = (("--user-column", columns.user), ("--time-column", columns.time), ("--event-column", columns.event))
    for flag, name in flags:
        if name not in names:
            found = ", ".join(repr(n) for n in names)
            raise EventLogError(
                f"column {name!r} not found in the header (row 1) of {path}; the header has {found}. "
                f"Pass {flag} with the right name, or --delimiter if the columns are not split"
            )
        positions.append(names.index(name))
    return positions[0], positions[1], positions[2]


def _add_event(log: EventLog, record, positions, row: int, line: int, unit_seconds: float, zone: tzinfo) -> None:
    user, time_text, name = (record[position].strip() for position in positions)
    where = f"row {row} (line {line}) of {log.path}"
    for field_name, value in (("user id", user), ("timestamp", time_text), ("event", name)):
        if not value:
            raise EventLogError(f"{where} has an empty {field_name}; fill it in or delete the row")
    try:
        moment = parse_timestamp(time_text, unit_seconds, zone)
    except ValueError as error:
        raise EventLogError(
            f"{where} has the timestamp {time_text!r}, which is neither a number nor ISO 8601 ({error})"
        ) from None
    cleaned = clean_event_name(name)
    if cleaned in SPECIAL_TOKENS:
        raise EventLogError(
            f"{where} has the event {name!r}, which is a special token of the tokenizer; rename that event"
        )
    if cleaned != name:
        log.renamed_events += 1

    log.users.append(user)
    log.times.append(moment)
    log.names.append(cleaned)
    log.rows.append(row)


def _log_reading(log: EventLog) -> None:
    logger.info("Read %d events of %d users from %s", len(log), len(set(log.users)), log.path)
    if log.empty_lines:
        logger.info("Skipped %d blank line(s) in %s", log.empty_lines, log.path)
    if log.renamed_events:
        logger.warning(
            "Replaced whitespace with '_' in the names of %d event(s), because a sequence separates events by spaces",
            log.renamed_events,
        )
    latest = max(log.times)
    if latest > _MAX_PLAUSIBLE_SECONDS:
        logger.warning(
            "The latest timestamp is %.0f seconds after 1970, past the year 5000; if the log counts milliseconds, "
            "pass --time-unit ms",
            latest,
        )
