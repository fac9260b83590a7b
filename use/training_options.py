"""Pre-training options (one field per `train_user_model.py` flag) and their validation.

Every check here runs before any data file is read, so a bad combination fails in seconds. Error
messages name the flag (`--fep-window-size`, not `fep_window_size`) and the fix.
"""

import importlib.util
import logging
import math
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .model import BACKBONES
from .objectives import CONTRASTIVE_EMBEDDINGS, CONTRASTIVE_TYPES, OBJECTIVES, objective_parts

logger = logging.getLogger(__name__)

REPORT_TARGETS = {"none": None, "wandb": "wandb", "tensorboard": "tensorboard"}


class OptionsError(ValueError):
    """Invalid training options; the message lists every problem with the flag to change."""


@dataclass
class TrainingOptions:
    """Settings of one pre-training run; field `x_y` is flag `--x-y` of train_user_model.py.

    Sizes are counted in model input positions ([CLS] and [SEP] included) or behaviors, as named;
    `per_device_batch_size` counts users (a SUP user gives two segments).
    """

    data_dir: str
    tokenizer_path: str
    model_output_path: str
    run_name: str = "use"
    training_objective: str = "FEP_SUP"
    model: str = "retnet"

    min_model_input_size: int = 500
    max_model_input_size: int = 512
    user_segments_gap: int = 50
    get_random_segment: bool = False
    test_size: float = 0.01
    cache_dir: str = "cache"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_heads: int = 12
    num_attention_heads: int = 12
    dropout: float = 0.1
    from_pretrained: str | None = None

    fep_window_size: int = 5
    fep_context_length: int = 0
    fep_loss_frequency: int = 1
    contrastive_embedding: str = "token"
    contrastive_type: str = "Orig"
    contrastive_temperature: float = 0.07
    contrastive_head_size: int = 128

    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 4e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    n_iter: int = 1
    seed: int = 42

    eval_steps: int = 500
    save_steps: int = 500
    save_total_limit: int | None = None
    logging_steps: int = 50
    report_to: str = "none"

    @property
    def objective_parts(self) -> tuple[str, ...]:
        return objective_parts(self.training_objective)

    @property
    def backbone_heads(self) -> int:
        """Heads of the chosen backbone: `--num-heads` for RetNet, `--num-attention-heads` for GPT-2."""
        return self.num_heads if self.model == "retnet" else self.num_attention_heads


def flag(name: str) -> str:
    """Command-line flag of an option field: `fep_window_size` -> `--fep-window-size`."""
    return "--" + name.replace("_", "-")


def option_defaults() -> dict:
    """Default value of every option field that has one."""
    return {item.name: item.default for item in fields(TrainingOptions) if item.default is not MISSING}


def validate_options(options: TrainingOptions) -> None:
    """Raise OptionsError listing every invalid option or combination, without reading any data."""
    non_finite = _non_finite_fields(options)
    problems = [
        f"{flag(name)}={getattr(options, name)} is not a finite number; pass a finite value (default "
        f"{option_defaults()[name]})."
        for name in non_finite
    ]
    # The range checks below run on the defaults in place of NaN and infinity, because NaN fails no
    # comparison and a second message about the same flag would only repeat the first.
    finite_options = replace(options, **{name: option_defaults()[name] for name in non_finite})
    problems += [problem for check in _CHECKS for problem in check(finite_options)]
    if problems:
        raise OptionsError("invalid training options:\n  - " + "\n  - ".join(problems))


def log_adjustments(options: TrainingOptions) -> None:
    """Log the settings that are changed rather than rejected."""
    parts = options.objective_parts
    if "FEP" in parts and "SUP" in parts and options.user_segments_gap < options.fep_window_size:
        logger.warning(
            "%s=%d is below %s=%d; the gap is raised to %d so that the first segment's FEP window ends "
            "before the second segment starts",
            flag("user_segments_gap"),
            options.user_segments_gap,
            flag("fep_window_size"),
            options.fep_window_size,
            options.fep_window_size,
        )
    if options.from_pretrained:
        logger.info(
            "%s is set: the backbone size comes from that checkpoint, so %s, %s and the head counts are not used",
            flag("from_pretrained"),
            flag("hidden_size"),
            flag("num_hidden_layers"),
        )


def load_training_tokenizer(tokenizer_path: str | Path) -> tuple[PreTrainedTokenizerBase, int]:
    """Load the tokenizer and return it with the first behavior id (the id after the special tokens)."""
    path = Path(tokenizer_path)
    if not path.is_dir():
        raise OptionsError(
            f"{flag('tokenizer_path')} {str(path)!r} does not exist; pass a tokenizer folder such as ./tokenizer/dna."
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    names = ("unk_token_id", "cls_token_id", "sep_token_id", "pad_token_id")
    missing = [name for name in names if getattr(tokenizer, name) is None]
    if missing:
        raise OptionsError(
            f"tokenizer {str(path)!r} defines no {', '.join(missing)}; training needs [UNK], [CLS], [SEP] and [PAD]."
        )
    special_ids = sorted(set(tokenizer.all_special_ids))
    if special_ids != list(range(len(special_ids))):
        raise OptionsError(
            f"tokenizer {str(path)!r} has special token ids {special_ids}; FEP needs them to be 0..k-1 so that "
            "every id from k on is a behavior. Rebuild the tokenizer with the special tokens first."
        )
    return tokenizer, len(special_ids)


def _non_finite_fields(options: TrainingOptions) -> list[str]:
    """Return the names of the float options that are NaN or infinite (argparse's `float` accepts both)."""
    return [
        item.name
        for item in fields(options)
        if isinstance(getattr(options, item.name), float) and not math.isfinite(getattr(options, item.name))
    ]


def _parts(options: TrainingOptions) -> tuple[str, ...]:
    """Objective parts, or none for an invalid objective (which `_check_choices` reports)."""
    return options.objective_parts if options.training_objective in OBJECTIVES else ()


def _check_choices(options: TrainingOptions) -> list[str]:
    choices = {
        "training_objective": OBJECTIVES,
        "model": BACKBONES,
        "contrastive_embedding": CONTRASTIVE_EMBEDDINGS,
        "contrastive_type": CONTRASTIVE_TYPES,
        "report_to": tuple(REPORT_TARGETS),
    }
    return [
        f"{flag(name)} {getattr(options, name)!r} is invalid; choose one of {', '.join(allowed)}."
        for name, allowed in choices.items()
        if getattr(options, name) not in allowed
    ]


def _check_paths(options: TrainingOptions) -> list[str]:
    problems = []
    if not Path(options.data_dir).exists():
        problems.append(f"{flag('data_dir')} {options.data_dir!r} does not exist; pass a .txt/.csv file or a folder.")
    if not Path(options.tokenizer_path).is_dir():
        problems.append(
            f"{flag('tokenizer_path')} {options.tokenizer_path!r} is not a folder; pass a tokenizer folder such as "
            "./tokenizer/dna."
        )
    if Path(options.model_output_path).is_file():
        problems.append(f"{flag('model_output_path')} {options.model_output_path!r} is a file; pass a folder path.")
    if Path(options.cache_dir).is_file():
        problems.append(f"{flag('cache_dir')} {options.cache_dir!r} is a file; pass a folder path.")
    if options.from_pretrained and not (Path(options.from_pretrained) / "config.json").is_file():
        problems.append(
            f"{flag('from_pretrained')} {options.from_pretrained!r} has no config.json; pass a folder written by "
            "train_user_model.py."
        )
    return problems


def _check_sizes(options: TrainingOptions) -> list[str]:
    problems = []
    if options.max_model_input_size < 3:
        problems.append(
            f"{flag('max_model_input_size')}={options.max_model_input_size} leaves no behavior between [CLS] and "
            "[SEP]; use at least 3."
        )
    if options.min_model_input_size > options.max_model_input_size:
        problems.append(
            f"{flag('min_model_input_size')}={options.min_model_input_size} is above "
            f"{flag('max_model_input_size')}={options.max_model_input_size}; lower the minimum or raise the maximum."
        )
    if "SUP" in _parts(options) and options.min_model_input_size < 3:
        problems.append(
            f"{flag('min_model_input_size')}={options.min_model_input_size} leaves a SUP segment without behaviors; "
            "use at least 3."
        )
    if options.user_segments_gap < 0:
        problems.append(f"{flag('user_segments_gap')}={options.user_segments_gap} must be 0 or more behaviors.")
    if options.test_size < 0 or (options.test_size >= 1 and options.test_size != int(options.test_size)):
        problems.append(
            f"{flag('test_size')}={options.test_size} is invalid; use a fraction in [0, 1) or a whole number of users."
        )
    return problems


def _check_model(options: TrainingOptions) -> list[str]:
    problems = []
    parts = _parts(options)
    heads_flag = flag("num_heads") if options.model == "retnet" else flag("num_attention_heads")
    heads = options.backbone_heads
    if options.from_pretrained is None:
        if options.hidden_size < 1 or options.num_hidden_layers < 1 or heads < 1:
            problems.append(
                f"{flag('hidden_size')}, {flag('num_hidden_layers')} and {heads_flag} must be positive, got "
                f"{options.hidden_size}, {options.num_hidden_layers} and {heads}."
            )
        elif options.hidden_size % heads != 0:
            problems.append(
                f"{flag('hidden_size')}={options.hidden_size} is not divisible by {heads_flag}={heads}; choose a "
                "head count that divides the hidden size."
            )
        elif options.model == "retnet" and (options.hidden_size // heads) % 2 != 0:
            problems.append(
                f"RetNet head size {flag('hidden_size')} / {heads_flag} = {options.hidden_size // heads} is odd; the "
                "rotary positions need an even head size."
            )
    if not 0 <= options.dropout < 1:
        problems.append(f"{flag('dropout')}={options.dropout} must be in [0, 1).")
    if options.model == "gpt2" and options.contrastive_embedding != "token":
        problems.append(
            f"{flag('contrastive_embedding')}={options.contrastive_embedding} needs a retention state, which GPT-2 "
            f"does not have; use {flag('contrastive_embedding')} token with {flag('model')} gpt2."
        )
    if "FEP" in parts:
        if options.fep_window_size < 1:
            problems.append(
                f"{flag('fep_window_size')}={options.fep_window_size} must be at least 1 with objective "
                f"{options.training_objective}; set it to the number of future behaviors to predict (e.g. 5)."
            )
        if options.fep_loss_frequency < 1:
            problems.append(f"{flag('fep_loss_frequency')}={options.fep_loss_frequency} must be at least 1.")
        if not 0 <= options.fep_context_length < options.max_model_input_size - 1:
            problems.append(
                f"{flag('fep_context_length')}={options.fep_context_length} leaves no position with FEP loss in "
                f"inputs of {options.max_model_input_size} positions; use 0 to "
                f"{options.max_model_input_size - 2}."
            )
    if "SUP" in parts:
        if options.contrastive_temperature <= 0:
            problems.append(f"{flag('contrastive_temperature')}={options.contrastive_temperature} must be positive.")
        if options.contrastive_head_size < 1:
            problems.append(f"{flag('contrastive_head_size')}={options.contrastive_head_size} must be positive.")
        if options.per_device_batch_size < 2:
            problems.append(
                f"{flag('per_device_batch_size')}={options.per_device_batch_size} gives SUP no negative users; "
                "use at least 2 users per device."
            )
    return problems


def _check_optimisation(options: TrainingOptions) -> list[str]:
    problems = []
    positive = ("per_device_batch_size", "gradient_accumulation_steps", "n_iter", "eval_steps", "save_steps")
    for name in (*positive, "logging_steps"):
        if getattr(options, name) < 1:
            problems.append(f"{flag(name)}={getattr(options, name)} must be at least 1.")
    if options.learning_rate <= 0:
        problems.append(f"{flag('learning_rate')}={options.learning_rate} must be positive.")
    if not 0 <= options.warmup_ratio < 1:
        problems.append(f"{flag('warmup_ratio')}={options.warmup_ratio} must be a fraction of the steps in [0, 1).")
    if options.weight_decay < 0:
        problems.append(f"{flag('weight_decay')}={options.weight_decay} must be 0 or more.")
    if options.seed < 0:
        problems.append(f"{flag('seed')}={options.seed} must be 0 or more.")
    if options.save_total_limit is not None and options.save_total_limit < 1:
        problems.append(
            f"{flag('save_total_limit')}={options.save_total_limit} must be at least 1; leave it unset to keep "
            "every checkpoint."
        )
    if options.max_steps == 0 or options.max_steps < -1:
        problems.append(f"{flag('max_steps')}={options.max_steps} must be -1 (use the epochs) or at least 1.")
    if options.max_steps == -1 and options.num_train_epochs <= 0:
        problems.append(f"{flag('num_train_epochs')}={options.num_train_epochs} must be positive.")
    if options.n_iter > 1 and options.test_size == 0:
        problems.append(
            f"{flag('n_iter')}={options.n_iter} compares draws by eval loss, which needs test users; "
            f"set {flag('test_size')} above 0."
        )
    if "SUP" in _parts(options) and options.test_size == 1:
        problems.append(
            f"{flag('test_size')}=1 holds out one user, so the SUP eval loss has no negative user and is always 0; "
            f"set {flag('test_size')} to at least 2 users, or to 0 to skip evaluation."
        )
    return problems


def _check_reporting(options: TrainingOptions) -> list[str]:
    module = REPORT_TARGETS.get(options.report_to)
    if module is not None and importlib.util.find_spec(module) is None:
        return [f"{flag('report_to')} {options.report_to} needs the {module} package; run `pip install {module}`."]
    return []


_CHECKS = (_check_choices, _check_paths, _check_sizes, _check_model, _check_optimisation, _check_reporting)
