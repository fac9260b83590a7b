"""Cost of eval_reid.py and eval_classification.py at scale, with every strategy, on a demo-size RetNet.

The script writes a synthetic evaluation TSV of --users users. Each user has --behaviors history
and --behaviors context characters, drawn (seeded) from the dialog tokenizer's vocabulary. It saves
a random RetNet UserModel of the demo size (hidden 128, 2 layers, 4 heads, chunk_size 128) with the
tokenizer files. Then it runs the steps of `use.evaluation.cli.run` in this process and times each:
read the TSV, load the model, tokenize, embed the histories and the context periods with recent,
pool, stateful and recompute, and score re-identification and classification.

Per-strategy and per-period times come from wrapping, for the duration of the run, the names that
`use.evaluation.neural` looks up at call time (`_embed_periods`, `embed_step`, `embed_sequences`).
No file of `use/evaluation/` changes, and the embeddings are the ones `eval_reid.py` computes. A
stateful period's time is its `embed_step` calls, summed over the user batches. Because batches run
one after another and each batch runs all periods, load from other programs falls on all periods
alike.

Embedding, reading and tokenizing cost the same per user, so their time is scaled linearly to
--target-users users. Scoring does not scale linearly: re-identification compares every context
with every history (users x users similarities per period and strategy), and the classification
MLP has one class per user. Both are measured directly at --target-users users, on random embeddings.

    .venv/bin/python bench/bench_eval.py                 # 100 users, 5.5 to 9 minutes on 2 CPU cores, by load
    .venv/bin/python bench/bench_eval.py --users 1000    # the full size, measured rather than estimated (about 25 minutes)
    .venv/bin/python bench/bench_eval.py --quick         # smoke run
"""

import argparse
import contextlib
import csv
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

# The benchmark helpers sit beside this file; the repository root makes `use` importable from a checkout.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from common import (  # noqa: E402
    DTYPES,
    REPO_ROOT,
    Timer,
    add_common_arguments,
    configure_torch,
    load_average,
    peak_rss_mb,
    setup_logging,
    synchronize,
    target,
    write_results,
)
from use import UserModel, UserModelConfig  # noqa: E402
from use.embedding import load_model_and_tokenizer  # noqa: E402
from use.evaluation import classification, neural, report  # noqa: E402
from use.evaluation.behaviors import PeriodSchedule, prepare_behaviors, tokenizer_splitter  # noqa: E402
from use.evaluation.classification import MLPSettings, evaluate_classification  # noqa: E402
from use.evaluation.io import read_eval_tsv, require_two_users, resolve_dataset_path  # noqa: E402
from use.evaluation.reid import evaluate_reid  # noqa: E402
from use.evaluation.strategies import UserEmbeddings, select_strategies  # noqa: E402

logger = logging.getLogger("bench.eval")

TOKENIZER_DIR = REPO_ROOT / "tokenizer" / "dialog"
# The demo's model size. chunk_size stays at the config default (128).
DEMO_MODEL = {"backbone_type": "retnet", "hidden_size": 128, "num_hidden_layers": 2, "num_heads": 4}
# Both scripts, run one after the other on the same data, must finish within this many minutes.
MAX_EVALUATION_MINUTES = 30.0
# "Constant time per period": the slowest stateful period takes at most this multiple of the fastest.
# For comparison, recompute's period p embeds p periods, so its time grows with p.
MAX_STATEFUL_PERIOD_RATIO = 1.5
# Steps that cost the same for every user. Each script runs all of them once.
LINEAR_STEPS = ("read TSV", "tokenize and cut periods", "embed: all strategies and histories")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "eval")

    parser.add_argument("--users", type=int, default=100, help="users in the synthetic TSV (default: 100).")
    parser.add_argument(
        "--behaviors",
        type=int,
        default=4000,
        help="history behaviors and context behaviors per user, each (default: 4000).",
    )
    parser.add_argument(
        "--max_len", "--max-len", dest="max_len", type=int, default=4000,
        help="eval_reid.py --max_len: history window and context span in behaviors (default: 4000).",
    )
    parser.add_argument(
        "--period_len", "--period-len", dest="period_len", type=int, default=250,
        help="eval_reid.py --period_len: behaviors per context period (default: 250, so 16 periods).",
    )
    parser.add_argument(
        "--batch_size", "--batch-size", dest="batch_size", type=int, default=8,
        help="eval_reid.py --batch_size: users per forward pass (default: 8, the scripts' default).",
    )
    parser.add_argument(
        "--classifier_seeds", "--classifier-seeds", dest="classifier_seeds", type=int, nargs="+", default=[0, 1, 2],
        help="eval_classification.py --seeds: one MLP fit per seed (default: 0 1 2, the script's default).",
    )
    parser.add_argument(
        "--target_users", "--target-users", dest="target_users", type=int, default=1000,
        help="users to estimate the full run for; scoring is measured at this count on random embeddings "
        "(default: 1000).",
    )
    args = parser.parse_args(argv)

    if args.quick:
        args.users, args.behaviors, args.max_len, args.period_len, args.batch_size = 4, 400, 400, 100, 2
        args.classifier_seeds, args.target_users = [0], 20
    if args.users < 2:
        raise ValueError(f"--users {args.users} is too few; re-identification needs at least 2 users.")
    if args.target_users < 2:
        raise ValueError(f"--target-users {args.target_users} is too few; scoring needs at least 2 users.")
    if args.behaviors < args.max_len:
        raise ValueError(
            f"--behaviors {args.behaviors} is shorter than --max_len {args.max_len}, so every user would be "
            "skipped for a short context; pass --behaviors of at least --max_len."
        )
    return args


def write_eval_tsv(path: Path, users: int, behaviors: int, seed: int) -> None:
    """Write `users` rows of `behaviors` history and `behaviors` context characters of the dialog tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    special = set(tokenizer.all_special_tokens)
    characters = sorted(token for token in tokenizer.get_vocab() if token not in special)
    generator = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["history", "context"])
        for _ in range(users):
            history = "".join(generator.choices(characters, k=behaviors))
            context = "".join(generator.choices(characters, k=behaviors))
            writer.writerow([history, context])


def save_demo_model(folder: Path, seed: int) -> None:
    """Save a random demo-size RetNet UserModel and the dialog tokenizer files into `folder`."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(seed)
    model = UserModel(UserModelConfig(vocab_size=len(tokenizer), **DEMO_MODEL))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


class NeuralProbe:
    """Times the phases of `neural.neural_embeddings` by wrapping the module-level names it calls.

    While `installed()` is active, each `_embed_periods` call is timed as its strategy. The
    `embed_sequences` calls outside any strategy are the history embeddings. Within a user batch,
    the k-th `embed_step` call of the stateful strategy, and the k-th `embed_sequences` call of
    recompute, belong to period k.
    """

    def __init__(self, num_periods: int, device: str):
        self.num_periods = num_periods
        self.device = device
        self.history_s = 0.0
        self.strategy_s: dict[str, float] = {}
        self.strategy_cpu_s: dict[str, float] = {}
        self.period_s = {"stateful": [0.0] * num_periods, "recompute": [0.0] * num_periods}
        self.period_calls = {"stateful": 0, "recompute": 0}
        self.batches: dict[str, int] = {}
        self._strategy: str | None = None
        self._call_in_batch = 0

    @contextlib.contextmanager
    def installed(self):
        originals = {name: getattr(neural, name) for name in ("_embed_periods", "embed_step", "embed_sequences")}
        neural._embed_periods = self._wrap_embed_periods(originals["_embed_periods"])
        neural.embed_step = self._wrap_model_call(originals["embed_step"], "stateful")
        neural.embed_sequences = self._wrap_model_call(originals["embed_sequences"], "recompute")
        try:
            yield self
        finally:
            for name, function in originals.items():
                setattr(neural, name, function)

    def _wrap_embed_periods(self, embed_periods):
        def timed_embed_periods(model, data, strategy, batch_size, embed_batch):
            def counted_batch(*args, **kwargs):
                self._call_in_batch = 0
                self.batches[strategy] = self.batches.get(strategy, 0) + 1
                return embed_batch(*args, **kwargs)

            self._strategy = strategy
            start, start_cpu = self._now(), time.process_time()
            try:
                return embed_periods(model, data, strategy, batch_size, counted_batch)
            finally:
                self.strategy_s[strategy] = self.strategy_s.get(strategy, 0.0) + self._now() - start
                cpu_s = time.process_time() - start_cpu
                self.strategy_cpu_s[strategy] = self.strategy_cpu_s.get(strategy, 0.0) + cpu_s
                self._strategy = None

        return timed_embed_periods

    def _wrap_model_call(self, function, per_period_strategy: str):
        def timed_call(*args, **kwargs):
            start = self._now()
            result = function(*args, **kwargs)
            seconds = self._now() - start
            if self._strategy is None:
                self.history_s += seconds
            elif self._strategy == per_period_strategy:
                self.period_s[per_period_strategy][self._call_in_batch % self.num_periods] += seconds
                self.period_calls[per_period_strategy] += 1
                self._call_in_batch += 1
            return result

        return timed_call

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def check_complete(self, strategies: list[str]) -> None:
        """Raise RuntimeError unless every strategy ran and each batch made one timed call per period."""
        missing = [strategy for strategy in strategies if strategy != "pool" and strategy not in self.strategy_s]
        if missing:
            raise RuntimeError(
                f"strategies {missing} were never timed; bench/bench_eval.py's wrappers no longer match "
                "use/evaluation/neural.py and need updating."
            )
        for strategy, calls in self.period_calls.items():
            expected = self.batches.get(strategy, 0) * self.num_periods
            if calls != expected:
                raise RuntimeError(
                    f"{strategy} made {calls} timed model calls, expected {expected} (one per period and batch); "
                    "bench/bench_eval.py's wrappers no longer match use/evaluation/neural.py and need updating."
                )


def period_summary(seconds: list[float]) -> dict:
    """Return per-period seconds, their max/min ratio, and the mean of the later half over the earlier half.

    With an odd number of periods the middle one is in neither half. A flat cost gives a ratio near 1.
    """
    half = len(seconds) // 2
    later_over_earlier = float(np.mean(seconds[-half:]) / np.mean(seconds[:half])) if half else 1.0
    return {
        "per_period_s": [round(value, 4) for value in seconds],
        "max_over_min": round(max(seconds) / min(seconds), 3),
        "later_half_over_earlier_half": round(later_over_earlier, 3),
    }


def phase(name: str, timer: Timer, users: int, scaling: str, **extra) -> dict:
    return {"name": name, "users": users, "wall_s": round(timer.wall_s, 3), "cpu_s": round(timer.cpu_s, 3),
            "scaling": scaling, **extra}


def run_pipeline(args: argparse.Namespace, work_dir: Path) -> tuple[list[dict], UserEmbeddings, dict]:
    """Run the evaluation steps of `use.evaluation.cli.run` on the synthetic data, timing each."""
    schedule = PeriodSchedule(max_len=args.max_len, period_len=args.period_len)
    results = []

    with Timer(args.device) as timer:
        path = resolve_dataset_path(work_dir)
        users = read_eval_tsv(path)
        require_two_users(len(users), users.skipped, path)
    results.append(phase("read TSV", timer, len(users), "linear"))

    with Timer(args.device) as timer:
        model, tokenizer = load_model_and_tokenizer(work_dir / "model", work_dir / "model", device=args.device)
        model.to(dtype=DTYPES[args.dtype])
    results.append(phase("load model and tokenizer", timer, len(users), "constant"))

    with Timer(args.device) as timer:
        data, too_short = prepare_behaviors(users, tokenizer_splitter(tokenizer), schedule)
        require_two_users(len(data), users.skipped + too_short, path)
        strategies = select_strategies(model.config.backbone_type, None)
    results.append(phase("tokenize and cut periods", timer, len(data), "linear"))

    probe = NeuralProbe(schedule.num_periods, args.device)
    with probe.installed(), Timer(args.device) as timer:
        embeddings = neural.neural_embeddings(model, data, strategies, args.batch_size)
    probe.check_complete(strategies)
    strategy_s = sum(probe.strategy_s.values())
    results.append(phase("embed: all strategies and histories", timer, len(data), "linear",
                         history_s=round(probe.history_s, 3),
                         pool_and_bookkeeping_s=round(timer.wall_s - probe.history_s - strategy_s, 3)))
    for strategy, seconds in probe.strategy_s.items():
        entry = {"name": f"embed: {strategy}", "users": len(data), "wall_s": round(seconds, 3),
                 "cpu_s": round(probe.strategy_cpu_s[strategy], 3), "scaling": "linear"}
        if strategy in probe.period_s:
            entry.update(period_summary(probe.period_s[strategy]))
        if strategy == "recent":
            entry["note"] = "pool averages these embeddings, so it embeds nothing itself"
        results.append(entry)

    settings = {"strategies": strategies, "num_periods": schedule.num_periods, "users_evaluated": len(data)}
    return results, embeddings, settings


@contextlib.contextmanager
def timed_calls(module, name: str):
    """Time every call of `module.name` inside the block; yields the list of (seconds, return value) pairs."""
    original = getattr(module, name)
    calls = []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        value = original(*args, **kwargs)
        calls.append((time.perf_counter() - start, value))
        return value

    setattr(module, name, timed)
    try:
        yield calls
    finally:
        setattr(module, name, original)


def score(embeddings: UserEmbeddings, args: argparse.Namespace, period_len: int, label: str) -> list[dict]:
    """Time re-identification and classification scoring of `embeddings`, with MLP fits and ROC AUC timed apart."""
    users = embeddings.history.shape[0]
    results = []
    with Timer("cpu") as timer:
        reid_results = evaluate_reid(embeddings)
        report.reid_tables(reid_results, period_len)
    results.append(phase(f"re-ID scoring, {label}", timer, users, "quadratic (users x users similarities)"))

    with timed_calls(classification, "fit_classifier") as fits, timed_calls(classification, "ovr_roc_auc") as aucs:
        with Timer("cpu") as timer:
            classification_results = evaluate_classification(embeddings, args.classifier_seeds, MLPSettings())
            report.classification_tables(classification_results, period_len, len(args.classifier_seeds))
    fit_s = sum(seconds for seconds, _ in fits)
    auc_s = sum(seconds for seconds, _ in aucs)
    results.append(phase(
        f"classification scoring, {label}", timer, users, "superlinear (one MLP class per user)",
        mlp_fit_s=round(fit_s, 3), roc_auc_s=round(auc_s, 3), roc_auc_calls=len(aucs),
        other_predict_and_metrics_s=round(timer.wall_s - fit_s - auc_s, 3),
        mlp_epochs=[int(classifier[-1].n_iter_) for _, classifier in fits], seeds=args.classifier_seeds,
    ))
    return results


def random_embeddings(users: int, hidden: int, strategies: list[str], num_periods: int, seed: int) -> UserEmbeddings:
    """Return Gaussian history embeddings and contexts that are the history plus as much noise again."""
    generator = np.random.default_rng(seed)
    history = generator.standard_normal((users, hidden), dtype=np.float32)
    context = {
        strategy: [history + generator.standard_normal((users, hidden), dtype=np.float32) for _ in range(num_periods)]
        for strategy in strategies
    }
    return UserEmbeddings(history=history, context=context)


def estimate(results: list[dict], measured_users: int, target_users: int, clock: str) -> dict:
    """Return each script's time for `target_users`: linear steps scaled, constant and scoring steps as measured.

    `clock` is "wall_s" (the time a user waits) or "cpu_s" (this process's CPU time, which load from
    other programs inflates less, so it approximates a run with a core to itself).
    """
    by_name = {result["name"]: result for result in results}
    scale = target_users / measured_users
    linear_s = sum(by_name[name][clock] for name in LINEAR_STEPS)
    constant_s = by_name["load model and tokenizer"][clock]
    shared_s = constant_s + linear_s * scale
    reid_s = shared_s + by_name[f"re-ID scoring, {target_users} random users"][clock]
    classification_s = shared_s + by_name[f"classification scoring, {target_users} random users"][clock]
    kind = "wall" if clock == "wall_s" else "CPU"
    return {
        "name": f"estimate, {target_users} users, {kind} time",
        "users": target_users,
        "method": f"{kind} time: read, tokenize and embed scaled by {target_users}/{measured_users}; model load as "
        f"measured; scoring as measured on {target_users} random users",
        "linear_steps_s": round(linear_s * scale, 1),
        "eval_reid_s": round(reid_s, 1),
        "eval_classification_s": round(classification_s, 1),
        "both_scripts_s": round(reid_s + classification_s, 1),
        "eval_reid_min": round(reid_s / 60, 2),
        "eval_classification_min": round(classification_s / 60, 2),
        "both_scripts_min": round((reid_s + classification_s) / 60, 2),
    }


def measured_totals(results: list[dict], users: int) -> dict:
    """Return the wall time of each script on the measured users: shared steps plus that script's scoring."""
    by_name = {result["name"]: result for result in results}
    shared_s = sum(by_name[name]["wall_s"] for name in ("load model and tokenizer", *LINEAR_STEPS))
    reid_s = shared_s + by_name[f"re-ID scoring, {users} synthetic users"]["wall_s"]
    classification_s = shared_s + by_name[f"classification scoring, {users} synthetic users"]["wall_s"]
    return {"name": f"measured, {users} users", "users": users, "eval_reid_s": round(reid_s, 1),
            "eval_classification_s": round(classification_s, 1)}


def max_stateful_recompute_difference(embeddings: UserEmbeddings) -> float:
    """Return the largest difference between stateful and recompute embeddings, which should agree."""
    pairs = zip(embeddings.context["stateful"], embeddings.context["recompute"])
    return float(max(np.abs(stateful - recompute).max() for stateful, recompute in pairs))


def main(argv=None) -> dict:
    setup_logging()
    args = parse_args(argv)
    configure_torch(args.threads, args.device)
    load_before = load_average()
    # sklearn's MLP and cosine similarity run in numpy's BLAS; hold it to the same thread count as torch.
    blas_limit = threadpool_limits(args.threads) if args.threads else contextlib.nullcontext()

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as folder, blas_limit:
        work_dir = Path(folder)
        write_eval_tsv(work_dir / "eval.tsv", args.users, args.behaviors, args.seed)
        save_demo_model(work_dir / "model", args.seed)
        tsv_mib = (work_dir / "eval.tsv").stat().st_size / 2**20
        logger.info("wrote %d users x %d behaviors (%.1f MiB) and the model to %s", args.users, args.behaviors,
                    tsv_mib, work_dir)

        results, embeddings, run_settings = run_pipeline(args, work_dir)
        period_len = args.period_len
        results += score(embeddings, args, period_len, f"{args.users} synthetic users")
        peak_rss = peak_rss_mb()

        # Random embeddings stand in for real ones at --target-users. Scoring them at --users too shows
        # how far their cost is from that of the real embeddings scored above.
        hidden = embeddings.history.shape[1]
        strategies = run_settings["strategies"]
        for users in dict.fromkeys([args.users, args.target_users]):
            fake = random_embeddings(users, hidden, strategies, run_settings["num_periods"], args.seed)
            results += score(fake, args, period_len, f"{users} random users")

    results.append(measured_totals(results, args.users))
    wall_estimate = estimate(results, args.users, args.target_users, "wall_s")
    results += [wall_estimate, estimate(results, args.users, args.target_users, "cpu_s")]
    stateful = next(result for result in results if result["name"] == "embed: stateful")

    settings = {
        "users": args.users,
        "behaviors": args.behaviors,
        "max_len": args.max_len,
        "period_len": args.period_len,
        "batch_size": args.batch_size,
        "classifier_seeds": args.classifier_seeds,
        "target_users": args.target_users,
        "model": {**DEMO_MODEL, "chunk_size": UserModelConfig().chunk_size},
        "dtype": args.dtype,
        "tsv_mib": round(tsv_mib, 1),
        "peak_rss_mb_after_pipeline": round(peak_rss, 1),
        "max_abs_diff_stateful_vs_recompute": max_stateful_recompute_difference(embeddings),
        "blas_threads": args.threads or "numpy default",
        **run_settings,
    }
    targets = [
        target(f"eval_reid.py then eval_classification.py, {args.target_users} users, estimated minutes",
               wall_estimate["both_scripts_min"], MAX_EVALUATION_MINUTES, unit="minutes", higher_is_better=False),
        target("stateful per-period time, max over min", stateful["max_over_min"], MAX_STATEFUL_PERIOD_RATIO,
               higher_is_better=False),
    ]
    return write_results(args.output, "eval", args, settings, results, targets, load_before)


if __name__ == "__main__":
    main()
