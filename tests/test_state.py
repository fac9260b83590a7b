"""The user state store: k stateful updates equal one pass, batches equal single users, bad rows are named."""

import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load

from use.embedding import embed_sequences, embed_step, pad_batch
from use.state import (
    CorruptStateError,
    FingerprintMismatchError,
    StateStoreError,
    UnknownUserError,
    UnsupportedModelError,
    UserStateStore,
    checkpoint_fingerprint,
    ids_path_for,
)

from .conftest import tiny_user_model

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tokenizer" / "dialog"
# The dialog tokenizer's characters: printable ASCII and the newline.
ALPHABET = [chr(code) for code in range(0x20, 0x7F)] + ["\n"]
PAD = 3


def save_checkpoint(folder: Path, **overrides) -> Path:
    """Save a tiny RetNet UserModel for the dialog tokenizer; chunk_size 8 makes long updates chunkwise."""
    settings = dict(vocab_size=101, chunk_size=8, objective="CLM")
    settings.update(overrides)
    tiny_user_model("retnet", **settings).save_pretrained(folder)
    return folder


def random_text(length: int, seed: int) -> str:
    return "".join(random.Random(seed).choices(ALPHABET, k=length))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("checkpoint") / "model")


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("other") / "model", initializer_range=0.05)


@pytest.fixture
def store(tmp_path, checkpoint):
    with UserStateStore.open(tmp_path / "users.db", checkpoint, TOKENIZER) as opened:
        yield opened


def token_ids(store: UserStateStore, text: str) -> list[int]:
    return store.tokenizer(text, add_special_tokens=False)["input_ids"]


def one_pass(store: UserStateStore, texts: list[str]):
    """Embeddings `(n, hidden)` and states of one pass over each whole text, from scratch."""
    sequences = [token_ids(store, text) for text in texts]
    embeddings = embed_sequences(store.model, sequences, progress=False)
    state = embed_step(store.model, *pad_batch(sequences, PAD))
    return embeddings, state


def assert_states_equal(actual, expected, tolerance=1e-5):
    assert actual.count.tolist() == expected.count.tolist()
    assert actual.past_states.offsets.tolist() == expected.past_states.offsets.tolist()
    torch.testing.assert_close(actual.hidden_sum, expected.hidden_sum.cpu(), atol=tolerance, rtol=1e-4)
    for stored, reference in zip(actual.past_states.states, expected.past_states.states, strict=True):
        torch.testing.assert_close(stored, reference.float().cpu(), atol=tolerance, rtol=1e-4)


def overwrite_column(db: Path, user_id: str, column: str, value) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(f"UPDATE users SET {column} = ? WHERE user_id = ?", (value, user_id))


# Stateful updates against one pass.


@pytest.mark.parametrize(
    "chunk_sizes",
    [(60,), (1, 1, 1, 57), (7, 8, 9, 36), (3, 0, 17, 40), (25, 35)],
    ids=["one", "singles-first", "around-chunk-size", "with-empty", "two"],
)
def test_chunked_updates_equal_one_pass(store, chunk_sizes):
    text = random_text(sum(chunk_sizes), seed=1)
    start = 0
    for size in chunk_sizes:
        returned = store.update(["user"], [text[start : start + size]])
        start += size

    expected_embedding, expected_state = one_pass(store, [text])
    assert (returned - expected_embedding).abs().max() <= 1e-4
    assert (store.get(["user"]) - expected_embedding).abs().max() <= 1e-4
    assert_states_equal(store.get_state(["user"]), expected_state)
    info = store.info(["user"])[0]
    assert info.num_behaviors == len(text)
    assert info.position_offset == len(text) + 1


@pytest.mark.parametrize("batch_size", [2, 64])
def test_mixed_batch_equals_one_by_one(tmp_path, checkpoint, batch_size):
    histories = {"a": random_text(40, 2), "b": random_text(3, 3), "c": random_text(21, 4)}
    updates = {"a": random_text(5, 5), "new1": random_text(33, 6), "b": random_text(50, 7), "new2": "x", "c": ""}

    with UserStateStore.open(tmp_path / "batched.db", checkpoint, TOKENIZER, batch_size=batch_size) as batched:
        batched.update(list(histories), list(histories.values()))
        together = batched.update(list(updates), list(updates.values()))
        together_state = batched.get_state(["a", "new1", "b", "new2", "c"])
    with UserStateStore.open(tmp_path / "single.db", checkpoint, TOKENIZER) as single:
        for user_id, text in histories.items():
            single.update([user_id], [text])
        alone = torch.cat([single.update([user_id], [text]) for user_id, text in updates.items()])
        alone_state = single.get_state(["a", "new1", "b", "new2", "c"])

        expected, _ = one_pass(single, [histories.get(user_id, "") + text for user_id, text in updates.items()])
    assert (together - alone).abs().max() <= 1e-5
    assert (together - expected).abs().max() <= 1e-4
    assert_states_equal(together_state, alone_state)


def test_text_and_ids_agree(store):
    text = random_text(30, 8)
    from_text = store.update(["text"], [text])
    from_ids = store.update(["ids"], [token_ids(store, text)])
    from_tensor = store.update(["tensor"], [torch.tensor(token_ids(store, text))])
    assert torch.equal(from_text, from_ids)
    assert torch.equal(from_text, from_tensor)


def test_report_counts(store):
    store.update(["old"], ["abc"])
    report = store.update_with_report(["old", "new", "quiet"], ["defg", "hi", ""])
    assert report.user_ids == ["old", "new", "quiet"]
    assert report.new_users == 1
    assert report.updated_users == 1
    assert report.empty_users == ["quiet"]
    assert report.behaviors == 6
    assert report.written_users == 2
    assert report.embeddings.shape == (3, 32)


def test_reopened_store_keeps_states(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        first = store.update(["user"], ["hello"])
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        assert torch.equal(store.get(["user"]), first)
        continued = store.update(["user"], [" world"])
        expected, _ = one_pass(store, ["hello world"])
    assert (continued - expected).abs().max() <= 1e-4
    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# Storage format.


def test_states_stored_in_float32_for_bfloat16_model(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER, dtype=torch.bfloat16) as store:
        assert store.model.dtype == torch.bfloat16
        embedding = store.update(["user"], [random_text(20, 9)])
        state = store.get_state(["user"])
    assert embedding.dtype == torch.float32
    assert state.hidden_sum.dtype == torch.float32
    assert all(layer.dtype == torch.float32 for layer in state.past_states.states)

    with sqlite3.connect(db) as connection:
        hidden_blob, retention_blob = connection.execute("SELECT hidden_sum, retention FROM users").fetchone()
    assert load(hidden_blob)["hidden_sum"].dtype == torch.float32
    retention = load(retention_blob)
    assert sorted(retention) == ["layer.0", "layer.1"]
    assert retention["layer.0"].dtype == torch.float32
    assert retention["layer.0"].shape == (4, 8, 8)


def test_fingerprint_covers_config_and_weights(tmp_path, checkpoint, other_checkpoint):
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    assert checkpoint_fingerprint(copy) == checkpoint_fingerprint(checkpoint)
    assert checkpoint_fingerprint(other_checkpoint) != checkpoint_fingerprint(checkpoint)
    assert checkpoint_fingerprint(checkpoint).startswith("sha256:")

    (copy / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        checkpoint_fingerprint(copy)


# Rejected models and rows.


def test_gpt2_rejected_with_reason(tmp_path):
    model = tiny_user_model("gpt2", vocab_size=101, objective="CLM")
    with pytest.raises(UnsupportedModelError, match="GPT-2") as error:
        UserStateStore(tmp_path / "users.db", model, "sha256:0")
    assert "whole history" in str(error.value)
    assert "RetNet" in str(error.value)


def test_fingerprint_mismatch_rejected(tmp_path, checkpoint, other_checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        store.update(["user"], ["history"])
        before = store.info(["user"])[0]

    with UserStateStore.open(db, other_checkpoint, TOKENIZER) as store:
        with pytest.raises(FingerprintMismatchError, match="'user'") as error:
            store.update(["newcomer", "user"], ["abc", "def"])
        assert "reset_mismatched" in str(error.value)
        assert "newcomer" not in store
        assert store.info(["user"])[0] == before
        with pytest.raises(FingerprintMismatchError):
            store.get(["user"])

        report = store.update_with_report(["user"], ["fresh"], reset_mismatched=True)
        expected, _ = one_pass(store, ["fresh"])
        info = store.info(["user"])[0]
    assert report.reset_users == ["user"]
    assert report.new_users == 0
    assert (report.embeddings - expected).abs().max() <= 1e-4
    assert info.fingerprint == checkpoint_fingerprint(other_checkpoint)
    assert info.num_behaviors == len("fresh")


def test_mismatched_user_skipped(tmp_path, checkpoint, other_checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        store.update(["old"], ["history"])
    with UserStateStore.open(db, other_checkpoint, TOKENIZER) as store:
        report = store.update_with_report(["old", "new"], ["abc", "def"], skip_invalid=True)
        assert list(report.skipped) == ["old"]
        assert "another checkpoint" in report.skipped["old"]
        assert report.user_ids == ["new"]
        assert store.info(["old"])[0].num_behaviors == len("history")


@pytest.mark.parametrize(
    "column, value, reason",
    [
        ("retention", b"garbage", "CRC-32"),
        ("hidden_sum", b"garbage", "CRC-32"),
        ("num_behaviors", 3, "inconsistent"),
    ],
)
def test_corrupt_row_named(tmp_path, checkpoint, column, value, reason):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        store.update(["good", "bad"], ["first", "second"])
        overwrite_column(db, "bad", column, value)
        good_before = store.get(["good"])

        with pytest.raises(CorruptStateError, match="'bad'") as error:
            store.update(["good", "bad"], ["+", "+"])
        assert reason in str(error.value)
        assert "skip_invalid" in str(error.value)
        assert torch.equal(store.get(["good"]), good_before)
        with pytest.raises(CorruptStateError, match=reason):
            store.get_state(["bad"])

        report = store.update_with_report(["good", "bad"], ["+", "+"], skip_invalid=True)
        assert list(report.skipped) == ["bad"]
        assert reason in report.skipped["bad"]
        expected, _ = one_pass(store, ["first+"])
        assert (store.get(["good"]) - expected).abs().max() <= 1e-4

        assert store.delete(["bad"]) == 1
        restarted = store.update(["bad"], ["again"])
        expected, _ = one_pass(store, ["again"])
    assert (restarted - expected).abs().max() <= 1e-4


def test_valid_safetensors_with_wrong_shape_rejected(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        store.update(["user"], ["abc"])
    with UserStateStore.open(db, save_checkpoint(tmp_path / "wider", hidden_size=48), TOKENIZER) as wider:
        wider.fingerprint = checkpoint_fingerprint(checkpoint)
        with pytest.raises(CorruptStateError, match=r"expected torch.float32 \(48,\)"):
            wider.get(["user"])


def test_not_a_store_file_rejected(tmp_path, checkpoint):
    path = tmp_path / "notes.db"
    path.write_text("not a database, just text" * 100)
    with pytest.raises(StateStoreError, match="not a user state store"):
        UserStateStore.open(path, checkpoint, TOKENIZER)


def test_foreign_database_rejected(tmp_path, checkpoint):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER)")
    with pytest.raises(StateStoreError, match=r"other tables \(orders\)"):
        UserStateStore.open(path, checkpoint, TOKENIZER)


def test_write_lock_timeout_named(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER, timeout=0.2) as store:
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StateStoreError, match=r"write lock for more than timeout=0.2 s"):
                store.update(["user"], ["abc"])
            assert len(store) == 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert store.update(["user"], ["abc"]).shape == (1, 32)


# Inputs.


def test_unknown_characters_counted(store):
    text = "abc\u00e9d\u20ac"
    report = store.update_with_report(["user"], [text])
    assert report.unknown_tokens == 2
    assert report.behaviors == 6
    ids = token_ids(store, text)
    assert ids.count(0) == 2
    expected = embed_sequences(store.model, [ids], progress=False)
    assert (report.embeddings - expected).abs().max() <= 1e-4


def test_empty_updates_change_nothing(store):
    store.update(["old"], ["history"])
    before = store.info(["old"])[0]
    stored = store.get(["old"])

    report = store.update_with_report(["old", "newcomer"], ["", ""])
    assert report.empty_users == ["old", "newcomer"]
    assert report.written_users == 0
    assert torch.equal(report.embeddings[0], stored[0])
    assert torch.equal(report.embeddings[1], torch.zeros(32))
    assert store.info(["old"])[0] == before
    assert "newcomer" not in store
    assert store.update([], []).shape == (0, 32)


def test_unknown_user_in_get_named(store):
    store.update(["known"], ["abc"])
    with pytest.raises(UnknownUserError) as error:
        store.get(["known", "ghost", "phantom"])
    assert isinstance(error.value, KeyError)
    assert str(error.value) == "2 users are not in the store: 'ghost', 'phantom'. Add them with update() first."


@pytest.mark.parametrize(
    "sequence, message",
    [
        ([5, 3, 7], "token id 3 at position 1"),
        ([5, 101], "token id 101 at position 1"),
        ([5, 1.5], "1.5 \\(float\\) at position 1"),
    ],
)
def test_invalid_ids_named(store, sequence, message):
    with pytest.raises(ValueError, match=message) as error:
        store.update(["fine", "broken"], [[5, 6], sequence])
    assert "'broken'" in str(error.value)
    assert len(store) == 0


def test_bad_user_ids_rejected(store):
    with pytest.raises(ValueError, match="more than once: 'twice'"):
        store.update(["twice", "once", "twice"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="tab or line break"):
        store.update(["two\nlines"], ["a"])
    with pytest.raises(ValueError, match="one sequence per user"):
        store.update(["a", "b"], ["a"])


def test_text_without_tokenizer_rejected(tmp_path, checkpoint):
    model = UserStateStore.open(tmp_path / "a.db", checkpoint, TOKENIZER).model
    with UserStateStore(tmp_path / "b.db", model, checkpoint_fingerprint(checkpoint)) as store:
        with pytest.raises(ValueError, match="no tokenizer"):
            store.update(["user"], ["abc"])
        assert store.update(["user"], [[5, 6]]).shape == (1, 32)


# Deletion and export.


def test_delete_counts_existing_users(store):
    store.update(["a", "b"], ["x", "y"])
    assert store.delete(["a", "ghost"]) == 1
    assert "a" not in store
    assert "b" in store
    assert len(store) == 1


def test_export_npy_matches_get(store, tmp_path):
    store.update(["zed", "amy", "bob"], ["one", "two", "three"])
    path = tmp_path / "embeddings.npy"
    assert store.export(path) == 3

    ids = ids_path_for(path).read_text(encoding="utf-8").splitlines()
    assert ids == ["amy", "bob", "zed"]
    embeddings = np.load(path)
    assert embeddings.dtype == np.float32
    assert np.array_equal(embeddings, store.get(ids).numpy())


def test_export_parquet_matches_get(store, tmp_path):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    store.update(["zed", "amy"], ["one", "two"])
    path = tmp_path / "embeddings.parquet"
    assert store.export(path) == 2

    table = pyarrow_parquet.read_table(path).to_pydict()
    assert table["user_id"] == ["amy", "zed"]
    assert table["num_behaviors"] == [3, 3]
    assert np.array_equal(np.array(table["embedding"], dtype=np.float32), store.get(["amy", "zed"]).numpy())


def test_export_rejects_invalid_rows_unless_skipped(tmp_path, checkpoint, other_checkpoint):
    db = tmp_path / "users.db"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        store.update(["stale"], ["abc"])
    with UserStateStore.open(db, other_checkpoint, TOKENIZER) as store:
        store.update(["fresh", "broken"], ["def", "ghi"])
        overwrite_column(db, "broken", "hidden_sum", b"garbage")
        path = tmp_path / "embeddings.npy"

        with pytest.raises(FingerprintMismatchError, match="'stale'"):
            store.export(path)
        assert not path.exists()

        assert store.export(path, skip_invalid=True) == 1
        assert ids_path_for(path).read_text(encoding="utf-8") == "fresh\n"
        exported = np.load(path)

        store.delete(["stale"])
        with pytest.raises(CorruptStateError, match="'broken'"):
            store.export(path)
    # The failed export left the earlier files as they were.
    assert ids_path_for(path).read_text(encoding="utf-8") == "fresh\n"
    assert np.array_equal(np.load(path), exported)
    assert sorted(file.name for file in tmp_path.iterdir() if file.name.endswith(".tmp")) == []


def test_export_suffix_checked(store, tmp_path):
    with pytest.raises(ValueError, match=r"\.npy"):
        store.export(tmp_path / "embeddings.csv")
