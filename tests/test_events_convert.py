"""Event log converter: reading, sorting, splitting, the written files, and the CLI."""

import csv
import hashlib
import json
import logging
import subprocess
import sys
from datetime import timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from use.evaluation.io import read_eval_tsv
from use.events import (
    ColumnNames,
    ConversionSettings,
    EventLogError,
    convert_event_log,
    parse_timestamp,
    read_event_log,
)
from use.events.convert import group_by_user

REPO = Path(__file__).resolve().parents[1]


def write_log(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def read_training_csv(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["sequence", "user_id"]
        return {user: sequence for sequence, user in reader}


def read_tsv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter="\t"))


def sequences_of(log_path: Path, **kwargs) -> dict[str, str]:
    return {user.user_id: " ".join(user.names) for user in group_by_user(read_event_log(log_path, **kwargs))}


# --- reading -----------------------------------------------------------------------------------------


def test_unsorted_rows_sorted_by_time(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,30,c\nu2,5,x\nu1,10,a\nu1,20,b\n")
    assert sequences_of(path) == {"u1": "a b c", "u2": "x"}


def test_equal_timestamps_keep_file_order(tmp_path):
    path = write_log(
        tmp_path / "log.csv", "user_id,timestamp,event\nu1,20,late\nu1,10,first\nu1,10,second\nu1,10,third\n"
    )
    assert sequences_of(path) == {"u1": "first second third late"}


def test_blank_lines_skipped_and_counted(tmp_path, caplog):
    path = write_log(tmp_path / "log.csv", "\nuser_id,timestamp,event\n\nu1,1,a\n\n\nu1,2,b\n")
    with caplog.at_level(logging.INFO, logger="use.events.log"):
        log = read_event_log(path)
    assert log.names == ["a", "b"]
    assert log.rows == [2, 3]
    assert log.empty_lines == 4
    assert f"Skipped 4 blank line(s) in {path}" in caplog.text


def test_missing_column_names_header(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id,time,event\nu1,1,a\n")
    with pytest.raises(EventLogError) as error:
        read_event_log(path)
    message = str(error.value)
    assert "column 'timestamp' not found in the header (row 1)" in message
    assert "'user_id', 'time', 'event'" in message
    assert "--time-column" in message


def test_custom_column_names_and_extra_columns(tmp_path):
    path = write_log(tmp_path / "log.tsv", "ts\tname\tdevice\tuid\n2\tb\tios\tu1\n1\ta\tweb\tu1\n")
    assert sequences_of(path, columns=ColumnNames(user="uid", time="ts", event="name")) == {"u1": "a b"}


def test_wrong_field_count_names_row(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,1,a\nu1,2\n")
    with pytest.raises(EventLogError, match=r"row 3 \(line 3\) of .* has 2 field\(s\) but the header has 3"):
        read_event_log(path)


def test_tsv_read_as_csv_reports_field_count(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id\ttimestamp\tevent\nu1\t1\ta\n")
    with pytest.raises(EventLogError, match="column 'user_id' not found"):
        read_event_log(path)


@pytest.mark.parametrize(("row", "what"), [(",5,a", "user id"), ("u1,,a", "timestamp"), ("u1,5, ", "event")])
def test_empty_value_names_row(tmp_path, row, what):
    path = write_log(tmp_path / "log.csv", f"user_id,timestamp,event\nu1,1,a\n{row}\n")
    with pytest.raises(EventLogError, match=rf"row 3 \(line 3\) of .* has an empty {what}"):
        read_event_log(path)


def test_invalid_timestamp_names_row(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,1,a\nu1,yesterday,b\n")
    with pytest.raises(EventLogError, match=r"row 3 \(line 3\) .* timestamp 'yesterday', which is neither"):
        read_event_log(path)


def test_non_finite_timestamp_rejected(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,nan,a\n")
    with pytest.raises(EventLogError, match="row 2 .* not a finite number"):
        read_event_log(path)


def test_row_numbers_count_records_not_lines(tmp_path):
    path = write_log(tmp_path / "log.csv", 'user_id,timestamp,event\nu1,1,"two\nlines"\nu1,x,b\n')
    with pytest.raises(EventLogError, match=r"row 3 \(line 4\)"):
        read_event_log(path)


def test_whitespace_in_names_replaced_and_counted(tmp_path, caplog):
    path = write_log(tmp_path / "log.csv", 'user_id,timestamp,event\nu1,1,add to  cart\nu1,2,"tab\there"\nu1,3,ok\n')
    with caplog.at_level(logging.WARNING, logger="use.events.log"):
        log = read_event_log(path)
    assert log.names == ["add_to_cart", "tab_here", "ok"]
    assert log.renamed_events == 2
    assert "Replaced whitespace with '_' in the names of 2 event(s)" in caplog.text


def test_special_token_event_names_row(tmp_path):
    path = write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,1,a\nu1,2,[SEP]\n")
    with pytest.raises(EventLogError, match=r"row 3 .* the event '\[SEP\]', which is a special token"):
        read_event_log(path)


def test_empty_file_and_header_only(tmp_path):
    with pytest.raises(EventLogError, match="is empty"):
        read_event_log(write_log(tmp_path / "empty.csv", ""))
    with pytest.raises(EventLogError, match="contains a header but no events"):
        read_event_log(write_log(tmp_path / "header.csv", "user_id,timestamp,event\n"))


def test_unknown_extension_needs_delimiter(tmp_path):
    path = write_log(tmp_path / "log.txt", "user_id;timestamp;event\nu1;1;a\n")
    with pytest.raises(EventLogError, match="pass --delimiter"):
        read_event_log(path)
    assert read_event_log(path, delimiter=";").names == ["a"]


def test_parse_timestamp_formats():
    assert parse_timestamp("881250949") == 881250949.0
    assert parse_timestamp("1.5") == 1.5
    assert parse_timestamp("1700000000123", unit_seconds=1e-3) == pytest.approx(1700000000.123)
    assert parse_timestamp("1970-01-02T00:00:00Z") == 86400.0
    assert parse_timestamp("1970-01-02T01:00:00+01:00") == 86400.0
    assert parse_timestamp("1970-01-02 00:00:00") == 86400.0
    assert parse_timestamp("1970-01-02T01:00:00", zone=ZoneInfo("Europe/Berlin")) == 86400.0
    assert parse_timestamp("1970-01-02", zone=timezone.utc) == 86400.0


def test_milliseconds_warning(tmp_path, caplog):
    path = write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,1700000000123,a\n")
    with caplog.at_level(logging.WARNING, logger="use.events.log"):
        read_event_log(path)
    assert "pass --time-unit ms" in caplog.text
    assert read_event_log(path, time_unit="ms").times == [pytest.approx(1700000000.123)]


# --- splitting and writing ---------------------------------------------------------------------------


def make_users_log(path: Path, lengths: dict[str, int]) -> Path:
    """A log where user u's i-th event is named e<i> at time 100 * i, rows interleaved across users."""
    lines = ["user_id,timestamp,event"]
    for index in range(max(lengths.values())):
        for user, length in lengths.items():
            if index < length:
                lines.append(f"{user},{100 * index},e{index}")
    return write_log(path, "\n".join(lines) + "\n")


def test_count_mode_split_and_files(tmp_path):
    lengths = {"a": 12, "b": 9, "c": 10, "d": 11, "e": 3, "f": 1}
    log = read_event_log(make_users_log(tmp_path / "log.csv", lengths))
    settings = ConversionSettings(context_events=4, min_history=5, eval_size=2, seed=0)
    stats = convert_event_log(log, tmp_path / "out", settings)

    eval_ids = (tmp_path / "out" / "eval_users.txt").read_text(encoding="utf-8").split()
    train = read_training_csv(tmp_path / "out" / "train.csv")
    assert len(eval_ids) == 2
    assert set(eval_ids) <= {"a", "b", "c", "d"}
    assert set(train) == {"a", "b", "c", "d", "e"} - set(eval_ids)
    assert train["e"] == "e0 e1 e2"

    rows = read_tsv_rows(tmp_path / "out" / "eval.tsv")
    assert rows[0] == ["history", "context"]
    for user, (history, context) in zip(eval_ids, rows[1:], strict=True):
        names = [f"e{i}" for i in range(lengths[user])]
        assert context.split() == names[-4:]
        assert history.split() == names[:-4]

    assert stats["users_read"] == 6
    assert stats["events_read"] == 46
    assert stats["users_dropped_short"] == 1
    assert stats["eval"] == {
        "users": 2,
        "eligible_users": 4,
        "history_events": sum(len(r[0].split()) for r in rows[1:]),
        "context_events": 8,
    }
    assert stats["train"]["users"] == 3
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8")) == stats
    assert not (tmp_path / "out" / "eval.periods.json").exists()


def test_one_event_user_dropped_with_count(tmp_path, caplog):
    log = read_event_log(make_users_log(tmp_path / "log.csv", {"a": 6, "b": 6, "c": 6, "solo": 1}))
    with caplog.at_level(logging.WARNING, logger="use.events.convert"):
        stats = convert_event_log(log, tmp_path / "out", ConversionSettings(context_events=2, eval_size=2))
    assert stats["users_dropped_short"] == 1
    assert "Dropped 1 user(s) with fewer than 2 events from training" in caplog.text
    assert "solo" not in read_training_csv(tmp_path / "out" / "train.csv")


def test_one_event_users_kept_with_min_one(tmp_path):
    log = read_event_log(make_users_log(tmp_path / "log.csv", {"a": 6, "b": 6, "c": 6, "solo": 1}))
    settings = ConversionSettings(context_events=2, eval_size=2, min_train_events=1)
    convert_event_log(log, tmp_path / "out", settings)
    assert read_training_csv(tmp_path / "out" / "train.csv")["solo"] == "e0"


def test_split_is_seeded(tmp_path):
    log = read_event_log(make_users_log(tmp_path / "log.csv", {f"u{i}": 8 for i in range(20)}))
    settings = dict(context_events=3, eval_size=5)
    for name, seed in (("one", 1), ("two", 1), ("three", 2)):
        convert_event_log(log, tmp_path / name, ConversionSettings(seed=seed, **settings))

    for file in ("train.csv", "eval.tsv", "eval_users.txt"):
        assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes()
    assert (tmp_path / "one" / "eval_users.txt").read_text() != (tmp_path / "three" / "eval_users.txt").read_text()


def test_eval_fraction_of_eligible(tmp_path):
    log = read_event_log(make_users_log(tmp_path / "log.csv", {f"u{i}": 8 if i < 10 else 2 for i in range(14)}))
    stats = convert_event_log(log, tmp_path / "out", ConversionSettings(context_events=4, eval_size=0.3))
    assert stats["eval"]["eligible_users"] == 10
    assert stats["eval"]["users"] == 3
    assert stats["train"]["users"] == 11


@pytest.mark.parametrize(
    ("eval_size", "message"), [(5, "asks for 5 evaluation users but only 3"), (0.2, "gives 1 evaluation user")]
)
def test_eval_size_errors(tmp_path, eval_size, message):
    log = read_event_log(make_users_log(tmp_path / "log.csv", {"a": 8, "b": 8, "c": 8, "d": 2}))
    with pytest.raises(EventLogError, match=message):
        convert_event_log(log, tmp_path / "out", ConversionSettings(context_events=4, eval_size=eval_size))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"period": "week"}, "period 'week' is invalid"),
        ({"context_events": 0}, "context_events must be at least 1"),
        ({"eval_size": 2.5}, "eval size 2.5 is invalid"),
        ({"eval_size": 0}, "eval size 0 is invalid"),
    ],
)
def test_invalid_settings(settings, message):
    with pytest.raises(EventLogError, match=message):
        ConversionSettings(**settings)


def test_names_with_separators_survive_files(tmp_path):
    path = write_log(
        tmp_path / "log.tsv",
        'user_id\ttimestamp\tevent\nu,1\t1\tsay,"hi"\nu,1\t2\tb\nu,1\t3\tc\nu2\t1\tx\nu2\t2\ty\nu2\t3\tz\n'
        "u3\t1\tx\nu3\t2\ty\nu3\t3\tz\n",
    )
    convert_event_log(read_event_log(path), tmp_path / "out", ConversionSettings(context_events=1, eval_size=2, seed=3))
    train = read_training_csv(tmp_path / "out" / "train.csv")
    users = read_eval_tsv(tmp_path / "out" / "eval.tsv")
    eval_ids = (tmp_path / "out" / "eval_users.txt").read_text(encoding="utf-8").splitlines()
    sequences = dict(train)
    sequences.update(
        {
            user: f"{history} {context}"
            for user, history, context in zip(eval_ids, users.histories, users.contexts, strict=True)
        }
    )
    assert sequences["u,1"] == 'say,"hi" b c'
    assert len(users) == 2
    assert users.skipped == []


def test_day_mode_context_days_and_boundaries(tmp_path):
    day = 86400
    rows = [
        ("u1", 0, "a"),
        ("u1", 10, "b"),
        ("u1", 2 * day, "c"),
        ("u1", 2 * day + 5, "d"),
        ("u1", 5 * day, "e"),
        ("u2", 0, "a"),
        ("u2", day, "b"),
        ("u2", day + 1, "c"),
        ("u2", 3 * day, "d"),
        ("u3", 0, "a"),
        ("u3", 1, "b"),
    ]
    text = "user_id,timestamp,event\n" + "".join(f"{user},{time},{event}\n" for user, time, event in rows)
    log = read_event_log(write_log(tmp_path / "log.csv", text))
    settings = ConversionSettings(period="day", context_days=2, eval_size=2)
    stats = convert_event_log(log, tmp_path / "out", settings)

    assert stats["eval"]["eligible_users"] == 2
    periods = json.loads((tmp_path / "out" / "eval.periods.json").read_text(encoding="utf-8"))
    assert periods["period"] == "day"
    assert periods["timezone"] == "UTC"
    assert periods["context_days"] == 2
    tsv_bytes = (tmp_path / "out" / "eval.tsv").read_bytes()
    assert periods["eval_tsv_sha256"] == hashlib.sha256(tsv_bytes).hexdigest()
    assert periods["users"] == [
        {"row": 2, "user_id": "u1", "days": ["1970-01-03", "1970-01-06"], "context_ends": [2, 3]},
        {"row": 3, "user_id": "u2", "days": ["1970-01-02", "1970-01-04"], "context_ends": [2, 3]},
    ]
    rows = read_tsv_rows(tmp_path / "out" / "eval.tsv")
    assert rows[1:] == [["a b", "c d e"], ["a", "b c d"]]
    assert read_training_csv(tmp_path / "out" / "train.csv") == {"u3": "a b"}


def test_day_mode_uses_timezone(tmp_path):
    # 23:30 UTC on 1 January is 00:30 on 2 January in Berlin (UTC+1).
    text = "user_id,timestamp,event\n" + "".join(
        f"{user},{time},{event}\n" for user in ("u1", "u2", "u3") for time, event in ((3600, "a"), (84600, "b"))
    )
    log = read_event_log(write_log(tmp_path / "log.csv", text))
    with pytest.raises(EventLogError, match="only 0 are long enough"):
        convert_event_log(log, tmp_path / "utc", ConversionSettings(period="day", eval_size=2))

    berlin = ConversionSettings(period="day", eval_size=2, timezone="Europe/Berlin")
    convert_event_log(log, tmp_path / "berlin", berlin)
    periods = json.loads((tmp_path / "berlin" / "eval.periods.json").read_text(encoding="utf-8"))
    assert [user["days"] for user in periods["users"]] == [["1970-01-02"], ["1970-01-02"]]


def test_day_mode_out_of_range_timestamp(tmp_path):
    log = read_event_log(write_log(tmp_path / "log.csv", "user_id,timestamp,event\nu1,1700000000123,a\n"))
    with pytest.raises(EventLogError, match="has no calendar date .* check --time-unit"):
        convert_event_log(log, tmp_path / "out", ConversionSettings(period="day"))


def test_unknown_timezone(tmp_path):
    log = read_event_log(make_users_log(tmp_path / "log.csv", {"a": 4, "b": 4}))
    with pytest.raises(EventLogError, match="time zone 'Mars/Olympus' not found"):
        convert_event_log(log, tmp_path / "out", ConversionSettings(period="day", timezone="Mars/Olympus"))


# --- command line ------------------------------------------------------------------------------------


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_event_log.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_cli_converts_iso_log(tmp_path):
    lines = ["uid;when;what"]
    for user in ("x", "y", "z"):
        for hour, event in enumerate(("open", "view item", "buy", "close")):
            lines.append(f"{user};2024-03-0{hour + 1}T10:00:00Z;{event}")
    path = write_log(tmp_path / "log.txt", "\n".join(lines) + "\n")
    result = run_script(
        "--input",
        path,
        "--output-dir",
        tmp_path / "out",
        "--delimiter",
        ";",
        "--user-column",
        "uid",
        "--time-column",
        "when",
        "--event-column",
        "what",
        "--period",
        "day",
        "--context-days",
        "2",
        "--eval-size",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "Replaced whitespace with '_' in the names of 3 event(s)" in result.stderr
    rows = read_tsv_rows(tmp_path / "out" / "eval.tsv")
    assert rows[1:] == [["open view_item", "buy close"], ["open view_item", "buy close"]]


def test_cli_reports_missing_column(tmp_path):
    path = write_log(tmp_path / "log.csv", "user,timestamp,event\nu1,1,a\n")
    result = run_script("--input", path, "--output-dir", tmp_path / "out")
    assert result.returncode == 1
    assert "column 'user_id' not found in the header (row 1)" in result.stderr
    assert "--user-column" in result.stderr
    assert not (tmp_path / "out").exists()
