"""On-disk cache of neural user embeddings, shared by ``eval_reid.py`` and ``eval_classification.py``.

Both scripts embed the same users the same way, so the first one saves the history embeddings and
each strategy's period embeddings to a folder, and the second loads them instead of embedding again.
A file's name contains a SHA-256 digest of everything that changes the embeddings. The digest covers
the bytes of every file directly in the model folder and in the tokenizer folder, of the TSV, and of
the periods file if one is given. It also covers the period schedule, the strategy, the method, and
the model's dtype and device type. Batch size, seeds and MLP settings are left out, because they do
not change the embeddings.

Each ``.npz`` file also stores its key and the TSV row numbers of its users, and both are checked
on load. A file that cannot be read, or whose key, rows or shape differ, is logged as a WARNING and
computed again. Files are written to a temporary name in the same folder and renamed, so an
interrupted run leaves no partial file under a name that a later run reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from use.evaluation.behaviors import PeriodSchedule, Schedule

logger = logging.getLogger(__name__)

# Bump when the embedding code changes what a strategy computes, so that older files stop matching.
# NOTE: nothing enforces the bump, and the torch and transformers versions are not in the key, so after
# such a change to the code or an upgrade, empty the cache folder or bump this number.
CACHE_FORMAT_VERSION = 1
# Hex digits of the key digest in a file name. Their 64 bits make a collision within one folder negligible,
# and a colliding file would still be rejected because its stored key differs.
_NAME_DIGEST_CHARS = 16
_READ_CHUNK_BYTES = 1 << 20


class EmbeddingCache:
    """A folder of embedding files that all share one key, one file per embedding name.

    ``key`` is a JSON-serializable dict of everything that changes the embeddings except the
    strategy. The name (``history`` or a strategy) is added to it per file.
    """

    def __init__(self, folder: str | Path, key: dict[str, Any]):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(
                f"--embedding_cache {str(self.folder)!r} is a file. Pass a folder, which is created if missing."
            )
        self.key = key

    def path(self, name: str) -> Path:
        """Return the file that stores embedding ``name`` under this cache's key."""
        digest = hashlib.sha256(self._file_key(name).encode("utf-8")).hexdigest()[:_NAME_DIGEST_CHARS]
        return self.folder / f"{name}-{digest}.npz"

    def load(self, name: str, rows: list[int], shape: tuple[int, ...]) -> np.ndarray | None:
        """Return the cached array ``name``, or None when it is missing or does not match.

        ``rows`` are the TSV row numbers of the users and ``shape`` the expected array shape. A file
        that is unreadable, or whose key, rows or shape differ, is logged as a WARNING and ignored.
        """
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                stored_key = str(stored["key"])
                stored_rows = stored["rows"]
                embeddings = stored["embeddings"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            logger.warning("Embedding cache file %s is unreadable (%s: %s), so the %s embeddings are computed again",
                           path, type(error).__name__, error, name)
            return None

        problem = self._mismatch(name, stored_key, stored_rows, embeddings, rows, shape)
        if problem:
            logger.warning("Embedding cache file %s does not match this run (%s), so the %s embeddings are computed "
                           "again", path, problem, name)
            return None
        return embeddings

    def save(self, name: str, rows: list[int], embeddings: np.ndarray) -> Path:
        """Write ``embeddings`` atomically (temporary file, then rename) and return the file path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        # A name unique to this write, so that two runs saving the same file never share a temporary file.
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temporary, "xb") as handle:
                np.savez(
                    handle,
                    key=np.array(self._file_key(name)),
                    rows=np.asarray(rows, dtype=np.int64),
                    embeddings=embeddings,
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return path

    def _file_key(self, name: str) -> str:
        return json.dumps({**self.key, "embedding": name}, sort_keys=True)

    def _mismatch(self, name, stored_key, stored_rows, embeddings, rows, shape) -> str:
        if stored_key != self._file_key(name):
            return "its key differs"
        if stored_rows.shape != (len(rows),) or not np.array_equal(stored_rows, np.asarray(rows)):
            return "its users are other TSV rows"
        if embeddings.shape != tuple(shape):
            return f"its shape is {embeddings.shape}, expected {tuple(shape)}"
        return ""


def load_or_compute(
    cache: EmbeddingCache | None,
    name: str,
    rows: list[int],
    shape: tuple[int, ...],
    compute: Callable[[], np.ndarray],
) -> np.ndarray:
    """Return embeddings ``name`` from ``cache`` when a matching file exists, else from ``compute()``.

    Computed embeddings are saved to ``cache`` when one is given. Either way one line states whether
    the embeddings were loaded or computed, and how long that took. It is a WARNING when saving
    failed, which does not stop the run.
    """
    start = time.perf_counter()
    if cache is not None:
        embeddings = cache.load(name, rows, shape)
        if embeddings is not None:
            logger.info("%s embeddings: loaded from %s in %.2f s", name, cache.path(name), time.perf_counter() - start)
            return embeddings

    embeddings = compute()
    seconds = time.perf_counter() - start
    if embeddings.shape != tuple(shape):
        raise RuntimeError(f"{name} embeddings have shape {embeddings.shape}, expected {tuple(shape)}")
    if cache is None:
        logger.info("%s embeddings: computed in %.2f s", name, seconds)
        return embeddings

    try:
        path = cache.save(name, rows, embeddings)
    except OSError as error:
        # The embeddings are valid, so the evaluation goes on and only the next run pays for them again.
        logger.warning("%s embeddings: computed in %.2f s, but saving them to %s failed (%s: %s)",
                       name, seconds, cache.folder, type(error).__name__, error)
    else:
        logger.info("%s embeddings: computed in %.2f s, saved to %s", name, seconds, path)
    return embeddings


def embedding_cache_key(
    model_path: str | Path,
    tokenizer_path: str | Path,
    dataset_path: str | Path,
    schedule: Schedule,
    method: str,
    dtype: str,
    device: str,
    periods_file: str | Path | None = None,
) -> dict[str, Any]:
    """Return the cache key of one evaluation run: digests of its input files and the settings.

    Every regular file directly in the model folder and in the tokenizer folder is hashed, so
    any change to the weights, config or vocabulary gives a new key. Only the device type counts
    (``cuda:1`` and ``cuda`` share files), because it decides the kernels and thus the rounding.
    """
    key: dict[str, Any] = {
        "format": CACHE_FORMAT_VERSION,
        "model_files": folder_digests(model_path),
        "tokenizer_files": folder_digests(tokenizer_path),
        "dataset_sha256": file_digest(dataset_path),
        "schedule": {
            "type": type(schedule).__name__,
            "max_len": schedule.max_len,
            "period_len": schedule.period_len if isinstance(schedule, PeriodSchedule) else None,
        },
        "method_type": method,
        "dtype": dtype,
        "device_type": device.split(":", 1)[0],
    }
    if periods_file is not None:
        key["periods_file_sha256"] = file_digest(periods_file)
    return key


def folder_digests(folder: str | Path) -> dict[str, str]:
    """Return the SHA-256 of each regular file directly in ``folder``, by file name."""
    folder = Path(folder)
    return {path.name: file_digest(path) for path in sorted(folder.iterdir()) if path.is_file()}


def file_digest(path: str | Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_READ_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
