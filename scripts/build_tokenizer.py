"""Build a word-level tokenizer over event names for training and evaluating on event logs.

The input is the training CSV written by convert_event_log.py (column "sequence") or a text file
with one sequence per line. A sequence is event names separated by whitespace. The tokenizer puts
the special tokens [UNK] [CLS] [SEP] [PAD] [MASK] at ids 0-4, as the character tokenizers do, and
gives each kept event name one id from 5 on, most frequent first. Events seen fewer than
--min-count times, or beyond --max-vocab, map to [UNK]; their count is logged.

The output folder loads with transformers.AutoTokenizer.from_pretrained. Build it from the training
file only, so events that appear only in the evaluation users map to [UNK] as unseen events would.

Example:
  python scripts/build_tokenizer.py --input data/myapp/train.csv --output tokenizer/myapp --min-count 2
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from use.events import EventLogError, build_tokenizer_from_sequences, read_sequences

logger = logging.getLogger("build_tokenizer")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--input", type=Path, required=True, help="training CSV (column 'sequence') or text file, one sequence a line"
    )
    parser.add_argument("--output", type=Path, required=True, help="tokenizer folder to write, e.g. tokenizer/myapp")
    parser.add_argument(
        "--min-count",
        type=int,
        default=1,
        help="events seen fewer times in the input map to [UNK] (default: %(default)s)",
    )
    parser.add_argument(
        "--max-vocab",
        type=int,
        default=None,
        help="maximum vocabulary size including the 5 special tokens; the rarest events beyond it map to [UNK] "
        "(default: no limit)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        build_tokenizer_from_sequences(read_sequences(args.input), args.output, args.min_count, args.max_vocab)
    except EventLogError as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
