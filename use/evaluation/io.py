"""Read and validate the evaluation TSV (one user per row: columns ``history`` and ``context``)
and the optional periods file that splits each user's context into days.

Row numbers in messages count TSV records, with the header as row 1, so the first user is
row 2. They differ from line numbers when quoted fields contain newlines, so errors give both.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

HEADER = ("history", "context")
# Python's csv module rejects fields over 131072 characters by default, which is
# shorter than many behavior histories.
_FIELD_SIZE_LIMIT = 2**31 - 1
# At most this many row numbers are written into one log line; the JSON output lists all.
_MAX_ROWS_LOGGED = 50
# At most this many row numbers are written into one error message.
_MAX_ROWS_IN_ERROR = 10
# The origin of a valid periods file, named at the end of each error message about one.
PERIODS_HINT = "the eval.periods.json that scripts/convert_event_log.py --period day wrote beside the TSV"


class EvalFileError(ValueError):
    """Invalid evaluation file or too few usable users in it."""


@dataclass
class SkippedRow:
    """A user row left out of the evaluation, and why."""

    row: int
    reason: str


@dataclass
class EvalUsers:
    """The users read from an evaluation TSV, in file order."""

    path: Path
    rows: list[int]
    histories: list[str]
    contexts: list[str]
    skipped: list[SkippedRow] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def resolve_dataset_path(dataset_dir: str | Path) -> Path:
    """Return the TSV file that ``dataset_dir`` names: the file itself or the only ``.tsv`` in a folder."""
    path = Path(dataset_dir)
    if path.is_file():
        return path
    if path.is_dir():
        tsv_files = sorted(p for p in path.iterdir() if p.suffix == ".tsv" and p.is_file())
        if len(tsv_files) == 1:
            return tsv_files[0]
        if not tsv_files:
            raise EvalFileError(
                f"dataset folder {path} contains no .tsv file; "
                "pass the TSV file itself or a folder with exactly one .tsv"
            )
        names = ", ".join(p.name for p in tsv_files)
        raise EvalFileError(
            f"dataset folder {path} contains {len(tsv_files)} .tsv files ({names}); "
            "pass the one to evaluate as --dataset_dir"
        )
    raise EvalFileError(f"dataset path {path} not found; pass a TSV file or a folder containing one .tsv file")


def read_eval_tsv(path: str | Path) -> EvalUsers:
    """Read an evaluation TSV, skipping rows with a missing, empty or extra column.

    Skipped rows are returned in ``EvalUsers.skipped`` and logged with their row numbers.
    Raises EvalFileError for an empty file, a missing header, a single-column file, a blank
    line followed by more rows, bytes that are not UTF-8, or a CSV syntax error.
    """
    path = Path(path)
    previous_limit = csv.field_size_limit(_FIELD_SIZE_LIMIT)
    try:
        # surrogateescape keeps undecodable bytes as lone surrogates, so the row that
        # contains them can be named instead of failing at an unknown position.
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            users = _parse_records(path, csv.reader(handle, delimiter="\t"))
    finally:
        csv.field_size_limit(previous_limit)
    log_skipped_rows(users.skipped, path)
    return users


def _parse_records(path: Path, reader) -> EvalUsers:
    users = EvalUsers(path=path, rows=[], histories=[], contexts=[])
    num_columns = 0
    blank_row = None
    trailing_blank_rows = 0
    row = 0
    try:
        for record in reader:
            row += 1
            _check_utf8(path, record, row, reader.line_num)
            if row == 1:
                num_columns = _check_header(path, record)
                continue
            if not record:
                if blank_row is None:
                    blank_row = row
                trailing_blank_rows += 1
                continue
            if blank_row is not None:
                raise EvalFileError(
                    f"row {blank_row} of {path} is empty but more rows follow; a newline inside a field "
                    "was probably not quoted. Write the file with Python's csv module (delimiter tab)"
                )
            _add_user_row(users, record, row, num_columns)
    except csv.Error as error:
        raise EvalFileError(f"row {row + 1} (line {reader.line_num}) of {path} is not valid TSV: {error}") from error

    if row == 0:
        raise EvalFileError(f"{path} is empty; expected the header line 'history<TAB>context' and one row per user")
    if trailing_blank_rows:
        logger.info("Ignored %d blank line(s) at the end of %s", trailing_blank_rows, path)
    if row - trailing_blank_rows == 1:
        raise EvalFileError(f"{path} contains only the header; add one row per user with history and context")
    return users


def _check_utf8(path: Path, record: list[str], row: int, line: int) -> None:
    for column, value in enumerate(record, start=1):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            bad_byte = ord(value[error.start]) - 0xDC00
            raise EvalFileError(
                f"row {row} (line {line}) column {column} of {path} contains byte 0x{bad_byte:02x}, "
                f"which is not valid UTF-8; re-encode the file as UTF-8 (for example with iconv)"
            ) from None


def _check_header(path: Path, record: list[str]) -> int:
    """Validate the header row and return the number of columns that every user row must have."""
    if not record:
        raise EvalFileError(f"row 1 of {path} is empty; expected the header line 'history<TAB>context'")
    if len(record) == 1:
        raise EvalFileError(
            f"row 1 of {path} has 1 column ({_preview(record[0])}); the file must be tab-separated "
            "with the header 'history<TAB>context'. Is it comma-separated or missing the context column?"
        )
    names = tuple(name.strip().lower() for name in record[:2])
    if names != HEADER:
        found = "<TAB>".join(_preview(name) for name in record[:2])
        raise EvalFileError(
            f"row 1 of {path} is not the header 'history<TAB>context' (found '{found}'); "
            "add that header line above the first user"
        )
    if len(record) > 2:
        logger.info("Ignoring the extra columns %s of %s", record[2:], path)
    return len(record)


def _add_user_row(users: EvalUsers, record: list[str], row: int, num_columns: int) -> None:
    if len(record) != num_columns:
        reason = f"has {len(record)} column(s), expected {num_columns}"
        users.skipped.append(SkippedRow(row, reason))
        return
    history, context = record[0], record[1]
    empty = [name for name, value in zip(HEADER, (history, context)) if not value.strip()]
    if empty:
        users.skipped.append(SkippedRow(row, f"empty {' and '.join(empty)}"))
        return
    users.rows.append(row)
    users.histories.append(history)
    users.contexts.append(context)


def _preview(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def log_skipped_rows(skipped: list[SkippedRow], path: Path) -> None:
    """Log skipped rows as one warning per distinct reason, with a count and the row numbers."""
    by_reason: dict[str, list[int]] = {}
    for item in skipped:
        by_reason.setdefault(item.reason, []).append(item.row)
    for reason, rows in by_reason.items():
        listed_rows = ", ".join(str(r) for r in rows[:_MAX_ROWS_LOGGED])
        more = f" and {len(rows) - _MAX_ROWS_LOGGED} more" if len(rows) > _MAX_ROWS_LOGGED else ""
        logger.warning("Skipped %d row(s) of %s: %s (rows %s%s)", len(rows), path, reason, listed_rows, more)


def require_two_users(num_users: int, skipped: list[SkippedRow], path: Path) -> None:
    """Raise EvalFileError unless at least two users remain, since ranking needs a second user."""
    if num_users >= 2:
        return
    raise EvalFileError(
        f"{path} has {num_users} usable user(s) after skipping {len(skipped)} row(s); "
        "re-identification and classification need at least 2. See the warnings above for the skipped rows"
    )


@dataclass
class DayPeriods:
    """Per-day context periods of the users of one TSV, read from a periods file.

    For the user in TSV row r, ``days[r][k]`` is the label of the user's (k+1)-th context day (an ISO
    date in files from the converter) and ``context_ends[r][k]`` the number of context behaviors up to
    the end of that day. Every user has ``num_days`` days.
    """

    # A string rather than a Path, so that dataclasses.asdict of a schedule is JSON-serializable
    # (the embedding cache key is built that way).
    path: str
    num_days: int
    days: dict[int, list[str]]
    context_ends: dict[int, list[int]]
    timezone: str | None = None


def read_periods_file(path: str | Path, users: EvalUsers) -> DayPeriods:
    """Read a periods file (format of ``eval.periods.json``) and match its users to the rows of ``users``.

    Entries with a ``row`` key are matched to the TSV row of that number. Entries without one are
    matched by order: entry i describes TSV row i + 2. Raises EvalFileError for a missing or malformed
    file, an ``eval_tsv_sha256`` that differs from the SHA-256 of the TSV, users that do not match the
    TSV rows, or users with different numbers of days. A file without ``eval_tsv_sha256`` (written by
    hand) is accepted unchecked, with an INFO log line.
    """
    path = Path(path)
    if path.is_dir():
        raise EvalFileError(f"periods file {path} is a folder; pass the JSON file itself, {PERIODS_HINT}")
    if not path.is_file():
        raise EvalFileError(f"periods file {path} not found; pass {PERIODS_HINT}")
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as error:
        raise EvalFileError(f"periods file {path} is not UTF-8 ({error}); pass {PERIODS_HINT}") from None
    except json.JSONDecodeError as error:
        raise EvalFileError(f"periods file {path} is not valid JSON ({error}); pass {PERIODS_HINT}") from None

    entries = _periods_entries(path, content)
    _check_tsv_sha256(path, content, users.path)
    by_row = _match_period_rows(path, entries, users)
    num_days = _common_day_count(path, by_row)
    periods = DayPeriods(
        path=str(path),
        num_days=num_days,
        days={row: entry["days"] for row, entry in by_row.items()},
        context_ends={row: entry["context_ends"] for row, entry in by_row.items()},
        timezone=content.get("timezone"),
    )
    logger.info("Read %d context day(s) for each of %d users from %s", num_days, len(by_row), path)
    return periods


def _periods_entries(path: Path, content) -> list[dict]:
    """Return the user entries of a parsed periods file after checking their format."""
    if not isinstance(content, dict) or not isinstance(content.get("users"), list):
        raise EvalFileError(
            f"periods file {path} is not an object with a 'users' list; pass {PERIODS_HINT}"
        )
    if content.get("period", "day") != "day":
        raise EvalFileError(
            f"periods file {path} has period {content['period']!r}, expected 'day'; "
            "convert the event log with --period day"
        )
    entries = content["users"]
    if not entries:
        raise EvalFileError(f"periods file {path} lists no users; pass {PERIODS_HINT}")
    for index, entry in enumerate(entries):
        _check_period_entry(path, index, entry)
    keyed = sum("row" in entry for entry in entries)
    if 0 < keyed < len(entries):
        raise EvalFileError(
            f"periods file {path}: {keyed} of {len(entries)} users have a 'row' key; give every user a 'row' or none"
        )
    return entries


def _check_tsv_sha256(path: Path, content: dict, tsv_path: Path) -> None:
    """Raise EvalFileError unless the periods file's ``eval_tsv_sha256`` is absent or the SHA-256 of ``tsv_path``.

    The converter stores that hash because a periods file of another split (another --seed) can
    match the TSV's row count and context lengths by chance, and would then apply other users' days.
    """
    expected = content.get("eval_tsv_sha256")
    if expected is None:
        logger.info(
            "Periods file %s has no eval_tsv_sha256, so it could not be checked against %s. "
            "Its users are matched to the TSV rows by row number or order only",
            path,
            tsv_path,
        )
        return
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise EvalFileError(
            f"periods file {path} has eval_tsv_sha256 {expected!r}, expected 64 lowercase hexadecimal digits; "
            f"pass {PERIODS_HINT}, or delete the key from a hand-written file"
        )
    with open(tsv_path, "rb") as handle:
        actual = hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != expected:
        raise EvalFileError(
            f"periods file {path} was written for another TSV than {tsv_path}: it records SHA-256 {expected}, "
            f"but {tsv_path} has SHA-256 {actual}. Pass the periods file written with that TSV, {PERIODS_HINT}"
        )


def _check_period_entry(path: Path, index: int, entry) -> None:
    where = f"user {index} (counting from 0) of periods file {path}"
    if not isinstance(entry, dict):
        raise EvalFileError(f"{where} is {entry!r}, not an object with 'days' and 'context_ends'")
    if "row" in entry and (not _is_int(entry["row"]) or entry["row"] < 2):
        raise EvalFileError(
            f"{where} has row {entry['row']!r}; a TSV row number is an integer from 2 on (row 1 is the header)"
        )
    days, ends = entry.get("days"), entry.get("context_ends")
    if not isinstance(days, list) or not all(isinstance(day, str) for day in days):
        raise EvalFileError(f"{where} has days {days!r}; expected a list of day labels such as \"2024-03-01\"")
    if not isinstance(ends, list) or not all(_is_int(end) for end in ends):
        raise EvalFileError(f"{where} has context_ends {ends!r}; expected a list of behavior counts (integers)")
    if not days or len(days) != len(ends):
        raise EvalFileError(
            f"{where} has {len(days)} day(s) and {len(ends)} context_ends; every day needs exactly one end, "
            "and a user at least one day"
        )
    if ends[0] < 1 or any(later <= earlier for earlier, later in zip(ends, ends[1:])):
        raise EvalFileError(
            f"{where} has context_ends {ends}; they must rise strictly from at least 1, because every day "
            "contains behaviors. Regenerate the file with scripts/convert_event_log.py --period day"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _match_period_rows(path: Path, entries: list[dict], users: EvalUsers) -> dict[int, dict]:
    """Return TSV row -> periods entry, raising EvalFileError unless the entries cover exactly the TSV's user rows."""
    # Every record after the header is a user row or a skipped row, so the user rows are 2..N+1.
    num_rows = len(users) + len(users.skipped)
    tsv_rows = range(2, 2 + num_rows)
    if "row" not in entries[0]:
        if len(entries) != num_rows:
            raise EvalFileError(
                f"periods file {path} lists {len(entries)} users but {users.path} has {num_rows} user rows; "
                f"pass the periods file written together with this TSV"
            )
        return dict(zip(tsv_rows, entries))

    by_row: dict[int, dict] = {}
    for entry in entries:
        if entry["row"] in by_row:
            raise EvalFileError(f"periods file {path} lists row {entry['row']} twice; each TSV row needs one entry")
        by_row[entry["row"]] = entry
    extra = sorted(set(by_row) - set(tsv_rows))
    missing = sorted(set(tsv_rows) - set(by_row))
    if extra or missing:
        problems = []
        if extra:
            problems.append(f"rows {_row_list(extra)} are not user rows of {users.path} (rows 2 to {num_rows + 1})")
        if missing:
            problems.append(f"rows {_row_list(missing)} of {users.path} have no entry")
        raise EvalFileError(
            f"periods file {path} does not match the TSV: {'; '.join(problems)}. "
            "Pass the periods file written together with this TSV"
        )
    return by_row


def _common_day_count(path: Path, by_row: dict[int, dict]) -> int:
    """Return the number of days every user has, raising EvalFileError when the users differ."""
    rows_by_count: dict[int, list[int]] = {}
    for row, entry in sorted(by_row.items()):
        rows_by_count.setdefault(len(entry["days"]), []).append(row)
    if len(rows_by_count) == 1:
        return next(iter(rows_by_count))
    counts = "; ".join(f"{count} day(s) in rows {_row_list(rows)}" for count, rows in sorted(rows_by_count.items()))
    raise EvalFileError(
        f"periods file {path} gives users different numbers of context days ({counts}); the report has one row "
        "per day, so every user needs the same number. Convert the event log with --period day, which gives "
        "every evaluation user --context-days days"
    )


def _row_list(rows: list[int]) -> str:
    listed = ", ".join(str(row) for row in rows[:_MAX_ROWS_IN_ERROR])
    return listed + (f" and {len(rows) - _MAX_ROWS_IN_ERROR} more" if len(rows) > _MAX_ROWS_IN_ERROR else "")
