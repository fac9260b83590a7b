"""Reading user sequences from .txt, .csv and folders, and the train/test split by user."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from use.data import DataError, read_user_sequences, split_users
from use.data.files import hash_data_files, list_data_files

FIXTURES = Path(__file__).parent / "fixtures" / "train"


def test_txt_one_user_per_line():
    users = read_user_sequences(FIXTURES / "dna_users.txt")
    lines = (FIXTURES / "dna_users.txt").read_text().splitlines()
    assert users.sequences == lines
    assert len(users.sequences) == 24
    assert users.user_ids[0] == "dna_users.txt:1"
    assert users.user_ids[23] == "dna_users.txt:24"
    assert len(set(users.user_ids)) == 24


def test_txt_skips_empty_and_undecodable_lines():
    users = read_user_sequences(FIXTURES / "skipped_lines.txt")
    assert users.sequences == ["ACGTACGTAC", "GGGGCCCCAAAATTTT"]
    assert users.user_ids == ["skipped_lines.txt:1", "skipped_lines.txt:4"]
    stats = users.file_stats[0]
    assert stats.sequences == 2
    assert stats.empty == 2
    assert stats.non_decodable == 1


def test_csv_keeps_newlines_inside_sequences():
    users = read_user_sequences(FIXTURES / "dialog_users.csv")
    with (FIXTURES / "dialog_users.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert users.sequences == [row["sequence"] for row in rows]
    assert users.user_ids == [row["user_id"] for row in rows]
    assert len(users.sequences) == 13
    assert all("\n" in sequence for sequence in users.sequences)
    assert users.user_ids.count("d03") == 2


def test_csv_sequence_over_field_limit(tmp_path):
    # 200,000 characters: over the csv module's default limit of 131,072.
    sequence = "ab\n" * 66_667
    path = tmp_path / "long.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["sequence", "user_id"], [sequence, "u1"]])
    limit_before = csv.field_size_limit()

    users = read_user_sequences(path)

    assert users.sequences == [sequence]
    assert users.user_ids == ["u1"]
    assert csv.field_size_limit() == limit_before


def test_csv_without_user_id_numbers_rows(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text('sequence\n"ab\ncd"\nef\n')
    users = read_user_sequences(path)
    assert users.sequences == ["ab\ncd", "ef"]
    assert users.user_ids == ["plain.csv:row3", "plain.csv:row4"]


def test_csv_rows_without_user_id_are_counted(tmp_path):
    path = tmp_path / "partial.csv"
    # Line 3 has an empty user_id, line 5 lacks the field, and the row on lines 6-7 has an empty one.
    path.write_text('sequence,user_id\nab,u1\ncd,\nef,u1\ngh\n"i\nj",\n')
    users = read_user_sequences(path)
    assert users.sequences == ["ab", "cd", "ef", "gh", "i\nj"]
    assert users.user_ids == ["u1", "partial.csv:row3", "u1", "partial.csv:row5", "partial.csv:row7"]
    assert users.file_stats[0].without_user_id == 3
    assert users.file_stats[0].without_user_id_lines == [3, 5, 7]


def test_csv_lists_first_rows_without_user_id(tmp_path):
    path = tmp_path / "anonymous.csv"
    path.write_text("sequence,user_id\n" + "ab,\n" * 8)
    stats = read_user_sequences(path).file_stats[0]
    assert stats.without_user_id == 8
    assert stats.without_user_id_lines == [2, 3, 4, 5, 6]


def test_csv_without_user_id_column_is_not_counted(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("sequence\nab\ncd\n")
    assert read_user_sequences(path).file_stats[0].without_user_id == 0


def test_csv_skips_undecodable_and_empty_rows(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b'sequence,user_id\nabc,u1\n"",u2\n"d\xffe",u3\nfgh,u4\n')
    users = read_user_sequences(path)
    assert users.sequences == ["abc", "fgh"]
    assert users.user_ids == ["u1", "u4"]
    assert users.file_stats[0].empty == 1
    assert users.file_stats[0].non_decodable == 1


def test_csv_without_sequence_column_fails(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("text,user_id\nabc,u1\n")
    with pytest.raises(DataError, match="needs a 'sequence' column"):
        read_user_sequences(path)


def test_folder_reads_txt_and_csv_in_order(tmp_path):
    shutil.copy(FIXTURES / "dna_users.txt", tmp_path / "b.txt")
    shutil.copy(FIXTURES / "dialog_users.csv", tmp_path / "a.csv")
    (tmp_path / "notes.md").write_text("not data")
    users = read_user_sequences(tmp_path)
    assert len(users.sequences) == 13 + 24
    assert users.user_ids[0] == "d00"
    assert users.user_ids[13] == "b.txt:1"
    assert [Path(stats.path).name for stats in users.file_stats] == ["a.csv", "b.txt"]


def test_empty_file_fails():
    with pytest.raises(DataError, match="contains no usable sequence"):
        read_user_sequences(FIXTURES / "bad" / "empty.txt")


def test_missing_path_and_empty_folder_fail(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_user_sequences(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="contains no .txt or .csv file"):
        read_user_sequences(tmp_path)


def test_wrong_suffix_fails(tmp_path):
    path = tmp_path / "users.tsv"
    path.write_text("ACGT\n")
    with pytest.raises(DataError, match="expected one of"):
        list_data_files(path)


def test_hash_follows_content(tmp_path):
    path = tmp_path / "users.txt"
    path.write_text("ACGT\nGGCC\n")
    first = hash_data_files([path], path)
    assert hash_data_files([path], path) == first
    path.write_text("ACGT\nGGCA\n")
    assert hash_data_files([path], path) != first


def test_split_is_fixed_and_by_user():
    user_ids = [f"u{index}" for index in range(100)] + ["u7", "u7", "u42"]
    is_test = split_users(user_ids, 0.1)
    assert is_test.sum() == 10 + (is_test[7] * 2) + is_test[42]
    assert is_test[100] == is_test[7]
    assert is_test[101] == is_test[7]
    assert is_test[102] == is_test[42]
    np.testing.assert_array_equal(split_users(user_ids, 0.1), is_test)


def test_split_counts_and_limits():
    user_ids = [f"u{index}" for index in range(10)]
    assert split_users(user_ids, 0.01).sum() == 1
    assert split_users(user_ids, 3).sum() == 3
    assert split_users(user_ids, 0).sum() == 0
    with pytest.raises(DataError, match="lower --test-size"):
        split_users(user_ids, 10)
    with pytest.raises(DataError, match="lower --test-size"):
        split_users(["only"], 0.5)


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "users.csv"
    path.write_bytes("\ufeffsequence,user_id\nACGT,u1\nGGCC,u2\n".encode("utf-8"))
    users = read_user_sequences(path)
    assert users.sequences == ["ACGT", "GGCC"]
    assert users.user_ids == ["u1", "u2"]


def test_txt_with_byte_order_mark(tmp_path):
    path = tmp_path / "users.txt"
    path.write_bytes("\ufeffACGT\nGGCC\n".encode("utf-8"))
    users = read_user_sequences(path)
    assert users.sequences == ["ACGT", "GGCC"]
    assert users.user_ids == ["users.txt:1", "users.txt:2"]
