"""Update a store of user embeddings with new behavior, continuing each user from its saved state.

    python -m use.embed --model_path M --tokenizer_path T --store users.db --input new_events.tsv \
        [--export embeddings.npy]

The input is a tab-separated file with a header row that has the columns `user_id` and `events`.
The events are the user's new behaviors in time order, as the tokenizer splits them: one character
per behavior for the character tokenizers, one space-separated event name for an event tokenizer.
The file is read with Python's csv module (tab delimiter, standard quoting), so events may contain
tabs, line breaks or quotes when the file is written by `csv.writer(handle, delimiter="\\t")`. Several rows of one
user are concatenated in file order. A user not yet in the store starts from scratch.

With `--export`, the update commits only after the export is written, so a failed export leaves the
store unchanged and the same command can be rerun.
"""

import argparse
import csv
import logging
import time
from pathlib import Path

import torch

from .state import ExportNotMovedError, StateStoreError, UserStateStore
from .state.export import check_export_path

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("user_id", "events")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# A day of one user's events can exceed the csv module's default field limit of 131072 characters.
_FIELD_SIZE_LIMIT = 2**31 - 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="checkpoint folder of a RetNet UserModel (save_pretrained)")
    parser.add_argument("--tokenizer_path", required=True, help="tokenizer folder the model was trained with")
    parser.add_argument("--store", required=True, help="SQLite file of user states; created if it does not exist")
    parser.add_argument("--input", required=True, help="TSV file with a header and the columns user_id and events")
    parser.add_argument("--export", help="after the update, write all embeddings to this .npy (plus .ids.txt) or .parquet file")
    parser.add_argument("--batch_size", type=int, default=32, help="users per forward pass and per transaction")
    parser.add_argument("--device", default="cpu", help="torch device of the model, e.g. cpu or cuda")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), help="compute dtype (default: the checkpoint's); states are stored in float32"
    )
    parser.add_argument(
        "--reset_mismatched",
        action="store_true",
        help="restart users whose state was computed with another checkpoint from their new events alone",
    )
    parser.add_argument(
        "--skip_invalid",
        action="store_true",
        help="leave users with corrupt or mismatched rows unchanged, and list them, instead of stopping",
    )
    return parser.parse_args(argv)


def read_events(path: str | Path) -> tuple[list[str], list[str]]:
    """Read user ids and, per user, the events of each of their rows in file order."""
    csv.field_size_limit(_FIELD_SIZE_LIMIT)
    events_by_user: dict[str, list[str]] = {}
    rows = 0
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or any(column not in header for column in REQUIRED_COLUMNS):
            raise ValueError(
                f"{str(path)!r} has header {header!r}; the first row must name the columns {REQUIRED_COLUMNS} "
                "(tab-separated)."
            )
        user_column, events_column = (header.index(column) for column in REQUIRED_COLUMNS)
        for row in reader:
            if len(row) != len(header):
                raise ValueError(
                    f"{str(path)!r} line {reader.line_num} has {len(row)} fields but the header has {len(header)}; a "
                    "tab inside events must be quoted (write the file with csv.writer(handle, delimiter='\\t'))."
                )
            user_id = row[user_column]
            if not user_id:
                raise ValueError(f"{str(path)!r} line {reader.line_num} has an empty user_id.")
            events_by_user.setdefault(user_id, []).append(row[events_column])
            rows += 1

    if rows > len(events_by_user):
        logger.info("concatenated %d rows of repeated users into %d users.", rows, len(events_by_user))
    return list(events_by_user), list(events_by_user.values())


def join_rows(tokenizer, pieces: list[str]) -> str | list[int]:
    """Return one user's new behavior: their single row, or the token ids of their rows in file order.

    Rows are tokenised one by one, so no behavior spans two rows, whichever way the tokenizer splits
    text (joining the strings would merge two event names of a word-level tokenizer into one).
    """
    if len(pieces) == 1:
        return pieces[0]
    ids: list[int] = []
    for piece in pieces:
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (StateStoreError, OSError, ValueError) as error:
        logger.error("%s", error)
        return 1


def run(args: argparse.Namespace) -> int:
    if args.export:
        try:
            check_export_path(Path(args.export))
        except ValueError as error:
            raise ValueError(f"--export: {error} Nothing was updated.") from error
    if args.batch_size < 1:
        raise ValueError(f"--batch_size {args.batch_size} must be at least 1.")
    user_ids, pieces = read_events(args.input)
    logger.info("read %d users from %s", len(user_ids), args.input)

    dtype = DTYPES[args.dtype] if args.dtype else None
    with UserStateStore.open(
        args.store, args.model_path, args.tokenizer_path, device=args.device, dtype=dtype, batch_size=args.batch_size
    ) as store:
        events = [join_rows(store.tokenizer, user_pieces) for user_pieces in pieces]
        start = time.perf_counter()
        options = {"reset_mismatched": args.reset_mismatched, "skip_invalid": args.skip_invalid, "progress": True}
        if args.export:
            try:
                report, _ = store.update_and_export(user_ids, events, args.export, **options)
            except ExportNotMovedError:
                raise
            except (StateStoreError, OSError, ValueError):
                logger.error("nothing was committed, so the store is as before this run; rerun the command after the fix.")
                raise
        else:
            report = store.update_with_report(user_ids, events, **options)
        seconds = time.perf_counter() - start
        logger.info(
            "updated %d users (%d new, %d continued, %d reset) with %d behaviors (%d unknown to the tokenizer, "
            "entered as [UNK]) in %.1f s; %d users had no new events and %d were skipped; the store contains %d users.",
            report.written_users,
            report.new_users,
            report.updated_users,
            len(report.reset_users),
            report.behaviors,
            report.unknown_tokens,
            seconds,
            len(report.empty_users),
            len(report.skipped),
            len(store),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
