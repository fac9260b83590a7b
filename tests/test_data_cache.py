"""Tokenizing, splitting and caching users: the cache key, reuse, filtering and counts."""

import csv
import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from use.data import DataError, DataSettings, prepare_user_datasets

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "train"
DNA_TOKENIZER = REPO / "tokenizer" / "dna"
DIALOG_TOKENIZER = REPO / "tokenizer" / "dialog"

BASE = DataSettings(
    objective="FEP_SUP", min_input_size=20, max_input_size=40, gap=5, fep_window_size=3, test_size=0.2
)


@pytest.fixture(scope="module")
def dna_tokenizer():
    return AutoTokenizer.from_pretrained(DNA_TOKENIZER)


def prepare(data, tokenizer, tokenizer_path, cache_dir, settings=BASE):
    return prepare_user_datasets(data, tokenizer, tokenizer_path, settings, cache_dir)


def test_same_inputs_reuse_cache(tmp_path, dna_tokenizer):
    data = FIXTURES / "dna_users.txt"
    first = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path)
    second = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path)
    assert not first.from_cache
    assert second.from_cache
    assert second.cache_path == first.cache_path
    assert [path.name for path in tmp_path.iterdir()] == [first.cache_path.name]
    assert second.train["row_id"][:].tolist() == first.train["row_id"][:].tolist()


def test_cached_arrays_are_the_tokenized_users(tmp_path, dna_tokenizer):
    data = FIXTURES / "dna_users.txt"
    prepared = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path)
    lines = data.read_text().splitlines()
    assert len(prepared.train) + len(prepared.test) == 24
    assert len(prepared.test) == 5  # ceil(0.2 * 24)
    assert not set(prepared.train["row_id"][:].tolist()) & set(prepared.test["row_id"][:].tolist())
    row = prepared.train[0]
    expected = dna_tokenizer(lines[row["row_id"]], add_special_tokens=False)["input_ids"]
    assert row["input_ids"].tolist() == expected
    assert row["length"] == len(expected)


@pytest.mark.parametrize(
    "change",
    [
        {"fep_window_size": 4},
        {"gap": 6},
        {"objective": "FEP"},
        {"min_input_size": 21},
        {"max_input_size": 41},
        {"test_size": 0.25},
    ],
)
def test_settings_change_the_key(tmp_path, dna_tokenizer, change):
    data = FIXTURES / "dna_users.txt"
    base = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path)
    changed = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path, dataclasses.replace(BASE, **change))
    assert not changed.from_cache
    assert changed.cache_path != base.cache_path


def test_data_content_changes_the_key(tmp_path, dna_tokenizer):
    data = tmp_path / "users.txt"
    shutil.copy(FIXTURES / "dna_users.txt", data)
    base = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path / "cache")
    text = data.read_text()
    data.write_text(("T" if text[0] != "T" else "A") + text[1:])
    changed = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path / "cache")
    assert not changed.from_cache
    assert changed.cache_path != base.cache_path


def test_tokenizer_changes_the_key(tmp_path, dna_tokenizer):
    data = FIXTURES / "dna_users.txt"
    tokenizer_copy = tmp_path / "tokenizer"
    shutil.copytree(DNA_TOKENIZER, tokenizer_copy)
    base = prepare(data, dna_tokenizer, tokenizer_copy, tmp_path / "cache")

    config_file = tokenizer_copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_max_length"] = 4096
    config_file.write_text(json.dumps(config))
    changed = prepare(data, dna_tokenizer, tokenizer_copy, tmp_path / "cache")
    assert changed.cache_path != base.cache_path

    dialog = AutoTokenizer.from_pretrained(DIALOG_TOKENIZER)
    other = prepare(data, dialog, DIALOG_TOKENIZER, tmp_path / "cache")
    assert other.cache_path not in (base.cache_path, changed.cache_path)


def test_short_users_are_filtered_and_counted(tmp_path, dna_tokenizer, caplog):
    data = tmp_path / "users.txt"
    long_users = [("ACGT" * 20)[: 60 + index] for index in range(8)]
    data.write_text("\n".join(long_users + ["ACGTACGT", "ACG"]) + "\n")
    with caplog.at_level(logging.INFO, logger="use"):
        settings = dataclasses.replace(BASE, test_size=0)
        prepared = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path / "cache", settings)
    assert len(prepared.train) == 8
    assert prepared.test is None
    assert prepared.meta["train_too_short"] == 2
    assert prepared.meta["min_user_length"] == 2 * 18 + 5
    assert "8 kept, 2 dropped with fewer than 41 behaviors" in caplog.text


def test_gap_below_window_is_raised_for_the_filter():
    settings = dataclasses.replace(BASE, gap=1, fep_window_size=4)
    assert settings.effective_gap == 4
    assert settings.segment_settings(random_start=False).min_user_length == 2 * 18 + 4
    assert dataclasses.replace(settings, objective="SUP").effective_gap == 1


def test_unknown_behaviors_are_counted(tmp_path, dna_tokenizer, caplog):
    with caplog.at_level(logging.INFO, logger="use"):
        prepared = prepare(
            FIXTURES / "unknown.txt",
            dna_tokenizer,
            DNA_TOKENIZER,
            tmp_path,
            dataclasses.replace(BASE, objective="CLM", test_size=0),
        )
    assert prepared.meta["unknown_behaviors"] == 3
    assert prepared.meta["users_with_unknown"] == 1
    assert "3 behaviors map to [UNK]" in caplog.text
    first = prepared.train.filter(lambda row: row["row_id"] == 0)[0]["input_ids"]
    assert np.count_nonzero(first == dna_tokenizer.unk_token_id) == 3


def test_skipped_lines_are_logged_again_from_cache(tmp_path, dna_tokenizer, caplog):
    settings = dataclasses.replace(BASE, objective="CLM", test_size=0)
    prepare(FIXTURES / "skipped_lines.txt", dna_tokenizer, DNA_TOKENIZER, tmp_path, settings)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="use"):
        prepared = prepare(FIXTURES / "skipped_lines.txt", dna_tokenizer, DNA_TOKENIZER, tmp_path, settings)
    assert prepared.from_cache
    assert "skipped 2 empty and 1 non-UTF-8 sequences" in caplog.text


def test_all_users_too_short_fails(tmp_path, dna_tokenizer):
    with pytest.raises(DataError, match="have fewer than 41 behaviors"):
        settings = dataclasses.replace(BASE, test_size=0)
        prepare(FIXTURES / "bad" / "short.txt", dna_tokenizer, DNA_TOKENIZER, tmp_path, settings)
    assert list(tmp_path.iterdir()) == []


def test_rows_of_one_user_are_joined(tmp_path, dna_tokenizer, caplog):
    data = tmp_path / "users.csv"
    rows = [("AAAC", "u1"), ("CCCG", "u2"), ("GGGT", "u1"), ("TTTA", "u3"), ("ACGT", "u1"), ("CAGT", "u2")]
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "user_id"])
        writer.writerows(rows)
    settings = dataclasses.replace(BASE, objective="CLM", test_size=0)
    with caplog.at_level(logging.INFO, logger="use"):
        prepared = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path / "cache", settings)

    def ids(text: str) -> list[int]:
        return dna_tokenizer(text, add_special_tokens=False)["input_ids"]

    assert len(prepared.train) == 3
    assert prepared.train["row_id"][:].tolist() == [0, 1, 2]
    assert prepared.train[0]["input_ids"].tolist() == ids("AAACGGGTACGT")
    assert prepared.train[1]["input_ids"].tolist() == ids("CCCGCAGT")
    assert prepared.train[2]["input_ids"].tolist() == ids("TTTA")
    assert prepared.train["length"][:].tolist() == [12, 8, 4]
    assert prepared.meta["sequences"] == 6
    assert prepared.meta["users"] == 3
    assert prepared.meta["merged_rows"] == 3
    expected_line = "joined the 5 rows of the 2 users that have more than one row (same user_id) in file order, so 6 "
    expected_line += "sequences give 3 users"
    assert expected_line in caplog.text


def test_joined_users_stay_on_one_side_of_split(tmp_path, dna_tokenizer):
    data = tmp_path / "users.csv"
    lines = (FIXTURES / "dna_users.txt").read_text().splitlines()
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "user_id"])
        for index, line in enumerate(lines):
            # User u<i> (i < 12) gets two rows: fixture lines i and i + 12.
            writer.writerow([line, f"u{index % 12}"])
    prepared = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path / "cache")

    assert len(prepared.train) + len(prepared.test) == 12
    assert len(prepared.test) == 3  # ceil(0.2 * 12)
    lengths = {int(row["row_id"]): int(row["length"]) for row in [*prepared.train, *prepared.test]}
    assert lengths == {user: len(lines[user]) + len(lines[user + 12]) for user in range(12)}


def test_missing_user_id_warns_from_cache(tmp_path, dna_tokenizer, caplog):
    data = tmp_path / "users.csv"
    data.write_text("sequence,user_id\nAAAC,u1\nCCCG,\nGGGT,u1\nTTTA,\n")
    settings = dataclasses.replace(BASE, objective="CLM", test_size=0)
    expected = (
        f"{data}: 2 rows have an empty or missing user_id (first at lines 3, 5), so each is trained as its own "
        "user; fill in their user_id to join them with that user's other rows"
    )
    for from_cache in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="use"):
            prepared = prepare(data, dna_tokenizer, DNA_TOKENIZER, tmp_path / "cache", settings)
        assert prepared.from_cache == from_cache
        assert prepared.meta["users"] == 3
        warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
        assert warnings == [expected]
