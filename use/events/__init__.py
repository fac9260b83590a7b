"""Event logs as behavior sequences: read a log, split its users, write the data files, build a tokenizer.

An event log has one row per event with a user id, a timestamp and an event name. A behavior
sequence is a user's event names sorted by time and joined by single spaces, so event names never
contain whitespace (the reader replaces it with ``_``). The word-level tokenizer gives each event
name exactly one id after the special tokens ``[UNK] [CLS] [SEP] [PAD] [MASK]`` (ids 0-4), the same
layout as the character tokenizers, so training and evaluation use it unchanged.
"""

from .convert import (
    EVAL_FILE,
    EVAL_USERS_FILE,
    PERIOD_MODES,
    PERIODS_FILE,
    STATS_FILE,
    TRAIN_FILE,
    ConversionSettings,
    EvalUser,
    UserEvents,
    convert_event_log,
    group_by_user,
    split_users,
)
from .log import SPECIAL_TOKENS, TIME_UNITS, ColumnNames, EventLog, EventLogError, parse_timestamp, read_event_log
from .tokenizer import Vocabulary, build_event_tokenizer, build_tokenizer_from_sequences, read_sequences

__all__ = [
    "EVAL_FILE",
    "EVAL_USERS_FILE",
    "PERIOD_MODES",
    "PERIODS_FILE",
    "SPECIAL_TOKENS",
    "STATS_FILE",
    "TIME_UNITS",
    "TRAIN_FILE",
    "ColumnNames",
    "ConversionSettings",
    "EvalUser",
    "EventLog",
    "EventLogError",
    "UserEvents",
    "Vocabulary",
    "build_event_tokenizer",
    "build_tokenizer_from_sequences",
    "convert_event_log",
    "group_by_user",
    "parse_timestamp",
    "read_event_log",
    "read_sequences",
    "split_users",
]
