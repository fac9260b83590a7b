"""Read user behavior sequences from `.txt` files, `.csv` files or a folder of them.

- `.txt`: one user per line; the line without its line ending is the sequence.
- `.csv`: a header with a `sequence` column and optionally a `user_id` column, quoted the way
  Python's `csv` module quotes (dialog sequences contain newlines, so fields may span lines). Rows
  that share a `user_id` are read as separate sequences here, and `prepare_user_datasets` joins their
  behaviors in file order into one user. A row with an empty or missing `user_id` in a file that has
  the column is its own user, and such rows are counted in `FileStats`.

Files are read as UTF-8, and a leading UTF-8 byte-order mark is dropped. Empty sequences and lines or
rows that are not valid UTF-8 are skipped and counted, and a file without a single usable sequence is
an error.
"""

import codecs
import csv
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

DATA_SUFFIXES = (".txt", ".csv")
# The csv module's default field limit is 131,072 characters, and one user's sequence can be longer.
CSV_FIELD_SIZE_LIMIT = 2**31 - 1
SEQUENCE_COLUMN = "sequence"
USER_ID_COLUMN = "user_id"
_HASH_BLOCK_BYTES = 1 << 20
# Line numbers of rows without a user_id kept per file for the warning.
LISTED_ROWS_WITHOUT_USER_ID = 5


class DataError(ValueError):
    """Input data that cannot be used for training: missing, empty, malformed, or too short."""


@dataclass
class FileStats:
    """Counts of what reading one file kept and skipped.

    `without_user_id` counts kept CSV rows whose `user_id` is empty or missing although the header has
    the column. `without_user_id_lines` lists the first of them by the file line on which each row ends.
    """

    path: str
    sequences: int = 0
    empty: int = 0
    non_decodable: int = 0
    without_user_id: int = 0
    without_user_id_lines: list[int] = field(default_factory=list)


@dataclass
class UserSequences:
    """Behavior sequences with the id of the user each belongs to, in file order."""

    sequences: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    file_stats: list[FileStats] = field(default_factory=list)


def list_data_files(data_path: str | Path) -> list[Path]:
    """Return the `.txt`/`.csv` files at `data_path`: the file itself, or those under a folder, sorted."""
    path = Path(data_path)
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise DataError(f"data file {str(path)!r} has suffix {path.suffix!r}; expected one of {DATA_SUFFIXES}.")
        return [path]
    if not path.is_dir():
        raise DataError(f"data path {str(path)!r} does not exist; pass a .txt or .csv file or a folder of them.")

    files, ignored = [], 0
    for candidate in sorted(path.rglob("*")):
        if not candidate.is_file() or any(part.startswith(".") for part in candidate.relative_to(path).parts):
            continue
        if candidate.suffix.lower() in DATA_SUFFIXES:
            files.append(candidate)
        else:
            ignored += 1
    if ignored:
        logger.info("ignoring %d files under %s that are neither .txt nor .csv", ignored, path)
    if not files:
        raise DataError(f"folder {str(path)!r} contains no .txt or .csv file.")
    return files


def hash_data_files(files: list[Path], root: str | Path) -> str:
    """SHA-256 over the names (relative to `root`) and bytes of `files`, in the order given."""
    root = Path(root)
    base = root if root.is_dir() else root.parent
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(base)).encode("utf-8") + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(_HASH_BLOCK_BYTES):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_user_sequences(data_path: str | Path) -> UserSequences:
    """Read every sequence under `data_path`; `file_stats` counts what each file kept and skipped."""
    root = Path(data_path)
    files = list_data_files(root)
    base = root if root.is_dir() else root.parent
    result = UserSequences()
    for path in files:
        name = str(path.relative_to(base))
        if path.suffix.lower() == ".txt":
            stats = _read_txt(path, name, result)
        else:
            stats = _read_csv(path, name, result)
        result.file_stats.append(stats)
        if stats.sequences == 0:
            raise DataError(
                f"data file {str(path)!r} contains no usable sequence ({stats.empty} empty, "
                f"{stats.non_decodable} not valid UTF-8); every data file needs at least one user."
            )
    logger.info("read %d sequences from %d files under %s", len(result.sequences), len(files), root)
    return result


def _read_txt(path: Path, name: str, result: UserSequences) -> FileStats:
    stats = FileStats(str(path))
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            if line_number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw:
                stats.empty += 1
                continue
            try:
                sequence = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.non_decodable += 1
                continue
            result.sequences.append(sequence)
            result.user_ids.append(f"{name}:{line_number}")
            stats.sequences += 1
    return stats


def _read_csv(path: Path, name: str, result: UserSequences) -> FileStats:
    previous_limit = csv.field_size_limit(CSV_FIELD_SIZE_LIMIT)
    try:
        return _read_csv_rows(path, name, result)
    finally:
        csv.field_size_limit(previous_limit)


def _read_csv_rows(path: Path, name: str, result: UserSequences) -> FileStats:
    stats = FileStats(str(path))
    # surrogateescape keeps undecodable bytes as lone surrogates, so one bad row does not stop the file.
    # utf-8-sig drops a leading byte-order mark, which would otherwise become part of the first header name.
    with path.open("r", encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or SEQUENCE_COLUMN not in reader.fieldnames:
            raise DataError(
                f"CSV file {str(path)!r} has header {reader.fieldnames}; it needs a {SEQUENCE_COLUMN!r} column "
                f"(and optionally {USER_ID_COLUMN!r})."
            )
        has_user_id = USER_ID_COLUMN in reader.fieldnames
        for row in reader:
            sequence = row[SEQUENCE_COLUMN] or ""
            user_id = row[USER_ID_COLUMN] if has_user_id else None
            if _has_surrogates(sequence) or (user_id is not None and _has_surrogates(user_id)):
                stats.non_decodable += 1
                continue
            if not sequence:
                stats.empty += 1
                continue
            result.sequences.append(sequence)
            # A row without a user_id is its own user, named by the line on which it ends.
            if has_user_id and not user_id:
                stats.without_user_id += 1
                if len(stats.without_user_id_lines) < LISTED_ROWS_WITHOUT_USER_ID:
                    stats.without_user_id_lines.append(reader.line_num)
            result.user_ids.append(user_id if user_id else f"{name}:row{reader.line_num}")
            stats.sequences += 1
    return stats


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
