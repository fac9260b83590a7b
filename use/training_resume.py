"""The check that a rerun into an existing output folder requests the model that the folder contains.

The Trainer loads a checkpoint's weights into the model built from the current options, so other
sizes fail deep inside PyTorch with a size-mismatch traceback, and other head settings would train a
different model on the old weights. `check_saved_settings` names the differing settings first.
"""

from pathlib import Path

from transformers import CONFIG_NAME

from .model import UserModelConfig
from .objectives import objective_parts
from .training_options import OptionsError, TrainingOptions, flag

# Model config fields that the tokenizer sets rather than a flag of their own.
_TOKENIZER_FIELDS = ("vocab_size", "first_behavior_id", "unk_token_id", "cls_token_id", "sep_token_id", "pad_token_id")
_FEP_FIELDS = ("fep_window_size", "fep_context_length", "fep_loss_frequency")
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
