"""Writing stored embeddings to .npy (plus an ids file) or parquet."""

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

logger = logging.getLogger(__name__)

EXPORT_SUFFIXES = (".npy", ".parquet")


@dataclass
class EmbeddingBlock:
    """Consecutive users' ids, behavior counts, update times (Unix s) and embeddings `(users, hidden)`."""

    user_ids: list[str]
    num_behaviors: list[int]
    updated_at: list[float]
    embeddings: Tensor


def ids_path_for(path: Path) -> Path:
    """Return the ids file written next to an .npy export: `embeddings.npy` -> `embeddings.ids.txt`."""
    return path.with_suffix(".ids.txt")


def write_embeddings(path: Path, blocks: Iterable[EmbeddingBlock], hidden_size: int) -> int:
    """Write the blocks to `path` (.npy or .parquet) and return the number of users written.

    Files are written under a temporary name and renamed at the end, so a failed export leaves no
    partial file. The .npy export keeps all embeddings in memory (users x hidden x 4 bytes) before
    writing; parquet is written block by block.
    """
    if path.suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"export path {str(path)!r} must end in one of {EXPORT_SUFFIXES}.")
    if path.suffix == ".npy":
        return _write_npy(path, blocks, hidden_size)
    return _write_parquet(path, blocks, hidden_size)


@contextmanager
def _replace_on_success(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path` and move it onto `path` if the block succeeds."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def _write_npy(path: Path, blocks: Iterable[EmbeddingBlock], hidden_size: int) -> int:
    user_ids, arrays = [], []
    for block in blocks:
        user_ids += block.user_ids
        arrays.append(block.embeddings.float().numpy())
    embeddings = np.concatenate(arrays) if arrays else np.zeros((0, hidden_size), dtype=np.float32)

    ids_path = ids_path_for(path)
    with _replace_on_success(path) as temporary, temporary.open("wb") as handle:
        np.save(handle, embeddings)
    with _replace_on_success(ids_path) as temporary:
        temporary.write_text("".join(f"{user_id}\n" for user_id in user_ids), encoding="utf-8")
    logger.info("wrote %d embeddings to %s and their ids to %s", len(user_ids), path, ids_path)
    return len(user_ids)


def _write_parquet(path: Path, blocks: Iterable[EmbeddingBlock], hidden_size: int) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(f"exporting to {str(path)!r} needs pyarrow (pip install pyarrow); or export to .npy.") from error

    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("num_behaviors", pa.int64()),
            ("updated_at", pa.float64()),
            ("embedding", pa.list_(pa.float32(), hidden_size)),
        ]
    )
    written = 0
    with _replace_on_success(path) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for block in blocks:
            flat = pa.array(block.embeddings.float().numpy().reshape(-1), type=pa.float32())
            columns = [
                pa.array(block.user_ids, type=pa.string()),
                pa.array(block.num_behaviors, type=pa.int64()),
                pa.array(block.updated_at, type=pa.float64()),
                pa.FixedSizeListArray.from_arrays(flat, hidden_size),
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            written += len(block.user_ids)
    logger.info("wrote %d embeddings to %s", written, path)
    return written
