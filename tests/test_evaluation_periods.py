"""Per-day context periods: the converter's periods file read by the evaluation, end to end."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from use import UserModel, UserModelConfig
from use.embedding import embed_sequences, load_model_and_tokenizer
from use.evaluation import report
from use.evaluation.baselines import baseline_embeddings, build_vectorizer
from use.evaluation.behaviors import DaySchedule, character_splitter, prepare_behaviors, tokenizer_splitter
from use.evaluation.cli import main
from use.evaluation.io import EvalFileError, read_eval_tsv, read_periods_file
from use.evaluation.neural import neural_embeddings
from use.events import (
    ConversionSettings,
    build_tokenizer_from_sequences,
    convert_event_log,
    read_event_log,
    read_sequences,
)

REPO = Path(__file__).resolve().parent.parent
DAY = 86400

# Per user: (day number since 1970-01-01, events of that day). Users a, b and c have a history day
# and two context days, with different numbers of events per day. Day 1 (1970-01-02) is the first
# context day of all three, but their second context days differ. Users d and e have one day only,
# too few for a two-day context, so they train.
EVENTS = {
    "a": [(0, "open view view"), (1, "search buy"), (3, "close")],
    "b": [(0, "view"), (1, "open open open"), (2, "buy rate")],
    "c": [(0, "rate buy"), (1, "view"), (3, "search open close view")],
    "d": [(0, "open view search buy rate close")],
    "e": [(0, "view view rate open")],
}
# Each evaluation user's context events at the end of each context day, and the day labels.
EXPECTED_ENDS = {2: [2, 3], 3: [3, 5], 4: [1, 5]}
EXPECTED_DAYS = {2: ["1970-01-02", "1970-01-04"], 3: ["1970-01-02", "1970-01-03"], 4: ["1970-01-02", "1970-01-04"]}
EXPECTED_CONTEXTS = ["search buy close", "open open open buy rate", "view search open close view"]


def write_event_log(path: Path) -> Path:
    lines = ["user_id,timestamp,event"]
    for user, days in EVENTS.items():
        for day, events in days:
            for second, event in enumerate(events.split()):
                lines.append(f"{user},{day * DAY + 3600 + second},{event}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The converter's eval.tsv and eval.periods.json, and the word-level tokenizer of the training users."""
    root = tmp_path_factory.mktemp("periods")
    log = read_event_log(write_event_log(root / "events.csv"))
    settings = ConversionSettings(period="day", context_days=2, eval_size=3)
    convert_event_log(log, root / "data", settings)
    build_tokenizer_from_sequences(read_sequences(root / "data" / "train.csv"), root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def checkpoint(converted):
    """A tiny random RetNet user model saved with save_pretrained, with chunks shorter than the days."""
    model_path, tokenizer_path = converted / "model", converted / "tokenizer"
    tokenizer = load_tokenizer(tokenizer_path)
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone_type="retnet", vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_heads=2,
        dropout=0.0, chunk_size=2,
    )
    UserModel(config).save_pretrained(model_path)
    return load_model_and_tokenizer(model_path, tokenizer_path)


def load_tokenizer(path):
    return AutoTokenizer.from_pretrained(str(path))


def day_data(converted, split, max_len=8):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    schedule = DaySchedule(max_len=max_len, days=read_periods_file(converted / "data" / "eval.periods.json", users))
    return prepare_behaviors(users, split, schedule)


def write_periods(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def converted_periods(converted) -> dict:
    return json.loads((converted / "data" / "eval.periods.json").read_text(encoding="utf-8"))


# --- reading the periods file ----------------------------------------------------------------------


def test_converter_output_matches_event_log(converted):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    assert users.contexts == EXPECTED_CONTEXTS
    periods = read_periods_file(converted / "data" / "eval.periods.json", users)
    assert periods.num_days == 2
    assert periods.context_ends == EXPECTED_ENDS
    assert periods.days == EXPECTED_DAYS
    assert periods.timezone == "UTC"


def test_period_boundaries_per_user(converted):
    tokenizer = load_tokenizer(converted / "tokenizer")
    data, skipped = day_data(converted, tokenizer_splitter(tokenizer))

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    assert skipped == []
    assert data.rows == [2, 3, 4]
    assert data.num_periods == 2
    assert [[data.period_end(user, period) for period in (1, 2)] for user in range(3)] == [[2, 3], [3, 5], [1, 5]]
    assert data.period(0, 1) == ids("search buy")
    assert data.period(0, 2) == ids("close")
    assert data.period(1, 1) == ids("open open open")
    assert data.period(1, 2) == ids("buy rate")
    assert data.period(2, 1) == ids("view")
    assert data.period(2, 2) == ids("search open close view")
    assert data.context_prefix(2, 1) == ids("view")
    assert data.context_prefix(2, 2) == ids("view search open close view")
    assert data.histories == [ids("open view view"), ids("view"), ids("rate buy")]


def test_history_window_keeps_max_len(converted):
    tokenizer = load_tokenizer(converted / "tokenizer")
    data, _ = day_data(converted, tokenizer_splitter(tokenizer), max_len=2)

    assert data.histories[0] == tokenizer("view view", add_special_tokens=False)["input_ids"]
    assert [len(context) for context in data.contexts] == [3, 5, 5]


def test_entries_without_row_match_by_order(converted, tmp_path):
    content = converted_periods(converted)
    for entry in content["users"]:
        del entry["row"]
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    periods = read_periods_file(write_periods(tmp_path / "p.json", content), users)

    assert periods.context_ends == EXPECTED_ENDS


def test_axis_means_and_shared_dates(converted):
    tokenizer = load_tokenizer(converted / "tokenizer")
    data, _ = day_data(converted, tokenizer_splitter(tokenizer))
    axis = report.period_axis(data)

    assert axis.kind == "day"
    assert axis.context_behaviors == [2.0, 13 / 3]
    assert axis.day_behaviors == [2.0, 7 / 3]
    assert axis.dates == ["1970-01-02", None]


def test_table_labels_days():
    axis = report.PeriodAxis(kind="day", context_behaviors=[2.0, 13 / 3], day_behaviors=[2.0, 7 / 3],
                             dates=["1970-01-02", None])
    results = {"recent": [{"mrr": 0.5}, {"mrr": 0.25}]}
    table = report.format_table("MRR", results, axis, lambda m: f"{m['mrr']:.2f}")

    assert table.splitlines() == [
        "MRR",
        "day        date  mean behaviors  recent",
        "  1  1970-01-02             2.0    0.50",
        "  2           -             4.3    0.25",
    ]


# --- errors ----------------------------------------------------------------------------------------


def test_missing_periods_file(converted, tmp_path):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    missing = tmp_path / "absent.json"
    with pytest.raises(EvalFileError, match=f"periods file {missing} not found; pass the eval.periods.json"):
        read_periods_file(missing, users)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"users": [', r"is not valid JSON \(Expecting value: line 1 column 12"),
        ("[]", "is not an object with a 'users' list"),
        ({"period": "count", "users": []}, "has period 'count', expected 'day'"),
        ({"users": []}, "lists no users"),
        ({"users": [{"days": ["d1"], "context_ends": []}]}, r"has 1 day\(s\) and 0 context_ends"),
        ({"users": [{"days": ["d1", "d2"], "context_ends": [3, 3]}]}, r"has context_ends \[3, 3\]; they must rise"),
        ({"users": [{"days": ["d1"], "context_ends": ["3"]}]}, r"has context_ends \['3'\]; expected a list"),
        ({"users": [{"row": 1, "days": ["d1"], "context_ends": [3]}]}, "has row 1; a TSV row number"),
    ],
)
def test_malformed_periods_file(converted, tmp_path, content, message):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    path = write_periods(tmp_path / "bad.json", content)
    with pytest.raises(EvalFileError, match=message):
        read_periods_file(path, users)


def test_periods_rows_must_match_tsv(converted, tmp_path):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    content = converted_periods(converted)
    content["users"][2]["row"] = 9
    path = write_periods(tmp_path / "rows.json", content)
    with pytest.raises(EvalFileError) as error:
        read_periods_file(path, users)

    message = str(error.value)
    assert "rows 9 are not user rows of" in message
    assert "(rows 2 to 4)" in message
    assert "rows 4 of" in message
    assert "have no entry" in message
    assert "Pass the periods file written together with this TSV" in message


def test_periods_count_must_match_tsv(converted, tmp_path):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    content = converted_periods(converted)
    content["users"] = [{"days": e["days"], "context_ends": e["context_ends"]} for e in content["users"][:2]]
    path = write_periods(tmp_path / "two.json", content)
    with pytest.raises(EvalFileError, match="lists 2 users but .*eval.tsv has 3 user rows"):
        read_periods_file(path, users)


def test_periods_need_same_day_count(converted, tmp_path):
    users = read_eval_tsv(converted / "data" / "eval.tsv")
    content = converted_periods(converted)
    content["users"][1]["days"] = ["1970-01-03"]
    content["users"][1]["context_ends"] = [5]
    path = write_periods(tmp_path / "days.json", content)
    with pytest.raises(EvalFileError, match=r"\(1 day\(s\) in rows 3; 2 day\(s\) in rows 2, 4\)"):
        read_periods_file(path, users)


def test_day_sums_must_equal_context_length(converted):
    """Characters are not events: "search buy close" has 16 characters but its days end at 3 events."""
    with pytest.raises(EvalFileError) as error:
        day_data(converted, character_splitter)

    message = str(error.value)
    assert message.startswith(f"3 of 3 users in {converted / 'data' / 'eval.tsv'} have a context length")
    assert "row 2 has 16 context behaviors, but its days end at 3 (after 1970-01-04)" in message
    assert "The periods file may belong to another TSV" in message
    assert "--tokenizer_path" in message
    assert message.index("may belong to another TSV") < message.index("--tokenizer_path")


def write_split_log(path: Path) -> Path:
    """Write a log of 8 users whose 3 context days have 9 events each, split 4-3-2 or 2-3-4 over the days."""
    lines = ["user_id,timestamp,event"]
    for user in range(8):
        day_sizes = [3, 3, 3, 3] + ([2, 3, 4] if user % 2 else [4, 3, 2])
        for day, size in enumerate(day_sizes):
            for k in range(size):
                event = ["view", "click", "buy"][(user + k) % 3]
                lines.append(f"u{user},{1700000000 + day * DAY + k * 600 + user},{event}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory):
    """The outputs of the same log converted with --seed 0 and --seed 1."""
    root = tmp_path_factory.mktemp("splits")
    log = read_event_log(write_split_log(root / "events.csv"))
    for seed in (0, 1):
        settings = ConversionSettings(period="day", context_days=3, eval_size=4, seed=seed)
        convert_event_log(log, root / f"seed{seed}", settings)
    return root


def test_periods_of_other_split_rejected(two_splits):
    tsv, other = two_splits / "seed0" / "eval.tsv", two_splits / "seed1" / "eval.periods.json"
    users = read_eval_tsv(tsv)
    assert read_eval_tsv(two_splits / "seed1" / "eval.tsv").rows == users.rows
    with pytest.raises(EvalFileError) as error:
        read_periods_file(other, users)

    message = str(error.value)
    assert message.startswith(f"periods file {other} was written for another TSV than {tsv}")
    assert f"{tsv} has SHA-256 {hashlib.sha256(tsv.read_bytes()).hexdigest()}" in message
    assert "Pass the periods file written with that TSV" in message


def test_periods_of_same_split_accepted(two_splits, caplog):
    users = read_eval_tsv(two_splits / "seed0" / "eval.tsv")
    with caplog.at_level(logging.INFO):
        periods = read_periods_file(two_splits / "seed0" / "eval.periods.json", users)
    assert periods.num_days == 3
    assert "could not be checked" not in caplog.text


def test_periods_without_hash_accepted_unchecked(two_splits, tmp_path, caplog):
    """A hand-written file has no hash, so even one of another split is accepted, with one INFO line."""
    tsv = two_splits / "seed0" / "eval.tsv"
    content = json.loads((two_splits / "seed1" / "eval.periods.json").read_text(encoding="utf-8"))
    del content["eval_tsv_sha256"]
    path = write_periods(tmp_path / "hand.json", content)
    with caplog.at_level(logging.INFO):
        periods = read_periods_file(path, read_eval_tsv(tsv))

    assert periods.context_ends[2] == [4, 7, 9]
    unchecked = [record for record in caplog.records if "could not be checked" in record.getMessage()]
    assert len(unchecked) == 1
    assert unchecked[0].levelno == logging.INFO
    assert f"Periods file {path} has no eval_tsv_sha256, so it could not be checked against {tsv}" in caplog.text


@pytest.mark.parametrize("value", ["abc", 7, "A" * 64])
def test_periods_invalid_hash_rejected(two_splits, tmp_path, value):
    content = json.loads((two_splits / "seed0" / "eval.periods.json").read_text(encoding="utf-8"))
    content["eval_tsv_sha256"] = value
    path = write_periods(tmp_path / "bad_hash.json", content)
    users = read_eval_tsv(two_splits / "seed0" / "eval.tsv")
    with pytest.raises(EvalFileError, match=f"has eval_tsv_sha256 {value!r}, expected 64 lowercase hexadecimal"):
        read_periods_file(path, users)


# --- embeddings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [3, 2])
def test_stateful_equals_recompute_per_day(converted, checkpoint, batch_size):
    model, tokenizer = checkpoint
    data, _ = day_data(converted, tokenizer_splitter(tokenizer))
    embeddings = neural_embeddings(model, data, ["recent", "stateful", "recompute"], batch_size=batch_size)

    assert len(embeddings.context["stateful"]) == 2
    for period in range(2):
        stateful, recompute = embeddings.context["stateful"][period], embeddings.context["recompute"][period]
        assert stateful.shape == (3, 16)
        np.testing.assert_allclose(stateful, recompute, atol=1e-5, rtol=0)
    np.testing.assert_allclose(embeddings.context["recent"][0], embeddings.context["recompute"][0], atol=1e-5, rtol=0)
    assert not np.allclose(embeddings.context["recent"][1], embeddings.context["recompute"][1], atol=1e-3)


def test_gpt2_periods_follow_days(converted):
    tokenizer = load_tokenizer(converted / "tokenizer")
    data, _ = day_data(converted, tokenizer_splitter(tokenizer))
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone_type="gpt2", vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_heads=2,
        dropout=0.0, max_position_embeddings=16,
    )
    model = UserModel(config).eval()
    embeddings = neural_embeddings(model, data, ["recent", "recompute"], batch_size=2)

    days = [[data.period(user, period) for user in range(3)] for period in (1, 2)]
    for period in range(2):
        expected = embed_sequences(model, days[period], batch_size=1, progress=False).numpy()
        np.testing.assert_allclose(embeddings.context["recent"][period], expected, atol=1e-5, rtol=0)
    whole = embed_sequences(model, data.contexts, batch_size=1, progress=False).numpy()
    np.testing.assert_allclose(embeddings.context["recompute"][1], whole, atol=1e-5, rtol=0)


def test_baseline_periods_follow_days(converted):
    tokenizer = load_tokenizer(converted / "tokenizer")
    data, _ = day_data(converted, tokenizer_splitter(tokenizer))
    embeddings = baseline_embeddings("tf", data, ["recent", "recompute"])
    vectorizer = build_vectorizer("tf").fit(data.histories)

    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in EXPECTED_CONTEXTS]
    days = [[ids[0][:2], ids[0][2:]], [ids[1][:3], ids[1][3:]], [ids[2][:1], ids[2][1:]]]
    for period in range(2):
        recent = embeddings.context["recent"][period].toarray()
        np.testing.assert_allclose(recent, vectorizer.transform([user[period] for user in days]).toarray())
    np.testing.assert_allclose(embeddings.context["recompute"][1].toarray(), vectorizer.transform(ids).toarray())


# --- command line ----------------------------------------------------------------------------------


def eval_arguments(converted, *extra):
    return [
        "--model_path", str(converted / "model"), "--tokenizer_path", str(converted / "tokenizer"),
        "--dataset_dir", str(converted / "data"), "--max_len", "8", "--device", "cpu", *map(str, extra),
    ]


def test_cli_reid_writes_one_row_per_day(converted, checkpoint, tmp_path):
    output, plot = tmp_path / "reid.json", tmp_path / "reid.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "eval_reid.py"),
         *eval_arguments(converted, "--periods-file", converted / "data" / "eval.periods.json",
                         "--output", output, "--plot", plot)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    written = json.loads(output.read_text(encoding="utf-8"))

    assert written["period_kind"] == "day"
    assert written["settings"]["period_kind"] == "day"
    assert written["settings"]["period_len"] is None
    assert written["settings"]["num_periods"] == 2
    assert written["periods"] == [
        {"period": 1, "date": "1970-01-02", "mean_context_behaviors": 2.0, "mean_day_behaviors": 2.0},
        {"period": 2, "date": None, "mean_context_behaviors": 13 / 3, "mean_day_behaviors": 7 / 3},
    ]
    assert sorted(written["results"]) == ["pool", "recent", "recompute", "stateful"]
    for strategy, rows in written["results"].items():
        assert [row["period"] for row in rows] == [1, 2], strategy
        assert [row["date"] for row in rows] == ["1970-01-02", None], strategy
    assert written["results"]["stateful"][1]["mrr"] == pytest.approx(written["results"]["recompute"][1]["mrr"])
    assert "day        date  mean behaviors" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_classification_per_day(converted, checkpoint, tmp_path, capsys):
    output = tmp_path / "classification.json"
    arguments = eval_arguments(
        converted, "--periods_file", converted / "data" / "eval.periods.json", "--strategies", "recent", "stateful",
        "--seeds", 0, "--mlp_hidden", 8, "--mlp_max_iter", 50, "--output", output,
    )
    assert main("classification", arguments) == 0
    written = json.loads(output.read_text(encoding="utf-8"))

    assert written["period_kind"] == "day"
    assert [len(rows) for rows in written["results"].values()] == [2, 2]
    assert "rows: each user's context day" in capsys.readouterr().out


def test_cli_rejects_period_len_with_periods_file(converted, caplog):
    arguments = eval_arguments(converted, "--periods_file", converted / "data" / "eval.periods.json",
                               "--period_len", 2)
    with caplog.at_level(logging.ERROR):
        assert main("reid", arguments) == 1
    assert "--period_len 2 cannot be combined with --periods_file" in caplog.text


def test_cli_reports_missing_periods_file(converted, tmp_path, caplog):
    missing = tmp_path / "eval.periods.json"
    with caplog.at_level(logging.ERROR):
        assert main("reid", eval_arguments(converted, "--periods_file", missing)) == 1
    assert f"periods file {missing} not found" in caplog.text


def test_cli_mentions_periods_file_beside_tsv(converted, tmp_path, caplog):
    arguments = [
        "--method_type", "tf", "--tokenizer_path", str(converted / "tokenizer"),
        "--dataset_dir", str(converted / "data"), "--max_len", "2", "--period_len", "1",
    ]
    with caplog.at_level(logging.INFO):
        assert main("reid", arguments) == 0
    beside = converted / "data" / "eval.periods.json"
    mentions = [record for record in caplog.records if "Per-day periods are available" in record.getMessage()]
    assert len(mentions) == 1
    assert mentions[0].levelno == logging.INFO
    assert f"--periods_file {beside}" in mentions[0].getMessage()
