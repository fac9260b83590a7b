"""Checks that a rerun into an existing output folder can resume the run that the folder contains.

The Trainer loads a checkpoint's weights into the model built from the current options, so other
sizes fail deep inside PyTorch with a size-mismatch traceback, and other head settings would train a
different model on the old weights. `check_saved_settings` names the differing settings first.
`check_resume_step` rejects a `--max-steps` below the checkpoint's step, and
`log_changed_optimisation` warns about optimiser flags that the restored optimizer state overrides.
"""

import logging
from pathlib import Path

import torch
from transformers import CONFIG_NAME, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from .model import UserModelConfig
from .objectives import objective_parts
from .training_options import OptionsError, TrainingOptions, flag

logger = logging.getLogger(__name__)

# Model config fields that the tokenizer sets rather than a flag of their own.
_TOKENIZER_FIELDS = ("vocab_size", "first_behavior_id", "unk_token_id", "cls_token_id", "sep_token_id", "pad_token_id")
_FEP_FIELDS = ("fep_window_size", "fep_context_length", "fep_loss_frequency")
# Options that the restored optimizer state overrides; the other compared options shape the schedule.
_OPTIMIZER_STATE_FIELDS = ("learning_rate", "weight_decay")
_SUP_FIELDS = ("contrastive_embedding", "contrastive_type", "contrastive_temperature", "contrastive_head_size")


def check_saved_settings(saved_dir: Path, requested: UserModelConfig, options: TrainingOptions) -> None:
    """Raise OptionsError naming every model setting in which `saved_dir`'s config differs from `requested`.

    `saved_dir` is the checkpoint to resume from, or a finished output folder. A folder without a
    config passes.
    """
    if not (saved_dir / CONFIG_NAME).is_file():
        return
    saved = UserModelConfig.from_pretrained(saved_dir)
    differences = [
        f"{name} ({setting_flag}) is {getattr(saved, name)!r} there but {getattr(requested, name)!r} now"
        for name, setting_flag in _compared_fields(requested, options).items()
        if getattr(saved, name) != getattr(requested, name)
    ]
    if differences:
        raise OptionsError(
            f"{flag('model_output_path')} {options.model_output_path!r} contains a model trained with other "
            f"settings than this run requests, so {str(saved_dir)!r} cannot be resumed: {'; '.join(differences)}. "
            f"Pass another {flag('model_output_path')} to train a new model, or the settings of the earlier run to "
            "resume it."
        )


def _compared_fields(requested: UserModelConfig, options: TrainingOptions) -> dict[str, str]:
    """Return the config fields that decide the model's weights or loss, each with the flag that sets it."""
    heads_flag = flag("num_heads") if requested.backbone_type == "retnet" else flag("num_attention_heads")
    fields = {
        "backbone_type": flag("model"),
        "hidden_size": flag("hidden_size"),
        "num_hidden_layers": flag("num_hidden_layers"),
        "num_heads": heads_flag,
        "dropout": flag("dropout"),
        "objective": flag("training_objective"),
    }
    if options.from_pretrained:
        # These come from the --from-pretrained model, not from the size flags.
        for name in ("backbone_type", "hidden_size", "num_hidden_layers", "num_heads"):
            fields[name] = flag("from_pretrained")
    if requested.backbone_type == "gpt2":
        # GPT-2 has one learned embedding per input position, but RetNet has no position weights.
        fields["max_position_embeddings"] = flag("max_model_input_size")
    fields.update({name: flag("tokenizer_path") for name in _TOKENIZER_FIELDS})
    parts = objective_parts(requested.objective)
    if "FEP" in parts:
        fields.update({name: flag(name) for name in _FEP_FIELDS})
    if "SUP" in parts:
        fields.update({name: flag(name) for name in _SUP_FIELDS})
    return fields


def check_resume_step(checkpoint: Path, checkpoint_step: int, options: TrainingOptions) -> None:
    """Raise OptionsError when `--max-steps` ends before the step that `checkpoint` has already reached.

    NOTE: an equal `--max-steps` passes, so that a run that stopped after its last checkpoint can
    finish, but the transformers 5.25 Trainer then trains one step past it.
    """
    if options.max_steps != -1 and options.max_steps < checkpoint_step:
        raise OptionsError(
            f"{flag('max_steps')}={options.max_steps} is below step {checkpoint_step} of the checkpoint "
            f"{str(checkpoint)!r} in {flag('model_output_path')}, so there is nothing left to train; pass "
            f"{flag('max_steps')} above {checkpoint_step} to train further, or another {flag('model_output_path')} "
            "to train a new model."
        )


def log_changed_optimisation(checkpoint: Path, checkpoint_step: int, options: TrainingOptions) -> None:
    """Log one warning naming each optimiser or schedule flag that differs from the run that wrote `checkpoint`.

    On resume the Trainer restores the optimizer state, which contains the peak learning rate and the
    weight decay, but it builds the learning-rate schedule from the current warmup and step count.
    A checkpoint without `training_args.bin` is not compared.

    NOTE: `training_args.bin` records the flags of the run that wrote the checkpoint, not the rate its
    restored optimizer used. After a resume whose changed rate was ignored, the warning names that
    ignored rate as the checkpoint's.
    """
    arguments_file = checkpoint / TRAINING_ARGS_NAME
    if not arguments_file.is_file():
        return
    # The Trainer pickles its TrainingArguments into each checkpoint, so reading it needs weights_only=False.
    # The file comes from this run's own output folder.
    saved = torch.load(arguments_file, weights_only=False)
    changes = []
    for name, saved_value in _saved_optimisation(saved, options).items():
        requested = getattr(options, name)
        if saved_value == requested:
            continue
        if name in _OPTIMIZER_STATE_FIELDS:
            effect = f"the checkpoint's {saved_value!r} is used, because the optimizer state is restored"
        else:
            effect = (
                f"{requested!r} reshapes the learning-rate schedule from step {checkpoint_step} on, around the "
                f"checkpoint's peak learning rate {saved.learning_rate!r}"
            )
        changes.append(f"{flag(name)} is {saved_value!r} there but {requested!r} now, so {effect}")
    if changes:
        logger.warning(
            "resuming from %s with optimisation flags that differ from the run that wrote it: %s. To train with the "
            "new values from step 0, pass another %s.",
            checkpoint,
            "; ".join(changes),
            flag("model_output_path"),
        )


def _saved_optimisation(saved: TrainingArguments, options: TrainingOptions) -> dict[str, object]:
    """Return the checkpoint's value of each optimisation option, by option field."""
    values = {
        "learning_rate": saved.learning_rate,
        "weight_decay": saved.weight_decay,
        # `build_training_arguments` passes the warmup ratio as `warmup_steps` (a float below 1 is a ratio).
        "warmup_ratio": saved.warmup_steps,
        "max_steps": saved.max_steps,
    }
    if options.max_steps == -1 and saved.max_steps == -1:
        values["num_train_epochs"] = saved.num_train_epochs
    return values
