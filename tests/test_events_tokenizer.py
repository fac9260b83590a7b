"""Word-level event tokenizer: ids, round trips, [UNK] fallback, the CLI, and use by the model and evaluation."""

import csv
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from use.embedding import embed_sequences, load_model_and_tokenizer
from use.evaluation.behaviors import tokenizer_splitter
from use.events import SPECIAL_TOKENS, EventLogError, build_event_tokenizer, build_tokenizer_from_sequences
from use.events.tokenizer import count_events, read_sequences, select_vocabulary
from use.objectives import behavior_mask
from use.state import UserStateStore

from .conftest import tiny_user_model

REPO = Path(__file__).resolve().parents[1]
# Names with punctuation, digits, case and non-ASCII letters; each must stay one event.
SEQUENCES = [
    "app.open page_view add-to-cart page_view checkout:v2",
    'app.open Search search café,menu "quoted" page_view',
    "app.open page_view page_view",
]


@pytest.fixture
def tokenizer_dir(tmp_path):
    build_tokenizer_from_sequences(SEQUENCES, tmp_path / "tok")
    return tmp_path / "tok"


def test_special_tokens_at_ids_0_to_4(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert tokenizer.unk_token == "[UNK]"
    assert tokenizer.cls_token == "[CLS]"
    assert tokenizer.sep_token == "[SEP]"
    assert tokenizer.pad_token == "[PAD]"
    assert tokenizer.mask_token == "[MASK]"
    assert tokenizer.is_fast


def test_vocabulary_ordered_by_count_then_name(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # page_view 5, app.open 3, then the events seen once in name order.
    expected = ["page_view", "app.open", '"quoted"', "Search", "add-to-cart", "café,menu", "checkout:v2", "search"]
    assert tokenizer.convert_ids_to_tokens(list(range(5, 5 + len(expected)))) == expected
    assert len(tokenizer) == 5 + len(expected)


def test_round_trip_one_id_per_event(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    for sequence in SEQUENCES:
        ids = tokenizer(sequence, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(sequence.split())
        assert 0 not in ids
        assert tokenizer.decode(ids) == sequence
    assert tokenizer(SEQUENCES[2], add_special_tokens=False)["input_ids"] == [6, 5, 5]


def test_special_tokens_wrap_sequence(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tokenizer("app.open page_view")["input_ids"] == [1, 6, 5, 2]


def test_extra_whitespace_is_ignored(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tokenizer("  app.open\t page_view\n", add_special_tokens=False)["input_ids"] == [6, 5]


def test_unseen_and_case_variant_events_are_unk(tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = tokenizer("app.open never_seen APP.OPEN page_view", add_special_tokens=False)["input_ids"]
    assert ids == [6, 0, 0, 5]


def test_min_count_maps_rare_events_to_unk(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="use.events.tokenizer"):
        vocabulary = build_tokenizer_from_sequences(SEQUENCES, tmp_path / "tok", min_count=2)
    assert vocabulary.events == ["page_view", "app.open"]
    assert vocabulary.unknown_names == 6
    assert vocabulary.unknown_occurrences == 6
    assert vocabulary.total_occurrences == 14
    assert "6 rare event name(s) map to [UNK]: 6 of 14 occurrences (42.86%)" in caplog.text

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert len(tokenizer) == 7
    assert tokenizer(SEQUENCES[0], add_special_tokens=False)["input_ids"] == [6, 5, 0, 5, 0]


def test_max_vocab_keeps_most_frequent():
    counts = Counter({"a": 5, "b": 3, "c": 3, "d": 1})
    vocabulary = select_vocabulary(counts, max_vocab=7)
    assert vocabulary.events == ["a", "b"]
    assert vocabulary.unknown_names == 2
    assert vocabulary.unknown_occurrences == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"min_count": 0}, "min count must be at least 1"), ({"max_vocab": 5}, "leaves no room for events")],
)
def test_invalid_vocabulary_limits(kwargs, message):
    with pytest.raises(EventLogError, match=message):
        select_vocabulary(Counter({"a": 1}), **kwargs)


def test_min_count_above_every_count():
    with pytest.raises(EventLogError, match="no event occurs at least 3 times"):
        select_vocabulary(Counter({"a": 2, "b": 1}), min_count=3)


def test_special_token_as_event_rejected():
    with pytest.raises(EventLogError, match=r"special token\(s\) \['\[PAD\]'\]"):
        count_events(["a [PAD] b"])


def test_invalid_event_names_rejected():
    with pytest.raises(EventLogError, match="duplicates"):
        build_event_tokenizer(["a", "a"])
    with pytest.raises(EventLogError, match="invalid event names"):
        build_event_tokenizer(["two words"])
    with pytest.raises(EventLogError, match="invalid event names"):
        build_event_tokenizer(["[CLS]"])


def test_read_sequences_from_csv_and_text(tmp_path):
    csv_path = tmp_path / "train.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "user_id"])
        writer.writerows([["a b", "u1"], ["", "u2"], ['c,d "e"', "u3"]])
    assert read_sequences(csv_path) == ["a b", 'c,d "e"']

    text_path = tmp_path / "train.txt"
    text_path.write_text("a b\n\nc\n", encoding="utf-8")
    assert read_sequences(text_path) == ["a b", "c"]


def test_read_sequences_needs_sequence_column(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user_id,timestamp,event\nu1,1,a\n", encoding="utf-8")
    with pytest.raises(EventLogError, match="no 'sequence' column"):
        read_sequences(path)


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_tokenizer.py"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_cli_builds_from_training_csv(tmp_path):
    train = tmp_path / "train.csv"
    with open(train, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sequence", "user_id"])
        writer.writerows([["login view view", "u1"], ["login buy", "u2"], ["view", "u3"]])
    result = run_script("--input", train, "--output", tmp_path / "tok", "--min-count", 2)
    assert result.returncode == 0, result.stderr

    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert tokenizer.convert_ids_to_tokens([5, 6]) == ["view", "login"]
    assert tokenizer("login buy view", add_special_tokens=False)["input_ids"] == [6, 0, 5]
    assert "1 rare event name(s) map to [UNK]: 1 of 6 occurrences" in result.stderr


def test_cli_reports_special_token_input(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("a [MASK]\n", encoding="utf-8")
    result = run_script("--input", train, "--output", tmp_path / "tok")
    assert result.returncode == 1
    assert "special token(s) ['[MASK]']" in result.stderr
    assert not (tmp_path / "tok").exists()


def test_model_and_evaluation_accept_tokenizer(tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = tiny_user_model(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "model")

    model, tokenizer = load_model_and_tokenizer(tmp_path / "model", tokenizer_dir)
    behaviors = tokenizer_splitter(tokenizer)(SEQUENCES)
    assert [len(ids) for ids in behaviors] == [5, 6, 3]
    embeddings = embed_sequences(model, behaviors, progress=False)
    assert tuple(embeddings.shape) == (3, model.config.hidden_size)

    # FEP predicts every event: the vocabulary without the five special tokens.
    assert model.config.num_behaviors == len(tokenizer) - 5
    ids = tokenizer(SEQUENCES, add_special_tokens=False, padding=True, return_tensors="pt")
    mask = behavior_mask(ids["input_ids"], ids["attention_mask"], model.config.first_behavior_id, 0)
    assert mask.sum(dim=1).tolist() == [5, 6, 3]


def test_state_store_absorbs_event_text(tokenizer_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = tiny_user_model(vocab_size=len(tokenizer))
    with UserStateStore(tmp_path / "states.sqlite", model, "test-checkpoint", tokenizer) as store:
        store.update(["split"], ["app.open Search"])
        stepwise = store.update(["split"], ["page_view never_seen"])
        whole = store.update(["whole"], ["app.open Search page_view never_seen"])
        assert store.info(["split"])[0].num_behaviors == 4
    torch.testing.assert_close(stepwise, whole, rtol=1e-5, atol=1e-6)
