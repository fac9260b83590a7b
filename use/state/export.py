"""Writing stored embeddings to .npy (plus an ids file) or parquet."""

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

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


def check_export_path(path: Path) -> None:
    """Raise ValueError if an export to `path` can be seen to fail before anything is written.

    Checks the suffix, that the folder exists and is writable, that no target is a folder, and that
    pyarrow is installed for parquet. Writing can still fail later, for example on a full disk.
    """
    if path.suffix not in EXPORT_SUFFIXES:
        raise ValueError(f"export path {str(path)!r} must end in `.npy` or `.parquet`.")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"export path {str(path)!r} is in {str(folder)!r}, which is not an existing folder. Create it first.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"export path {str(path)!r} is in {str(folder)!r}, which is not writable. Pick a writable folder.")
    targets = [path, ids_path_for(path)] if path.suffix == ".npy" else [path]
    for target in targets:
        if target.is_dir():
            raise ValueError(f"export target {str(target)!r} is a folder. Pass a file path or remove the folder.")
    if path.suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ValueError(f"exporting to {str(path)!r} needs pyarrow (pip install pyarrow); or export to .npy.")


@dataclass
class StagedExport:
    """An export written to temporary files next to its targets, not yet moved onto them."""

    path: Path
    written: int
    # (temporary, target) pairs, moved in this order.
    moves: list[tuple[Path, Path]]

    def move_into_place(self) -> None:
        """Rename each temporary file onto its target, and delete the ones not yet moved if a rename fails.

        Each rename is atomic (the files are in one folder), but the .npy array and its ids file are two
        renames, so an error between them leaves a new array with the old ids file.
        """
        for index, (temporary, target) in enumerate(self.moves):
            try:
                os.replace(temporary, target)
            except OSError as error:
                StagedExport(self.path, self.written, self.moves[index:]).discard()
                raise OSError(f"could not move the export onto {str(target)!r}: {error}") from error

    def discard(self) -> None:
        """Delete the temporary files that are still there, but not a folder found at a temporary name."""
        for temporary, _ in self.moves:
            if not temporary.is_dir():
                temporary.unlink(missing_ok=True)


def stage_embeddings(path: Path, blocks: Iterable[EmbeddingBlock], hidden_size: int) -> StagedExport:
    """Write the blocks to temporary files next to `path` and return them, to be moved into place.

    The .npy export keeps all embeddings in memory (users x hidden x 4 bytes) before writing; parquet
    is written block by block. On any error the temporary files are deleted, and an OSError names
    `path`, not the temporary file.
    """
    check_export_path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    moves = [(temporary, path)]
    if path.suffix == ".npy":
        ids_path = ids_path_for(path)
        moves.append((ids_path.with_name(f".{ids_path.name}.tmp"), ids_path))
    staged = StagedExport(path=path, written=0, moves=moves)
    try:
        if path.suffix == ".npy":
            staged.written = _write_npy(moves[0][0], moves[1][0], blocks, hidden_size)
        else:
            staged.written = _write_parquet(temporary, blocks, hidden_size)
    except OSError as error:
        staged.discard()
        raise OSError(f"could not write the export {str(path)!r} (through its temporary file): {error}") from error
    except BaseException:
        staged.discard()
        raise
    return staged


def _write_npy(path: Path, ids_path: Path, blocks: Iterable[EmbeddingBlock], hidden_size: int) -> int:
    user_ids, arrays = [], []
    for block in blocks:
        user_ids += block.user_ids
        arrays.append(block.embeddings.float().numpy())
    embeddings = np.concatenate(arrays) if arrays else np.zeros((0, hidden_size), dtype=np.float32)

    with path.open("wb") as handle:
        np.save(handle, embeddings)
    ids_path.write_text("".join(f"{user_id}\n" for user_id in user_ids), encoding="utf-8")
    return len(user_ids)


def _write_parquet(path: Path, blocks: Iterable[EmbeddingBlock], hidden_size: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("num_behaviors", pa.int64()),
            ("updated_at", pa.float64()),
            ("embedding", pa.list_(pa.float32(), hidden_size)),
        ]
    )
    written = 0
    with pq.ParquetWriter(path, schema) as writer:
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
    return written
