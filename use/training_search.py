"""Random search over learning rate, warmup and weight decay around the given values (`--n-iter` > 1).

Draw i trains into `<model-output-path>/trial-i` and is skipped on a rerun once its
training_summary.json exists, so an interrupted search resumes where it stopped. A rerun that requests
other model settings than a finished draw was trained with raises OptionsError. The best draw (lowest
eval loss) has its final model and tokenizer copied to `<model-output-path>`, next to
search_results.json, which lists every draw.
"""

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from accelerate import PartialState
from transformers import TrainerCallback

from .training import SUMMARY_FILE, TrainingResult, build_model_config, train_once
from .training_options import TrainingOptions, load_training_tokenizer
from .training_resume import check_saved_settings

logger = logging.getLogger(__name__)

SEARCH_RESULTS_FILE = "search_results.json"
# Learning rate and weight decay are drawn log-uniformly within this factor of the given value.
LOG_UNIFORM_FACTOR = 3.0
# Warmup is drawn uniformly between these multiples of the given ratio, and capped at MAX_WARMUP_RATIO.
WARMUP_RANGE = (0.5, 1.5)
MAX_WARMUP_RATIO = 0.5


@dataclass
class Trial:
    """One draw: its hyper-parameters, folder and eval loss."""

    index: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    output_dir: str
    eval_loss: float | None = None


@dataclass
class SearchResult:
    """Every draw, and the index of the one with the lowest eval loss."""

    trials: list[Trial]
    best_index: int
    output_dir: Path

    @property
    def best(self) -> Trial:
        return self.trials[self.best_index]


def draw_trials(options: TrainingOptions) -> list[Trial]:
    """Draw `n_iter` hyper-parameter sets. The same `seed` gives the same draws."""
    rng = np.random.default_rng(options.seed)
    root = Path(options.model_output_path)
    trials = []
    for index in range(options.n_iter):
        scale_lr, scale_decay = LOG_UNIFORM_FACTOR ** rng.uniform(-1.0, 1.0, size=2)
        warmup = min(MAX_WARMUP_RATIO, options.warmup_ratio * rng.uniform(*WARMUP_RANGE))
        trials.append(
            Trial(
                index=index,
                learning_rate=float(options.learning_rate * scale_lr),
                warmup_ratio=float(warmup),
                weight_decay=float(options.weight_decay * scale_decay),
                output_dir=str(root / f"trial-{index}"),
            )
        )
    return trials


def run_search(options: TrainingOptions, callbacks: list[TrainerCallback] | None = None) -> SearchResult:
    """Train every draw (skipping finished ones), then publish the best one at the output root."""
    root = Path(options.model_output_path)
    trials = draw_trials(options)
    tokenizer, first_behavior_id = load_training_tokenizer(options.tokenizer_path)
    model_config = build_model_config(options, tokenizer, first_behavior_id)
    for trial in trials:
        trial.eval_loss = _finished_eval_loss(Path(trial.output_dir))
        if trial.eval_loss is not None:
            # A finished draw is reused only if it was trained with the model settings requested now.
            check_saved_settings(Path(trial.output_dir), model_config, options)
            logger.info("draw %d already finished with eval loss %.4f; skipping it", trial.index, trial.eval_loss)
            continue
        logger.info(
            "draw %d of %d: learning rate %.3g, warmup ratio %.3f, weight decay %.3g",
            trial.index + 1,
            len(trials),
            trial.learning_rate,
            trial.warmup_ratio,
            trial.weight_decay,
        )
        trial_options = replace(
            options,
            learning_rate=trial.learning_rate,
            warmup_ratio=trial.warmup_ratio,
            weight_decay=trial.weight_decay,
            model_output_path=trial.output_dir,
            n_iter=1,
        )
        result: TrainingResult = train_once(trial_options, callbacks)
        trial.eval_loss = result.eval_loss

    best_index = min(range(len(trials)), key=lambda index: trials[index].eval_loss)
    search = SearchResult(trials=trials, best_index=best_index, output_dir=root)
    if PartialState().is_main_process:
        _publish_best(search)
    logger.info(
        "best of %d draws: draw %d with eval loss %.4f (learning rate %.3g, warmup ratio %.3f, weight decay %.3g)",
        len(trials),
        best_index,
        search.best.eval_loss,
        search.best.learning_rate,
        search.best.warmup_ratio,
        search.best.weight_decay,
    )
    return search


def _finished_eval_loss(output_dir: Path) -> float | None:
    summary_file = output_dir / SUMMARY_FILE
    if not summary_file.is_file():
        return None
    return json.loads(summary_file.read_text())["eval_metrics"]["eval_loss"]


def _publish_best(search: SearchResult) -> None:
    # The top-level files of a finished run are the final model, its tokenizer and summaries; the
    # checkpoint folders stay in the draw's folder.
    for path in Path(search.best.output_dir).iterdir():
        if path.is_file():
            shutil.copy2(path, search.output_dir / path.name)
    results = {"best_index": search.best_index, "trials": [vars(trial) for trial in search.trials]}
    (search.output_dir / SEARCH_RESULTS_FILE).write_text(json.dumps(results, indent=2))
