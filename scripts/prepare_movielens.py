"""Prepare MovieLens-100K as real user behavior: training CSV, evaluation TSV and a word-level tokenizer.

The data is the copy of MovieLens-100K (GroupLens, 943 users, 100,000 ratings, 1997-09 to 1998-04)
that the PyPI wheel recbole==1.2.1 ships under recbole/dataset_example/ml-100k/. The script reads
it from the wheel with zipfile and does not install recbole. If --wheel does not exist it runs
`pip download --no-deps recbole==1.2.1 -d <its folder>` first, and it checks the wheel's SHA-256.
GroupLens' terms allow research use only, forbid redistribution without their permission and
require acknowledging the data set in publications; docs/event_logs.md gives the terms in full.

A user is a rater and a behavior is one rating, at the rating's timestamp; the rating value is not
used. --view sets the event name of a rating:

  item   the rated movie, "item_<movie id>" (1,682 movies)
  genre  the rated movie's genres joined by "|", e.g. "Comedy|Romance" (216 combinations)

Steps, each through the same code as a custom event log:
  1. write <output-dir>/event_log/events.tsv (user_id, timestamp, event), one row per rating in file order;
  2. convert it as scripts/convert_event_log.py does (train.csv, eval.tsv, eval_users.txt, stats.json);
  3. build the tokenizer from train.csv as scripts/build_tokenizer.py does.

The defaults suit the users' lengths (median 65 ratings, minimum 20). The context is each
evaluation user's last 32 ratings, which the evaluation cuts into 4 periods of 8 with
--max_len 32 --period_len 8. At least 16 ratings must precede it, which 580 users have. 200 of them
are drawn for evaluation and the other 743 users train.

Example:
  python scripts/prepare_movielens.py                 # data/movielens, tokenizer/movielens
  python scripts/prepare_movielens.py --view genre    # data/movielens-genre, tokenizer/movielens-genre
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import logging
import subprocess
import sys
import zipfile
from pathlib import Path

from convert_event_log import add_conversion_arguments, settings_from_arguments

from use.events import EventLogError, build_tokenizer_from_sequences, convert_event_log, read_event_log, read_sequences
from use.events.convert import TRAIN_FILE

logger = logging.getLogger("prepare_movielens")

RECBOLE_REQUIREMENT = "recbole==1.2.1"
DEFAULT_WHEEL = Path("data/raw/recbole-1.2.1-py3-none-any.whl")
# SHA-256 of the wheel that `pip download` fetched from PyPI.
RECBOLE_WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
INTERACTIONS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ITEMS_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.item"
INTERACTIONS_HEADER = ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
ITEMS_ID_COLUMN = "item_id:token"
ITEMS_GENRE_COLUMN = "class:token_seq"
VIEWS = ("item", "genre")
# Outside the output folder's top level, which must hold eval.tsv as its only .tsv file.
EVENTS_FILE = Path("event_log/events.tsv")
# Sizes chosen for MovieLens-100K; see the module docstring.
DEFAULT_CONTEXT_EVENTS = 32
DEFAULT_MIN_HISTORY = 16
DEFAULT_EVAL_USERS = 200


def ensure_wheel(wheel: Path, download: bool) -> None:
    """Download the recbole wheel into ``wheel``'s folder with pip unless it is already there.

    Only a path ending in the wheel's own file name is downloaded, because pip chooses that name.
    """
    if wheel.is_file():
        return
    if not download or wheel.name != DEFAULT_WHEEL.name:
        raise EventLogError(
            f"{wheel} not found; run `pip download --no-deps {RECBOLE_REQUIREMENT} -d <folder>` and pass "
            f"<folder>/{DEFAULT_WHEEL.name} as --wheel"
        )
    logger.info("%s not found; downloading %s with pip", wheel, RECBOLE_REQUIREMENT)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", RECBOLE_REQUIREMENT, "-d", str(wheel.parent)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise EventLogError(f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{result.stderr}")
    if not wheel.is_file():
        raise EventLogError(
            f"pip downloaded {RECBOLE_REQUIREMENT} but {wheel} is still missing; pass its path as --wheel"
        )


def check_wheel_hash(wheel: Path, allow_other: bool) -> None:
    """Raise EventLogError unless ``wheel`` is the pinned recbole wheel; with ``allow_other`` only log its hash."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest == RECBOLE_WHEEL_SHA256:
        return
    if allow_other:
        logger.warning("%s has SHA-256 %s, not that of %s; reading it anyway", wheel, digest, RECBOLE_REQUIREMENT)
        return
    raise EventLogError(
        f"{wheel} has SHA-256 {digest}, but the {RECBOLE_REQUIREMENT} wheel has {RECBOLE_WHEEL_SHA256}; delete it "
        "and rerun to download it again, or pass --allow-other-wheel for an archive with the same layout"
    )


def read_member_rows(archive: zipfile.ZipFile, member: str) -> list[list[str]]:
    """Return the tab-separated rows of ``member``, header first."""
    try:
        data = archive.read(member)
    except KeyError:
        raise EventLogError(
            f"{archive.filename} has no member {member}; pass the {RECBOLE_REQUIREMENT} wheel"
        ) from None
    text = data.decode("utf-8")
    return [row for row in csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE) if row]


def read_genres(archive: zipfile.ZipFile) -> dict[str, str]:
    """Return movie id -> its genres joined by "|" in the listed order, from ml-100k.item."""
    rows = read_member_rows(archive, ITEMS_MEMBER)
    header = rows[0]
    if ITEMS_ID_COLUMN not in header or ITEMS_GENRE_COLUMN not in header:
        raise EventLogError(
            f"{ITEMS_MEMBER} has the header {header}; expected {ITEMS_ID_COLUMN} and {ITEMS_GENRE_COLUMN}"
        )
    id_position, genre_position = header.index(ITEMS_ID_COLUMN), header.index(ITEMS_GENRE_COLUMN)
    return {row[id_position]: "|".join(row[genre_position].split()) for row in rows[1:]}


def write_event_log(wheel: Path, view: str, path: Path) -> None:
    """Write the ratings of ml-100k.inter as an event log TSV (user_id, timestamp, event), in file order."""
    with zipfile.ZipFile(wheel) as archive:
        rows = read_member_rows(archive, INTERACTIONS_MEMBER)
        genres = read_genres(archive) if view == "genre" else {}

    if rows[0] != INTERACTIONS_HEADER:
        raise EventLogError(f"{INTERACTIONS_MEMBER} has the header {rows[0]}; expected {INTERACTIONS_HEADER}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["user_id", "timestamp", "event"])
        for number, (user, item, _rating, timestamp) in enumerate(rows[1:], start=2):
            if view == "item":
                event = f"item_{item}"
            elif item in genres:
                event = genres[item]
            else:
                raise EventLogError(
                    f"row {number} of {INTERACTIONS_MEMBER} rates movie {item}, which {ITEMS_MEMBER} lacks"
                )
            writer.writerow([user, timestamp, event])
    logger.info("Wrote %d ratings as events (view %s) to %s", len(rows) - 1, view, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--wheel", type=Path, default=DEFAULT_WHEEL, help=f"the {RECBOLE_REQUIREMENT} wheel (default: %(default)s)"
    )
    parser.add_argument(
        "--no-download", action="store_true", help="fail instead of running pip download when --wheel is missing"
    )
    parser.add_argument(
        "--allow-other-wheel",
        action="store_true",
        help="read --wheel even when its SHA-256 differs from the pinned recbole wheel (for test archives)",
    )
    parser.add_argument("--view", choices=VIEWS, default="item", help="event name of a rating (default: %(default)s)")
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="data folder (default: data/movielens, data/movielens-genre)"
    )
    parser.add_argument(
        "--tokenizer-output",
        type=Path,
        default=None,
        help="tokenizer folder (default: tokenizer/movielens, tokenizer/movielens-genre)",
    )
    parser.add_argument(
        "--min-count", type=int, default=1, help="events rated fewer times in training map to [UNK] (default: 1)"
    )
    add_conversion_arguments(parser)
    parser.set_defaults(
        context_events=DEFAULT_CONTEXT_EVENTS, min_history=DEFAULT_MIN_HISTORY, eval_size=DEFAULT_EVAL_USERS
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    name = "movielens" if args.view == "item" else "movielens-genre"
    output_dir = args.output_dir or Path("data") / name
    tokenizer_output = args.tokenizer_output or Path("tokenizer") / name
    try:
        settings = settings_from_arguments(args)
        ensure_wheel(args.wheel, download=not args.no_download)
        check_wheel_hash(args.wheel, args.allow_other_wheel)
        write_event_log(args.wheel, args.view, output_dir / EVENTS_FILE)
        convert_event_log(read_event_log(output_dir / EVENTS_FILE), output_dir, settings)
        build_tokenizer_from_sequences(read_sequences(output_dir / TRAIN_FILE), tokenizer_output, args.min_count)
    except (EventLogError, zipfile.BadZipFile) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
