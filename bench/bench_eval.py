"""Cost of eval_reid.py then eval_classification.py at scale, sharing one --embedding_cache, on a demo-size RetNet.

The script writes a synthetic evaluation TSV of --users users. Each user has --behaviors history
and --behaviors context characters, drawn (seeded) from the dialog tokenizer's vocabulary. It saves
a random RetNet UserModel of the demo size (hidden 128, 2 layers, 4 heads, chunk_size 128) with the
tokenizer files. Then it runs the two commands a user runs, as subprocesses, with every strategy and
the scripts' defaults: `eval_reid.py`, which embeds and fills the cache, then
`eval_classification.py`, which loads the embeddings from it. With --threads N > 0 both get
OMP_NUM_THREADS, MKL_NUM_THREADS and OPENBLAS_NUM_THREADS set to N.

Each script's time is split into steps from the timestamps of its own log lines: start-up with
reading the TSV and loading the model, tokenizing, each embedding's "loaded" or "computed" line, and
scoring with writing the report.

The stateful strategy's cost per period is measured in this process afterwards: its periods are
embedded again with each `embed_step` call timed, summed over the user batches.

With --target-users other than --users, the full size is estimated rather than run. Start-up is
taken as measured, tokenizing and embedding (or loading) are scaled linearly, and scoring is
measured at --target-users users on random embeddings. Scoring does not scale linearly:
re-identification compares every context with every history, and the classification MLP has one
class per user.

    .venv/bin/python bench/bench_eval.py                # 100 users and an estimate for 1,000: 8.5 min at load 4-5
    .venv/bin/python bench/bench_eval.py --users 1000   # the full size, measured: 22 min at load 2-4
    .venv/bin/python bench/bench_eval.py --quick        # smoke run
"""

import argparse
import contextlib
import csv
import datetime
import logging
import os
import random
import re
import resource
import subprocess
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
    REPO_ROOT,
    Timer,
    add_common_arguments,
    configure_torch,
    load_average,
    resolve_output,
    setup_logging,
    target,
    write_results,
)
from use import UserModel, UserModelConfig  # noqa: E402
from use.embedding import load_model_and_tokenizer  # noqa: E402
from use.evaluation import classification, neural, report  # noqa: E402
from use.evaluation.behaviors import PeriodSchedule, prepare_behaviors, tokenizer_splitter  # noqa: E402
from use.evaluation.classification import MLPSettings, evaluate_classification  # noqa: E402
from use.evaluation.io import read_eval_tsv  # noqa: E402
from use.evaluation.reid import evaluate_reid  # noqa: E402
from use.evaluation.strategies import STRATEGIES, UserEmbeddings  # noqa: E402

logger = logging.getLogger("bench.eval")

TOKENIZER_DIR = REPO_ROOT / "tokenizer" / "dialog"
# The demo's model size. chunk_size stays at the config default (128).
DEMO_MODEL = {"backbone_type": "retnet", "hidden_size": 128, "num_hidden_layers": 2, "num_heads": 4}
# Both scripts, run one after the other on the same data, must finish within this many minutes.
MAX_EVALUATION_MINUTES = 30.0
# "Constant time per period": the slowest stateful period takes at most this multiple of the fastest.
MAX_STATEFUL_PERIOD_RATIO = 1.5
# The embeddings that the cache stores. Pool is not among them, because it is the running mean of recent.
STORED_EMBEDDINGS = ("history", "recent", "stateful", "recompute")
SCRIPTS = {"reid": "eval_reid.py", "classification": "eval_classification.py"}

# A log line of the evaluation scripts: "2026-12-04 23:55:46,312 INFO use.evaluation.cli: message".
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*)$")
EMBEDDING_LINE = re.compile(r"^(\w+) embeddings: (loaded|computed) .*?\bin ([\d.]+) s")


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
        help="the scripts' --max_len: history window and context span in behaviors (default: 4000).",
    )
    parser.add_argument(
        "--period_len", "--period-len", dest="period_len", type=int, default=250,
        help="the scripts' --period_len: behaviors per context period (default: 250, so 16 periods).",
    )
    parser.add_argument(
        "--batch_size", "--batch-size", dest="batch_size", type=int, default=8,
        help="the scripts' --batch_size: users per forward pass (default: 8, the scripts' default).",
    )
    parser.add_argument(
        "--classifier_seeds", "--classifier-seeds", dest="classifier_seeds", type=int, nargs="+", default=[0, 1, 2],
        help="eval_classification.py --seeds: one MLP fit per seed (default: 0 1 2, the script's default).",
    )
    parser.add_argument(
        "--target_users", "--target-users", dest="target_users", type=int,
        help="users to estimate both scripts' time for, when it differs from --users; scoring is measured at "
        "this count on random embeddings (default: 1000, or --users when that is larger).",
    )
    args = parser.parse_args(argv)

    if args.quick:
        args.users, args.behaviors, args.max_len, args.period_len, args.batch_size = 4, 400, 400, 100, 2
        args.classifier_seeds, args.target_users = [0], 20
    if args.target_users is None:
        args.target_users = max(1000, args.users)
    if args.users < 2:
        raise ValueError(f"--users {args.users} is too few; re-identification needs at least 2 users.")
    if args.target_users < args.users:
        raise ValueError(f"--target-users {args.target_users} is below --users {args.users}. Pass at least --users.")
    if args.behaviors < args.max_len:
        raise ValueError(
            f"--behaviors {args.behaviors} is shorter than --max_len {args.max_len}, so every user would be "
            "skipped for a short context; pass --behaviors of at least --max_len."
        )
    if args.dtype != "float32":
        raise ValueError(
            f"--dtype {args.dtype} is not supported here: the evaluation scripts embed in the checkpoint's dtype, "
            "and this benchmark saves a float32 checkpoint. Pass --dtype float32."
        )
    args.output = resolve_output(args.output, "eval", args.overwrite)
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


def script_command(task: str, args: argparse.Namespace, work_dir: Path) -> list[str]:
    """Return the command line of one evaluation script, as a user runs it with the shared cache."""
    model = str(work_dir / "model")
    command = [
        sys.executable, str(REPO_ROOT / SCRIPTS[task]),
        "--model_path", model, "--tokenizer_path", model, "--dataset_dir", str(work_dir / "eval.tsv"),
        "--max_len", str(args.max_len), "--period_len", str(args.period_len), "--batch_size", str(args.batch_size),
        "--device", args.device, "--embedding_cache", str(work_dir / "cache"), "--output", str(work_dir / f"{task}.json"),
    ]
    if task == "classification":
        command += ["--seeds", *map(str, args.classifier_seeds)]
    return command


def run_script(task: str, args: argparse.Namespace, work_dir: Path) -> dict:
    """Run one evaluation script to completion and return its wall time, CPU time and per-step times."""
    command = script_command(task, args, work_dir)
    environment = dict(os.environ)
    if args.threads:
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            environment[variable] = str(args.threads)
    log_path = work_dir / f"{task}.log"
    logger.info("running %s, with its log in %s", SCRIPTS[task], log_path)

    cpu_before = _children_cpu_s()
    start = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        completed = subprocess.run(command, cwd=REPO_ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=log)
    end = time.time()
    cpu_s = _children_cpu_s() - cpu_before
    if completed.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"{SCRIPTS[task]} failed with exit code {completed.returncode}. The end of its log:\n{tail}")

    result = {"name": SCRIPTS[task], "users": args.users, "wall_s": round(end - start, 3), "cpu_s": round(cpu_s, 3),
              "command": " ".join(Path(part).name if part == sys.executable else part for part in command)}
    result.update(log_steps(log_path.read_text(encoding="utf-8", errors="replace"), start, end))
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def log_steps(log: str, start: float, end: float) -> dict:
    """Split a script's run into steps from its log line timestamps; `start` and `end` are epoch seconds.

    Raises RuntimeError when a line that the split needs is missing, which means the log messages of
    `use/evaluation/cli.py` or `use/evaluation/cache.py` changed and this parser needs updating.
    """
    times: dict[str, float] = {}
    embeddings: dict[str, dict] = {}
    for line in log.splitlines():
        match = LOG_LINE.match(line.rsplit("\r", 1)[-1])
        if not match:
            continue
        stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        message = match.group(4)
        if message.startswith("Loaded ") and " model from " in message:
            times["model_loaded"] = stamp
        elif message.startswith("Evaluating "):
            times["tokenized"] = stamp
        elif embedding := EMBEDDING_LINE.match(message):
            name, status, seconds = embedding.groups()
            embeddings[name] = {"status": status, "seconds": float(seconds)}
            times["embedded"] = stamp
        elif message.startswith("pool embeddings:"):
            times["embedded"] = stamp

    missing = [step for step in ("model_loaded", "tokenized", "embedded") if step not in times]
    missing += [name for name in STORED_EMBEDDINGS if name not in embeddings]
    if missing:
        raise RuntimeError(
            f"the script's log has no line for {missing}, so the log messages of use/evaluation/cli.py or "
            "use/evaluation/cache.py changed. Update log_steps in bench/bench_eval.py to match them."
        )
    return {
        "startup_read_and_load_model_s": round(times["model_loaded"] - start, 3),
        "tokenize_s": round(times["tokenized"] - times["model_loaded"], 3),
        "embeddings_s": round(times["embedded"] - times["tokenized"], 3),
        "embeddings": {name: embeddings[name] for name in STORED_EMBEDDINGS},
        "score_and_report_s": round(end - times["embedded"], 3),
    }


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


def stateful_periods(args: argparse.Namespace, work_dir: Path) -> dict:
    """Embed every user's periods with the stateful strategy again, timing each period's `embed_step` calls.

    This calls the private `neural._embed_periods` and `neural._stateful_batch`, the code that
    `eval_reid.py` runs for this strategy, so that only the stateful periods are embedded.
    """
    schedule = PeriodSchedule(max_len=args.max_len, period_len=args.period_len)
    model, tokenizer = load_model_and_tokenizer(work_dir / "model", work_dir / "model", device=args.device)
    data, _ = prepare_behaviors(read_eval_tsv(work_dir / "eval.tsv"), tokenizer_splitter(tokenizer), schedule)
    with timed_calls(neural, "embed_step") as calls:
        neural._embed_periods(model, data, "stateful", args.batch_size, neural._stateful_batch)

    batches = -(-len(data) // args.batch_size)
    if len(calls) != batches * schedule.num_periods:
        raise RuntimeError(
            f"the stateful strategy made {len(calls)} embed_step calls, expected {batches * schedule.num_periods} "
            "(one per period and batch); update stateful_periods in bench/bench_eval.py to match "
            "use/evaluation/neural.py."
        )
    # Each batch runs periods 1..P in order, so call i belongs to period i mod P.
    seconds = [0.0] * schedule.num_periods
    for index, (call_s, _) in enumerate(calls):
        seconds[index % schedule.num_periods] += call_s
    return {"name": "stateful periods, embed_step time summed over batches", "users": len(data),
            "batches": batches, **period_summary(seconds)}


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


def cached_embeddings(cache_dir: Path, name: str) -> np.ndarray:
    """Return the array of the one cache file of embedding `name` in `cache_dir`."""
    paths = sorted(cache_dir.glob(f"{name}-*.npz"))
    if len(paths) != 1:
        raise RuntimeError(f"expected one {name} file in {cache_dir}, found {[path.name for path in paths]}")
    with np.load(paths[0], allow_pickle=False) as stored:
        return stored["embeddings"]


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


def phase(name: str, timer: Timer, users: int, scaling: str, **extra) -> dict:
    return {"name": name, "users": users, "wall_s": round(timer.wall_s, 3), "cpu_s": round(timer.cpu_s, 3),
            "scaling": scaling, **extra}


def random_embeddings(users: int, hidden: int, num_periods: int, seed: int) -> UserEmbeddings:
    """Return Gaussian history embeddings and contexts that are the history plus as much noise again."""
    generator = np.random.default_rng(seed)
    history = generator.standard_normal((users, hidden), dtype=np.float32)
    context = {
        strategy: [history + generator.standard_normal((users, hidden), dtype=np.float32) for _ in range(num_periods)]
        for strategy in STRATEGIES
    }
    return UserEmbeddings(history=history, context=context)


def estimate(scripts: dict[str, dict], scoring: list[dict], measured_users: int, target_users: int, clock: str) -> dict:
    """Return each script's estimated time at `target_users` on `clock`: "wall_s" or "cpu_s".

    Start-up (with reading the TSV and loading the model) is taken as measured. Tokenizing and
    embedding or loading are scaled by target_users / measured_users. Scoring is the in-process
    time on `target_users` random users, which leaves out writing the report. The log gives step
    times on the wall clock only, so for "cpu_s" each script's steps are multiplied by its CPU time
    over its wall time. That approximates a run with a core to itself, because load from other
    programs inflates CPU time less than wall time.
    """
    by_name = {result["name"]: result for result in scoring}
    scale = target_users / measured_users
    scoring_name = {"reid": "re-ID scoring", "classification": "classification scoring"}
    estimated = {}
    for task, script in scripts.items():
        clock_over_wall = 1.0 if clock == "wall_s" else script["cpu_s"] / script["wall_s"]
        linear_s = script["tokenize_s"] + script["embeddings_s"]
        steps_s = (script["startup_read_and_load_model_s"] + linear_s * scale) * clock_over_wall
        estimated[task] = steps_s + by_name[f"{scoring_name[task]}, {target_users} random users"][clock]
    kind = "wall" if clock == "wall_s" else "CPU"
    return {
        "name": f"estimate, {target_users} users, {kind} time",
        "users": target_users,
        "method": f"{kind} time: start-up as measured; tokenize and embed or load scaled by "
        f"{target_users}/{measured_users}; scoring as measured on {target_users} random users",
        "eval_reid_min": round(estimated["reid"] / 60, 2),
        "eval_classification_min": round(estimated["classification"] / 60, 2),
        "both_scripts_min": round(sum(estimated.values()) / 60, 2),
    }


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

        scripts = {task: run_script(task, args, work_dir) for task in SCRIPTS}
        not_loaded = [name for name, step in scripts["classification"]["embeddings"].items() if step["status"] != "loaded"]
        if not_loaded:
            raise RuntimeError(f"eval_classification.py computed {not_loaded} instead of loading them from the cache")
        results = list(scripts.values())
        stateful = stateful_periods(args, work_dir)
        results.append(stateful)
        difference = float(np.abs(cached_embeddings(work_dir / "cache", "stateful")
                                  - cached_embeddings(work_dir / "cache", "recompute")).max())
        cache_mib = sum(path.stat().st_size for path in (work_dir / "cache").iterdir()) / 2**20

    both_measured_min = sum(script["wall_s"] for script in scripts.values()) / 60
    results.append({"name": f"measured, {args.users} users", "users": args.users,
                    "eval_reid_min": round(scripts["reid"]["wall_s"] / 60, 2),
                    "eval_classification_min": round(scripts["classification"]["wall_s"] / 60, 2),
                    "both_scripts_min": round(both_measured_min, 2)})
    both_min, basis = both_measured_min, "measured"
    if args.target_users != args.users:
        hidden = DEMO_MODEL["hidden_size"]
        num_periods = PeriodSchedule(max_len=args.max_len, period_len=args.period_len).num_periods
        # Random embeddings at --users too show how far their scoring cost is from the real ones' above.
        scoring = []
        for users in (args.users, args.target_users):
            scoring += score(random_embeddings(users, hidden, num_periods, args.seed), args, args.period_len,
                             f"{users} random users")
        results += scoring
        wall_estimate = estimate(scripts, scoring, args.users, args.target_users, "wall_s")
        results += [wall_estimate, estimate(scripts, scoring, args.users, args.target_users, "cpu_s")]
        both_min, basis = wall_estimate["both_scripts_min"], "estimated (wall time)"

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
        "cache_mib": round(cache_mib, 1),
        "max_abs_diff_stateful_vs_recompute": difference,
        "threads_per_script": args.threads or "library defaults",
    }
    targets = [
        target(f"eval_reid.py then eval_classification.py with --embedding_cache, {args.target_users} users, "
               f"{basis} minutes", both_min, MAX_EVALUATION_MINUTES, unit="minutes", higher_is_better=False),
        target("stateful per-period time, max over min", stateful["max_over_min"], MAX_STATEFUL_PERIOD_RATIO,
               higher_is_better=False),
    ]
    return write_results(args.output, "eval", args, settings, results, targets, load_before)


if __name__ == "__main__":
    main()
