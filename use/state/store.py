"""Persistent per-user RetNet states in one SQLite file, updated with new behavior in batches.

Each user is one row: the per-layer retention states, the position offset, the number of behaviors
seen, the sum of last-layer hidden states, a timestamp and the fingerprint of the checkpoint that
computed them. An update reads a batch of rows and continues each user from its state with only the
new behaviors (`use.embedding.embed_step`). It writes the rows back in one transaction. The cost of
an update therefore does not depend on the length of a user's history.
"""

import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..embedding import EmbeddingState, check_tokenizer_matches, embed_step, load_model_and_tokenizer, pad_batch
from ..model import UserModel
from .errors import (
    CorruptStateError,
    ExportNotMovedError,
    FingerprintMismatchError,
    StateStoreError,
    UnknownUserError,
    UnsupportedModelError,
    list_users,
)
from .export import EmbeddingBlock, StagedExport, stage_embeddings
from .fingerprint import checkpoint_fingerprint, short_fingerprint
from .rows import EncodedRow, StateShapes, UserRow, decode_hidden_sum, decode_row, encode_row, rows_to_state

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
# Ids per `IN (...)` query, well below SQLite's limit on bound variables (999 before 3.32, 32766 after).
_IDS_PER_QUERY = 500
_EXPORT_ROWS_PER_FETCH = 1024

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        num_behaviors INTEGER NOT NULL,
        position_offset INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        hidden_sum_crc INTEGER NOT NULL,
        hidden_sum BLOB NOT NULL,
        retention_crc INTEGER NOT NULL,
        retention BLOB NOT NULL
    )""",
)
# Column order of `EncodedRow`. SQLite reads a row's columns in order, so with the large retention
# blob last, reading only the columns before it skips most of the blob's overflow pages.
_ALL_COLUMNS = (
    "user_id, fingerprint, num_behaviors, position_offset, updated_at, "
    "hidden_sum_crc, hidden_sum, retention_crc, retention"
)
_EMBEDDING_COLUMNS = "user_id, fingerprint, num_behaviors, position_offset, updated_at, hidden_sum_crc, hidden_sum"
_INFO_COLUMNS = "user_id, fingerprint, num_behaviors, position_offset, updated_at"
_FORBIDDEN_ID_CHARACTERS = ("\t", "\n", "\r")


@dataclass
class UserInfo:
    """A stored user's bookkeeping: checkpoint fingerprint, behaviors seen, next position, last update time (Unix s)."""

    user_id: str
    fingerprint: str
    num_behaviors: int
    position_offset: int
    updated_at: float


@dataclass
class UpdateReport:
    """Outcome of `UserStateStore.update_with_report`.

    user_ids: the users whose embeddings are returned, in input order (every input user except the
    skipped ones). embeddings: `(len(user_ids), hidden)` float32. A user with no new behaviors keeps
    its stored embedding, or gets a zero vector if the store has no row for it (none is written).
    new_users start from scratch, updated_users continue their stored state, reset_users had a state
    of another checkpoint and restart (their row is deleted if they have no new behaviors, so they
    are also in empty_users).
    """

    user_ids: list[str] = field(default_factory=list)
    embeddings: Tensor | None = field(default=None, repr=False)
    new_users: int = 0
    updated_users: int = 0
    reset_users: list[str] = field(default_factory=list)
    empty_users: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    behaviors: int = 0
    unknown_tokens: int = 0

    @property
    def written_users(self) -> int:
        """Number of users whose row this update wrote."""
        restarted = set(self.reset_users) - set(self.empty_users)
        return self.new_users + self.updated_users + len(restarted)


class UserStateStore:
    """One SQLite file (WAL mode) of per-user RetNet states for one checkpoint.

    Rows computed with another checkpoint (another fingerprint) are rejected unless an update is
    asked to reset them. Several processes may read while one updates: each batch is one
    transaction, so readers see every user either before or after its update. Concurrent updates are
    serialised by SQLite's write lock, which an update holds for one batch at a time. The model is
    put in eval mode. Use `open` to load a checkpoint folder and compute its fingerprint. Like its
    `sqlite3` connection, a store object belongs to the thread that created it.
    """

    def __init__(
        self,
        path: str | Path,
        model: UserModel,
        fingerprint: str,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 32,
        timeout: float = 60.0,
    ):
        """`fingerprint` identifies the checkpoint (`checkpoint_fingerprint`); `timeout` is how long, in
        seconds, a call waits for another process's write lock before failing."""
        if model.config.backbone_type != "retnet":
            raise UnsupportedModelError(
                f"backbone_type={model.config.backbone_type!r} has no state to store: GPT-2 attends over the whole "
                "history, so absorbing new behavior means re-embedding all of it. Use a RetNet checkpoint, or embed "
                "whole histories with use.embedding.embed_sequences."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be at least 1.")
        if tokenizer is not None:
            check_tokenizer_matches(model, tokenizer)
        self.path = Path(path)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.timeout = timeout
        self.shapes = StateShapes.of(model.config)
        self._connection = _connect(self.path, timeout)

    @classmethod
    def open(
        cls,
        path: str | Path,
        model_path: str | Path,
        tokenizer_path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> "UserStateStore":
        """Open (or create) the store at `path` with the checkpoint and tokenizer folders.

        `dtype` is the compute dtype (default: the checkpoint's); states are stored in float32 either way.
        Other keyword arguments go to the constructor.
        """
        model, tokenizer = load_model_and_tokenizer(model_path, tokenizer_path, device)
        if dtype is not None:
            model = model.to(dtype)
        return cls(path, model, checkpoint_fingerprint(model_path), tokenizer, **kwargs)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> "UserStateStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __len__(self) -> int:
        return self._connection.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def __contains__(self, user_id: str) -> bool:
        query = "SELECT 1 FROM users WHERE user_id = ?"
        return self._connection.execute(query, (user_id,)).fetchone() is not None

    # Updates.

    def update(
        self, user_ids: Sequence[str], new_sequences: Sequence[str | Sequence[int]], reset_mismatched: bool = False
    ) -> Tensor:
        """Absorb each user's new behaviors and return their embeddings `(n, hidden)` float32, in input order.

        A sequence is a string (tokenised with the store's tokenizer, one behavior per token, no
        special tokens) or a list of behavior ids. New users start from [CLS]; stored users continue
        from their state. An empty sequence writes nothing and returns the stored embedding (zeros for
        an unknown user). Raises on a fingerprint mismatch (unless `reset_mismatched`) or a corrupt row.
        """
        return self.update_with_report(user_ids, new_sequences, reset_mismatched=reset_mismatched).embeddings

    def update_with_report(
        self,
        user_ids: Sequence[str],
        new_sequences: Sequence[str | Sequence[int]],
        reset_mismatched: bool = False,
        skip_invalid: bool = False,
        progress: bool = False,
    ) -> UpdateReport:
        """Update like `update` and report counts; optionally skip users whose rows are unusable.

        reset_mismatched: restart users whose state was computed with another checkpoint from the new
        behaviors alone (their history is lost).
        skip_invalid: leave users with a corrupt row, or a mismatched one that is not reset, unchanged
        and list them in `skipped` instead of raising.
        Users are processed in batches of `batch_size`, each one transaction, longest sequences first.
        A mismatch is detected before anything is written. A corrupt row is found only when its batch
        is read, so the error states how many users earlier batches already committed.
        """
        user_ids = list(user_ids)
        new_sequences = list(new_sequences)
        if len(user_ids) != len(new_sequences):
            raise ValueError(f"got {len(user_ids)} user ids but {len(new_sequences)} sequences; pass one sequence per user.")
        _check_user_ids(user_ids)
        inputs = [self._prepare_input(user_id, sequence) for user_id, sequence in zip(user_ids, new_sequences)]
        self._check_fingerprints(user_ids, reset_mismatched, skip_invalid)

        report = UpdateReport()
        embeddings = torch.zeros(len(user_ids), self.shapes.hidden_size)
        # Longest first keeps padding low; for text, characters stand in for tokens.
        order = sorted(range(len(user_ids)), key=lambda index: -len(inputs[index]))
        # Inside a caller's transaction (update_and_export) no batch commits on its own.
        joined_transaction = self._connection.in_transaction
        committed = 0
        with tqdm(total=len(user_ids), desc="updating users", unit="user", disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                written = self._update_batch(
                    batch, user_ids, inputs, reset_mismatched, skip_invalid, report, embeddings, committed
                )
                if not joined_transaction:
                    committed += written
                bar.update(len(batch))

        returned = [index for index, user_id in enumerate(user_ids) if user_id not in report.skipped]
        report.user_ids = [user_ids[index] for index in returned]
        report.embeddings = embeddings[returned]
        self._log_problems(report)
        return report

    def _prepare_input(self, user_id: str, sequence) -> str | list[int]:
        if isinstance(sequence, str):
            if self.tokenizer is None:
                raise ValueError(
                    f"user {user_id!r} has a text sequence but the store has no tokenizer; pass tokenizer= (or use "
                    "UserStateStore.open), or pass behavior id lists."
                )
            return sequence
        ids = sequence.tolist() if hasattr(sequence, "tolist") else list(sequence)
        for position, token in enumerate(ids):
            if not isinstance(token, int) or isinstance(token, bool):
                raise ValueError(
                    f"user {user_id!r} has {token!r} ({type(token).__name__}) at position {position}; a sequence is a "
                    "string or a list of integer behavior ids."
                )
        self._check_behavior_ids(user_id, ids)
        return ids

    def _check_behavior_ids(self, user_id: str, ids: list[int]) -> None:
        config = self.model.config
        for position, token in enumerate(ids):
            if token != config.unk_token_id and not config.first_behavior_id <= token < config.vocab_size:
                raise ValueError(
                    f"user {user_id!r} has token id {token} at position {position}, which is not a behavior: behaviors "
                    f"are ids {config.first_behavior_id}..{config.vocab_size - 1} or [UNK]={config.unk_token_id}. Pass "
                    "behaviors only, without [CLS], [SEP] or [PAD] (tokenise with add_special_tokens=False)."
                )

    def _check_fingerprints(self, user_ids: list[str], reset_mismatched: bool, skip_invalid: bool) -> None:
        if reset_mismatched or skip_invalid:
            return
        stored = self._select("user_id, fingerprint", user_ids)
        mismatched = [user_id for user_id, (_, fingerprint) in stored.items() if fingerprint != self.fingerprint]
        if mismatched:
            raise FingerprintMismatchError(mismatched, [stored[user_id][1] for user_id in mismatched], self.fingerprint)

    def _tokenize(self, user_ids: list[str], inputs: list[str | list[int]]) -> list[list[int]]:
        texts = [position for position, sequence in enumerate(inputs) if isinstance(sequence, str)]
        sequences = list(inputs)
        if texts:
            encoded = self.tokenizer([inputs[position] for position in texts], add_special_tokens=False)["input_ids"]
            for position, ids in zip(texts, encoded):
                self._check_behavior_ids(user_ids[position], ids)
                sequences[position] = ids
        return sequences

    def _update_batch(
        self, batch, user_ids, inputs, reset_mismatched, skip_invalid, report, embeddings, committed
    ) -> int:
        """Update one batch in one transaction and return the number of rows written or deleted.

        `committed` is the number of rows earlier batches of this call wrote, for the error message.
        """
        batch_ids = [user_ids[index] for index in batch]
        sequences = self._tokenize(batch_ids, [inputs[index] for index in batch])
        unk = self.model.config.unk_token_id
        new_rows: list[int] = []  # positions in the batch
        continued_rows: list[tuple[int, UserRow]] = []
        writes: list[EncodedRow] = []
        reset_users, deletes, problems = [], [], {}

        with self._transaction("IMMEDIATE") as connection:
            stored = self._select(_ALL_COLUMNS, batch_ids)
            for position, user_id in enumerate(batch_ids):
                record = stored.get(user_id)
                if record is not None and record[1] != self.fingerprint:
                    if reset_mismatched:
                        reset_users.append(user_id)
                        record = None
                    elif skip_invalid:
                        stored_short = short_fingerprint(record[1])
                        report.skipped[user_id] = f"state computed with another checkpoint ({stored_short})"
                        continue
                    else:
                        raise FingerprintMismatchError([user_id], [record[1]], self.fingerprint)

                if record is None:
                    if sequences[position]:
                        new_rows.append(position)
                    else:
                        # Nothing to absorb: the user keeps no row, and a reset removes the stale one.
                        report.empty_users.append(user_id)
                        if user_id in reset_users:
                            deletes.append(user_id)
                    continue

                try:
                    row = decode_row(record, self.shapes)
                except CorruptStateError as error:
                    if skip_invalid:
                        report.skipped.update(error.problems)
                    else:
                        problems.update(error.problems)
                    continue
                if sequences[position]:
                    continued_rows.append((position, row))
                else:
                    report.empty_users.append(user_id)
                    embeddings[batch[position]] = row.embedding()

            if problems:
                raise CorruptStateError(problems, committed_users=committed)

            now = time.time()
            if new_rows:
                state = self._absorb([sequences[position] for position in new_rows], None)
                writes += self._finish(state, new_rows, batch, batch_ids, now, embeddings)
            if continued_rows:
                positions = [position for position, _ in continued_rows]
                state = self._absorb([sequences[position] for position in positions], [row for _, row in continued_rows])
                writes += self._finish(state, positions, batch, batch_ids, now, embeddings)

            connection.executemany(
                f"INSERT OR REPLACE INTO users ({_ALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row.values() for row in writes],
            )
            connection.executemany("DELETE FROM users WHERE user_id = ?", [(user_id,) for user_id in deletes])

        absorbed = new_rows + [position for position, _ in continued_rows]
        report.behaviors += sum(len(sequences[position]) for position in absorbed)
        report.unknown_tokens += sum(sequences[position].count(unk) for position in absorbed)
        report.reset_users += reset_users
        report.new_users += len([position for position in new_rows if batch_ids[position] not in reset_users])
        report.updated_users += len(continued_rows)
        return len(writes) + len(deletes)

    def _absorb(self, sequences: list[list[int]], rows: list[UserRow] | None) -> EmbeddingState:
        input_ids, attention_mask = pad_batch(sequences, self.model.config.pad_token_id)
        state = None
        if rows is not None:
            hidden_sum, count, past_states = rows_to_state(rows)
            state = EmbeddingState(hidden_sum=hidden_sum, count=count, past_states=past_states)
        return embed_step(self.model, input_ids, attention_mask, state)

    def _finish(self, state: EmbeddingState, positions, batch, batch_ids, now, embeddings) -> list[EncodedRow]:
        """Record the new embeddings and encode the new rows (float32, on the CPU)."""
        hidden_sum = state.hidden_sum.float().cpu()
        count = state.count.cpu()
        offsets = state.past_states.offsets.cpu()
        layers = [layer.float().cpu() for layer in state.past_states.states]
        embeddings[[batch[position] for position in positions]] = state.mean().float().cpu()
        rows = []
        for row, position in enumerate(positions):
            user_row = UserRow(
                user_id=batch_ids[position],
                fingerprint=self.fingerprint,
                num_behaviors=int(count[row]),
                position_offset=int(offsets[row]),
                updated_at=now,
                hidden_sum=hidden_sum[row],
                retention=[layer[row] for layer in layers],
            )
            rows.append(encode_row(user_row))
        return rows

    def _log_problems(self, report: UpdateReport) -> None:
        if report.unknown_tokens:
            logger.warning("%d behaviors were unknown to the tokenizer and entered the model as [UNK].", report.unknown_tokens)
        if report.reset_users:
            logger.warning(
                "%d users were computed with another checkpoint and restarted from their new behaviors: %s",
                len(report.reset_users),
                list_users(report.reset_users),
            )
        if report.skipped:
            logger.warning(
                "%d users were skipped and left unchanged: %s",
                len(report.skipped),
                "; ".join(f"{user_id!r}: {reason}" for user_id, reason in list(report.skipped.items())[:5]),
            )

    # Reads.

    def get(self, user_ids: Sequence[str]) -> Tensor:
        """Return the stored embeddings `(n, hidden)` float32 of the users, in input order.

        Raises UnknownUserError for users without a row, FingerprintMismatchError for rows computed with
        another checkpoint and CorruptStateError for damaged rows, each naming the users. Only the
        hidden-state sum is read and checked; `get_state` and `update` also check the retention states.
        """
        user_ids = list(user_ids)
        with self._transaction("DEFERRED"):
            records = self._select(_EMBEDDING_COLUMNS, user_ids)
        self._check_found(user_ids, records)
        embeddings, problems = [], {}
        for user_id in user_ids:
            _, _, num_behaviors, position_offset, _, crc, blob = records[user_id]
            try:
                hidden_sum = decode_hidden_sum(user_id, num_behaviors, position_offset, crc, blob, self.shapes)
            except CorruptStateError as error:
                problems.update(error.problems)
                continue
            embeddings.append(hidden_sum / max(num_behaviors, 1))
        if problems:
            raise CorruptStateError(problems)
        return torch.stack(embeddings) if embeddings else torch.zeros(0, self.shapes.hidden_size)

    def get_state(self, user_ids: Sequence[str]) -> EmbeddingState:
        """Return the stored states of the users as one batch (float32, CPU), with the checks of `get`."""
        user_ids = list(user_ids)
        if not user_ids:
            raise ValueError("user_ids is empty; pass at least one user id.")
        with self._transaction("DEFERRED"):
            records = self._select(_ALL_COLUMNS, user_ids)
        self._check_found(user_ids, records)
        rows, problems = [], {}
        for user_id in user_ids:
            try:
                rows.append(decode_row(records[user_id], self.shapes))
            except CorruptStateError as error:
                problems.update(error.problems)
        if problems:
            raise CorruptStateError(problems)
        hidden_sum, count, past_states = rows_to_state(rows)
        return EmbeddingState(hidden_sum=hidden_sum, count=count, past_states=past_states)

    def info(self, user_ids: Sequence[str]) -> list[UserInfo]:
        """Return the users' bookkeeping columns, whatever checkpoint computed them; raises UnknownUserError."""
        user_ids = list(user_ids)
        records = self._select(_INFO_COLUMNS, user_ids)
        missing = [user_id for user_id in user_ids if user_id not in records]
        if missing:
            raise UnknownUserError(missing)
        return [UserInfo(*records[user_id]) for user_id in user_ids]

    def _check_found(self, user_ids: list[str], records: dict[str, tuple]) -> None:
        missing = [user_id for user_id in user_ids if user_id not in records]
        if missing:
            raise UnknownUserError(missing)
        mismatched = [user_id for user_id in dict.fromkeys(user_ids) if records[user_id][1] != self.fingerprint]
        if mismatched:
            raise FingerprintMismatchError(mismatched, [records[user_id][1] for user_id in mismatched], self.fingerprint)

    # Deletion and export.

    def delete(self, user_ids: Sequence[str]) -> int:
        """Delete the users' rows in one transaction and return how many existed; absent ids are counted in the log."""
        user_ids = list(dict.fromkeys(user_ids))
        deleted = 0
        with self._transaction("IMMEDIATE") as connection:
            for start in range(0, len(user_ids), _IDS_PER_QUERY):
                chunk = user_ids[start : start + _IDS_PER_QUERY]
                placeholders = ", ".join("?" * len(chunk))
                deleted += connection.execute(f"DELETE FROM users WHERE user_id IN ({placeholders})", chunk).rowcount
        if deleted < len(user_ids):
            logger.info("%d of %d users to delete were not in the store.", len(user_ids) - deleted, len(user_ids))
        return deleted

    def export(self, path: str | Path, skip_invalid: bool = False) -> int:
        """Write every user's embedding, ordered by user id, and return the number of users written.

        `path` ending in .npy writes a `(users, hidden)` float32 array plus the ids, one per line, in
        `<stem>.ids.txt` next to it. `.parquet` (needs pyarrow) writes columns user_id, num_behaviors,
        updated_at and embedding. Rows of another checkpoint or corrupt rows raise, unless
        `skip_invalid`, which leaves them out and logs their count. The export reads one snapshot of
        the store, so an update running meanwhile is seen entirely or not at all. Files are written
        under temporary names and renamed at the end, so a failed export leaves no partial file.
        """
        with self._transaction("DEFERRED"):
            staged = self._stage_export(Path(path), skip_invalid)
        self._move_export(staged)
        return staged.written

    def update_and_export(
        self,
        user_ids: Sequence[str],
        new_sequences: Sequence[str | Sequence[int]],
        path: str | Path,
        reset_mismatched: bool = False,
        skip_invalid: bool = False,
        progress: bool = False,
    ) -> tuple[UpdateReport, int]:
        """Update like `update_with_report`, export like `export`, and return the report and the users exported.

        The update and the export run in one transaction, which commits only after the export is
        written to its temporary files. If the update or the export fails, the store is left as it was,
        so the same update can be rerun without absorbing any behavior twice. The temporary files are
        renamed onto `path` after the commit.
        This holds SQLite's write lock for the whole call, so other writers wait (up to `timeout`).
        NOTE: a rename can still fail after the commit (staging checks beforehand that no target is a
        folder). Then the update stays committed without its export, and the error message names `export()` as the fix.
        """
        path = Path(path)
        staged = None
        try:
            with self._transaction("IMMEDIATE"):
                report = self.update_with_report(
                    user_ids, new_sequences, reset_mismatched=reset_mismatched, skip_invalid=skip_invalid, progress=progress
                )
                staged = self._stage_export(path, skip_invalid)
        except BaseException:
            # The commit itself failed after staging, so the temporary files are of a rolled-back update.
            if staged is not None:
                staged.discard()
            raise
        try:
            self._move_export(staged)
        except OSError as error:
            raise ExportNotMovedError(
                f"{error}. The store update was committed, so do not rerun the same update (it would absorb the "
                "behaviors twice); write the export again with UserStateStore.export()."
            ) from error
        return report, staged.written

    def _stage_export(self, path: Path, skip_invalid: bool) -> StagedExport:
        """Write the export to temporary files from the open transaction's snapshot."""
        connection = self._connection
        mismatched = connection.execute(
            "SELECT user_id, fingerprint FROM users WHERE fingerprint != ? ORDER BY user_id", (self.fingerprint,)
        ).fetchall()
        if mismatched and not skip_invalid:
            raise FingerprintMismatchError(
                [user_id for user_id, _ in mismatched], [fingerprint for _, fingerprint in mismatched], self.fingerprint
            )
        problems: dict[str, str] = {}
        blocks = self._iter_embeddings(connection, problems, skip_invalid)
        staged = stage_embeddings(path, blocks, self.shapes.hidden_size)
        if mismatched:
            logger.warning("left %d users computed with another checkpoint out of the export.", len(mismatched))
        if problems:
            logger.warning("left %d users with corrupt rows out of the export: %s", len(problems), list_users(list(problems)))
        return staged

    def _move_export(self, staged: StagedExport) -> None:
        staged.move_into_place()
        targets = " and ".join(str(target) for _, target in staged.moves)
        logger.info("wrote %d embeddings to %s", staged.written, targets)

    def _iter_embeddings(self, connection, problems: dict[str, str], skip_invalid: bool) -> Iterator[EmbeddingBlock]:
        """Yield blocks of the embeddings of the rows with the store's fingerprint, by user id."""
        cursor = connection.execute(
            f"SELECT {_EMBEDDING_COLUMNS} FROM users WHERE fingerprint = ? ORDER BY user_id", (self.fingerprint,)
        )
        while records := cursor.fetchmany(_EXPORT_ROWS_PER_FETCH):
            block = EmbeddingBlock(user_ids=[], num_behaviors=[], updated_at=[], embeddings=None)
            embeddings = []
            for user_id, _, num_behaviors, position_offset, updated_at, crc, blob in records:
                try:
                    hidden_sum = decode_hidden_sum(user_id, num_behaviors, position_offset, crc, blob, self.shapes)
                except CorruptStateError as error:
                    if not skip_invalid:
                        raise
                    problems.update(error.problems)
                    continue
                block.user_ids.append(user_id)
                block.num_behaviors.append(num_behaviors)
                block.updated_at.append(updated_at)
                embeddings.append(hidden_sum / max(num_behaviors, 1))
            if embeddings:
                block.embeddings = torch.stack(embeddings)
                yield block

    # SQLite access.

    @contextmanager
    def _transaction(self, mode: str) -> Iterator[sqlite3.Connection]:
        """Run the block in one transaction; IMMEDIATE takes the write lock at once, DEFERRED reads one snapshot.

        If this connection already has a transaction open, the block joins it: the outer block commits
        or rolls back everything, and `mode` is ignored.
        """
        if self._connection.in_transaction:
            yield self._connection
            return
        try:
            self._connection.execute(f"BEGIN {mode}")
        except sqlite3.OperationalError as error:
            raise StateStoreError(
                f"could not start a transaction on {str(self.path)!r} ({error}): another process held the write lock "
                f"for more than timeout={self.timeout} s. Retry, or open the store with a larger timeout."
            ) from error
        try:
            yield self._connection
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _select(self, columns: str, user_ids: list[str]) -> dict[str, tuple]:
        """Map each stored user among `user_ids` to its row of `columns` (the first column is user_id)."""
        unique = list(dict.fromkeys(user_ids))
        records = {}
        for start in range(0, len(unique), _IDS_PER_QUERY):
            chunk = unique[start : start + _IDS_PER_QUERY]
            placeholders = ", ".join("?" * len(chunk))
            for record in self._connection.execute(f"SELECT {columns} FROM users WHERE user_id IN ({placeholders})", chunk):
                records[record[0]] = record
        return records


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    """Open the database in WAL mode with full fsync on commit, creating the tables in a new file."""
    # Autocommit mode: transactions are opened explicitly.
    connection = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        journal_mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if journal_mode != "wal":
            raise StateStoreError(
                f"{str(path)!r} could not be switched to WAL mode (it is in {journal_mode!r} mode); the store needs a "
                "file on a local file system."
            )
        # FULL syncs the WAL on every commit, so a committed batch survives a power loss (on a disk that
        # honors fsync) as well as a crash.
        connection.execute("PRAGMA synchronous=FULL")
        _check_schema(connection, path)
    except sqlite3.OperationalError as error:
        connection.close()
        raise StateStoreError(
            f"could not open {str(path)!r} ({error}); if another process held the write lock for more than "
            f"timeout={timeout} s, retry or pass a larger timeout."
        ) from error
    except sqlite3.DatabaseError as error:
        connection.close()
        raise StateStoreError(
            f"{str(path)!r} is not a user state store ({error}); pass a new path or a file written by UserStateStore."
        ) from error
    except StateStoreError:
        connection.close()
        raise
    return connection


def _table_names(connection: sqlite3.Connection) -> set[str]:
    return {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _check_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Create the tables in an empty database, then check that the file is a store of this schema version."""
    if not _table_names(connection):
        connection.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have created the tables since the check above.
            if not _table_names(connection):
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    tables = _table_names(connection)
    if not {"meta", "users"} <= tables:
        raise StateStoreError(
            f"{str(path)!r} is an SQLite database with other tables ({', '.join(sorted(tables))}), not a user state "
            "store; pass a new path or a file written by UserStateStore."
        )
    row = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    version = None if row is None else row[0]
    if version != SCHEMA_VERSION:
        raise StateStoreError(
            f"{str(path)!r} has store schema version {version}, but this version of use reads version {SCHEMA_VERSION}; "
            "open it with the version of use that wrote it."
        )


def _check_user_ids(user_ids: list[str]) -> None:
    """Reject non-string, empty and duplicate ids, and ids that a TSV input or an ids file cannot hold."""
    for user_id in user_ids:
        if not isinstance(user_id, str) or not user_id:
            raise ValueError(f"user id {user_id!r} is invalid; user ids are non-empty strings.")
        if any(character in user_id for character in _FORBIDDEN_ID_CHARACTERS):
            raise ValueError(f"user id {user_id!r} contains a tab or line break; user ids must fit on one TSV field.")
    seen, duplicates = set(), []
    for user_id in user_ids:
        if user_id in seen:
            duplicates.append(user_id)
        seen.add(user_id)
    if duplicates:
        raise ValueError(
            f"{len(duplicates)} user ids appear more than once: {list_users(duplicates)}. Concatenate each user's new "
            "behaviors into one sequence (in time order) per update."
        )
