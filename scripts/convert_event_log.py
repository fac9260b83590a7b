"""Convert an event log into the training CSV and the evaluation TSV.

The input is a CSV or TSV file with a header row and one event per row: a user id, a timestamp
(Unix time or ISO 8601) and an event name. The output folder receives:

  train.csv          header "sequence,user_id"; one training user per row, events sorted by time and
                     joined by single spaces
  eval.tsv           header "history<TAB>context"; one evaluation user per row, disjoint from the
                     training users. The context is the user's most recent events, the history
                     everything before them.
  eval_users.txt     the evaluation user ids, one per line, in eval.tsv row order
  eval.periods.json  only with --period day: the context events at the end of each context day
  stats.json         the settings and the user and event counts

Events with equal timestamps keep their order in the log. Whitespace inside event names becomes "_".

Example:
  python scripts/convert_event_log.py --input events.csv --output-dir data/myapp \\
      --context-events 32 --eval-size 200
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from use.events import (
    PERIOD_MODES,
    TIME_UNITS,
    ColumnNames,
    ConversionSettings,
    EventLogError,
    convert_event_log,
    read_event_log,
)
from use.events.log import resolve_timezone

logger = logging.getLogger("convert_event_log")


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that set how users are split and cut (shared with prepare_movielens.py)."""
    defaults = ConversionSettings()
    parser.add_argument(
        "--period",
        choices=PERIOD_MODES,
        default=defaults.period,
        help="count: the context is each evaluation user's last --context-events events; day: the context is "
        "their last --context-days active calendar days, one period per day (default: %(default)s)",
    )
    parser.add_argument(
        "--context-events",
        type=int,
        default=defaults.context_events,
        help="context length in events with --period count; set it to the evaluation's number of periods "
        "times --period_len (default: %(default)s)",
    )
    parser.add_argument(
        "--context-days",
        type=int,
        default=defaults.context_days,
        help="context length in active days with --period day (default: %(default)s)",
    )
    parser.add_argument(
        "--min-history",
        type=int,
        default=defaults.min_history,
        help="events an evaluation user needs before the context (default: %(default)s)",
    )
    parser.add_argument(
        "--min-train-events",
        type=int,
        default=defaults.min_train_events,
        help="training users with fewer events are dropped and counted (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-size",
        type=float,
        default=defaults.eval_size,
        help="evaluation users: a fraction (below 1) of the users long enough, or a number of users "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the user split (default: %(default)s)")
    parser.add_argument(
        "--timezone",
        default=defaults.timezone,
        help="IANA time zone that sets calendar days and the zone of ISO timestamps without an offset "
        "(default: %(default)s)",
    )


def settings_from_arguments(args: argparse.Namespace) -> ConversionSettings:
    return ConversionSettings(
        period=args.period,
        context_events=args.context_events,
        context_days=args.context_days,
        min_history=args.min_history,
        min_train_events=args.min_train_events,
        eval_size=args.eval_size,
        seed=args.seed,
        timezone=args.timezone,
    )


def parse_delimiter(value: str) -> str:
    if value in ("tab", "\\t"):
        return "\t"
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"delimiter {value!r} must be one character or 'tab'")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="event log, CSV or TSV with a header row")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder that receives the output files")
    parser.add_argument("--user-column", default="user_id", help="header of the user id column (default: %(default)s)")
    parser.add_argument(
        "--time-column", default="timestamp", help="header of the timestamp column (default: %(default)s)"
    )
    parser.add_argument(
        "--event-column", default="event", help="header of the event name column (default: %(default)s)"
    )
    parser.add_argument(
        "--delimiter",
        type=parse_delimiter,
        default=None,
        help="field delimiter: one character or 'tab' (default: tab for .tsv/.tab, comma for .csv)",
    )
    parser.add_argument(
        "--time-unit",
        choices=tuple(TIME_UNITS),
        default="s",
        help="unit of numeric timestamps since 1970-01-01 UTC: s, ms or us (default: %(default)s)",
    )
    add_conversion_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        settings = settings_from_arguments(args)
        columns = ColumnNames(user=args.user_column, time=args.time_column, event=args.event_column)
        log = read_event_log(args.input, columns, args.delimiter, args.time_unit, resolve_timezone(args.timezone))
        convert_event_log(log, args.output_dir, settings)
    except (EventLogError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
