"""Read and validate the evaluation TSV (one user per row: columns ``history`` and ``context``).

Row numbers in messages count TSV records, with the header as row 1, so the first user is
row 2. They differ from line numbers when quoted fields contain newlines, so errors give both.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

HEADER = ("history", "context")
# Python's csv module rejects fields over 131072 characters by default, which is
# shorter than many behavior histories.
_FIELD_SIZE_LIMIT = 2**31 - 1
# At most this many row numbers are written into one log line; the JSON output lists all.
_MAX_ROWS_LOGGED = 50


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
