"""The demo pipeline end to end at its smallest settings, on the committed DNA subset (no download)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

import train_user_model

REPO = Path(__file__).resolve().parents[1]
MODELS = ("USE", "USE-CLM", "Trans-CLM", "RetNet (untrained)", "tf-idf")


@pytest.mark.slow
def test_quick_demo_writes_summary():
    for folder in ("results/demo-quick/dna", "artifacts_demo_quick/dna", "data/dna-quick"):
        shutil.rmtree(REPO / folder, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "scripts/run_demo.py", "--data", "dna", "--quick"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    summary = (REPO / "results/demo-quick/dna/summary.md").read_text(encoding="utf-8")
    for model in MODELS:
        assert f"| {model} | recompute |" in summary
    assert "| USE | stateful |" in summary
    assert "| Trans-CLM | stateful |" not in summary
    assert "Sanity check: trained USE" in summary
    for name in ("USE", "USE-CLM", "Trans-CLM"):
        assert (REPO / "artifacts_demo_quick/dna" / name / "model.safetensors").is_file()


def load_run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", REPO / "scripts" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_untrained_model_is_use_initial_weights(tmp_path):
    """The demo's untrained RetNet has exactly the weights that USE's training started from."""
    demo = load_run_demo()
    model_dir = tmp_path / "USE"
    arguments = {
        "--data-dir": REPO / "tests" / "fixtures" / "train" / "dna_users.txt",
        "--tokenizer-path": REPO / "tokenizer" / "dna",
        "--model-output-path": model_dir,
        "--cache-dir": tmp_path / "cache",
        "--training-objective": "FEP_SUP",
        "--hidden-size": 16,
        "--num-hidden-layers": 1,
        "--num-heads": 2,
        "--min-model-input-size": 20,
        "--max-model-input-size": 40,
        "--user-segments-gap": 5,
        "--per-device-batch-size": 4,
        "--test-size": 0,
        "--max-steps": 1,
        # One AdamW step of at most 1e-30 is far below float32 resolution at weights of about 0.02,
        # so the saved weights are the initial ones.
        "--learning-rate": 1e-30,
        "--seed": demo.MODEL["seed"],
    }
    assert train_user_model.main([str(item) for pair in arguments.items() for item in pair]) == 0

    demo.save_untrained(model_dir, tmp_path / "untrained", "dna")

    trained = load_file(model_dir / "model.safetensors")
    untrained = load_file(tmp_path / "untrained" / "model.safetensors")
    assert sorted(trained) == sorted(untrained)
    for name, tensor in trained.items():
        assert untrained[name].equal(tensor), name
    assert (tmp_path / "untrained" / "tokenizer.json").read_bytes() == (REPO / "tokenizer/dna/tokenizer.json").read_bytes()


def load_training_effect():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location("training_effect", REPO / "scripts" / "training_effect.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return module


def test_training_effect_setting_parsing():
    parse = load_training_effect().parse_setting
    assert parse("demo:") == ("demo", {})
    assert parse("w20:fep_window_size=20,batch_users=32,learning_rate=2e-3,dropout=0.1,objective=SUP") == (
        "w20",
        {"fep_window_size": 20, "batch_users": 32, "learning_rate": 2e-3, "dropout": 0.1, "objective": "SUP"},
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("w20", "expected NAME:key=value"),
        ("w20:hidden_size=64", "changes 'hidden_size'; the settings that can change are"),
        ("w20:fep_window_size=big", "fep_window_size='big' is not a valid int"),
        ("w20:objective=MLM", "objective must be one of CLM, FEP, SUP, FEP_SUP"),
        ("x:dropout=1.5", r"dropout=1.5 must be in \[0.0, 1.0\)"),
        ("x:learning_rate=nan", r"learning_rate=nan must be in \[1e-12, inf\)"),
        ("x:batch_users=0", r"batch_users=0 must be in \[1, inf\)"),
    ],
)
def test_training_effect_rejects_bad_setting(text, message):
    module = load_training_effect()
    with pytest.raises(module.argparse.ArgumentTypeError, match=message):
        module.parse_setting(text)


def test_training_effect_rejects_repeated_names(capsys):
    module = load_training_effect()
    with pytest.raises(SystemExit) as stopped:
        module.main(["--setting", "a:", "--setting", "a:dropout=0.5"])
    assert stopped.value.code == 2
    assert "--setting names must differ, but a is given more than once" in capsys.readouterr().err


def test_training_effect_reused_name_other_changes(tmp_path):
    module = load_training_effect()
    record = tmp_path / "a-seed42-setting.json"
    module.check_same_setting(record, "a-seed42", {"dropout": 0.0})
    module.check_same_setting(record, "a-seed42", {"dropout": 0.0})
    with pytest.raises(SystemExit, match="run 'a-seed42' was trained with changes {'dropout': 0.0}, not {'dropout': 0.5}"):
        module.check_same_setting(record, "a-seed42", {"dropout": 0.5})
    assert json.loads(record.read_text(encoding="utf-8")) == {"dropout": 0.0}


def test_wall_times_accumulate_over_reruns(tmp_path):
    demo = load_run_demo()
    assert demo.record_wall_time(tmp_path, 300.04) == [300.0]
    assert demo.record_wall_time(tmp_path, 5.5) == [300.0, 5.5]
    assert json.loads((tmp_path / "wall_times.json").read_text(encoding="utf-8")) == [300.0, 5.5]
