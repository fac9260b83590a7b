"""Pre-training a `UserModel` with the `transformers` Trainer, from `TrainingOptions`.

`train(options)` validates the options, prepares (or loads) the cached users, builds the model, and
trains with resumption from the last complete checkpoint in the output folder. A checkpoint saved
with other model settings is rejected before any data is read (see `training_resume`). With
`n_iter > 1` it runs that many draws of learning rate, warmup and weight decay (see `training_search`).

Output folder layout: `checkpoint-N/` folders written every `save_steps`, then the final model
(`model.safetensors`, `config.json`), the tokenizer, and `training_summary.json`, which is written
last and so marks a finished run.
"""

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .data import DataError, DataSettings, PreparedData, SegmentCollator, prepare_user_datasets
from .embedding import check_tokenizer_matches
from .model import UserModel, UserModelConfig
from .training_options import (
    OptionsError,
    TrainingOptions,
    flag,
    load_training_tokenizer,
    log_adjustments,
    validate_options,
)
from .training_resume import check_resume_step, check_saved_settings, log_changed_optimisation
from .training_trainer import LOSS_PARTS, UserModelTrainer

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
MODEL_WEIGHTS_FILE = "model.safetensors"


@dataclass
class TrainingResult:
    """Outcome of one training run; `model` is the trained model of this process."""

    output_dir: Path
    global_step: int
    resumed_from_step: int
    train_loss: float | None
    eval_metrics: dict[str, float]
    train_seconds: float
    tokens_per_second: float
    model: UserModel = field(repr=False)

    @property
    def steps_this_run(self) -> int:
        return self.global_step - self.resumed_from_step

    @property
    def eval_loss(self) -> float | None:
        return self.eval_metrics.get("eval_loss")


def train(options: TrainingOptions, callbacks: list[TrainerCallback] | None = None):
    """Validate `options` and run training: one run, or `n_iter` hyper-parameter draws.

    Returns a `TrainingResult`, or a `SearchResult` when `n_iter > 1`. Raises `OptionsError` for
    invalid options and `DataError` for unusable data, both before the output folder is created.
    """
    validate_options(options)
    log_adjustments(options)
    if options.n_iter > 1:
        from .training_search import run_search

        return run_search(options, callbacks)
    return train_once(options, callbacks)


def train_once(options: TrainingOptions, callbacks: list[TrainerCallback] | None = None) -> TrainingResult:
    """Train one model into `options.model_output_path`, resuming from its last complete checkpoint."""
    tokenizer, first_behavior_id = load_training_tokenizer(options.tokenizer_path)
    model_config = build_model_config(options, tokenizer, first_behavior_id)
    output_dir = Path(options.model_output_path)
    saved_checkpoint = find_resume_checkpoint(output_dir)
    check_saved_settings(saved_checkpoint or output_dir, model_config, options)
    if saved_checkpoint:
        check_resume_step(saved_checkpoint, _checkpoint_step(saved_checkpoint), options)
    created = not output_dir.exists()
    args = build_training_arguments(options, output_dir, use_eval=options.test_size > 0)
    _configure_process_logging(args)

    settings = data_settings(options)
    data = prepare_user_datasets(
        options.data_dir,
        tokenizer,
        options.tokenizer_path,
        settings,
        options.cache_dir,
        main_process_first=lambda: args.main_process_first(desc="preparing the training data"),
    )
    _check_enough_sup_users(options, len(data.train), args.world_size)
    _check_enough_sup_test_users(options, data)

    try:
        set_seed(options.seed)
        model = build_model(options, model_config, tokenizer)
        trainer = _build_trainer(options, args, model, tokenizer, data, settings, callbacks)
        checkpoint = find_resume_checkpoint(output_dir, remove_incomplete=args.should_save)
        resumed_from_step = _checkpoint_step(checkpoint) if checkpoint else 0
        if checkpoint:
            logger.info("resuming from %s (step %d)", checkpoint, resumed_from_step)
            if args.should_log:
                log_changed_optimisation(checkpoint, resumed_from_step, options)
        else:
            logger.info("no checkpoint in %s; training from step 0", output_dir)
        return _run_trainer(trainer, checkpoint, resumed_from_step, data, output_dir)
    except BaseException:
        if args.should_save:
            _clean_failed_output(output_dir, created)
        raise


def _check_enough_sup_users(options: TrainingOptions, train_users: int, processes: int) -> None:
    # SUP batches drop their last partial batch, so fewer users than one full batch per process train nothing.
    needed = options.per_device_batch_size * processes
    if "SUP" in options.objective_parts and train_users < needed:
        raise DataError(
            f"{train_users} training users fill no SUP batch of {options.per_device_batch_size} users on each of "
            f"{processes} processes; lower {flag('per_device_batch_size')} to at most {train_users // processes} "
            "or add users."
        )


def _check_enough_sup_test_users(options: TrainingOptions, data: PreparedData) -> None:
    # InfoNCE over a single user has no negative, so its eval loss is always 0. A warning rather than an
    # error, because a small fraction such as the research code's --test-size 0.01 leaves one user on small files.
    if "SUP" in options.objective_parts and data.test is not None and len(data.test) < 2:
        logger.warning(
            "%s=%s leaves %d usable test user, so the SUP eval loss has no negative and is always 0; raise %s "
            "(e.g. to 2 users) for a meaningful eval loss, or set it to 0 to skip evaluation.",
            flag("test_size"), options.test_size, len(data.test), flag("test_size"),
        )


def data_settings(options: TrainingOptions) -> DataSettings:
    return DataSettings(
        objective=options.training_objective,
        min_input_size=options.min_model_input_size,
        max_input_size=options.max_model_input_size,
        gap=options.user_segments_gap,
        fep_window_size=options.fep_window_size,
        test_size=options.test_size,
    )


def build_model_config(
    options: TrainingOptions, tokenizer: PreTrainedTokenizerBase, first_behavior_id: int
) -> UserModelConfig:
    """Model config from the options, with the vocabulary and token ids of the tokenizer.

    With `from_pretrained` the backbone fields come from that checkpoint's config and the objective
    fields from the options.
    """
    objective_fields = dict(
        objective=options.training_objective,
        dropout=options.dropout,
        fep_window_size=options.fep_window_size,
        fep_context_length=options.fep_context_length,
        fep_loss_frequency=options.fep_loss_frequency,
        contrastive_embedding=options.contrastive_embedding,
        contrastive_type=options.contrastive_type,
        contrastive_temperature=options.contrastive_temperature,
        contrastive_head_size=options.contrastive_head_size,
    )
    if options.from_pretrained:
        return _pretrained_config(options, tokenizer, objective_fields)
    try:
        return UserModelConfig(
            backbone_type=options.model,
            vocab_size=len(tokenizer),
            hidden_size=options.hidden_size,
            num_hidden_layers=options.num_hidden_layers,
            num_heads=options.backbone_heads,
            max_position_embeddings=options.max_model_input_size,
            first_behavior_id=first_behavior_id,
            unk_token_id=tokenizer.unk_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id,
            eos_token_id=tokenizer.sep_token_id,
            **objective_fields,
        )
    except ValueError as error:
        raise OptionsError(f"invalid model settings: {error}") from error


def _pretrained_config(
    options: TrainingOptions, tokenizer: PreTrainedTokenizerBase, objective_fields: dict
) -> UserModelConfig:
    config = UserModelConfig.from_pretrained(options.from_pretrained)
    expected = {
        "vocabulary size": (config.vocab_size, len(tokenizer)),
        "[CLS] id": (config.cls_token_id, tokenizer.cls_token_id),
    }
    for what, (model_value, tokenizer_value) in expected.items():
        if model_value != tokenizer_value:
            raise OptionsError(
                f"{flag('tokenizer_path')} {options.tokenizer_path!r} does not match {flag('from_pretrained')}: {what} "
                f"is {tokenizer_value} in the tokenizer but {model_value} in the model; pass the model's tokenizer."
            )
    if config.backbone_type != options.model:
        raise OptionsError(
            f"{flag('from_pretrained')} {options.from_pretrained!r} contains a {config.backbone_type} model but "
            f"{flag('model')} is {options.model}; pass {flag('model')} {config.backbone_type}."
        )
    if config.backbone_type == "gpt2" and config.max_position_embeddings < options.max_model_input_size:
        raise OptionsError(
            f"{flag('max_model_input_size')}={options.max_model_input_size} exceeds the "
            f"{config.max_position_embeddings} positions of the GPT-2 in {options.from_pretrained!r}; use at most "
            f"{config.max_position_embeddings}."
        )
    try:
        return UserModelConfig(**{**config.to_dict(), **objective_fields})
    except (TypeError, ValueError) as error:
        raise OptionsError(f"invalid model settings for {options.from_pretrained!r}: {error}") from error


def build_model(options: TrainingOptions, config: UserModelConfig, tokenizer: PreTrainedTokenizerBase) -> UserModel:
    """Build a freshly initialised model, or load the `from_pretrained` weights and initialise any new heads."""
    if options.from_pretrained:
        model = UserModel.from_pretrained(options.from_pretrained, config=config)
        check_tokenizer_matches(model, tokenizer, options.tokenizer_path)
    else:
        model = UserModel(config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "%s %s model with %.2fM parameters, objective %s",
        "pre-trained" if options.from_pretrained else "new",
        config.backbone_type,
        parameters / 1e6,
        config.objective,
    )
    return model


def build_training_arguments(options: TrainingOptions, output_dir: Path, use_eval: bool) -> TrainingArguments:
    """Trainer arguments: bf16 on CUDA GPUs that support it, fp16 on other CUDA GPUs, float32 elsewhere."""
    on_cuda = torch.cuda.is_available()
    bf16 = on_cuda and torch.cuda.is_bf16_supported()
    return TrainingArguments(
        output_dir=str(output_dir),
        run_name=options.run_name,
        per_device_train_batch_size=options.per_device_batch_size,
        per_device_eval_batch_size=options.per_device_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        # transformers 5 reads a float below 1 as a fraction of the total steps.
        warmup_steps=float(options.warmup_ratio),
        num_train_epochs=options.num_train_epochs,
        max_steps=options.max_steps,
        eval_strategy="steps" if use_eval else "no",
        eval_steps=options.eval_steps,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=options.save_total_limit,
        logging_strategy="steps",
        logging_steps=options.logging_steps,
        report_to=options.report_to,
        seed=options.seed,
        bf16=bf16,
        fp16=on_cuda and not bf16,
        torch_compile=False,
        remove_unused_columns=False,
        prediction_loss_only=True,
        # A SUP batch with a single user has no negatives, so its last partial batch is dropped.
        dataloader_drop_last="SUP" in options.objective_parts,
        disable_tqdm=False,
        dataloader_pin_memory=on_cuda,
        # Without an accelerator, accelerate sets up multi-process (torchrun) training only in CPU mode.
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def _build_trainer(options, args, model, tokenizer, data: PreparedData, settings: DataSettings, callbacks):
    segments = settings.segment_settings(random_start=options.get_random_segment)
    train_collator = SegmentCollator(model.config, segments, options.seed)
    eval_collator = SegmentCollator(model.config, segments, options.seed, deterministic=True)
    return UserModelTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.test,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=tokenizer,
        callbacks=[*(callbacks or []), SegmentEpochCallback(train_collator)],
    )


class SegmentEpochCallback(TrainerCallback):
    """Pass the Trainer's epoch to the training collator, which seeds each user's segments with it."""

    def __init__(self, collator: SegmentCollator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is the epoch index plus the finished fraction of it, also in a resumed checkpoint.
        self.collator.set_epoch(math.floor(state.epoch))


def _run_trainer(trainer: UserModelTrainer, checkpoint, resumed_from_step: int, data, output_dir: Path):
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - started
    tokens = trainer.pop_train_tokens()

    eval_metrics = _final_evaluation(trainer) if data.test is not None else {}
    if data.test is not None and not math.isfinite(eval_metrics["eval_loss"]):
        raise FloatingPointError(
            f"eval loss is {eval_metrics['eval_loss']}, so training diverged; rerun into a new "
            f"{flag('model_output_path')} with a lower {flag('learning_rate')}."
        )
    trainer.save_model(str(output_dir))

    result = TrainingResult(
        output_dir=output_dir,
        global_step=trainer.state.global_step,
        resumed_from_step=resumed_from_step,
        train_loss=_last_train_loss(trainer.state.log_history, train_output.training_loss),
        eval_metrics=eval_metrics,
        train_seconds=train_seconds,
        tokens_per_second=tokens / train_seconds if train_seconds > 0 else 0.0,
        model=trainer.accelerator.unwrap_model(trainer.model),
    )
    summary_path = result.output_dir / SUMMARY_FILE
    if result.steps_this_run == 0 and summary_path.exists():
        # A rerun of a finished training trains nothing, so its summary would replace the real one with zeros.
        logger.info(
            "no step was trained in this run, so %s keeps the summary of the run that trained the model", summary_path
        )
    elif trainer.args.should_save:
        _write_summary(result, trainer, tokens)
    trainer.accelerator.wait_for_everyone()
    logger.info(_summary_line(result, trainer))
    return result


def _final_evaluation(trainer: UserModelTrainer) -> dict[str, float]:
    """Evaluate the final model, reusing the evaluation the Trainer ran at the last step if there was one."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            if entry["step"] == trainer.state.global_step:
                return {name: value for name, value in entry.items() if name.startswith("eval_")}
            break
    return trainer.evaluate()


def _last_train_loss(log_history: list[dict], run_average: float) -> float | None:
    """Return the last logged train loss, or the run's average when no step was logged."""
    for entry in reversed(log_history):
        if "loss" in entry:
            return entry["loss"]
    return run_average if math.isfinite(run_average) else None


def _summary_line(result: TrainingResult, trainer: UserModelTrainer) -> str:
    parts = _last_logged_parts(trainer.state.log_history)
    train = f"train loss {result.train_loss:.4f}" if result.train_loss is not None else "no train loss logged"
    if parts:
        train += " (" + ", ".join(f"{name} {value:.4f}" for name, value in parts.items()) + ")"
    line = (
        f"finished at step {result.global_step} ({result.steps_this_run} steps this run) in "
        f"{result.train_seconds:.1f} s, {result.tokens_per_second:,.0f} tokens/s over "
        f"{trainer.args.world_size} process(es); {train}"
    )
    if result.eval_metrics:
        evaluated = [f"eval loss {result.eval_loss:.4f}"] + [
            f"{name} {result.eval_metrics[name]:.4f}"
            for name in (f"eval_{part}" for part in LOSS_PARTS)
            if name in result.eval_metrics
        ]
        line += "; " + ", ".join(evaluated)
    return line + f"; model saved to {result.output_dir}"


def _last_logged_parts(log_history: list[dict]) -> dict[str, float]:
    for entry in reversed(log_history):
        if "loss" in entry:
            return {name: entry[name] for name in LOSS_PARTS if name in entry}
    return {}


def _write_summary(result: TrainingResult, trainer: UserModelTrainer, tokens: int) -> None:
    summary = {
        "global_step": result.global_step,
        "resumed_from_step": result.resumed_from_step,
        "train_loss": result.train_loss,
        "train_loss_parts": _last_logged_parts(trainer.state.log_history),
        "eval_metrics": result.eval_metrics,
        "train_seconds": result.train_seconds,
        "train_tokens": tokens,
        "tokens_per_second": result.tokens_per_second,
        "processes": trainer.args.world_size,
    }
    (result.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))


def _configure_process_logging(args: TrainingArguments) -> None:
    """Keep this package's info logs on the main process only, so that N processes do not repeat them."""
    if not args.should_log:
        logging.getLogger(__package__).setLevel(logging.WARNING)


def _checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [
        path
        for path in output_dir.iterdir()
        if path.is_dir() and path.name.startswith(PREFIX_CHECKPOINT_DIR + "-") and path.name.split("-")[-1].isdigit()
    ]
    return sorted(found, key=_checkpoint_step)


def _is_complete(checkpoint: Path) -> bool:
    # The Trainer writes trainer_state.json after the weights, optimizer and RNG states.
    return (checkpoint / TRAINER_STATE_NAME).is_file() and (checkpoint / MODEL_WEIGHTS_FILE).is_file()


def find_resume_checkpoint(output_dir: str | Path, remove_incomplete: bool = False) -> Path | None:
    """Return the complete checkpoint with the highest step in `output_dir`, or None.

    A checkpoint folder without trainer_state.json was cut off while it was being written, so it is
    skipped. With `remove_incomplete` (set on the main process) it is also deleted, so that the
    Trainer does not later mistake it for a finished one.
    """
    complete = []
    for checkpoint in _checkpoints(Path(output_dir)):
        if _is_complete(checkpoint):
            complete.append(checkpoint)
        elif remove_incomplete:
            logger.warning("removing %s: it has no %s, so it was not fully written", checkpoint, TRAINER_STATE_NAME)
            shutil.rmtree(checkpoint)
    return complete[-1] if complete else None


def _clean_failed_output(output_dir: Path, created: bool) -> None:
    """After a failure, remove partial checkpoints, and the folder itself if this run made it and saved nothing."""
    find_resume_checkpoint(output_dir, remove_incomplete=True)
    if created and output_dir.is_dir() and not _checkpoints(output_dir):
        logger.warning("removing %s: training failed before its first checkpoint", output_dir)
        shutil.rmtree(output_dir)
