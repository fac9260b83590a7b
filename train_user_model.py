"""Pre-train a USE user model (RetNet or GPT-2) on behavior sequences with CLM, FEP and/or SUP.

Single process:  python train_user_model.py --data-dir data/train.txt --tokenizer-path ./tokenizer/dna ...
Several devices: torchrun --nproc_per_node N train_user_model.py ... (DDP; --per-device-batch-size
counts users per device). Rerunning with the same --model-output-path resumes from its last checkpoint.
Exit codes: 0 trained, 2 invalid options or data, 130 interrupted with Ctrl-C.
"""

import argparse
import logging
import sys
from pathlib import Path

from use.data import DataError
from use.model import BACKBONES
from use.objectives import CONTRASTIVE_EMBEDDINGS, CONTRASTIVE_TYPES, OBJECTIVES
from use.training import SUMMARY_FILE, find_resume_checkpoint, train
from use.training_options import REPORT_TARGETS, OptionsError, TrainingOptions, flag, option_defaults
from use.training_search import draw_trials

logger = logging.getLogger("train_user_model")
# POSIX shells report a process stopped by SIGINT (signal 2) with exit status 128 + 2.
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show each flag's default and keep the description's line breaks."""


def build_parser() -> argparse.ArgumentParser:
    defaults = option_defaults()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter, allow_abbrev=False)

    run = parser.add_argument_group("run")
    run.add_argument("--run-name", help="name of the run in logs and in --report-to trackers")
    run.add_argument(
        "--training-objective",
        choices=OBJECTIVES,
        help="pre-training objective: CLM next behavior, FEP future W behaviors, SUP same-user contrastive, or sums",
    )
    run.add_argument("--model", choices=BACKBONES, help="backbone architecture")
    run.add_argument(
        "--model-output-path",
        required=True,
        help="folder for checkpoints and the final model, config and tokenizer; rerunning resumes from it",
    )
    run.add_argument(
        "--n-iter",
        type=int,
        help="number of runs with random learning rate, warmup and weight decay around the given values, each in "
        "its own trial-i sub-folder; the best eval loss wins",
    )
    run.add_argument("--seed", type=int, help="seed of weights, data order, segment sampling and the draws")
    run.add_argument("--report-to", choices=tuple(REPORT_TARGETS), help="experiment tracker to send logs to")

    data = parser.add_argument_group("data")
    data.add_argument(
        "--data-dir",
        required=True,
        help=".txt file (one user per line), .csv file (columns sequence,user_id, where the rows of one user_id "
        "are joined in file order into one sequence; a row with an empty user_id is its own user, with a warning) "
        "or a folder of them (read in sorted path order)",
    )
    data.add_argument("--tokenizer-path", required=True, help="tokenizer folder, e.g. ./tokenizer/dna")
    data.add_argument("--cache-dir", help="folder for the tokenized users, reused while inputs and settings match")
    data.add_argument(
        "--test-size",
        type=float,
        help="users held out for evaluation: a fraction below 1 or a whole number of users; 0 disables evaluation",
    )
    data.add_argument(
        "--max-model-input-size",
        type=int,
        help="positions per segment including [CLS] and [SEP] (behaviors = this - 2)",
    )
    data.add_argument(
        "--min-model-input-size",
        type=int,
        help="SUP only: shortest first segment in positions including [CLS] and [SEP]; its length is drawn "
        "uniformly from [min, max]",
    )
    data.add_argument(
        "--user-segments-gap",
        type=int,
        help="SUP only: behaviors skipped between a user's two segments; raised to --fep-window-size with FEP",
    )
    data.add_argument(
        "--get-random-segment",
        action="store_true",
        help="start segments at a uniformly random behavior (drawn again for every batch) instead of the first",
    )

    size = parser.add_argument_group("model size (ignored with --from-pretrained)")
    size.add_argument("--hidden-size", type=int, help="hidden size of the backbone")
    size.add_argument("--num-hidden-layers", type=int, help="number of backbone layers")
    size.add_argument("--num-heads", type=int, help="retention heads per layer (RetNet)")
    size.add_argument("--num-attention-heads", type=int, help="attention heads per layer (GPT-2)")
    size.add_argument("--dropout", type=float, help="dropout probability in the backbone")
    size.add_argument(
        "--from-pretrained",
        help="folder of a trained model to start from; heads that the new objective adds are initialised fresh",
    )

    objective = parser.add_argument_group("objectives")
    objective.add_argument("--fep-window-size", type=int, help="FEP: W, the number of future behaviors to predict")
    objective.add_argument(
        "--fep-context-length", type=int, help="FEP: positions at the start of a segment that get no FEP loss"
    )
    objective.add_argument(
        "--fep-loss-frequency", type=int, help="FEP: put the loss on every k-th position (1 = every position)"
    )
    objective.add_argument(
        "--contrastive-embedding",
        choices=CONTRASTIVE_EMBEDDINGS,
        help="SUP: segment embedding from mean hidden states (token), the RetNet state (state) or both (joint)",
    )
    objective.add_argument(
        "--contrastive-type",
        choices=CONTRASTIVE_TYPES,
        help="SUP: plain InfoNCE (Orig) or InfoNCE with hard negatives weighted up (HardNeg)",
    )
    objective.add_argument("--contrastive-temperature", type=float, help="SUP: InfoNCE temperature")
    objective.add_argument("--contrastive-head-size", type=int, help="SUP: output size of the projection head")

    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--num-train-epochs", type=float, help="passes over the training users")
    optimisation.add_argument("--max-steps", type=int, help="optimizer steps to train; -1 uses --num-train-epochs")
    optimisation.add_argument(
        "--per-device-batch-size", type=int, help="users per device and micro-batch (SUP: 2 segments per user)"
    )
    optimisation.add_argument(
        "--gradient-accumulation-steps", type=int, help="micro-batches accumulated per optimizer step"
    )
    optimisation.add_argument("--learning-rate", type=float, help="peak AdamW learning rate")
    optimisation.add_argument(
        "--warmup-ratio", type=float, help="fraction of the optimizer steps with linear warmup, in [0, 1)"
    )
    optimisation.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    optimisation.add_argument("--eval-steps", type=int, help="optimizer steps between evaluations")
    optimisation.add_argument("--save-steps", type=int, help="optimizer steps between checkpoints")
    optimisation.add_argument(
        "--save-total-limit",
        type=int,
        help="keep at most this many checkpoint folders, deleting the oldest; unset keeps every checkpoint",
    )
    optimisation.add_argument("--logging-steps", type=int, help="optimizer steps between train log entries")

    parser.set_defaults(**defaults)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # accelerate logs an info line about dataset lengths at every evaluation.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    arguments = build_parser().parse_args(argv)
    options = TrainingOptions(**vars(arguments))
    try:
        train(options)
    except (OptionsError, DataError) as error:
        logger.error("%s", error)
        return 2
    except KeyboardInterrupt:
        logger.warning("%s", interrupted_message(options))
        return EXIT_INTERRUPTED
    return 0


def interrupted_message(options: TrainingOptions) -> str:
    """Describe where a rerun of the interrupted command resumes: the last checkpoint, or step 0."""
    output_dir = Path(options.model_output_path)
    prefix = "training interrupted"
    if options.n_iter > 1:
        trials = draw_trials(options)
        unfinished = [trial for trial in trials if not (Path(trial.output_dir) / SUMMARY_FILE).is_file()]
        if not unfinished:
            return (
                f"{prefix} after all {len(trials)} draws finished; rerunning the same command skips every draw "
                f"and copies the best one to {output_dir}."
            )
        output_dir = Path(unfinished[0].output_dir)
        prefix = (
            f"search interrupted in draw {unfinished[0].index} with {len(trials) - len(unfinished)} of "
            f"{len(trials)} draws finished (a rerun skips finished draws)"
        )
    checkpoint = find_resume_checkpoint(output_dir)
    if checkpoint is None:
        return (
            f"{prefix}; {output_dir} has no checkpoint yet, so rerunning the same command starts from step 0. A "
            f"checkpoint is saved every {flag('save_steps')}={options.save_steps} optimizer steps."
        )
    return f"{prefix}; the last checkpoint is {checkpoint}, and rerunning the same command resumes from it."


if __name__ == "__main__":
    sys.exit(main())
