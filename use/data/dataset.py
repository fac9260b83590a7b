"""Tokenize users once, split them into train and test, and cache the result on disk.

Each cached row is one user. Rows of the data files that share a `user_id` are joined into that
user's one sequence, their behaviors in file order, so SUP never treats them as two users.

The cache folder's name is a SHA-256 key over the data files' bytes, the tokenizer folder's files,
and every setting that changes the cached arrays, so a changed input can never load a stale cache.
Segments are not cached: the collator samples them for every batch.
"""

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from ..objectives import objective_parts
from .files import DataError, hash_data_files, list_data_files, read_user_sequences
from .sampling import SegmentSettings

logger = logging.getLogger(__name__)

# Bump when the cached columns or their meaning change, so that old caches are not loaded.
# Version 2: one row per user_id (rows of one user joined) instead of one row per file row.
CACHE_FORMAT_VERSION = 2
# Fixed so that the test users stay the same across runs, seeds and hyper-parameter draws.
SPLIT_SEED = 1234
TOKENIZE_BATCH_SIZE = 1000
# Below this many users one process tokenizes faster than several that need start-up and pickling.
ROWS_PER_TOKENIZE_PROCESS = 50_000
META_FILE = "meta.json"
# `row_id` is the user's index in order of first appearance in the data files, which is the row
# number when every user has one row.
CACHED_FEATURES = datasets.Features(
    {
        "row_id": datasets.Value("int64"),
        "input_ids": datasets.List(datasets.Value("int32")),
        "length": datasets.Value("int64"),
        "num_unknown": datasets.Value("int64"),
    }
)


@dataclass(frozen=True)
class DataSettings:
    """The settings that decide which users are cached, and with what split.

    Sizes count model input positions ([CLS] and [SEP] included). `test_size` below 1 is a fraction of
    users, from 1 on a number of users. All fields are part of the cache key, also those that the
    objective does not use, so the key errs towards rebuilding.
    """

    objective: str
    min_input_size: int
    max_input_size: int
    gap: int
    fep_window_size: int
    test_size: float

    @property
    def effective_gap(self) -> int:
        """The SUP gap, raised to W with FEP so that the first segment's window never reaches the second."""
        parts = objective_parts(self.objective)
        if "FEP" in parts and "SUP" in parts:
            return max(self.gap, self.fep_window_size)
        return self.gap

    def segment_settings(self, random_start: bool) -> SegmentSettings:
        parts = objective_parts(self.objective)
        return SegmentSettings(
            max_input_size=self.max_input_size,
            min_input_size=self.min_input_size,
            gap=self.effective_gap,
            fep_window=self.fep_window_size if "FEP" in parts else 0,
            pairs="SUP" in parts,
            random_start=random_start,
        )


@dataclass
class PreparedData:
    """Train and test users (`test` is None with `test_size=0`) and where they are cached."""

    train: datasets.Dataset
    test: datasets.Dataset | None
    cache_path: Path
    from_cache: bool
    meta: dict


def hash_tokenizer(tokenizer_path: str | Path) -> str:
    """SHA-256 over the names and bytes of the files in a tokenizer folder (tokenizer.json, config...)."""
    folder = Path(tokenizer_path)
    files = sorted(path for path in folder.iterdir() if path.is_file())
    return hash_data_files(files, folder)


def cache_key(data_path: str | Path, tokenizer_path: str | Path, settings: DataSettings) -> tuple[str, dict]:
    """Return the cache key and the components it was computed from."""
    components = {
        "format": CACHE_FORMAT_VERSION,
        "split_seed": SPLIT_SEED,
        "data_sha256": hash_data_files(list_data_files(data_path), data_path),
        "tokenizer_sha256": hash_tokenizer(tokenizer_path),
        **asdict(settings),
    }
    encoded = json.dumps(components, sort_keys=True).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest(), components


def prepare_user_datasets(
    data_path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_path: str | Path,
    settings: DataSettings,
    cache_dir: str | Path,
    main_process_first=contextlib.nullcontext,
) -> PreparedData:
    """Load the train/test users from the cache, or read, tokenize, split, filter and cache them.

    `main_process_first` is a context manager factory (`TrainingArguments.main_process_first` under
    DDP) so that one process builds the cache and the others load it.
    """
    key, components = cache_key(data_path, tokenizer_path, settings)
    cache_path = Path(cache_dir) / f"users-{key[:24]}"
    with main_process_first():
        meta = _read_meta(cache_path, key)
        from_cache = meta is not None
        if meta is None:
            meta = _build_cache(data_path, tokenizer, settings, cache_path, key, components)
        else:
            logger.info("reusing cached users in %s", cache_path)
        _log_meta(meta)
        train = datasets.load_from_disk(str(cache_path / "train"))
        test = datasets.load_from_disk(str(cache_path / "test")) if meta["test_users"] else None
    return PreparedData(
        train=train.with_format("numpy"),
        test=test.with_format("numpy") if test is not None else None,
        cache_path=cache_path,
        from_cache=from_cache,
        meta=meta,
    )


def split_users(user_ids: list[str], test_size: float) -> np.ndarray:
    """Return a bool array, True for rows of test users; all rows of a user land on the same side."""
    unique = sorted(set(user_ids))
    if test_size == 0:
        return np.zeros(len(user_ids), dtype=bool)
    num_test = math.ceil(test_size * len(unique)) if test_size < 1 else int(test_size)
    if len(unique) < 2 or num_test >= len(unique):
        raise DataError(
            f"cannot hold out {num_test} of {len(unique)} users for testing and still train; "
            "lower --test-size or add users."
        )
    order = np.random.default_rng(SPLIT_SEED).permutation(len(unique))
    test_users = {unique[index] for index in order[:num_test]}
    return np.array([user_id in test_users for user_id in user_ids], dtype=bool)


def group_rows_by_user(user_ids: list[str]) -> tuple[list[str], list[list[int]]]:
    """Return each user id once, in order of first appearance, and the indexes of its rows in file order."""
    user_index: dict[str, int] = {}
    rows_of_user: list[list[int]] = []
    for row, user_id in enumerate(user_ids):
        if user_id not in user_index:
            user_index[user_id] = len(rows_of_user)
            rows_of_user.append([])
        rows_of_user[user_index[user_id]].append(row)
    return list(user_index), rows_of_user


def _read_meta(cache_path: Path, key: str) -> dict | None:
    meta_file = cache_path / META_FILE
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if meta.get("key") != key:
        # Only a collision of the folder name's key prefix gets here; the folder is replaced.
        logger.warning("cache %s was written for another key; rebuilding it", cache_path)
        shutil.rmtree(cache_path)
        return None
    return meta


def _build_cache(data_path, tokenizer, settings: DataSettings, cache_path: Path, key: str, components: dict) -> dict:
    users = read_user_sequences(data_path)
    user_ids, rows_of_user = group_rows_by_user(users.user_ids)
    is_test = split_users(user_ids, settings.test_size)

    tokenized = _tokenize([[users.sequences[row] for row in rows] for rows in rows_of_user], tokenizer)
    columns = tokenized.with_format("numpy")
    lengths = columns["length"][:]
    num_unknown = columns["num_unknown"][:]
    min_length = settings.segment_settings(random_start=False).min_user_length
    long_enough = lengths >= min_length

    meta = {
        "key": key,
        "components": components,
        "files": [vars(stats) for stats in users.file_stats],
        "sequences": len(users.sequences),
        "users": len(user_ids),
        "users_with_several_rows": sum(1 for rows in rows_of_user if len(rows) > 1),
        "merged_rows": len(users.sequences) - len(user_ids),
        "behaviors": int(lengths.sum()),
        "unknown_behaviors": int(num_unknown.sum()),
        "users_with_unknown": int((num_unknown > 0).sum()),
        "min_user_length": min_length,
        "train_users": int((~is_test & long_enough).sum()),
        "train_too_short": int((~is_test & ~long_enough).sum()),
        "test_users": int((is_test & long_enough).sum()),
        "test_too_short": int((is_test & ~long_enough).sum()),
    }
    _check_enough_users(meta, settings)

    cache_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_path.name}-", dir=cache_path.parent))
    try:
        cached_columns = tokenized.remove_columns(["num_unknown"])
        cached_columns.select(np.flatnonzero(~is_test & long_enough)).save_to_disk(str(staging / "train"))
        cached_columns.select(np.flatnonzero(is_test & long_enough)).save_to_disk(str(staging / "test"))
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        _publish(staging, cache_path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("cached users in %s", cache_path)
    return meta


def _tokenize(user_sequences: list[list[str]], tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
    """Tokenize each user's sequences and join their ids, in the given order, into one row per user."""
    unk_id = tokenizer.unk_token_id

    def encode(batch: dict) -> dict:
        flat = [sequence for sequences in batch["sequences"] for sequence in sequences]
        flat_ids = iter(tokenizer(flat, add_special_tokens=False, return_attention_mask=False)["input_ids"])
        ids = [
            list(itertools.chain.from_iterable(itertools.islice(flat_ids, len(sequences))))
            for sequences in batch["sequences"]
        ]
        return {
            "input_ids": ids,
            "length": [len(row) for row in ids],
            "num_unknown": [int(np.count_nonzero(np.asarray(row) == unk_id)) for row in ids],
        }

    raw = datasets.Dataset.from_dict({"row_id": list(range(len(user_sequences))), "sequences": user_sequences})
    processes = min(os.cpu_count() or 1, len(user_sequences) // ROWS_PER_TOKENIZE_PROCESS)
    return raw.map(
        encode,
        batched=True,
        batch_size=TOKENIZE_BATCH_SIZE,
        num_proc=processes if processes > 1 else None,
        remove_columns=["sequences"],
        features=CACHED_FEATURES,
        desc="tokenizing users",
    )


def _check_enough_users(meta: dict, settings: DataSettings) -> None:
    parts = objective_parts(settings.objective)
    needed = 2 if "SUP" in parts else 1
    if meta["train_users"] < needed:
        short = meta["train_too_short"]
        hint = (
            "lower --min-model-input-size or --user-segments-gap, or use longer sequences"
            if "SUP" in parts
            else "add users with at least one behavior"
        )
        raise DataError(
            f"{meta['train_users']} training users are usable but {settings.objective} needs at least {needed}; "
            f"{short} users have fewer than {meta['min_user_length']} behaviors. Fix: {hint}."
        )
    if settings.test_size > 0 and meta["test_users"] == 0:
        raise DataError(
            f"all {meta['test_too_short']} test users have fewer than {meta['min_user_length']} behaviors, so "
            "evaluation has no user; raise --test-size or lower --min-model-input-size / --user-segments-gap."
        )


def _publish(staging: Path, cache_path: Path) -> None:
    """Move a finished cache into place in one rename, so that a reader never sees half a cache."""
    try:
        os.rename(staging, cache_path)
    except OSError:
        if not (cache_path / META_FILE).is_file():
            raise
        # Another process published the same key first; its copy is identical.
        logger.info("cache %s was written by another process meanwhile", cache_path)


def _log_meta(meta: dict) -> None:
    for stats in meta["files"]:
        if stats["empty"] or stats["non_decodable"]:
            logger.warning(
                "%s: skipped %d empty and %d non-UTF-8 sequences",
                stats["path"],
                stats["empty"],
                stats["non_decodable"],
            )
        # Caches written before this count existed lack the key.
        if stats.get("without_user_id"):
            logger.warning(
                "%s: %d rows have an empty or missing user_id (first at lines %s), so each is trained as its own user; fill in "
                "their user_id to join them with that user's other rows",
                stats["path"],
                stats["without_user_id"],
                ", ".join(str(line) for line in stats["without_user_id_lines"]),
            )
    if meta["merged_rows"]:
        logger.info(
            "joined the %d rows of the %d users that have more than one row (same user_id) in file order, so %d "
            "sequences give %d users",
            meta["merged_rows"] + meta["users_with_several_rows"],
            meta["users_with_several_rows"],
            meta["sequences"],
            meta["users"],
        )
    logger.info(
        "%d users, %d behaviors; %d behaviors map to [UNK] (not in the tokenizer's vocabulary), in %d of the users",
        meta["users"],
        meta["behaviors"],
        meta["unknown_behaviors"],
        meta["users_with_unknown"],
    )
    logger.info(
        "train users: %d kept, %d dropped with fewer than %d behaviors; test users: %d kept, %d dropped",
        meta["train_users"],
        meta["train_too_short"],
        meta["min_user_length"],
        meta["test_users"],
        meta["test_too_short"],
    )
