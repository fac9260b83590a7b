"""Command line of ``eval_reid.py`` and ``eval_classification.py``: arguments, run, outputs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from use.embedding import load_model_and_tokenizer
from use.evaluation import report
from use.evaluation.baselines import baseline_embeddings
from use.evaluation.behaviors import (
    DaySchedule,
    PeriodSchedule,
    Schedule,
    character_splitter,
    prepare_behaviors,
    tokenizer_splitter,
)
from use.evaluation.cache import EmbeddingCache, embedding_cache_key
from use.evaluation.classification import MLPSettings, evaluate_classification
from use.evaluation.io import EvalFileError, read_eval_tsv, read_periods_file, require_two_users, resolve_dataset_path
from use.evaluation.neural import neural_embeddings
from use.evaluation.reid import evaluate_reid
from use.evaluation.strategies import BASELINE_METHODS, METHODS, NEURAL_METHODS, STRATEGIES, select_strategies
from use.events.convert import PERIODS_FILE

logger = logging.getLogger(__name__)

TASKS = ("reid", "classification")
DEFAULT_PERIOD_LEN = 250
_DESCRIPTIONS = {
    "reid": "Dynamic user re-identification: match each user's context embedding, period by period, "
    "to their own history embedding among all users' (cosine similarity; MRR and top-k accuracy).",
    "classification": "Dynamic user classification: fit an MLP with one class per user on history embeddings, "
    "then classify each period's context embedding (one-vs-rest ROC AUC and macro F1, over seeds).",
}


def build_parser(task: str) -> argparse.ArgumentParser:
    """Return the argument parser of one task; both tasks share every option except the MLP ones."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    parser = argparse.ArgumentParser(description=_DESCRIPTIONS[task])
    parser.add_argument(
        "--model_path", "--model-path", dest="model_path",
        help="folder of a trained user model (save_pretrained format). Needed for retnet and gpt2, "
        "ignored by the baselines.",
    )

    parser.add_argument(
        "--dataset_dir", "--dataset-dir", dest="dataset_dir", required=True,
        help="evaluation TSV file (header 'history<TAB>context', one user per row), "
        "or a folder containing exactly one .tsv file.",
    )
    parser.add_argument(
        "--tokenizer_path", "--tokenizer-path", dest="tokenizer_path",
        help="tokenizer folder that defines behaviors (one token = one behavior). Needed for retnet and gpt2; "
        "for the baselines it is optional and behaviors default to characters.",
    )

    parser.add_argument(
        "--method_type", "--method-type", dest="method_type", choices=METHODS,
        help="embedding method: a neural backbone (retnet, gpt2) or a non-neural baseline (tf, tf-idf, n-grams, "
        "random). Default: the backbone_type of the checkpoint at --model_path.",
    )

    parser.add_argument(
        "--batch_size", "--batch-size", dest="batch_size", type=int, default=8,
        help="users (or sequences) per model forward pass (default: 8).",
    )
    parser.add_argument(
        "--max_len", "--max-len", dest="max_len", type=int, default=4000,
        help="behaviors per side: the history window is the last max_len history behaviors, and the context "
        "periods cover at most the first max_len context behaviors; with --periods_file the context is "
        "every behavior of its days (default: 4000).",
    )
    parser.add_argument(
        "--period_len", "--period-len", dest="period_len", type=int, default=DEFAULT_PERIOD_LEN,
        help="behaviors per period of new context activity; there are max_len // period_len periods "
        f"(default: {DEFAULT_PERIOD_LEN}, so 16 periods).",
    )
    parser.add_argument(
        "--periods_file", "--periods-file", dest="periods_file", metavar="JSON",
        help=f"per-day periods instead of --period_len: the {PERIODS_FILE} that scripts/convert_event_log.py "
        "--period day writes beside the TSV. Period k of each user ends at the end of their k-th context day, "
        "so the report has one row per day. Behaviors must be the events of that log, one token each "
        "(pass its word-level tokenizer as --tokenizer_path).",
    )

    parser.add_argument(
        "--strategies", nargs="+", choices=STRATEGIES,
        help="context embedding strategies to evaluate (default: every one that applies to the method; "
        "'stateful' applies only to retnet).",
    )

    seeds_help = (
        "random seeds; each seeds one fit of the MLP (random_state), and the first also draws the random "
        "baseline's vectors (default: 0 1 2)."
        if task == "classification"
        else "random seeds; re-identification uses only the first, to draw the random baseline's vectors "
        "(default: 0 1 2)."
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help=seeds_help)

    if task == "classification":
        parser.add_argument(
            "--mlp_hidden", "--mlp-hidden", dest="mlp_hidden", nargs="+", type=int, default=[1024],
            help="hidden layer sizes of the MLP classifier, in units (default: 1024, one layer).",
        )
        parser.add_argument(
            "--mlp_max_iter", "--mlp-max-iter", dest="mlp_max_iter", type=int, default=3000,
            help="maximum training epochs of the MLP classifier (default: 3000).",
        )

    parser.add_argument("--output", help="JSON file to write every metric and the run settings to.")
    plotted = "MRR" if task == "reid" else "AUC"
    parser.add_argument(
        "--plot", help=f"PNG file to write a plot of {plotted} against period to, one line per strategy."
    )
    parser.add_argument(
        "--device", default="auto",
        help="torch device for the neural methods, for example cpu, cuda or cuda:1 "
        "(default: auto, which is cuda when available, else cpu).",
    )
    parser.add_argument(
        "--embedding_cache", "--embedding-cache", dest="embedding_cache", metavar="DIR",
        help="folder (created if missing) that stores the neural embeddings: the history and each strategy's "
        "periods. A later run with the same model files, tokenizer files, TSV, --max_len, --period_len or "
        "--periods_file, method, dtype and device type loads them instead of embedding again, so eval_reid.py "
        "and eval_classification.py embed once between them. Batch size, seeds and MLP settings may differ. "
        "The baselines (tf, tf-idf, n-grams, random) are cheap and ignore this option (default: no cache).",
    )
    return parser


def main(task: str, argv: list[str] | None = None) -> int:
    """Run one evaluation from command-line arguments and print its tables.

    Returns the process exit code: 0 on success, 1 when an input is invalid (the error is logged).
    """
    args = build_parser(task).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tables = run(task, args)
    except (EvalFileError, ValueError, OSError) as error:
        logger.error("%s", error)
        return 1
    print(tables)
    return 0


def run(task: str, args: argparse.Namespace) -> str:
    """Run one evaluation from parsed arguments, write the requested files and return the tables as text."""
    count_schedule = _count_schedule(args)
    if not args.seeds:
        raise ValueError("--seeds needs at least one value")
    _check_output_paths(args)
    path = resolve_dataset_path(args.dataset_dir)
    users = read_eval_tsv(path)
    require_two_users(len(users), users.skipped, path)
    if count_schedule is None:
        schedule: Schedule = DaySchedule(max_len=args.max_len, days=read_periods_file(args.periods_file, users))
    else:
        schedule = count_schedule
        _mention_periods_file(path)

    device = resolve_device(args.device)
    method, model, tokenizer = load_method(args, device)
    split = tokenizer_splitter(tokenizer) if tokenizer is not None else character_splitter
    data, too_short = prepare_behaviors(users, split, schedule)
    skipped = users.skipped + too_short
    require_two_users(len(data), skipped, path)
    strategies = select_strategies(method, args.strategies)
    logger.info(
        "Evaluating %s on %d users of %s with %s: strategies %s, %s",
        task, len(data), path, method, ", ".join(strategies), schedule.describe(),
    )

    if method in NEURAL_METHODS:
        cache = _embedding_cache(args, path, schedule, method, model, device)
        embeddings = neural_embeddings(model, data, strategies, args.batch_size, cache)
    else:
        if args.embedding_cache:
            logger.info("The %s baseline ignores --embedding_cache, because it is cheap to compute", method)
        embeddings = baseline_embeddings(method, data, strategies, seed=args.seeds[0])

    settings = _settings(args, method, strategies, device, schedule)
    dataset = {
        "path": str(path),
        "rows_read": len(users) + len(users.skipped),
        "users_evaluated": len(data),
        "skipped_rows": [{"row": item.row, "reason": item.reason} for item in skipped],
    }
    return _score_and_report(task, args, embeddings, settings, dataset, report.period_axis(data))


def _count_schedule(args: argparse.Namespace) -> PeriodSchedule | None:
    """Return the fixed-length schedule, or None with --periods_file, which sets the periods instead.

    Raises ValueError when --periods_file comes with a --period_len other than the default.
    """
    if not args.periods_file:
        return PeriodSchedule(max_len=args.max_len, period_len=args.period_len)
    if args.period_len != DEFAULT_PERIOD_LEN:
        raise ValueError(
            f"--period_len {args.period_len} cannot be combined with --periods_file {args.periods_file}, "
            "where each context day is one period; drop one of the two"
        )
    return None


def _mention_periods_file(dataset_path: Path) -> None:
    """Log that a periods file lies beside the TSV, because this run cuts periods by behavior count instead."""
    beside = dataset_path.with_name(PERIODS_FILE)
    if beside.is_file():
        logger.info(
            "Per-day periods are available: pass --periods_file %s for one result row per context day "
            "(this run uses periods of --period_len behaviors)",
            beside,
        )


def _embedding_cache(args, dataset_path: Path, schedule: Schedule, method, model, device) -> EmbeddingCache | None:
    """Return the cache that --embedding_cache names, keyed by this run's inputs, or None without the flag."""
    if not args.embedding_cache:
        return None
    key = embedding_cache_key(
        model_path=args.model_path,
        tokenizer_path=args.tokenizer_path,
        dataset_path=dataset_path,
        schedule=schedule,
        method=method,
        dtype=str(next(model.parameters()).dtype),
        device=device,
        periods_file=args.periods_file,
    )
    return EmbeddingCache(args.embedding_cache, key)


def _check_output_paths(args: argparse.Namespace) -> None:
    """Raise ValueError before any work when --output or --plot names a folder, so no result is lost."""
    for flag, value in (("--output", args.output), ("--plot", args.plot)):
        if value and Path(value).is_dir():
            raise ValueError(f"{flag} {value!r} is a folder; pass a file path such as {str(Path(value) / 'results.json')!r}.")


def _score_and_report(task, args, embeddings, settings, dataset, periods: report.PeriodAxis) -> str:
    if task == "reid":
        results = evaluate_reid(embeddings)
        tables = report.reid_tables(results, periods)
        plot = dict(metric="mrr", ylabel="MRR", title="Dynamic user re-identification", std_metric=None)
    else:
        mlp = MLPSettings(hidden_layer_sizes=tuple(args.mlp_hidden), max_iter=args.mlp_max_iter)
        results = evaluate_classification(embeddings, args.seeds, mlp)
        tables = report.classification_tables(results, periods, len(args.seeds))
        plot = dict(
            metric="auc_mean", ylabel="one-vs-rest ROC AUC (mean over seeds)",
            title="Dynamic user classification", std_metric="auc_std",
        )

    if args.output:
        report.write_json(report.build_report(task, settings, dataset, results, periods), args.output)
    if args.plot:
        report.plot_metric(results, path=args.plot, periods=periods, **plot)
    return tables


def resolve_device(device: str) -> str:
    """Return ``device``, with ``auto`` replaced by cuda when available, else cpu.

    Raises ValueError for a name torch does not parse and for cuda on a machine without CUDA.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"--device {device!r} is not a torch device name; use auto, cpu, cuda or cuda:N") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requests CUDA, which is not available here; use --device cpu or auto")
    return device


def load_method(args: argparse.Namespace, device: str) -> tuple[str, Any, Any]:
    """Return (method, model or None, tokenizer or None) from --method_type, --model_path and --tokenizer_path."""
    method = args.method_type
    if method in BASELINE_METHODS:
        if args.model_path:
            logger.warning("--model_path %s is ignored by the %s baseline", args.model_path, method)
        if not args.tokenizer_path:
            logger.info("Behaviors are characters (no --tokenizer_path given)")
            return method, None, None
        if not Path(args.tokenizer_path).is_dir():
            raise FileNotFoundError(f"tokenizer folder {args.tokenizer_path!r} not found; check --tokenizer_path")
        logger.info("Behaviors are the tokens of %s", args.tokenizer_path)
        return method, None, AutoTokenizer.from_pretrained(args.tokenizer_path)

    if not args.model_path:
        raise ValueError(
            f"--model_path is required for {method or 'a neural method'}; pass a trained checkpoint, "
            f"or pick a baseline with --method_type ({', '.join(BASELINE_METHODS)})"
        )
    if not args.tokenizer_path:
        raise ValueError(
            "--tokenizer_path is required with --model_path; pass the tokenizer the model was trained with"
        )
    model, tokenizer = load_model_and_tokenizer(args.model_path, args.tokenizer_path, device=device)
    backbone = model.config.backbone_type
    if method is not None and method != backbone:
        raise ValueError(
            f"--method_type {method} does not match the checkpoint at {args.model_path}, whose backbone is {backbone}; "
            f"pass --method_type {backbone} or leave it out"
        )
    logger.info("Loaded %s model from %s on %s", backbone, args.model_path, device)
    return backbone, model, tokenizer


def _settings(args, method, strategies, device, schedule: Schedule) -> dict[str, Any]:
    settings = dict(vars(args))
    settings.update(
        method_type=method,
        strategies=strategies,
        device=device,
        num_periods=schedule.num_periods,
        period_kind=schedule.kind,
    )
    if isinstance(schedule, DaySchedule):
        # Days set the periods, so the unused --period_len default would only mislead.
        settings.update(period_len=None, timezone=schedule.days.timezone)
    return settings
