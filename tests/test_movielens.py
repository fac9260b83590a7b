"""MovieLens pipeline: the synthetic slice in tests/data/movielens, and the real data in the recbole wheel.

The real-data tests download the wheel with pip when data/raw lacks it, and skip only when that fails.
"""

import csv
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "tests" / "data" / "movielens"
MEMBER_DIR = "recbole/dataset_example/ml-100k"
# One PyPI download of the 2 MB wheel; a slower one skips the real-data tests instead of stalling CI.
DOWNLOAD_TIMEOUT_S = 120


def load_script(name: str):
    """Import scripts/<name>.py as a module.

    The scripts import each other by file name, so scripts/ is on sys.path while the module loads.
    """
    scripts = str(REPO / "scripts")
    sys.path.insert(0, scripts)
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(scripts)
    return module


PREPARE = load_script("prepare_movielens")
REAL_WHEEL = REPO / PREPARE.DEFAULT_WHEEL
# Small sizes for the 8 users of the slice (20 to 45 ratings each).
SLICE_OPTIONS = ["--context-events", "8", "--min-history", "4", "--eval-size", "3"]


def run_prepare(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "prepare_movielens.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def slice_wheel(tmp_path_factory):
    """A zip with the slice's files at the member paths of the recbole wheel."""
    path = tmp_path_factory.mktemp("wheel") / "slice.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("ml-100k.inter", "ml-100k.item"):
            archive.write(SLICE / name, f"{MEMBER_DIR}/{name}")
    return path


def slice_ratings() -> dict[str, list[tuple[int, str]]]:
    """Each user's (timestamp, movie id) pairs in file order."""
    ratings = defaultdict(list)
    with open(SLICE / "ml-100k.inter", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        for user, item, _rating, timestamp in reader:
            ratings[user].append((int(timestamp), item))
    return ratings


def slice_genres() -> dict[str, str]:
    with open(SLICE / "ml-100k.item", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        return {item: "|".join(genres.split()) for item, _title, _year, genres in reader}


def read_outputs(data_dir: Path) -> tuple[dict[str, str], list[str], list[list[str]]]:
    with open(data_dir / "train.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["sequence", "user_id"]
        train = {user: sequence for sequence, user in reader}
    eval_ids = (data_dir / "eval_users.txt").read_text(encoding="utf-8").splitlines()
    with open(data_dir / "eval.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["history", "context"]
    return train, eval_ids, rows[1:]


@pytest.fixture(scope="module")
def item_run(slice_wheel, tmp_path_factory):
    root = tmp_path_factory.mktemp("item")
    result = run_prepare(
        "--wheel",
        slice_wheel,
        "--allow-other-wheel",
        "--output-dir",
        root / "data",
        "--tokenizer-output",
        root / "tok",
        *SLICE_OPTIONS,
    )
    assert result.returncode == 0, result.stderr
    return root


def expected_sequences(event_of) -> dict[str, list[str]]:
    """Each user's events sorted by timestamp, equal timestamps in file order."""
    return {
        user: [event_of(item) for _time, item in sorted(pairs, key=lambda pair: pair[0])]
        for user, pairs in slice_ratings().items()
    }


def test_slice_event_log(item_run):
    with open(item_run / "data" / "event_log" / "events.tsv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["user_id", "timestamp", "event"]
    assert len(rows) == 1 + 233
    assert rows[1] == ["2", "880777853", "item_34"]


def test_slice_split_disjoint_and_complete(item_run):
    train, eval_ids, eval_rows = read_outputs(item_run / "data")
    assert len(eval_ids) == 3
    assert len(eval_rows) == 3
    assert set(train).isdisjoint(eval_ids)
    assert set(train) | set(eval_ids) == {str(user) for user in range(1, 9)}


def test_slice_sequences_sorted_by_time(item_run):
    expected = expected_sequences(lambda item: f"item_{item}")
    train, eval_ids, eval_rows = read_outputs(item_run / "data")
    for user, sequence in train.items():
        assert sequence.split() == expected[user]
    for user, (history, context) in zip(eval_ids, eval_rows, strict=True):
        assert context.split() == expected[user][-8:]
        assert history.split() == expected[user][:-8]


def test_slice_stats(item_run):
    stats = json.loads((item_run / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["users_read"] == 8
    assert stats["events_read"] == 233
    assert stats["eval"]["users"] == 3
    assert stats["eval"]["eligible_users"] == 8
    assert stats["eval"]["context_events"] == 24
    assert stats["train"]["users"] == 5
    assert stats["train"]["events"] + stats["eval"]["history_events"] + stats["eval"]["context_events"] == 233


def test_slice_tokenizer_from_training_users(item_run):
    train, _eval_ids, eval_rows = read_outputs(item_run / "data")
    training_items = {event for sequence in train.values() for event in sequence.split()}
    tokenizer = AutoTokenizer.from_pretrained(str(item_run / "tok"))
    assert len(tokenizer) == 5 + len(training_items)
    assert set(tokenizer.convert_ids_to_tokens(list(range(5, len(tokenizer))))) == training_items

    for history, context in eval_rows:
        for text in (history, context):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            events = text.split()
            assert len(ids) == len(events)
            assert [event for event, id_ in zip(events, ids, strict=True) if id_ == 0] == [
                event for event in events if event not in training_items
            ]


def test_slice_genre_view(slice_wheel, tmp_path):
    result = run_prepare(
        "--wheel",
        slice_wheel,
        "--allow-other-wheel",
        "--view",
        "genre",
        "--output-dir",
        tmp_path / "data",
        "--tokenizer-output",
        tmp_path / "tok",
        *SLICE_OPTIONS,
    )
    assert result.returncode == 0, result.stderr
    genres = slice_genres()
    expected = expected_sequences(lambda item: genres[item])
    train, eval_ids, eval_rows = read_outputs(tmp_path / "data")
    for user, sequence in train.items():
        assert sequence.split() == expected[user]
    for user, (history, context) in zip(eval_ids, eval_rows, strict=True):
        assert f"{history} {context}".split() == expected[user]

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tokenizer("Comedy|Romance Drama", add_special_tokens=False)["input_ids"] != [0, 0]
    assert len(tokenizer("Comedy|Romance Drama", add_special_tokens=False)["input_ids"]) == 2


def test_other_wheel_rejected_without_flag(slice_wheel, tmp_path):
    result = run_prepare(
        "--wheel", slice_wheel, "--output-dir", tmp_path / "data", "--tokenizer-output", tmp_path / "t"
    )
    assert result.returncode == 1
    assert "--allow-other-wheel" in result.stderr
    assert "SHA-256" in result.stderr


@pytest.mark.parametrize("options", [["--no-download"], []])
def test_missing_wheel_not_downloaded(tmp_path, options):
    """--no-download, or a file name that pip would not write, stops before pip runs."""
    name = "recbole-1.2.1-py3-none-any.whl" if options else "absent.whl"
    result = run_prepare("--wheel", tmp_path / name, *options, "--output-dir", tmp_path / "data")
    assert result.returncode == 1
    assert "pip download --no-deps recbole==1.2.1" in result.stderr
    assert "downloading" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_archive_without_movielens_member(tmp_path):
    path = tmp_path / "other.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("other/file.txt", "x")
    result = run_prepare("--wheel", path, "--allow-other-wheel", "--output-dir", tmp_path / "data")
    assert result.returncode == 1
    assert f"has no member {MEMBER_DIR}/ml-100k.inter" in result.stderr


@pytest.fixture(scope="session")
def real_wheel() -> Path:
    """The recbole wheel with the real MovieLens-100K, downloaded with pip into data/raw when missing.

    Skips the requesting test when the download fails or takes longer than DOWNLOAD_TIMEOUT_S.
    """
    if REAL_WHEEL.is_file():
        return REAL_WHEEL
    destination = str(REAL_WHEEL.parent)
    command = [sys.executable, "-m", "pip", "download", PREPARE.RECBOLE_REQUIREMENT, "--no-deps", "--dest", destination]
    # A session of its own, so that a timeout ends pip together with any process it started.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _stdout, stderr = process.communicate(timeout=DOWNLOAD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.skip(f"`{' '.join(command)}` timed out after {DOWNLOAD_TIMEOUT_S} s; download the wheel to {REAL_WHEEL}")
    if process.returncode != 0 or not REAL_WHEEL.is_file():
        last_line = stderr.strip().splitlines()[-1] if stderr.strip() else "no error output"
        pytest.skip(
            f"`{' '.join(command)}` failed (exit code {process.returncode}: {last_line}); "
            f"download the wheel to {REAL_WHEEL} to test the real data"
        )
    return REAL_WHEEL


def real_ratings(wheel: Path) -> dict[str, list[str]]:
    """Each user's rated movies as events "item_<id>", sorted by timestamp with ties in file order.

    Read straight from the wheel, independently of the conversion code under test.
    """
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(f"{MEMBER_DIR}/ml-100k.inter").decode("utf-8")
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    ratings = defaultdict(list)
    for user, item, _rating, timestamp in rows[1:]:
        ratings[user].append((float(timestamp), f"item_{item}"))
    return {user: [item for _time, item in sorted(pairs, key=lambda pair: pair[0])] for user, pairs in ratings.items()}


def test_real_movielens_counts(real_wheel, tmp_path):
    result = run_prepare(
        "--wheel", real_wheel, "--output-dir", tmp_path / "data", "--tokenizer-output", tmp_path / "tok"
    )
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["users_read"] == 943
    assert stats["events_read"] == 100000
    assert stats["eval"]["eligible_users"] == 580
    assert stats["eval"]["users"] == 200
    assert stats["eval"]["context_events"] == 200 * 32
    assert stats["train"]["users"] == 743
    assert stats["train"]["events"] == 70132
    train, eval_ids, _rows = read_outputs(tmp_path / "data")
    assert set(train).isdisjoint(eval_ids)
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "tok"))) == 1628


def test_real_movielens_quick_demo_conversion(real_wheel, tmp_path):
    """The conversion that `scripts/run_demo.py --quick` runs: 12 evaluation users, contexts of 16 ratings."""
    demo_options = load_script("run_demo").QUICK_DATASETS["movielens"]["prepare"][1:]
    # The later --output-dir and --tokenizer-output win over the demo's own folders.
    result = run_prepare(
        *demo_options, "--wheel", real_wheel, "--output-dir", tmp_path / "data", "--tokenizer-output", tmp_path / "tok"
    )
    assert result.returncode == 0, result.stderr

    ratings = real_ratings(real_wheel)
    assert len(ratings) == 943
    assert sum(len(items) for items in ratings.values()) == 100000
    stats = json.loads((tmp_path / "data" / "stats.json").read_text(encoding="utf-8"))
    assert stats["users_read"] == 943
    assert stats["events_read"] == 100000
    # Eligible users have the 16-rating context and at least 16 ratings before it.
    assert stats["eval"]["eligible_users"] == sum(len(items) >= 32 for items in ratings.values()) == 722
    assert stats["eval"]["users"] == 12
    assert stats["eval"]["context_events"] == 12 * 16
    assert stats["train"]["users"] == 931

    train, eval_ids, eval_rows = read_outputs(tmp_path / "data")
    assert len(eval_ids) == 12
    assert set(train) | set(eval_ids) == set(ratings)
    for user, sequence in train.items():
        assert sequence.split() == ratings[user]
    for user, (history, context) in zip(eval_ids, eval_rows, strict=True):
        assert context.split() == ratings[user][-16:]
        assert history.split() == ratings[user][:-16]
    training_items = {item for user in train for item in ratings[user]}
    assert len(AutoTokenizer.from_pretrained(str(tmp_path / "tok"))) == 5 + len(training_items)


def run_repo_script(script, *args):
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def test_slice_trains_and_evaluates(item_run, tmp_path):
    """Training and both evaluations run unchanged on the converted slice with its word-level tokenizer."""
    data, tokenizer = item_run / "data", item_run / "tok"
    model = tmp_path / "model"
    result = run_repo_script(
        "train_user_model.py",
        "--data-dir",
        data / "train.csv",
        "--tokenizer-path",
        tokenizer,
        "--model-output-path",
        model,
        "--cache-dir",
        tmp_path / "cache",
        "--hidden-size",
        16,
        "--num-hidden-layers",
        1,
        "--num-heads",
        2,
        "--max-model-input-size",
        12,
        "--min-model-input-size",
        8,
        "--user-segments-gap",
        3,
        "--fep-window-size",
        3,
        "--max-steps",
        2,
        "--per-device-batch-size",
        2,
        "--test-size",
        0,
        "--save-steps",
        100,
        "--eval-steps",
        100,
        "--logging-steps",
        1,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == len(AutoTokenizer.from_pretrained(str(tokenizer)))

    for script, task in (("eval_reid.py", "reid"), ("eval_classification.py", "classification")):
        options = ["--seeds", 0, "--mlp_hidden", 8, "--mlp_max_iter", 50] if task == "classification" else []
        output = tmp_path / f"{task}.json"
        result = run_repo_script(
            script,
            "--model_path",
            model,
            "--tokenizer_path",
            tokenizer,
            "--dataset_dir",
            data,
            "--max_len",
            8,
            "--period_len",
            4,
            "--output",
            output,
            *options,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(output.read_text(encoding="utf-8"))
        assert report["dataset"]["users_evaluated"] == 3
        assert report["dataset"]["skipped_rows"] == []
        assert sorted(report["results"]) == ["pool", "recent", "recompute", "stateful"]
        assert [len(periods) for periods in report["results"].values()] == [2, 2, 2, 2]
