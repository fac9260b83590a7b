"""train_user_model.py as a command: its exit codes, and the message it logs when Ctrl-C stops training."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train_user_model
from use.training import SUMMARY_FILE, find_resume_checkpoint
from use.training_options import TrainingOptions

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "train"
DNA_TOKENIZER = REPO / "tokenizer" / "dna"
# Seconds to wait for the first checkpoint of the subprocess (which imports torch and transformers first),
# and then for it to exit after the interrupt, on a loaded machine.
CHECKPOINT_TIMEOUT = 120


def tiny_arguments(tmp_path: Path, *extra: str) -> list[str]:
    arguments = {
        "--data-dir": FIXTURES / "dna_users.txt",
        "--tokenizer-path": DNA_TOKENIZER,
        "--model-output-path": tmp_path / "model",
        "--cache-dir": tmp_path / "cache",
        "--training-objective": "CLM",
        "--hidden-size": 16,
        "--num-hidden-layers": 1,
        "--num-heads": 2,
        "--min-model-input-size": 20,
        "--max-model-input-size": 40,
        "--per-device-batch-size": 4,
        "--test-size": 0,
        "--logging-steps": 1,
    }
    return [str(item) for pair in arguments.items() for item in pair] + list(extra)


def tiny_options(tmp_path: Path, **overrides) -> TrainingOptions:
    values = dict(
        data_dir=str(FIXTURES / "dna_users.txt"),
        tokenizer_path=str(DNA_TOKENIZER),
        model_output_path=str(tmp_path / "model"),
        save_steps=25,
    )
    values.update(overrides)
    return TrainingOptions(**values)


def write_checkpoint(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_learning_rate_exits_2(tmp_path, caplog, value):
    with caplog.at_level(logging.ERROR):
        code = train_user_model.main(tiny_arguments(tmp_path, f"--learning-rate={value}"))
    assert code == 2
    assert f"--learning-rate={float(value)} is not a finite number" in caplog.text
    assert not (tmp_path / "model").exists()
    assert not (tmp_path / "cache").exists()


def test_ctrl_c_names_last_checkpoint(tmp_path):
    output = tmp_path / "model"
    command = [sys.executable, str(REPO / "train_user_model.py")]
    command += tiny_arguments(tmp_path, "--max-steps", "100000", "--save-steps", "2", "--eval-steps", "100000")
    # A file instead of a pipe, so that the progress bars cannot fill a pipe buffer and block training.
    log_file = tmp_path / "stderr.log"
    with log_file.open("w") as log:
        # A shell starts background jobs with SIGINT ignored, and Python installs no KeyboardInterrupt
        # handler when it starts with SIGINT ignored, so restore the default for the child.
        process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            deadline = time.monotonic() + CHECKPOINT_TIMEOUT
            while find_resume_checkpoint(output) is None and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if process.poll() is not None:
                pytest.fail(f"training exited with {process.returncode} before the interrupt:\n{log_file.read_text()}")
            assert find_resume_checkpoint(output) is not None, f"no checkpoint within {CHECKPOINT_TIMEOUT} s"
            process.send_signal(signal.SIGINT)
            process.wait(timeout=CHECKPOINT_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    stderr = log_file.read_text()

    assert process.returncode == 130
    assert "Traceback" not in stderr
    last = find_resume_checkpoint(output)
    expected = f"training interrupted; the last checkpoint is {last}, and rerunning the same command resumes from it."
    warnings = [line for line in stderr.splitlines() if " WARNING train_user_model: " in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(expected)
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == int(last.name.split("-")[1])
    assert not (output / SUMMARY_FILE).exists()


def test_interrupt_before_first_checkpoint_message(tmp_path):
    message = train_user_model.interrupted_message(tiny_options(tmp_path))
    assert message == (
        f"training interrupted; {tmp_path / 'model'} has no checkpoint yet, so rerunning the same command starts "
        "from step 0. A checkpoint is saved every --save-steps=25 optimizer steps."
    )


def test_interrupt_during_search_message(tmp_path):
    output = tmp_path / "model"
    (output / "trial-0").mkdir(parents=True)
    (output / "trial-0" / SUMMARY_FILE).write_text("{}")
    write_checkpoint(output / "trial-1" / "checkpoint-50")
    write_checkpoint(output / "trial-1" / "checkpoint-75")

    message = train_user_model.interrupted_message(tiny_options(tmp_path, n_iter=3))
    assert message == (
        "search interrupted in draw 1 with 1 of 3 draws finished (a rerun skips finished draws); the last "
        f"checkpoint is {output / 'trial-1' / 'checkpoint-75'}, and rerunning the same command resumes from it."
    )

    for index in (1, 2):
        (output / f"trial-{index}").mkdir(exist_ok=True)
        (output / f"trial-{index}" / SUMMARY_FILE).write_text("{}")
    message = train_user_model.interrupted_message(tiny_options(tmp_path, n_iter=3))
    assert message == (
        f"training interrupted after all 3 draws finished; rerunning the same command skips every draw and copies "
        f"the best one to {output}."
    )
