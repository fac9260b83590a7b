"""Pre-training through the real Trainer on fixture users: objectives, accumulation, resume, errors."""

import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, TrainerCallback

from use.data import DataError
from use.embedding import load_model_and_tokenizer
from use.objectives import OBJECTIVES
from use.training import SUMMARY_FILE, find_resume_checkpoint, train
from use.training_options import OptionsError, TrainingOptions, validate_options
from use.training_search import SEARCH_RESULTS_FILE

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "train"
DNA_TOKENIZER = REPO / "tokenizer" / "dna"
DIALOG_TOKENIZER = REPO / "tokenizer" / "dialog"


@pytest.fixture(autouse=True)
def single_torch_thread():
    # Tiny models run far slower with two OpenMP threads on a busy two-core machine than with one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_options(tmp_path: Path, **overrides) -> TrainingOptions:
    values = dict(
        data_dir=str(FIXTURES / "dna_users.txt"),
        tokenizer_path=str(DNA_TOKENIZER),
        model_output_path=str(tmp_path / "model"),
        cache_dir=str(tmp_path / "cache"),
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        num_attention_heads=2,
        dropout=0.0,
        min_model_input_size=20,
        max_model_input_size=40,
        user_segments_gap=5,
        fep_window_size=3,
        per_device_batch_size=4,
        max_steps=6,
        logging_steps=1,
        eval_steps=3,
        save_steps=100,
        test_size=0.2,
        learning_rate=3e-3,
        warmup_ratio=0.0,
        seed=0,
    )
    values.update(overrides)
    return TrainingOptions(**values)


def write_users(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def train_losses(output_dir: Path) -> list[dict]:
    state = json.loads((output_dir / f"checkpoint-{_last_step(output_dir)}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def _last_step(output_dir: Path) -> int:
    return max(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))


@pytest.mark.parametrize("backbone", ["retnet", "gpt2"])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_trains_and_loss_decreases(tmp_path, objective, backbone):
    # Six users: four train users fill every batch, so every step trains on the same users, and two
    # test users give the SUP eval loss a negative.
    lines = (FIXTURES / "dna_users.txt").read_text().splitlines()[:6]
    data = write_users(tmp_path / "users.txt", lines)
    options = tiny_options(
        tmp_path,
        data_dir=str(data),
        model=backbone,
        training_objective=objective,
        test_size=2,
        max_steps=25,
        eval_steps=25,
        learning_rate=1e-2,
    )
    result = train(options)

    parts = [name for name in ("clm_loss", "fep_loss", "sup_loss") if name.split("_")[0].upper() in objective]
    losses = train_losses(result.output_dir)
    assert len(losses) == 25
    assert all(math.isfinite(entry["loss"]) for entry in losses)
    for entry in losses:
        assert sorted(name for name in entry if name.endswith("_loss")) == sorted(parts)
        assert entry["loss"] == pytest.approx(sum(entry[name] for name in parts), rel=1e-4)
    first = sum(entry["loss"] for entry in losses[:3]) / 3
    last = sum(entry["loss"] for entry in losses[-3:]) / 3
    assert last < 0.9 * first

    assert math.isfinite(result.eval_loss)
    for name in parts:
        assert math.isfinite(result.eval_metrics[f"eval_{name}"])
    assert result.global_step == 25


def test_saved_model_loads_both_ways(tmp_path):
    result = train(tiny_options(tmp_path, model="gpt2", training_objective="FEP_CLM"))
    output = result.output_dir
    assert (output / "model.safetensors").is_file()
    assert (output / "config.json").is_file()
    assert (output / "tokenizer.json").is_file()

    model, tokenizer = load_model_and_tokenizer(output, output)
    assert model.config.backbone_type == "gpt2"
    assert model.config.objective == "FEP_CLM"
    assert model.config.vocab_size == len(tokenizer) == 10
    assert model.config.max_position_embeddings == 40
    auto = AutoModel.from_pretrained(output)
    saved = load_file(output / "model.safetensors")
    for name, tensor in auto.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
        assert torch.equal(result.model.state_dict()[name], tensor), name

    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["global_step"] == 6
    assert summary["train_tokens"] > 0
    assert summary["eval_metrics"]["eval_loss"] == result.eval_loss


class GradientRecorder(TrainerCallback):
    """Keeps the gradients the optimizer is about to apply (after accumulation and clipping)."""

    def __init__(self):
        self.gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {name: parameter.grad.detach().clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("objective", ["CLM", "FEP"])
def test_accumulation_matches_one_large_batch(tmp_path, objective):
    # Eight users of exactly 20 input behaviors + 3 future ones: equal, unpadded rows.
    lines = [line[:23] for line in (FIXTURES / "dna_users.txt").read_text().splitlines()[:8]]
    data = write_users(tmp_path / "users.txt", lines)
    runs = {}
    for batch, accumulation in ((2, 4), (8, 1)):
        recorder = GradientRecorder()
        options = tiny_options(
            tmp_path / f"batch{batch}",
            data_dir=str(data),
            training_objective=objective,
            max_model_input_size=22,
            test_size=0,
            max_steps=1,
            per_device_batch_size=batch,
            gradient_accumulation_steps=accumulation,
        )
        result = train(options, callbacks=[recorder])
        assert result.global_step == 1
        runs[batch] = (recorder.gradients, train_losses(result.output_dir)[0])

    (small_gradients, small_log), (large_gradients, large_log) = runs[2], runs[8]
    assert small_gradients.keys() == large_gradients.keys()
    for name, gradient in large_gradients.items():
        torch.testing.assert_close(small_gradients[name], gradient, rtol=0, atol=1e-6, msg=name)
    assert small_log["loss"] == pytest.approx(large_log["loss"], abs=1e-6)
    part = f"{objective.lower()}_loss"
    assert small_log[part] == pytest.approx(large_log[part], abs=1e-6)


class Interrupted(Exception):
    pass


class InterruptAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"stopped at step {self.step}")


def test_rerun_resumes_from_last_checkpoint(tmp_path):
    options = tiny_options(tmp_path, training_objective="CLM", max_steps=6, save_steps=2, eval_steps=100)
    with pytest.raises(Interrupted):
        train(options, callbacks=[InterruptAt(5)])
    output = Path(options.model_output_path)
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (output / SUMMARY_FILE).exists()

    # A checkpoint cut off while it was written has no trainer_state.json; it must not be resumed from.
    (output / "checkpoint-5").mkdir()
    (output / "checkpoint-5" / "model.safetensors").write_bytes(b"partial")

    resumed = train(options)
    assert resumed.resumed_from_step == 4
    assert resumed.steps_this_run == 2
    assert resumed.global_step == 6
    steps = [entry["step"] for entry in train_losses(output)]
    assert steps == [1, 2, 3, 4, 5, 6]

    # Same data order and segments (CLM without random starts) as an uninterrupted run.
    uninterrupted = train(tiny_options(tmp_path / "straight", training_objective="CLM", save_steps=2, eval_steps=100))
    for name, tensor in uninterrupted.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, msg=name)


def final_weights_after_interrupt(tmp_path: Path, **overrides) -> tuple[dict, dict]:
    """Train once straight through and once interrupted at step 9 and resumed; return both state dicts."""
    options = tiny_options(tmp_path / "resumed", **overrides)
    with pytest.raises(Interrupted):
        train(options, callbacks=[InterruptAt(9)])
    resumed = train(options)
    assert resumed.resumed_from_step == 8
    uninterrupted = train(tiny_options(tmp_path / "straight", **overrides))
    return resumed.model.state_dict(), uninterrupted.model.state_dict()


@pytest.mark.parametrize("objective", ["FEP_SUP", "CLM"])
def test_resumed_random_segments_match_uninterrupted(tmp_path, objective):
    # 24 users, 4 per step: 6 steps per epoch, so the resume at step 8 is inside the second epoch.
    # SUP draws the first segment's length, and random starts draw every segment's start.
    overrides = dict(
        training_objective=objective,
        get_random_segment=True,
        test_size=0,
        max_steps=10,
        save_steps=4,
        dropout=0.1,
    )
    resumed, uninterrupted = final_weights_after_interrupt(tmp_path, **overrides)
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)


def test_save_total_limit_keeps_newest(tmp_path):
    options = tiny_options(
        tmp_path, training_objective="CLM", test_size=0, max_steps=8, save_steps=2, save_total_limit=2
    )
    train(options)
    output = Path(options.model_output_path)
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-8"]


def test_save_total_limit_below_one_fails(tmp_path):
    with pytest.raises(OptionsError, match=re.escape("--save-total-limit=0 must be at least 1")):
        validate_options(tiny_options(tmp_path, save_total_limit=0))


def test_max_steps_below_checkpoint_fails(tmp_path):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, max_steps=4, save_steps=2)
    with pytest.raises(Interrupted):
        train(options, callbacks=[InterruptAt(3)])
    output = Path(options.model_output_path)
    before = sorted(str(path.relative_to(output)) for path in output.rglob("*"))

    with pytest.raises(OptionsError) as raised:
        train(dataclasses.replace(options, max_steps=1))
    message = str(raised.value)
    assert message.startswith(f"--max-steps=1 is below step 2 of the checkpoint {str(output / 'checkpoint-2')!r}")
    assert message.endswith("--max-steps above 2 to train further, or another --model-output-path to train a new model.")
    assert sorted(str(path.relative_to(output)) for path in output.rglob("*")) == before


def test_resume_warns_about_changed_optimisation(tmp_path, caplog):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, max_steps=2, save_steps=2)
    train(options)
    changed = dataclasses.replace(options, learning_rate=1e-2, weight_decay=0.5, warmup_ratio=0.25, max_steps=4)
    with caplog.at_level(logging.WARNING, logger="use"):
        train(changed)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    checkpoint = Path(options.model_output_path) / "checkpoint-2"
    assert warnings == [
        f"resuming from {checkpoint} with optimisation flags that differ from the run that wrote it: "
        "--learning-rate is 0.003 there but 0.01 now, so the checkpoint's 0.003 is used, because the optimizer "
        "state is restored; "
        "--weight-decay is 0.01 there but 0.5 now, so the checkpoint's 0.01 is used, because the optimizer state "
        "is restored; "
        "--warmup-ratio is 0.0 there but 0.25 now, so 0.25 reshapes the learning-rate schedule from step 2 on, "
        "around the checkpoint's peak learning rate 0.003; "
        "--max-steps is 2 there but 4 now, so 4 reshapes the learning-rate schedule from step 2 on, around the "
        "checkpoint's peak learning rate 0.003. "
        "To train with the new values from step 0, pass another --model-output-path."
    ]


def test_resume_with_same_optimisation_does_not_warn(tmp_path, caplog):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, max_steps=4, save_steps=2)
    with pytest.raises(Interrupted):
        train(options, callbacks=[InterruptAt(3)])
    with caplog.at_level(logging.WARNING, logger="use"):
        resumed = train(options)
    assert resumed.resumed_from_step == 2
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_sup_with_one_test_user_fails_or_warns(tmp_path, caplog):
    with pytest.raises(OptionsError, match=re.escape("--test-size=1 holds out one user, so the SUP eval loss")):
        validate_options(tiny_options(tmp_path, training_objective="FEP_SUP", test_size=1))
    # ceil(0.04 * 24 users) = 1 test user.
    options = tiny_options(tmp_path, training_objective="SUP", test_size=0.04)
    with caplog.at_level(logging.WARNING, logger="use"):
        train(options)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert (
        "--test-size=0.04 leaves 1 usable test user, so the SUP eval loss has no negative and is always 0; raise "
        "--test-size (e.g. to 2 users) for a meaningful eval loss, or set it to 0 to skip evaluation."
    ) in warnings


def test_incomplete_checkpoints_are_skipped(tmp_path):
    output = tmp_path / "model"
    complete = output / "checkpoint-3"
    complete.mkdir(parents=True)
    (complete / "trainer_state.json").write_text("{}")
    (complete / "model.safetensors").write_bytes(b"")
    (output / "checkpoint-7").mkdir()
    assert find_resume_checkpoint(output) == complete
    assert (output / "checkpoint-7").exists()
    assert find_resume_checkpoint(output, remove_incomplete=True) == complete
    assert not (output / "checkpoint-7").exists()


def test_failure_before_first_checkpoint_leaves_no_folder(tmp_path):
    options = tiny_options(tmp_path, save_steps=100)
    with pytest.raises(Interrupted):
        train(options, callbacks=[InterruptAt(2)])
    assert not Path(options.model_output_path).exists()


def test_empty_file_fails_without_output(tmp_path):
    options = tiny_options(tmp_path, data_dir=str(FIXTURES / "bad" / "empty.txt"))
    with pytest.raises(DataError, match="contains no usable sequence"):
        train(options)
    assert not Path(options.model_output_path).exists()


def test_all_users_too_short_fails_without_output(tmp_path):
    options = tiny_options(tmp_path, data_dir=str(FIXTURES / "bad" / "short.txt"), test_size=0)
    with pytest.raises(DataError, match="lower --min-model-input-size or --user-segments-gap"):
        train(options)
    assert not Path(options.model_output_path).exists()


def test_unknown_characters_are_counted(tmp_path, caplog):
    options = tiny_options(
        tmp_path, data_dir=str(FIXTURES / "unknown.txt"), training_objective="CLM", test_size=0, max_steps=2
    )
    with caplog.at_level(logging.INFO, logger="use"):
        result = train(options)
    assert "3 behaviors map to [UNK] (not in the tokenizer's vocabulary), in 1 of the users" in caplog.text
    assert result.global_step == 2


def test_missing_tokenizer_fails_without_output(tmp_path):
    options = tiny_options(tmp_path, tokenizer_path=str(tmp_path / "no-tokenizer"))
    with pytest.raises(OptionsError, match="--tokenizer-path .* is not a folder"):
        train(options)
    assert not Path(options.model_output_path).exists()
    assert not Path(options.cache_dir).exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fep_window_size": 0, "training_objective": "FEP"}, "--fep-window-size=0 must be at least 1"),
        ({"contrastive_embedding": "state", "model": "gpt2"}, "use --contrastive-embedding token with --model gpt2"),
        ({"min_model_input_size": 50, "max_model_input_size": 40}, "--min-model-input-size=50 is above"),
        ({"hidden_size": 30, "num_heads": 4}, "--hidden-size=30 is not divisible by --num-heads=4"),
        ({"model": "gpt2", "hidden_size": 30, "num_attention_heads": 4}, "by --num-attention-heads=4"),
        ({"training_objective": "SUP", "per_device_batch_size": 1}, "--per-device-batch-size=1 gives SUP no negative"),
        ({"n_iter": 2, "test_size": 0}, "set --test-size above 0"),
        ({"warmup_ratio": 1.5}, "--warmup-ratio=1.5"),
        ({"test_size": 2.5}, "--test-size=2.5 is invalid"),
        ({"training_objective": "MLM"}, "--training-objective 'MLM' is invalid"),
        ({"report_to": "comet"}, "--report-to 'comet' is invalid"),
        ({"fep_context_length": 39}, "--fep-context-length=39 leaves no position"),
    ],
)
def test_invalid_options_name_the_flag(tmp_path, overrides, message):
    with pytest.raises(OptionsError, match=message):
        validate_options(tiny_options(tmp_path, **overrides))


def test_gap_below_window_is_raised_with_a_note(tmp_path, caplog):
    options = tiny_options(tmp_path, user_segments_gap=1, fep_window_size=3, max_steps=1)
    with caplog.at_level(logging.WARNING, logger="use"):
        train(options)
    assert "--user-segments-gap=1 is below --fep-window-size=3; the gap is raised to 3" in caplog.text


def test_dialog_csv_trains(tmp_path):
    options = tiny_options(
        tmp_path,
        data_dir=str(FIXTURES / "dialog_users.csv"),
        tokenizer_path=str(DIALOG_TOKENIZER),
        training_objective="FEP_CLM_SUP",
        contrastive_embedding="joint",
        contrastive_type="HardNeg",
        get_random_segment=True,
        max_model_input_size=64,
    )
    result = train(options)
    assert result.model.config.vocab_size == 101
    assert math.isfinite(result.eval_loss)
    assert {"eval_clm_loss", "eval_fep_loss", "eval_sup_loss"} <= result.eval_metrics.keys()


def test_from_pretrained_adds_a_new_head(tmp_path):
    base = train(tiny_options(tmp_path / "base", training_objective="CLM", test_size=0, max_steps=2))
    options = tiny_options(
        tmp_path / "next", training_objective="FEP_SUP", from_pretrained=str(base.output_dir), max_steps=2
    )
    result = train(options)
    assert result.model.config.objective == "FEP_SUP"
    backbone = "backbone.embed_tokens.weight"
    assert not torch.equal(result.model.state_dict()[backbone], base.model.state_dict()[backbone])
    with pytest.raises(OptionsError, match="pass --model retnet"):
        train(tiny_options(tmp_path / "wrong", model="gpt2", from_pretrained=str(base.output_dir)))


def test_search_trains_each_draw_and_keeps_the_best(tmp_path):
    options = tiny_options(tmp_path, n_iter=2, max_steps=2, training_objective="FEP")
    search = train(options)
    root = Path(options.model_output_path)
    assert len(search.trials) == 2
    rates = [trial.learning_rate for trial in search.trials]
    assert rates[0] != rates[1]
    assert all(3e-3 / 3 <= rate <= 3e-3 * 3 for rate in rates)
    for trial in search.trials:
        assert math.isfinite(trial.eval_loss)
        assert (Path(trial.output_dir) / SUMMARY_FILE).is_file()
    best = min(search.trials, key=lambda trial: trial.eval_loss)
    assert search.best is best
    results = json.loads((root / SEARCH_RESULTS_FILE).read_text())
    assert results["best_index"] == best.index
    assert (root / "model.safetensors").read_bytes() == (Path(best.output_dir) / "model.safetensors").read_bytes()

    again = train(options)
    assert [trial.eval_loss for trial in again.trials] == [trial.eval_loss for trial in search.trials]


def test_too_few_users_for_a_sup_batch_fails(tmp_path):
    lines = (FIXTURES / "dna_users.txt").read_text().splitlines()[:3]
    options = tiny_options(tmp_path, data_dir=str(write_users(tmp_path / "users.txt", lines)), test_size=0)
    with pytest.raises(DataError, match="lower --per-device-batch-size to at most 3"):
        train(options)
    assert not Path(options.model_output_path).exists()


def test_from_pretrained_with_another_tokenizer_fails(tmp_path):
    base = train(tiny_options(tmp_path / "base", training_objective="CLM", test_size=0, max_steps=1))
    options = tiny_options(
        tmp_path / "next",
        data_dir=str(FIXTURES / "dialog_users.csv"),
        tokenizer_path=str(DIALOG_TOKENIZER),
        from_pretrained=str(base.output_dir),
    )
    with pytest.raises(OptionsError, match="vocabulary size is 101 in the tokenizer but 10 in the model"):
        train(options)
    assert not Path(options.cache_dir).exists()


def test_rerun_with_another_size_fails(tmp_path):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, max_steps=2, save_steps=2)
    train(options)
    output = Path(options.model_output_path)
    weights = (output / "checkpoint-2" / "model.safetensors").read_bytes()

    changed = dataclasses.replace(
        options, hidden_size=16, num_hidden_layers=1, cache_dir=str(tmp_path / "second-cache")
    )
    with pytest.raises(OptionsError) as raised:
        train(changed)
    message = str(raised.value)
    assert "hidden_size (--hidden-size) is 32 there but 16 now" in message
    assert "num_hidden_layers (--num-hidden-layers) is 2 there but 1 now" in message
    assert "num_heads" not in message
    assert str(output / "checkpoint-2") in message
    assert "Pass another --model-output-path to train a new model, or the settings of the earlier run" in message
    # The check runs before the data is read, and the saved run is left as it was.
    assert not Path(changed.cache_dir).exists()
    assert (output / "checkpoint-2" / "model.safetensors").read_bytes() == weights
    assert (output / SUMMARY_FILE).is_file()


def test_rerun_with_another_objective_head_fails(tmp_path):
    options = tiny_options(tmp_path, training_objective="SUP", test_size=0, max_steps=2, save_steps=2)
    train(options)
    for overrides, expected in (
        ({"contrastive_temperature": 0.5}, "contrastive_temperature (--contrastive-temperature) is 0.07 there but 0.5"),
        ({"training_objective": "FEP_SUP"}, "objective (--training-objective) is 'SUP' there but 'FEP_SUP' now"),
    ):
        with pytest.raises(OptionsError, match=re.escape(expected)):
            train(dataclasses.replace(options, **overrides))


def test_rerun_ignores_settings_of_unused_heads(tmp_path):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, max_steps=2, save_steps=2)
    train(options)
    resumed = train(dataclasses.replace(options, contrastive_temperature=0.5, max_steps=3))
    assert resumed.resumed_from_step == 2
    assert resumed.global_step == 3


def test_unfinished_output_names_newest_checkpoint(tmp_path):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, max_steps=12, save_steps=2)
    with pytest.raises(Interrupted):
        train(options, callbacks=[InterruptAt(11)])
    output = Path(options.model_output_path)
    assert not (output / "config.json").exists()

    with pytest.raises(FileNotFoundError) as raised:
        load_model_and_tokenizer(output, DNA_TOKENIZER)
    message = str(raised.value)
    assert f"model folder {str(output)!r} contains no finished model" in message
    # checkpoint-10 sorts before checkpoint-2 as text, so this checks that the newest is chosen by step.
    assert f"The newest checkpoint is {str(output / 'checkpoint-10')!r}. Pass it as --model_path" in message
    assert "or finish the training by rerunning the same train_user_model.py command" in message

    model, _ = load_model_and_tokenizer(output / "checkpoint-10", DNA_TOKENIZER)
    assert model.config.objective == "CLM"


def test_folder_without_model_or_checkpoint_fails(tmp_path):
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(FileNotFoundError, match="contains no config.json and no checkpoint-N folder with one"):
        load_model_and_tokenizer(tmp_path / "empty-model", DNA_TOKENIZER)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("learning_rate", math.nan),
        ("learning_rate", math.inf),
        ("weight_decay", -math.inf),
        ("warmup_ratio", math.nan),
        ("dropout", math.nan),
        ("test_size", math.inf),
        ("test_size", math.nan),
        ("num_train_epochs", math.inf),
        ("contrastive_temperature", math.nan),
    ],
)
def test_non_finite_float_option_fails(tmp_path, name, value):
    with pytest.raises(OptionsError) as raised:
        validate_options(tiny_options(tmp_path, **{name: value}))
    flag = "--" + name.replace("_", "-")
    default = getattr(TrainingOptions, name)
    problems = str(raised.value).splitlines()[1:]
    assert problems == [f"  - {flag}={value} is not a finite number; pass a finite value (default {default})."]


def test_search_rerun_with_another_size_fails(tmp_path):
    options = tiny_options(tmp_path, n_iter=2, max_steps=1, training_objective="CLM")
    train(options)
    with pytest.raises(OptionsError, match=re.escape("hidden_size (--hidden-size) is 32 there but 16 now")):
        train(dataclasses.replace(options, hidden_size=16))


def test_finished_rerun_keeps_summary(tmp_path):
    options = tiny_options(tmp_path, training_objective="CLM", test_size=0, save_steps=3)
    train(options)
    summary = Path(options.model_output_path) / SUMMARY_FILE
    first = summary.read_text()

    rerun = train(options)

    assert rerun.steps_this_run == 0
    assert summary.read_text() == first
    assert json.loads(first)["train_tokens"] > 0
