"""End-to-end runs of eval_reid.py and eval_classification.py as subprocesses."""

import csv
import json
import logging
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from use import UserModel, UserModelConfig
from use.evaluation.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
DIALOG_TOKENIZER = REPO / "tokenizer" / "dialog"

# Interview turns in each speaker's own style; a user's history and context are drawn from
# the same speaker's turns in different orders.
SPEAKERS = {
    "anchor": [
        "ANCHOR: Good evening, and welcome to the program.",
        "ANCHOR: Negotiators in Washington say a budget deal could come as early as Friday.",
        "ANCHOR: We'll be right back after this short break.",
        "ANCHOR: Joining us now from the Capitol is our congressional correspondent.",
    ],
    "chef": [
        "CHEF: You fold the butter in slowly, otherwise the pastry goes tough.",
        "CHEF: Salt your pasta water like the sea, that's the whole secret.",
        "CHEF: Chill the dough for twenty minutes, then roll it thin.",
        "CHEF: A squeeze of lemon at the end wakes the whole dish up.",
    ],
    "coach": [
        "COACH: We played hard, but turnovers killed us in the fourth quarter!",
        "COACH: Our defense has to communicate better on the back line.",
        "COACH: I'm proud of these kids; they never quit, not once.",
        "COACH: Sunday's game is a must-win, plain and simple.",
    ],
    "doctor": [
        "DR. LEE: Most patients recover within a week with rest and fluids.",
        "DR. LEE: If the fever persists past three days, see a physician.",
        "DR. LEE: Vaccination remains the best protection we have (by far).",
        "DR. LEE: Wash your hands; it sounds simple because it is.",
    ],
    "poet": [
        "POET: Words are small boats; you push them out and hope the tide is kind...",
        "POET: I write at dawn, when the kettle and the birds argue quietly.",
        "POET: Every poem is a letter to someone I haven't met yet.",
        "POET: Grief, like winter, teaches you the shape of light.",
    ],
}


def speaker_text(turns, length, seed):
    rng = random.Random(seed)
    text = ""
    while len(text) < length:
        text += rng.choice(turns) + "\n"
    return text


def write_users(path, max_len):
    """Write one row per speaker, then a row with an empty context and a user too short."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["history", "context"])
        for index, turns in enumerate(SPEAKERS.values()):
            history = speaker_text(turns, max_len + 100, seed=index)
            writer.writerow([history, speaker_text(turns, max_len, seed=100 + index)])
        writer.writerow(["GUEST: I only have a history.", ""])
        writer.writerow(["GUEST: Me too.", "GUEST: Short."])
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised RetNet user model saved in the real checkpoint format."""
    tokenizer = AutoTokenizer.from_pretrained(DIALOG_TOKENIZER)
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone_type="retnet", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_heads=4,
        dropout=0.0, chunk_size=64,
    )
    path = tmp_path_factory.mktemp("checkpoint")
    UserModel(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def users_tsv(tmp_path_factory):
    return write_users(tmp_path_factory.mktemp("data") / "users.tsv", max_len=200)


def run_script(script, *args):
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def read_report(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_common(report, method, strategies):
    assert report["settings"]["method_type"] == method
    assert report["settings"]["strategies"] == strategies
    assert report["settings"]["num_periods"] == 4
    assert [p["context_behaviors"] for p in report["periods"]] == [50, 100, 150, 200]
    assert report["dataset"]["rows_read"] == 7
    assert report["dataset"]["users_evaluated"] == 5
    assert [row["row"] for row in report["dataset"]["skipped_rows"]] == [7, 8]
    assert list(report["results"]) == strategies


def test_reid_with_checkpoint(checkpoint, users_tsv, tmp_path):
    result = run_script(
        "eval_reid.py", "--model-path", checkpoint, "--dataset_dir", users_tsv.parent,
        "--tokenizer_path", DIALOG_TOKENIZER, "--max_len", 200, "--period_len", 50, "--device", "cpu",
        "--output", tmp_path / "reid.json", "--plot", tmp_path / "reid.png",
    )
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "reid.json")

    check_common(report, "retnet", ["recent", "pool", "stateful", "recompute"])
    assert report["task"] == "reid"
    for strategy, periods in report["results"].items():
        for period in periods:
            assert 1 / 5 <= period["mrr"] <= 1.0, strategy
            assert period["top_5"] == 1.0
    assert "Re-identification MRR" in result.stdout
    assert "Skipped 1 row(s) of" in result.stderr
    assert (tmp_path / "reid.png").read_bytes()[:4] == b"\x89PNG"


def test_reid_with_tfidf_finds_every_speaker(users_tsv, tmp_path):
    result = run_script(
        "eval_reid.py", "--dataset_dir", users_tsv, "--method_type", "tf-idf", "--max_len", 200,
        "--period_len", 50, "--output", tmp_path / "reid.json",
    )
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "reid.json")

    check_common(report, "tf-idf", ["recent", "pool", "recompute"])
    assert [p["mrr"] for p in report["results"]["recompute"]] == [1.0, 1.0, 1.0, 1.0]
    assert "'stateful' does not apply to tf-idf" in result.stderr


def test_classification_with_checkpoint(checkpoint, users_tsv, tmp_path):
    result = run_script(
        "eval_classification.py", "--model_path", checkpoint, "--dataset-dir", users_tsv,
        "--tokenizer-path", DIALOG_TOKENIZER, "--max-len", 200, "--period-len", 50, "--seeds", 0, 1,
        "--mlp_hidden", 16, "--mlp_max_iter", 50, "--strategies", "stateful", "recompute",
        "--output", tmp_path / "classification.json", "--plot", tmp_path / "auc.png",
    )
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "classification.json")

    check_common(report, "retnet", ["stateful", "recompute"])
    assert report["settings"]["mlp_hidden"] == [16]
    for periods in report["results"].values():
        for period in periods:
            assert len(period["auc_per_seed"]) == 2
            assert 0.0 <= period["auc_mean"] <= 1.0
    assert "Classification one-vs-rest ROC AUC" in result.stdout
    assert (tmp_path / "auc.png").read_bytes()[:4] == b"\x89PNG"


def test_classification_with_tfidf(users_tsv, tmp_path):
    result = run_script(
        "eval_classification.py", "--dataset_dir", users_tsv, "--method_type", "tf-idf",
        "--tokenizer_path", DIALOG_TOKENIZER, "--max_len", 200, "--period_len", 50, "--seeds", 0,
        "--mlp_hidden", 64, "--mlp_max_iter", 300, "--output", tmp_path / "classification.json",
    )
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "classification.json")

    check_common(report, "tf-idf", ["recent", "pool", "recompute"])
    recompute = [p["auc_mean"] for p in report["results"]["recompute"]]
    assert recompute[0] > 0.9
    assert recompute[-1] == 1.0


@pytest.mark.slow
def test_readme_command_with_default_lengths(checkpoint, tmp_path):
    """The README command as written: 4000 behaviors per side, 16 periods of 250."""
    data = write_users(tmp_path / "users.tsv", max_len=4000)
    result = run_script(
        "eval_reid.py", "--model_path", checkpoint, "--dataset_dir", data, "--tokenizer_path", DIALOG_TOKENIZER,
        "--output", tmp_path / "reid.json",
    )
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "reid.json")

    assert report["settings"]["num_periods"] == 16
    assert report["periods"][-1]["context_behaviors"] == 4000
    assert report["dataset"]["users_evaluated"] == 5


def run_main(task, caplog, *args):
    """Run the CLI in this process (same code path as the scripts, without a new interpreter)."""
    with caplog.at_level(logging.ERROR):
        return main(task, [str(arg) for arg in args])


def test_bad_file_fails_with_row(tmp_path, caplog):
    path = tmp_path / "users.tsv"
    path.write_bytes(b"history\tcontext\nHOST: hi\tHOST: bye\nGUEST: caf\xe9\tGUEST: ok\n")

    assert run_main("reid", caplog, "--dataset_dir", path, "--method_type", "tf") == 1
    assert "row 3 (line 3) column 1" in caplog.text
    assert "not valid UTF-8" in caplog.text


def test_bad_file_script_exits_without_traceback(tmp_path):
    path = tmp_path / "users.tsv"
    path.write_text("history,context\nHOST: hi,HOST: bye\n", encoding="utf-8")
    result = run_script("eval_classification.py", "--dataset_dir", path, "--method_type", "tf")

    assert result.returncode == 1
    assert "row 1 of" in result.stderr
    assert "has 1 column" in result.stderr
    assert "Traceback" not in result.stderr


def test_too_few_users_fails(users_tsv, caplog):
    code = run_main("reid", caplog, "--dataset_dir", users_tsv, "--method_type", "tf", "--max_len", 100000,
                    "--period_len", 50000)

    assert code == 1
    assert "0 usable user(s) after skipping 7 row(s)" in caplog.text


def test_neural_method_needs_model_path(users_tsv, caplog):
    assert run_main("reid", caplog, "--dataset_dir", users_tsv, "--method_type", "retnet") == 1
    assert "--model_path is required for retnet" in caplog.text


def test_method_type_must_match_checkpoint(checkpoint, users_tsv, caplog):
    code = run_main(
        "classification", caplog, "--model_path", checkpoint, "--dataset_dir", users_tsv, "--tokenizer_path",
        DIALOG_TOKENIZER, "--method_type", "gpt2",
    )

    assert code == 1
    assert "--method_type gpt2 does not match the checkpoint" in caplog.text


def test_two_user_file_classifies(tmp_path, caplog):
    path = tmp_path / "two.tsv"
    turns = list(SPEAKERS.values())
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["history", "context"])
        for index in (0, 1):
            history = speaker_text(turns[index], 300, seed=index)
            writer.writerow([history, speaker_text(turns[index], 200, seed=10 + index)])
    code = run_main(
        "classification", caplog, "--dataset_dir", path, "--method_type", "tf-idf", "--max_len", 200,
        "--period_len", 100, "--seeds", 0, "--mlp_hidden", 16, "--mlp_max_iter", 200, "--output", tmp_path / "out.json",
    )
    assert code == 0, caplog.text
    report = read_report(tmp_path / "out.json")

    assert report["dataset"]["users_evaluated"] == 2
    assert [p["auc_mean"] for p in report["results"]["recompute"]] == [1.0, 1.0]


def test_gpt2_checkpoint_skips_stateful(tmp_path, users_tsv, caplog):
    tokenizer = AutoTokenizer.from_pretrained(DIALOG_TOKENIZER)
    torch.manual_seed(0)
    config = UserModelConfig(
        backbone_type="gpt2", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_heads=4,
        dropout=0.0, max_position_embeddings=64,
    )
    UserModel(config).save_pretrained(tmp_path / "gpt2")
    with caplog.at_level(logging.INFO):
        code = main("reid", [
            "--model_path", str(tmp_path / "gpt2"), "--dataset_dir", str(users_tsv), "--tokenizer_path",
            str(DIALOG_TOKENIZER), "--max_len", "200", "--period_len", "50", "--output", str(tmp_path / "out.json"),
        ])
    assert code == 0, caplog.text
    report = read_report(tmp_path / "out.json")

    check_common(report, "gpt2", ["recent", "pool", "recompute"])
    assert "'stateful' does not apply to gpt2" in caplog.text


def test_unavailable_device_is_rejected(checkpoint, users_tsv, caplog):
    code = run_main("reid", caplog, "--model_path", checkpoint, "--dataset_dir", users_tsv, "--tokenizer_path",
                    DIALOG_TOKENIZER, "--device", "tpu0")

    assert code == 1
    assert "--device 'tpu0' is not a torch device name" in caplog.text


def test_help_names_flags_and_units():
    reid_help = build_parser("reid").format_help()
    classification_help = build_parser("classification").format_help()

    assert "--model-path" in reid_help
    assert "behaviors per period of new context activity" in reid_help
    assert "--mlp_hidden" not in reid_help
    assert "hidden layer sizes of the MLP classifier, in units" in classification_help


def test_output_folder_is_rejected_before_work(tmp_path, caplog):
    from use.evaluation.cli import main

    # The dataset does not exist either: the folder check must come first, before any reading.
    arguments = ["--dataset_dir", str(tmp_path / "absent.tsv"), "--method_type", "tf-idf", "--output", str(tmp_path)]
    assert main("reid", arguments) == 1
    assert "--output" in caplog.text
    assert "is a folder" in caplog.text
