"""`python -m use.embed`: a TSV of new events updates the store, prints a summary and exports."""

import csv
import logging
import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from use.embed import main, read_events
from use.state import UserStateStore, ids_path_for

from .conftest import tiny_user_model
from .test_state import REPO, TOKENIZER, checkpoint, one_pass  # noqa: F401 (checkpoint is a fixture)


def write_tsv(path, rows, header=("user_id", "events")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def run_cli(checkpoint, store_path, input_path, *extra) -> int:
    arguments = ["--model_path", str(checkpoint), "--tokenizer_path", str(TOKENIZER), "--store", str(store_path)]
    return main(arguments + ["--input", str(input_path), *extra])


def test_read_events_keeps_tabs_quotes_and_repeats(tmp_path):
    path = write_tsv(tmp_path / "events.tsv", [("a", 'say "hi"\tthen\nleave'), ("b", ""), ("a", "!")])
    user_ids, events = read_events(path)
    assert user_ids == ["a", "b"]
    assert events == [['say "hi"\tthen\nleave', "!"], [""]]


def test_read_events_rejects_bad_rows(tmp_path):
    missing = write_tsv(tmp_path / "missing.tsv", [("a", "x")], header=("user", "events"))
    with pytest.raises(ValueError, match="must name the columns"):
        read_events(missing)

    unquoted = tmp_path / "unquoted.tsv"
    unquoted.write_text("user_id\tevents\na\tone\ttab\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2 has 3 fields"):
        read_events(unquoted)

    anonymous = write_tsv(tmp_path / "anonymous.tsv", [("", "x")])
    with pytest.raises(ValueError, match="line 2 has an empty user_id"):
        read_events(anonymous)


def test_cli_updates_continues_and_exports(tmp_path, checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="use.embed")
    store_path = tmp_path / "users.db"
    first = write_tsv(tmp_path / "day1.tsv", [("alice", "hello"), ("bob", "h\u00e9y\tyou"), ("alice", " there")])
    second = write_tsv(tmp_path / "day2.tsv", [("bob", "!"), ("carol", "new"), ("alice", "")])
    export = tmp_path / "embeddings.npy"

    assert run_cli(checkpoint, store_path, first) == 0
    assert "updated 2 users (2 new, 0 continued, 0 reset) with 18 behaviors (2 unknown to the tokenizer" in caplog.text
    caplog.clear()
    assert run_cli(checkpoint, store_path, second, "--export", str(export)) == 0
    assert "updated 2 users (1 new, 1 continued, 0 reset) with 4 behaviors (0 unknown to the tokenizer" in caplog.text
    assert "1 users had no new events and 0 were skipped; the store contains 3 users" in caplog.text

    with UserStateStore.open(store_path, checkpoint, TOKENIZER) as store:
        expected, _ = one_pass(store, ["hello there", "h\u00e9y\tyou!", "new"])
        assert (store.get(["alice", "bob", "carol"]) - expected).abs().max() <= 1e-4
    assert ids_path_for(export).read_text(encoding="utf-8").splitlines() == ["alice", "bob", "carol"]
    assert np.abs(np.load(export) - expected.numpy()).max() <= 1e-4


def test_cli_reports_store_errors(tmp_path, checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="use.embed")
    gpt2 = tmp_path / "gpt2"
    tiny_user_model("gpt2", vocab_size=101, objective="CLM").save_pretrained(gpt2)
    events = write_tsv(tmp_path / "events.tsv", [("alice", "hello")])
    assert run_cli(gpt2, tmp_path / "users.db", events) == 1
    assert "GPT-2" in caplog.text

    other = tmp_path / "other"
    tiny_user_model("retnet", vocab_size=101, chunk_size=8, objective="CLM", initializer_range=0.05).save_pretrained(other)
    store_path = tmp_path / "shared.db"
    assert run_cli(checkpoint, store_path, events) == 0
    caplog.clear()
    assert run_cli(other, store_path, events) == 1
    assert "--reset_mismatched" in caplog.text
    assert run_cli(other, store_path, events, "--reset_mismatched") == 0
    assert "updated 1 users (0 new, 0 continued, 1 reset)" in caplog.text


def test_module_entry_point(tmp_path, checkpoint):
    events = write_tsv(tmp_path / "events.tsv", [("alice", "hello"), ("bob", "hi")])
    command = [sys.executable, "-m", "use.embed", "--model_path", str(checkpoint), "--tokenizer_path", str(TOKENIZER)]
    command += ["--store", str(tmp_path / "users.db"), "--input", str(events), "--export", str(tmp_path / "e.parquet")]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "updated 2 users (2 new, 0 continued, 0 reset) with 7 behaviors" in result.stderr
    assert "updating users: 100%" in result.stderr
    assert (tmp_path / "e.parquet").is_file()


def test_bad_export_suffix_updates_nothing(tmp_path, caplog):
    checkpoint = tmp_path / "model"
    tiny_user_model().save_pretrained(checkpoint)
    events = write_tsv(tmp_path / "events.tsv", [("a", "hello")])
    store_path = tmp_path / "users.db"

    assert run_cli(checkpoint, store_path, events, "--export", str(tmp_path / "out.csv")) == 1
    assert "must end in `.npy` or `.parquet`. Nothing was updated." in caplog.text
    assert not store_path.exists()


def stored_behaviors(store_path) -> dict[str, int]:
    with sqlite3.connect(store_path) as connection:
        return dict(connection.execute("SELECT user_id, num_behaviors FROM users"))


def test_missing_export_folder_updates_nothing(tmp_path, checkpoint, caplog):
    events = write_tsv(tmp_path / "events.tsv", [("a", "hello")])
    store_path = tmp_path / "users.db"
    export = tmp_path / "missing" / "e.npy"

    assert run_cli(checkpoint, store_path, events, "--export", str(export)) == 1
    assert f"{str(export.parent)!r}, which is not an existing folder. Create it first" in caplog.text
    assert "Nothing was updated." in caplog.text
    assert not store_path.exists()


def test_export_folder_target_updates_nothing(tmp_path, checkpoint, caplog):
    events = write_tsv(tmp_path / "events.tsv", [("a", "hello")])
    store_path = tmp_path / "users.db"
    (tmp_path / "e.ids.txt").mkdir()

    assert run_cli(checkpoint, store_path, events, "--export", str(tmp_path / "e.npy")) == 1
    assert f"export target {str(tmp_path / 'e.ids.txt')!r} is a folder" in caplog.text
    assert not store_path.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_export_folder_updates_nothing(tmp_path, checkpoint, caplog):
    events = write_tsv(tmp_path / "events.tsv", [("a", "hello")])
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert run_cli(checkpoint, tmp_path / "users.db", events, "--export", str(folder / "e.npy")) == 1
    finally:
        folder.chmod(0o755)
    assert "which is not writable" in caplog.text
    assert not (tmp_path / "users.db").exists()


def test_failed_export_write_rolls_back(tmp_path, checkpoint, caplog):
    store_path = tmp_path / "users.db"
    assert run_cli(checkpoint, store_path, write_tsv(tmp_path / "day1.tsv", [("a", "hi")])) == 0
    events = write_tsv(tmp_path / "day2.tsv", [("a", "abc"), ("b", "hello")])
    export = tmp_path / "e.npy"
    # A folder at the temporary file's name passes the checks on --export but fails the write.
    blocker = tmp_path / ".e.npy.tmp"
    blocker.mkdir()

    caplog.clear()
    assert run_cli(checkpoint, store_path, events, "--export", str(export)) == 1
    assert f"could not write the export {str(export)!r}" in caplog.text
    assert "nothing was committed, so the store is as before this run" in caplog.text
    assert stored_behaviors(store_path) == {"a": 2}
    assert not export.exists()
    assert not ids_path_for(export).exists()
    assert not (tmp_path / ".e.ids.txt.tmp").exists()

    blocker.rmdir()
    assert run_cli(checkpoint, store_path, events, "--export", str(export)) == 0
    assert stored_behaviors(store_path) == {"a": 5, "b": 5}
    assert ids_path_for(export).read_text(encoding="utf-8").splitlines() == ["a", "b"]
    assert not blocker.exists()
    with UserStateStore.open(store_path, checkpoint, TOKENIZER) as store:
        expected, _ = one_pass(store, ["hiabc", "hello"])
    assert np.abs(np.load(export) - expected.numpy()).max() <= 1e-4


def test_export_mismatch_rolls_back_update(tmp_path, checkpoint, caplog):
    other = tmp_path / "other"
    tiny_user_model("retnet", vocab_size=101, chunk_size=8, objective="CLM", initializer_range=0.05).save_pretrained(other)
    store_path = tmp_path / "users.db"
    assert run_cli(other, store_path, write_tsv(tmp_path / "old.tsv", [("old", "xyz")])) == 0

    # The update of "new" succeeds, but the export meets "old" of another checkpoint and fails.
    events = write_tsv(tmp_path / "new.tsv", [("new", "hello")])
    export = tmp_path / "e.parquet"
    assert run_cli(checkpoint, store_path, events, "--export", str(export)) == 1
    assert "computed with another checkpoint" in caplog.text
    assert stored_behaviors(store_path) == {"old": 3}
    assert not export.exists()
    assert not (tmp_path / ".e.parquet.tmp").exists()

    assert run_cli(checkpoint, store_path, events, "--export", str(export), "--skip_invalid") == 0
    assert stored_behaviors(store_path) == {"old": 3, "new": 5}
    assert export.is_file()


def test_help_has_no_literal_tab():
    result = subprocess.run(
        [sys.executable, "-m", "use.embed", "--help"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "\t" not in result.stdout
    assert 'delimiter="\\t"' in result.stdout


def test_missing_input_is_a_clear_error(tmp_path, caplog):
    checkpoint = tmp_path / "model"
    tiny_user_model().save_pretrained(checkpoint)
    assert run_cli(checkpoint, tmp_path / "users.db", tmp_path / "absent.tsv") == 1
    assert "absent.tsv" in caplog.text
