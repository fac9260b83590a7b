"""Reading the evaluation TSV, rejecting bad files, and cutting behaviors into periods."""

import csv
import logging
import re

import pytest
from transformers import AutoTokenizer

from use.evaluation.behaviors import (
    PeriodSchedule,
    character_splitter,
    fitting_window,
    prepare_behaviors,
    tokenizer_splitter,
)
from use.evaluation.cli import main
from use.evaluation.io import EvalFileError, read_eval_tsv, require_two_users, resolve_dataset_path


def write_tsv(path, rows, header=("history", "context")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def test_read_keeps_quoted_newlines_and_tabs(tmp_path):
    rows = [
        ("HOST: Welcome back.\nGUEST: Thanks for\thaving me.", 'GUEST: "Glad" to be here.'),
        ("CALLER: Hi, long-time listener.", "CALLER: First-time caller,\nactually."),
    ]
    users = read_eval_tsv(write_tsv(tmp_path / "eval.tsv", rows))

    assert users.histories == [rows[0][0], rows[1][0]]
    assert users.contexts == [rows[0][1], rows[1][1]]
    assert users.rows == [2, 3]
    assert users.skipped == []


def test_read_skips_incomplete_rows_with_row_numbers(tmp_path, caplog):
    path = tmp_path / "eval.tsv"
    path.write_text(
        "history\tcontext\n"
        "HOST: one\tHOST: two\n"
        "GUEST: only history\n"
        "\tGUEST: only context\n"
        "ANCHOR: a\t   \n"
        "ANCHOR: b\tANCHOR: c\textra\n"
        "REPORTER: x\tREPORTER: y\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING):
        users = read_eval_tsv(path)

    assert users.rows == [2, 7]
    assert [(s.row, s.reason) for s in users.skipped] == [
        (3, "has 1 column(s), expected 2"),
        (4, "empty history"),
        (5, "empty context"),
        (6, "has 3 column(s), expected 2"),
    ]
    assert "Skipped 1 row(s) of " in caplog.text
    assert "eval.tsv: has 1 column(s), expected 2 (rows 3)" in caplog.text
    assert "eval.tsv: empty history (rows 4)" in caplog.text


def test_read_accepts_utf8_bom_and_trailing_blank_line(tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_bytes("\ufeffhistory\tcontext\nA: é\tB: ü\nC: x\tD: y\n\n".encode("utf-8"))
    users = read_eval_tsv(path)

    assert users.histories == ["A: é", "C: x"]
    assert users.rows == [2, 3]


def test_missing_header_names_row_1(tmp_path):
    path = write_tsv(tmp_path / "eval.tsv", [("HOST: hi", "HOST: bye")], header=None)
    expected = r"row 1 of .* is not the header 'history<TAB>context' \(found 'HOST: hi<TAB>HOST: bye'\)"
    with pytest.raises(EvalFileError, match=expected):
        read_eval_tsv(path)


def test_single_column_file_is_rejected(tmp_path):
    path = tmp_path / "eval.csv.tsv"
    path.write_text("history,context\nHOST: hi,HOST: bye\n", encoding="utf-8")
    with pytest.raises(EvalFileError, match=r"row 1 of .* has 1 column \(history,context\)"):
        read_eval_tsv(path)


def test_blank_row_between_users_names_row(tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_text("history\tcontext\nA: a\tA: b\n\nB: a\tB: b\n", encoding="utf-8")
    with pytest.raises(EvalFileError, match=r"row 3 of .* is empty but more rows follow"):
        read_eval_tsv(path)


def test_empty_header_row_is_rejected(tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_text("\nA: a\tA: b\n", encoding="utf-8")
    with pytest.raises(EvalFileError, match=r"row 1 of .* is empty; expected the header"):
        read_eval_tsv(path)


def test_non_utf8_byte_names_row_and_byte(tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_bytes(b"history\tcontext\nA: fine\tA: fine\nB: caf\xe9\tB: ok\n")
    expected = r"row 3 \(line 3\) column 1 of .* contains byte 0xe9, which is not valid UTF-8"
    with pytest.raises(EvalFileError, match=expected):
        read_eval_tsv(path)


def test_non_utf8_row_number_counts_records_not_lines(tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_bytes(b'history\tcontext\n"A: two\nlines"\tA: ok\nB: ok\tB: \xff\n')
    with pytest.raises(EvalFileError, match=r"row 3 \(line 4\) column 2 .* byte 0xff"):
        read_eval_tsv(path)


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_bytes(b"")
    with pytest.raises(EvalFileError, match="is empty; expected the header line"):
        read_eval_tsv(path)


def test_header_only_file_is_rejected(tmp_path):
    path = write_tsv(tmp_path / "eval.tsv", [])
    with pytest.raises(EvalFileError, match="contains only the header"):
        read_eval_tsv(path)


def test_fewer_than_two_users_is_an_error(tmp_path):
    users = read_eval_tsv(write_tsv(tmp_path / "eval.tsv", [("A: a", "A: b"), ("B: only history", "")]))
    assert len(users) == 1
    with pytest.raises(EvalFileError, match=r"1 usable user\(s\) after skipping 1 row\(s\); .* need at least 2"):
        require_two_users(len(users), users.skipped, users.path)


def test_dataset_dir_resolves_single_tsv(tmp_path):
    tsv = write_tsv(tmp_path / "users.tsv", [("A: a", "A: b")])
    (tmp_path / "notes.txt").write_text("not data", encoding="utf-8")

    assert resolve_dataset_path(tmp_path) == tsv
    assert resolve_dataset_path(tsv) == tsv


def test_dataset_dir_errors(tmp_path):
    with pytest.raises(EvalFileError, match="contains no .tsv file"):
        resolve_dataset_path(tmp_path)
    write_tsv(tmp_path / "a.tsv", [])
    write_tsv(tmp_path / "b.tsv", [])
    with pytest.raises(EvalFileError, match=r"contains 2 .tsv files \(a.tsv, b.tsv\)"):
        resolve_dataset_path(tmp_path)
    with pytest.raises(EvalFileError, match="not found"):
        resolve_dataset_path(tmp_path / "missing.tsv")


def test_period_schedule_counts_periods():
    schedule = PeriodSchedule(max_len=4000, period_len=250)
    assert schedule.num_periods == 16
    assert schedule.context_len == 4000
    assert PeriodSchedule(max_len=10, period_len=3).context_len == 9
    with pytest.raises(ValueError, match=r"max_len \(2\) is shorter than period_len \(3\)"):
        PeriodSchedule(max_len=2, period_len=3)
    with pytest.raises(ValueError, match="period_len must be at least 1"):
        PeriodSchedule(max_len=2, period_len=0)


def test_prepare_behaviors_cuts_windows_and_skips_short_users(tmp_path, caplog):
    rows = [
        ("0123456789", "abcdefghijXYZ"),
        ("01", "abc"),
        ("0123", "ABCDEFGHIJ"),
    ]
    users = read_eval_tsv(write_tsv(tmp_path / "eval.tsv", rows))
    schedule = PeriodSchedule(max_len=5, period_len=2)
    with caplog.at_level(logging.WARNING):
        data, skipped = prepare_behaviors(users, character_splitter, schedule)

    assert data.rows == [2, 4]
    assert data.histories == [list("56789"), list("0123")]
    assert data.contexts == [list("abcd"), list("ABCD")]
    assert data.period(0, 2) == list("cd")
    assert data.context_prefix(1, 1) == list("AB")
    assert [(s.row, s.reason) for s in skipped] == [(3, "context shorter than 4 behaviors (2 periods x 2)")]
    assert "eval.tsv: context shorter than 4 behaviors (2 periods x 2) (rows 3)" in caplog.text


def test_tokenizer_splitter_uses_token_ids():
    tokenizer = AutoTokenizer.from_pretrained("tokenizer/dialog")
    split = tokenizer_splitter(tokenizer)
    expected = tokenizer("HOST: Hi!", add_special_tokens=False)["input_ids"]

    assert split(["HOST: Hi!"]) == [expected]
    assert len(expected) == len("HOST: Hi!")


def suggested_flags(log_text: str) -> list[str]:
    """Return the flags of the "Pass --max_len M --period_len P" suggestion in the log."""
    match = re.search(r"Pass --max_len (\d+) --period_len (\d+) ", log_text)
    assert match, log_text
    return ["--max_len", match.group(1), "--period_len", match.group(2)]


def test_short_users_hint_runs(tmp_path, caplog):
    """The suggested --max_len and --period_len evaluate a TSV whose contexts are all shorter than --max_len."""
    path = write_tsv(tmp_path / "short.tsv", [("abcdef", "ghijkl"), ("mnopqr", "stuvwx")])
    arguments = ["--method_type", "tf-idf", "--dataset_dir", str(path)]
    with caplog.at_level(logging.ERROR):
        assert main("reid", [*arguments, "--max_len", "250"]) == 1

    assert "0 user(s) have the 250 context behaviors that 1 period(s) of 250 behaviors need" in caplog.text
    assert "The longest context has 6 behaviors, and the two longest have at least 6" in caplog.text
    flags = suggested_flags(caplog.text)
    assert flags == ["--max_len", "6", "--period_len", "6"]

    caplog.clear()
    assert main("reid", [*arguments, *flags]) == 0, caplog.text


def test_short_users_hint_fits_second_longest(tmp_path, caplog):
    """With one long user, the suggestion fits the second-longest context, so that 2 users remain."""
    rows = [("ab", "c" * 40), ("de", "f" * 9), ("gh", "i" * 3)]
    path = write_tsv(tmp_path / "eval.tsv", rows)
    arguments = ["--method_type", "tf-idf", "--dataset_dir", str(path)]
    with caplog.at_level(logging.ERROR):
        assert main("reid", [*arguments, "--max_len", "20", "--period_len", "5"]) == 1

    assert "1 user(s) have the 20 context behaviors that 4 period(s) of 5 behaviors need" in caplog.text
    flags = suggested_flags(caplog.text)
    assert flags == ["--max_len", "5", "--period_len", "5"]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main("reid", [*arguments, *flags]) == 0, caplog.text
    assert "context shorter than 5 behaviors (1 periods x 5) (rows 4)" in caplog.text


def test_short_users_hint_needs_two_histories(tmp_path, caplog):
    rows = [("ab", "cd"), ("\u200b", "ef")]
    users = read_eval_tsv(write_tsv(tmp_path / "eval.tsv", rows))
    with caplog.at_level(logging.ERROR):
        prepare_behaviors(users, lambda texts: [list(text.strip("\u200b")) for text in texts], PeriodSchedule(8, 4))
    assert "Pass --max_len" not in caplog.text


@pytest.mark.parametrize(
    ("fit", "max_len", "period_len", "expected"),
    [
        (6, 250, 250, (6, 6)),
        (600, 4000, 250, (500, 250)),
        (100, 4000, 250, (96, 6)),
        (3, 4000, 250, (3, 1)),
        (10, 10, 5, (10, 5)),
        (1, 9, 3, (1, 1)),
    ],
)
def test_fitting_window(fit, max_len, period_len, expected):
    suggested_max_len, suggested_period_len = fitting_window(fit, PeriodSchedule(max_len, period_len))
    assert (suggested_max_len, suggested_period_len) == expected
    assert suggested_max_len <= fit
    assert suggested_max_len % suggested_period_len == 0
