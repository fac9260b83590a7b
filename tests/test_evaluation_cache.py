"""The --embedding_cache of eval_reid.py and eval_classification.py, on a saved RetNet and a real tokenizer."""

import csv
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from use import UserModel, UserModelConfig
from use.evaluation.behaviors import PeriodSchedule
from use.evaluation.cache import EmbeddingCache, embedding_cache_key
from use.evaluation.cli import main

REPO = Path(__file__).resolve().parent.parent
DIALOG_TOKENIZER = REPO / "tokenizer" / "dialog"
USERS = 8
# Every user draws from the same characters with their own weights, so a random model ranks
# some users wrongly and the metrics are not all 1.0.
ALPHABET = "abcdefghijklmnop"
STORED = ("history", "recent", "stateful", "recompute")
SHORT_RUN = ("--max_len", 200, "--period_len", 50, "--device", "cpu")


def write_users(path: Path, seed: int = 0) -> Path:
    generator = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["history", "context"])
        for _ in range(USERS):
            weights = [generator.random() for _ in ALPHABET]
            history = "".join(generator.choices(ALPHABET, weights, k=260))
            context = "".join(generator.choices(ALPHABET, weights, k=200))
            writer.writerow([history, context])
    return path


def save_model(folder: Path, seed: int = 0) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(DIALOG_TOKENIZER)
    torch.manual_seed(seed)
    config = UserModelConfig(
        backbone_type="retnet", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_heads=4,
        dropout=0.0, chunk_size=64,
    )
    UserModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def inputs(saved_model, tmp_path):
    """A private copy of the model folder and a fresh TSV, so a test may change either."""
    model = tmp_path / "model"
    shutil.copytree(saved_model, model)
    return model, write_users(tmp_path / "users.tsv")


def evaluate(task, caplog, output, model, tsv, *extra):
    """Run one script's CLI in this process and return (its JSON report, the INFO and WARNING log text)."""
    caplog.clear()
    arguments = ["--model_path", model, "--tokenizer_path", DIALOG_TOKENIZER, "--dataset_dir", tsv, *SHORT_RUN]
    if task == "classification":
        arguments += ["--seeds", 0, 1, "--mlp_hidden", 16, "--mlp_max_iter", 60]
    with caplog.at_level(logging.INFO):
        code = main(task, [str(argument) for argument in [*arguments, *extra, "--output", output]])
    assert code == 0, caplog.text
    return json.loads(Path(output).read_text(encoding="utf-8")), caplog.text


def cache_lines(log: str, verb: str) -> list[str]:
    """Return the stored embedding names whose cache log line contains `verb` (loaded or computed)."""
    return [name for name in STORED if f"{name} embeddings: {verb}" in log]


def test_cache_keeps_metrics_and_loads(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    reid_plain, _ = evaluate("reid", caplog, tmp_path / "reid_plain.json", model, tsv)
    classification_plain, _ = evaluate("classification", caplog, tmp_path / "cls_plain.json", model, tsv)

    reid_cached, reid_log = evaluate("reid", caplog, tmp_path / "reid.json", model, tsv, "--embedding_cache", cache)
    classification_cached, classification_log = evaluate(
        "classification", caplog, tmp_path / "cls.json", model, tsv, "--embedding-cache", cache
    )

    assert cache_lines(reid_log, "computed") == list(STORED)
    assert cache_lines(reid_log, "loaded") == []
    assert cache_lines(classification_log, "loaded") == list(STORED)
    assert cache_lines(classification_log, "computed") == []
    assert "pool embeddings: running means of the recent embeddings" in classification_log
    assert sorted(path.name.split("-")[0] for path in cache.iterdir()) == sorted(STORED)
    assert reid_cached["results"] == reid_plain["results"]
    assert classification_cached["results"] == classification_plain["results"]
    mrr = [period["mrr"] for periods in reid_plain["results"].values() for period in periods]
    assert min(mrr) < 1.0


def test_cache_ignores_batch_size_and_seeds(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    evaluate("reid", caplog, tmp_path / "first.json", model, tsv, "--embedding_cache", cache, "--batch_size", 8)

    _, log = evaluate(
        "reid", caplog, tmp_path / "second.json", model, tsv, "--embedding_cache", cache, "--batch_size", 3,
        "--seeds", 5,
    )

    assert cache_lines(log, "loaded") == list(STORED)


def test_cache_recomputes_changed_tsv(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    first, _ = evaluate("reid", caplog, tmp_path / "first.json", model, tsv, "--embedding_cache", cache)
    write_users(tsv, seed=1)

    second, log = evaluate("reid", caplog, tmp_path / "second.json", model, tsv, "--embedding_cache", cache)

    assert cache_lines(log, "computed") == list(STORED)
    assert len(list(cache.iterdir())) == 2 * len(STORED)
    assert second["results"] != first["results"]


def test_cache_recomputes_changed_weights(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    evaluate("reid", caplog, tmp_path / "first.json", model, tsv, "--embedding_cache", cache)
    save_model(model, seed=1)

    _, log = evaluate("reid", caplog, tmp_path / "second.json", model, tsv, "--embedding_cache", cache)

    assert cache_lines(log, "computed") == list(STORED)


def test_cache_recomputes_changed_period_len(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    evaluate("reid", caplog, tmp_path / "first.json", model, tsv, "--embedding_cache", cache)

    report, log = evaluate(
        "reid", caplog, tmp_path / "second.json", model, tsv, "--embedding_cache", cache, "--period_len", 100
    )

    assert cache_lines(log, "computed") == list(STORED)
    assert report["settings"]["num_periods"] == 2


def test_truncated_cache_file_recomputed(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    first, _ = evaluate("reid", caplog, tmp_path / "first.json", model, tsv, "--embedding_cache", cache)
    (stateful_file,) = cache.glob("stateful-*.npz")
    content = stateful_file.read_bytes()
    stateful_file.write_bytes(content[: len(content) // 2])

    second, log = evaluate("reid", caplog, tmp_path / "second.json", model, tsv, "--embedding_cache", cache)

    assert f"Embedding cache file {stateful_file} is unreadable" in log
    assert "so the stateful embeddings are computed again" in log
    assert cache_lines(log, "computed") == ["stateful"]
    assert cache_lines(log, "loaded") == ["history", "recent", "recompute"]
    assert second["results"] == first["results"]
    assert stateful_file.read_bytes() == content


def test_cache_file_with_other_key_recomputed(inputs, tmp_path, caplog):
    model, tsv = inputs
    cache = tmp_path / "cache"
    evaluate("reid", caplog, tmp_path / "first.json", model, tsv, "--embedding_cache", cache)
    (recent_file,) = cache.glob("recent-*.npz")
    (recompute_file,) = cache.glob("recompute-*.npz")
    shutil.copyfile(recompute_file, recent_file)

    _, log = evaluate("reid", caplog, tmp_path / "second.json", model, tsv, "--embedding_cache", cache)

    assert f"Embedding cache file {recent_file} does not match this run (its key differs)" in log
    assert cache_lines(log, "computed") == ["recent"]


def test_baseline_ignores_cache(tmp_path, caplog):
    tsv = write_users(tmp_path / "users.tsv")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        code = main("reid", [*map(str, ("--dataset_dir", tsv, "--method_type", "tf-idf", *SHORT_RUN)),
                             "--embedding_cache", str(cache)])

    assert code == 0
    assert "The tf-idf baseline ignores --embedding_cache" in caplog.text
    assert not cache.exists()


def test_cache_folder_that_is_a_file_fails(inputs, tmp_path, caplog):
    model, tsv = inputs
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("", encoding="utf-8")
    arguments = ["--model_path", model, "--tokenizer_path", DIALOG_TOKENIZER, "--dataset_dir", tsv, *SHORT_RUN,
                 "--embedding_cache", not_a_folder]

    with caplog.at_level(logging.ERROR):
        code = main("reid", [str(argument) for argument in arguments])

    assert code == 1
    assert "is a file. Pass a folder, which is created if missing." in caplog.text


def test_unwritable_cache_still_evaluates(inputs, tmp_path, caplog):
    model, tsv = inputs
    blocker = tmp_path / "blocker"
    blocker.write_text("", encoding="utf-8")
    plain, _ = evaluate("reid", caplog, tmp_path / "plain.json", model, tsv)

    report, log = evaluate("reid", caplog, tmp_path / "cached.json", model, tsv, "--embedding_cache", blocker / "cache")

    assert f"but saving them to {blocker / 'cache'} failed" in log
    assert cache_lines(log, "computed") == list(STORED)
    assert report["results"] == plain["results"]


def test_cache_key_inputs(saved_model, tmp_path):
    tsv = write_users(tmp_path / "users.tsv")
    schedule = PeriodSchedule(max_len=200, period_len=50)
    tokenizer = tmp_path / "tokenizer"
    shutil.copytree(DIALOG_TOKENIZER, tokenizer)
    periods_file = tmp_path / "periods.json"
    periods_file.write_text('{"days": 1}', encoding="utf-8")

    def key(device="cpu", dtype="torch.float32", periods=None):
        return embedding_cache_key(saved_model, tokenizer, tsv, schedule, "retnet", dtype, device, periods)

    before = key()
    assert key("cuda:1") == key("cuda")
    assert key("cuda") != before
    assert key(dtype="torch.bfloat16") != before
    assert set(before["model_files"]) == {"config.json", "model.safetensors"}
    with_periods = key(periods=periods_file)
    assert with_periods != before
    periods_file.write_text('{"days": 2}', encoding="utf-8")
    assert key(periods=periods_file) != with_periods
    (tokenizer / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    assert key() != before


def test_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path / "cache", {"format": 1})

    def interrupted_replace(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr("use.evaluation.cache.os.replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        cache.save("history", [2, 3], np.ones((2, 4), dtype=np.float32))

    assert list((tmp_path / "cache").iterdir()) == []
    assert cache.load("history", [2, 3], (2, 4)) is None
