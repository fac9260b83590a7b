"""Build a word-level tokenizer over event names: special tokens at ids 0-4, then one id per event."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .log import FIELD_SIZE_LIMIT, SPECIAL_TOKENS, WHITESPACE, EventLogError

logger = logging.getLogger(__name__)


def read_sequences(path: str | Path) -> list[str]:
    """Read behavior sequences from a training CSV (column ``sequence``) or a text file (one per line).

    Empty sequences are skipped and counted.
    """
    path = Path(path)
    if not path.is_file():
        raise EventLogError(
            f"input file {path} not found; pass a training CSV or a text file with one sequence per line"
        )
    if path.suffix.lower() == ".csv":
        sequences = _read_csv_sequences(path)
    else:
        sequences = path.read_text(encoding="utf-8-sig").splitlines()

    non_empty = [sequence for sequence in sequences if sequence.strip()]
    if len(non_empty) < len(sequences):
        logger.info("Skipped %d empty sequence(s) in %s", len(sequences) - len(non_empty), path)
    if not non_empty:
        raise EventLogError(f"{path} contains no events")
    return non_empty


def _read_csv_sequences(path: Path) -> list[str]:
    previous_limit = csv.field_size_limit(FIELD_SIZE_LIMIT)
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "sequence" not in reader.fieldnames:
                raise EventLogError(
                    f"{path} has no 'sequence' column (header: {reader.fieldnames}); pass a training CSV with the "
                    "header 'sequence,user_id' or a text file with one sequence per line"
                )
            return [row["sequence"] or "" for row in reader]
    finally:
        csv.field_size_limit(previous_limit)


def count_events(sequences: list[str]) -> Counter:
    """Count each whitespace-separated event name; raise EventLogError for a special-token name."""
    counts: Counter = Counter()
    for sequence in sequences:
        counts.update(sequence.split())
    special = [token for token in SPECIAL_TOKENS if token in counts]
    if special:
        raise EventLogError(f"the sequences contain the special token(s) {special} as event names; rename those events")
    return counts


@dataclass
class Vocabulary:
    """Event names that get an id, most frequent first, and what falls back to ``[UNK]``."""

    events: list[str]
    unknown_names: int
    unknown_occurrences: int
    total_occurrences: int


def select_vocabulary(counts: Counter, min_count: int = 1, max_vocab: int | None = None) -> Vocabulary:
    """Keep events seen at least ``min_count`` times, at most ``max_vocab`` tokens including the 5 special ones.

    Events are ordered by count, most frequent first, ties by name, so the ids are deterministic.
    """
    if min_count < 1:
        raise EventLogError(f"min count must be at least 1, got {min_count}")
    if max_vocab is not None and max_vocab <= len(SPECIAL_TOKENS):
        raise EventLogError(
            f"max vocabulary size {max_vocab} leaves no room for events after the {len(SPECIAL_TOKENS)} special tokens"
        )
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept_events = [name for name, count in ranked if count >= min_count]
    if max_vocab is not None:
        kept_events = kept_events[: max_vocab - len(SPECIAL_TOKENS)]
    if not kept_events:
        raise EventLogError(f"no event occurs at least {min_count} times; lower --min-count")

    kept_set = set(kept_events)
    total = sum(counts.values())
    unknown_occurrences = sum(count for name, count in counts.items() if name not in kept_set)
    return Vocabulary(kept_events, len(counts) - len(kept_events), unknown_occurrences, total)


def build_event_tokenizer(events: list[str]) -> PreTrainedTokenizerFast:
    """Build a word-level fast tokenizer: special tokens at ids 0-4, then one id per event name.

    Text is split on whitespace only, so an event name may contain punctuation. A name not in
    ``events`` becomes ``[UNK]``. With special tokens added, a sequence is wrapped as ``[CLS] ... [SEP]``.
    """
    if len(set(events)) != len(events):
        raise EventLogError("event names contain duplicates; pass each name once")
    bad = [name for name in events if name in SPECIAL_TOKENS or not name or WHITESPACE.search(name)]
    if bad:
        raise EventLogError(
            f"invalid event names {bad[:5]}: a name must be non-empty, contain no whitespace and not be a special token"
        )

    vocab = {token: index for index, token in enumerate(list(SPECIAL_TOKENS) + events)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        mask_token="[MASK]",
        padding_side="right",
    )


def verify_event_tokenizer(path: str | Path, events: list[str]) -> None:
    """Load the saved tokenizer with AutoTokenizer and check the special ids and one id per event.

    Raises EventLogError when a special token is not at its id or an event does not encode to
    exactly its own id.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != expected_id:
            found = tokenizer.convert_tokens_to_ids(token)
            raise EventLogError(f"{path}: special token {token} has id {found}, expected {expected_id}")
    ids = tokenizer(" ".join(events), add_special_tokens=False)["input_ids"]
    if ids == list(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + len(events))):
        return
    for expected_id, name in enumerate(events, start=len(SPECIAL_TOKENS)):
        got = tokenizer(name, add_special_tokens=False)["input_ids"]
        if got != [expected_id]:
            raise EventLogError(
                f"{path}: event {name!r} encodes to {got}, expected the single id {expected_id}; "
                "event names must not contain whitespace"
            )
    raise EventLogError(f"{path}: the events joined by spaces do not encode to one id each")


def build_tokenizer_from_sequences(
    sequences: list[str], output_dir: str | Path, min_count: int = 1, max_vocab: int | None = None
) -> Vocabulary:
    """Build, save and verify the word-level tokenizer of ``sequences``; return the chosen vocabulary."""
    vocabulary = select_vocabulary(count_events(sequences), min_count, max_vocab)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    build_event_tokenizer(vocabulary.events).save_pretrained(str(output_dir))
    verify_event_tokenizer(output_dir, vocabulary.events)

    logger.info(
        "Wrote %s: %d events + %d special tokens = vocabulary size %d",
        output_dir,
        len(vocabulary.events),
        len(SPECIAL_TOKENS),
        len(vocabulary.events) + len(SPECIAL_TOKENS),
    )
    if vocabulary.unknown_names:
        logger.warning(
            "%d rare event name(s) map to [UNK]: %d of %d occurrences (%.2f%%)",
            vocabulary.unknown_names,
            vocabulary.unknown_occurrences,
            vocabulary.total_occurrences,
            100.0 * vocabulary.unknown_occurrences / vocabulary.total_occurrences,
        )
    return vocabulary
