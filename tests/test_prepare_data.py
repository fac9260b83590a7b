"""scripts/prepare_data.py on the real slices under tests/data and on the committed DNA subset."""

import csv
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CHITCHAT_SLICE = REPO_ROOT / "tests" / "data" / "chitchat" / "conversations.json"
SSU_SLICE = REPO_ROOT / "tests" / "data" / "rrna" / "ssu_sample.fasta"
LSU_SLICE = REPO_ROOT / "tests" / "data" / "rrna" / "lsu_sample.fasta"
DNA_SUBSET = REPO_ROOT / "data_sources" / "dna" / "rrna_species.fasta.xz"
CHITCHAT_WHEEL = REPO_ROOT / "data" / "raw" / "chitchat_dataset-0.9.0-py3-none-any.whl"

SENDER_IN_THREE_CONVERSATIONS = "87191936-9c88-4796-9633-5638d793c2d7"
SENDER_IN_TWO_CONVERSATIONS = "ef7788f0-1a77-4b56-adb3-5022b0261121"
SENDER_WITH_EMPTY_MESSAGE = "6befe9b6-4178-4b72-802a-953c13af6c42"
# Senders of the slice with their character counts; the last two are under min_train_len=10 below.
SLICE_SENDER_LENGTHS = {
    "0f7a54f1-2783-4eb3-b43c-e2193be8b797": 587,
    "177d6104-7d82-47c9-97ba-4749547d3822": 16,
    "3863a74c-69fa-4909-a2d1-cfb3f06cdd49": 564,
    "6befe9b6-4178-4b72-802a-953c13af6c42": 40,
    "87191936-9c88-4796-9633-5638d793c2d7": 30,
    "8c5fc06f-2b1b-483b-abf4-735058320d41": 11,
    "c87bc185-753c-45ed-b4fe-2da11111cb46": 634,
    "d28322c1-42f0-4df6-8e65-46b918f40ad6": 660,
    "ef7788f0-1a77-4b56-adb3-5022b0261121": 18,
    "4cbe513c-ff18-4e59-888f-c8b096165506": 6,
    "ac521e9a-ebb8-4579-8597-ee3b808383d1": 8,
}
SLICE_EVAL_CANDIDATES = {
    "0f7a54f1-2783-4eb3-b43c-e2193be8b797",
    "3863a74c-69fa-4909-a2d1-cfb3f06cdd49",
    "c87bc185-753c-45ed-b4fe-2da11111cb46",
    "d28322c1-42f0-4df6-8e65-46b918f40ad6",
}
# Species of the rRNA slice: representative SSU + LSU lengths in bases.
SLICE_SPECIES_LENGTHS = {
    "Acidianus convivator": 1042,
    "Geogemma pacifica": 1050,
    "Herbaspirillum lusitanum": 1524 + 2478,
    "Idiomarina baltica": 1556 + 2124,
    "Syntrophus aciditrophicus": 1559 + 3012,
}


def load_prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", REPO_ROOT / "scripts" / "prepare_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["prepare_data"] = module
    spec.loader.exec_module(module)
    return module


prepare_data = load_prepare_data()


def read_train(path: Path) -> dict[str, str]:
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["sequence", "user_id"]
        return {user_id: sequence for sequence, user_id in reader}


def read_eval(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t")
        assert next(reader) == ["history", "context"]
        return [tuple(row) for row in reader]


def read_bytes_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def slice_options(**overrides):
    settings = dict(max_len=250, num_eval_users=2, seed=0, min_train_len=10)
    settings.update(overrides)
    return prepare_data.SplitOptions(**settings)


@pytest.fixture(scope="module")
def slice_users():
    conversations = prepare_data.load_chitchat_conversations(CHITCHAT_SLICE)
    return prepare_data.collect_dialog_users(conversations)


@pytest.fixture(scope="module")
def dna_slice_subset(tmp_path_factory):
    output = tmp_path_factory.mktemp("dna") / "subset.fasta"
    counts = prepare_data.cut_dna_subset(SSU_SLICE, LSU_SLICE, output)
    return output, counts


# ---- dialog ---------------------------------------------------------------------------------------


def test_dialog_slice_senders_and_lengths(slice_users):
    users, counts = slice_users
    assert {user_id: len(text) for user_id, text in users.items()} == SLICE_SENDER_LENGTHS
    assert counts["messages"] == 75
    assert counts["empty_messages"] == 4
    assert counts["senders"] == 11


def test_dialog_messages_in_time_order_across_conversations(slice_users):
    users, _ = slice_users
    # The slice lists these conversations newest first, so file order alone would give the reverse.
    assert users[SENDER_IN_THREE_CONVERSATIONS] == "asdfasdf\nasdf\nHi.\nHow are you?"
    assert users[SENDER_IN_TWO_CONVERSATIONS] == "asdf\nNot bad.\nYou?"


def test_dialog_empty_message_skipped(slice_users):
    users, _ = slice_users
    assert users[SENDER_WITH_EMPTY_MESSAGE] == "You don't wanna know lol\nWhat about you?"


def test_dialog_equal_timestamps_keep_file_order():
    conversations = {
        "second": {"messages": [[{"text": "b", "timestamp": "2018-01-01T00:00:00Z", "sender": "s"}]]},
        "first": {
            "messages": [
                [{"text": "c", "timestamp": "2018-01-01T00:00:00Z", "sender": "s"}],
                [{"text": "a", "timestamp": "2017-12-31T23:59:59Z", "sender": "s"}],
            ]
        },
    }
    users, _ = prepare_data.collect_dialog_users(conversations)
    assert users == {"s": "a\nb\nc"}


def test_dialog_wheel_and_json_give_same_users(tmp_path, slice_users):
    wheel = tmp_path / "chitchat_dataset-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(CHITCHAT_SLICE, "chitchat_dataset/dataset.json")
    users, _ = prepare_data.collect_dialog_users(prepare_data.load_chitchat_conversations(wheel))
    assert users == slice_users[0]


def test_dialog_prepare_writes_disjoint_split(tmp_path, slice_users):
    users, _ = slice_users
    stats = prepare_data.prepare_dialog(CHITCHAT_SLICE, tmp_path, slice_options())

    train = read_train(tmp_path / "train.csv")
    eval_rows = read_eval(tmp_path / "eval.tsv")
    eval_ids = (tmp_path / "eval_users.txt").read_text().splitlines()

    assert len(eval_ids) == 2
    assert set(eval_ids) <= SLICE_EVAL_CANDIDATES
    assert set(eval_ids).isdisjoint(train)
    too_short = {"4cbe513c-ff18-4e59-888f-c8b096165506", "ac521e9a-ebb8-4579-8597-ee3b808383d1"}
    expected_train = set(users) - set(eval_ids) - too_short
    assert set(train) == expected_train
    for user_id, sequence in train.items():
        assert sequence == users[user_id]
    for user_id, (history, context) in zip(eval_ids, eval_rows):
        assert len(history) == 250
        assert len(context) == 250
        assert history + context == users[user_id][:500]

    assert stats["eval_users"] == 2
    assert stats["eval_candidates"] == 4
    assert stats["train_users"] == 7
    assert stats["dropped_too_short"] == 2
    assert stats["dropped_empty"] == 0
    assert stats["empty_messages"] == 4
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_dialog_prepare_is_deterministic(tmp_path):
    prepare_data.prepare_dialog(CHITCHAT_SLICE, tmp_path / "first", slice_options())
    prepare_data.prepare_dialog(CHITCHAT_SLICE, tmp_path / "second", slice_options())
    assert read_bytes_of(tmp_path / "first") == read_bytes_of(tmp_path / "second")


def test_dialog_seed_changes_eval_users(tmp_path):
    chosen = set()
    for seed in range(6):
        prepare_data.prepare_dialog(CHITCHAT_SLICE, tmp_path / str(seed), slice_options(seed=seed))
        chosen.add((tmp_path / str(seed) / "eval_users.txt").read_text())
    assert len(chosen) > 1


def test_dialog_quotes_tabs_and_newlines_round_trip(tmp_path):
    text = 'She said "hi"\tthen\nleft, "quietly"' * 10
    conversations = {"c": {"messages": [[{"text": text, "timestamp": "2018-01-01T00:00:00Z", "sender": "q"}]]}}
    conversations["d"] = {"messages": [[{"text": text[::-1], "timestamp": "2018-01-01T00:00:00Z", "sender": "r"}]]}
    source = tmp_path / "dataset.json"
    source.write_text(json.dumps(conversations))
    prepare_data.prepare_dialog(source, tmp_path / "out", slice_options(max_len=100, num_eval_users=1, seed=0))

    eval_ids = (tmp_path / "out" / "eval_users.txt").read_text().splitlines()
    full = {"q": text, "r": text[::-1]}
    (history, context), = read_eval(tmp_path / "out" / "eval.tsv")
    assert history + context == full[eval_ids[0]][:200]
    train = read_train(tmp_path / "out" / "train.csv")
    (train_id, train_text), = train.items()
    assert train_text == full[train_id]


def test_dialog_training_caps(tmp_path, slice_users):
    users, _ = slice_users
    stats = prepare_data.prepare_dialog(
        CHITCHAT_SLICE, tmp_path, slice_options(max_train_users=3, max_train_len=20)
    )
    train = read_train(tmp_path / "train.csv")
    assert len(train) == 3
    for user_id, sequence in train.items():
        assert sequence == users[user_id][:20]
    assert stats["dropped_by_max_train_users"] == 4
    assert stats["train_users"] == 3


def test_dialog_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        prepare_data.prepare_dialog(tmp_path / "missing.json", tmp_path / "out", slice_options())


def test_dialog_only_empty_messages_raises(tmp_path):
    conversations = {"c": {"messages": [[{"text": "", "timestamp": "2018-01-01T00:00:00Z", "sender": "s"}]]}}
    source = tmp_path / "dataset.json"
    source.write_text(json.dumps(conversations))
    with pytest.raises(ValueError, match="no usable user"):
        prepare_data.prepare_dialog(source, tmp_path / "out", slice_options())


def test_dialog_too_few_eval_candidates_raises(tmp_path):
    with pytest.raises(ValueError, match="only 4 users have at least 2 \\* max_len = 500"):
        prepare_data.prepare_dialog(CHITCHAT_SLICE, tmp_path, slice_options(num_eval_users=5))


def test_dialog_message_without_sender_raises(tmp_path):
    conversations = {"c": {"messages": [[{"text": "hi", "timestamp": "2018-01-01T00:00:00Z"}]]}}
    source = tmp_path / "dataset.json"
    source.write_text(json.dumps(conversations))
    with pytest.raises(ValueError, match="conversation 'c', turn 0, message 0: expected 'sender'"):
        prepare_data.prepare_dialog(source, tmp_path / "out", slice_options())


def test_dialog_wheel_without_dataset_raises(tmp_path):
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match="no member chitchat_dataset/dataset.json"):
        prepare_data.load_chitchat_conversations(wheel)


@pytest.mark.skipif(not CHITCHAT_WHEEL.exists(), reason="needs the wheel from `scripts/prepare_data.py dialog`")
def test_dialog_full_wheel_counts():
    users, counts = prepare_data.collect_dialog_users(prepare_data.load_chitchat_conversations(CHITCHAT_WHEEL))
    assert counts["messages"] == 258145
    assert counts["empty_messages"] == 33
    assert len(users) == 1315
    assert sum(1 for text in users.values() if len(text) >= 4000) == 289


# ---- dna ------------------------------------------------------------------------------------------


def test_species_names_from_descriptions():
    cases = {
        "Idiomarina baltica OS145 OS145 16S ribosomal RNA gene, sequence. length 1476": "Idiomarina baltica",
        "Candidatus Pelagibacter ubique HTCC1062 16S ribosomal RNA gene": "Candidatus Pelagibacter ubique",
        "Zymomonas mobilis subsp. mobilis ZM4 ZM4 large subunit ribosomal RNA gene": "Zymomonas mobilis",
        "uncultured archaeon pPCA19.6 16S ribosomal RNA gene, sequence. length 900": None,
        "Uncultured euryarchaeote gene for 16S ribosomal RNA": None,
        "Bacillus sp. MT15 MT15 16S ribosomal RNA gene, sequence. length 1201": None,
        "Enterobacteriaceae bacterium A46 A46 16S ribosomal RNA gene, sequence. length 1260": None,
        "Odontotermes formosanus symbiont MOf1 MOf1 16S ribosomal RNA gene, sequence. length 999": None,
        "Tomato big bud phytoplasma TBB-BrA 16S ribosomal RNA gene, sequence. length 1201": None,
        "Arctic sea ice bacterium ARK9984 16S ribosomal RNA gene": None,
        "marine metagenome large subunit ribosomal RNA gene": None,
    }
    for description, expected in cases.items():
        assert prepare_data.species_from_description(description) == expected, description


def test_dna_subset_counts(dna_slice_subset):
    _, counts = dna_slice_subset
    assert counts["SSU_records"] == 14
    assert counts["LSU_records"] == 5
    assert counts["SSU_without_species"] == 5
    assert counts["LSU_without_species"] == 1
    assert counts["SSU_not_chosen"] == 4
    assert counts["LSU_not_chosen"] == 1
    assert counts["species"] == 5
    assert counts["species_with_both"] == 3


def test_dna_subset_picks_representatives(dna_slice_subset):
    output, _ = dna_slice_subset
    titles = [title.split("|")[:3] for title, _ in prepare_data.read_fasta(output)]
    assert titles == [
        ["AJ634763", "SSU", "Acidianus convivator"],
        ["DQ492259", "SSU", "Geogemma pacifica"],
        ["AF543312", "SSU", "Herbaspirillum lusitanum"],
        ["DQ150555", "LSU", "Herbaspirillum lusitanum"],
        # AJ440215 has 1542 unambiguous bases, more than AJ440214 (1475) and DQ001310.
        ["AJ440215", "SSU", "Idiomarina baltica"],
        ["AAMX01000056", "LSU", "Idiomarina baltica"],
        ["CP000252", "SSU", "Syntrophus aciditrophicus"],
        ["CP000252", "LSU", "Syntrophus aciditrophicus"],
    ]


def test_dna_users_are_ssu_then_lsu(dna_slice_subset):
    output, _ = dna_slice_subset
    users = prepare_data.collect_dna_users(prepare_data.read_fasta(output))
    assert {species: len(sequence) for species, sequence in users.items()} == SLICE_SPECIES_LENGTHS

    source = {title.split("|")[1].strip(): sequence for title, sequence in prepare_data.read_fasta(SSU_SLICE)}
    source_lsu = {title.split("|")[1].strip(): sequence for title, sequence in prepare_data.read_fasta(LSU_SLICE)}
    assert users["Idiomarina baltica"] == source["AJ440215"] + source_lsu["AAMX01000056"]


def test_dna_prepare_writes_disjoint_split(tmp_path, dna_slice_subset):
    output, _ = dna_slice_subset
    users = prepare_data.collect_dna_users(prepare_data.read_fasta(output))
    options = prepare_data.SplitOptions(max_len=1800, num_eval_users=2, seed=0)
    stats = prepare_data.prepare_dna(output, tmp_path, options)

    train = read_train(tmp_path / "train.csv")
    eval_rows = read_eval(tmp_path / "eval.tsv")
    eval_ids = (tmp_path / "eval_users.txt").read_text().splitlines()
    assert set(eval_ids) < {"Herbaspirillum lusitanum", "Idiomarina baltica", "Syntrophus aciditrophicus"}
    assert set(train) == set(SLICE_SPECIES_LENGTHS) - set(eval_ids)
    for user_id, (history, context) in zip(eval_ids, eval_rows):
        assert history == users[user_id][:1800]
        assert context == users[user_id][1800:3600]
    assert stats["eval_candidates"] == 3
    assert stats["train_users"] == 3
    assert stats["records"] == 8


def test_dna_main_is_deterministic(tmp_path, dna_slice_subset):
    output, _ = dna_slice_subset
    for name in ["first", "second"]:
        argv = ["dna", "--source", str(output), "--output-dir", str(tmp_path / name)]
        argv += ["--max-len", "1800", "--num-eval-users", "2"]
        assert prepare_data.main(argv) == 0
    assert read_bytes_of(tmp_path / "first") == read_bytes_of(tmp_path / "second")


def test_main_bad_flag_fails_before_download(tmp_path, caplog):
    raw = tmp_path / "raw"
    argv = ["dialog", "--raw-dir", str(raw), "--output-dir", str(tmp_path / "out"), "--max-len", "0"]

    assert prepare_data.main(argv) == 2
    assert "max_len=0 is invalid. Pass --max-len of at least 1" in caplog.text
    assert not raw.exists()
    assert not (tmp_path / "out").exists()


def test_dna_subset_titles_validated(tmp_path):
    bad = tmp_path / "bad.fasta"
    bad.write_text(">gb|AB1| Idiomarina baltica 16S\nACGT\n")
    with pytest.raises(ValueError, match="is not 'ACCESSION\\|SSU or LSU\\|Species\\|description'"):
        prepare_data.prepare_dna(bad, tmp_path / "out", prepare_data.SplitOptions(max_len=1, num_eval_users=1))


def test_dna_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="FASTA file not found"):
        prepare_data.prepare_dna(
            tmp_path / "missing.fasta.xz", tmp_path / "out", prepare_data.SplitOptions(max_len=1, num_eval_users=1)
        )


def test_committed_dna_subset_counts():
    records = list(prepare_data.read_fasta(DNA_SUBSET))
    users = prepare_data.collect_dna_users(records)
    assert len(records) == 28730
    assert len(users) == 26172
    assert sum(1 for sequence in users.values() if len(sequence) >= 4000) == 2296
    assert sum(len(sequence) for sequence in users.values()) == 52529487
