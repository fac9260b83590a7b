"""Benchmark stateful embedding updates against re-embedding the whole history, and the state store.

    python bench/bench_state.py [--repeats 5] [--output FILE [--overwrite]]

Part 1, one user: the cost of absorbing `--new_behaviors` behaviors for a user whose history is each
of `--histories` behaviors long, three ways, run side by side in each repeat:
  stateful: `embed_step` on the new behaviors from the stored state (what `UserStateStore` runs);
  re-embed: `embed_step` from scratch over history + new behaviors, chunkwise retention;
  parallel: the same with parallel retention. Its `(heads, n, n)` matrices grow with n squared, so
    it is skipped when its estimated memory exceeds `--max_parallel_gib`, with the reason in the JSON.
Part 2, through the store (SQLite reads and writes included): users per second for `--store_users`
users absorbing `--new_behaviors` behaviors each, new users and users continuing a stored state,
the model's share of that time, and the store's size per user.

The model is a random RetNet UserModel of the demo size (hidden 256, 4 layers, 4 heads by default)
saved with save_pretrained and opened like a trained checkpoint, with the dialog tokenizer's
vocabulary. Times are medians of the repeats, in seconds.
"""

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import resolve_output, write_json
from use.model import UserModel, UserModelConfig
from use.embedding import embed_step, pad_batch
from use.state import UserStateStore

logger = logging.getLogger("bench_state")

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tokenizer" / "dialog"
# Live float32 (heads, n, n) tensors at the peak of parallel retention: the exponent, the decay mask,
# the scores and their masked product, plus one temporary. An estimate from reading
# use/retnet/retention.py, not a measurement.
PARALLEL_LIVE_MATRICES = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--histories", type=int, nargs="+", default=[250, 1000, 4000, 16000], help="history lengths")
    parser.add_argument("--new_behaviors", type=int, default=250, help="behaviors absorbed per update")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (the median is reported)")
    parser.add_argument("--store_users", type=int, default=1000, help="users per store update")
    parser.add_argument("--store_repeats", type=int, default=3, help="timed store updates of continuing users")
    parser.add_argument("--batch_size", type=int, default=32, help="users per batch and transaction in the store")
    parser.add_argument(
        "--max_parallel_gib",
        type=float,
        help="skip parallel retention above this estimated memory, in GiB (default: half of the available memory)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default)")
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON file to write. An existing file is rejected unless --overwrite is given "
        "(default: a new file bench/results/state-YYYYMMDDTHHMMSSZ.json, named by the UTC start time)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the --output file if it already exists")
    args = parser.parse_args()
    args.output = resolve_output(args.output, "state", args.overwrite)
    return args


def available_memory_bytes() -> int | None:
    """Return MemAvailable from /proc/meminfo, or None where that file does not exist."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None


@contextmanager
def forward_mode(model: UserModel, mode: str):
    """Run the backbone in `mode` ("auto", "parallel", "chunkwise") inside the block."""
    config = model.backbone.config
    previous = config.forward_mode
    config.forward_mode = mode
    try:
        yield
    finally:
        config.forward_mode = previous


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def random_ids(generator: torch.Generator, config: UserModelConfig, length: int) -> list[int]:
    return torch.randint(config.first_behavior_id, config.vocab_size, (length,), generator=generator).tolist()


def bench_one_user(model: UserModel, args, max_parallel_bytes: int) -> list[dict]:
    """Time stateful, chunkwise re-embedding and parallel re-embedding for each history length."""
    config = model.config
    generator = torch.Generator().manual_seed(0)
    pad = config.pad_token_id
    results = []
    for history_length in args.histories:
        history = random_ids(generator, config, history_length)
        new = random_ids(generator, config, args.new_behaviors)
        whole = pad_batch([history + new], pad)
        state = embed_step(model, *pad_batch([history], pad))
        new_batch = pad_batch([new], pad)

        positions = history_length + args.new_behaviors + 1  # with [CLS]
        parallel_bytes = PARALLEL_LIVE_MATRICES * config.num_heads * positions**2 * 4
        methods = {
            "stateful": lambda: embed_step(model, *new_batch, state),
            "reembed_chunkwise": lambda: embed_step(model, *whole),
        }
        skipped = {}
        if parallel_bytes <= max_parallel_bytes:
            methods["parallel"] = lambda: embed_step(model, *whole)
        else:
            skipped["parallel"] = (
                f"estimated {parallel_bytes / 2**30:.1f} GiB for {positions} positions exceeds the "
                f"{max_parallel_bytes / 2**30:.1f} GiB limit (--max_parallel_gib)"
            )
        modes = {"stateful": "auto", "reembed_chunkwise": "chunkwise", "parallel": "parallel"}

        seconds = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, run in methods.items():
                with forward_mode(model, modes[name]):
                    seconds[name].append(timed(run))
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        entry = {
            "history": history_length,
            "new_behaviors": args.new_behaviors,
            "median_seconds": medians,
            "all_seconds": seconds,
            "reembed_over_stateful": medians["reembed_chunkwise"] / medians["stateful"],
            "skipped": skipped,
        }
        if "parallel" in medians:
            entry["parallel_over_stateful"] = medians["parallel"] / medians["stateful"]
            entry["parallel_estimated_gib"] = parallel_bytes / 2**30
        logger.info("history %d: %s", history_length, json.dumps({k: round(v, 4) for k, v in medians.items()}))
        results.append(entry)
    return results


def bench_store(store: UserStateStore, args) -> dict:
    """Time store updates of new users and of users continuing their state, and the store's size."""
    config = store.model.config
    generator = torch.Generator().manual_seed(1)
    user_ids = [f"user{index:05d}" for index in range(args.store_users)]

    def new_behaviors() -> list[list[int]]:
        return [random_ids(generator, config, args.new_behaviors) for _ in user_ids]

    new_users_seconds = timed(lambda: store.update(user_ids, new_behaviors()))
    logger.info("store: %d new users in %.2f s", len(user_ids), new_users_seconds)

    continuing_seconds, model_seconds, read_seconds = [], [], []
    for _ in range(args.store_repeats):
        sequences = new_behaviors()
        read, model = model_and_read_seconds(store, user_ids, sequences)
        read_seconds.append(read)
        model_seconds.append(model)
        continuing_seconds.append(timed(lambda: store.update(user_ids, sequences)))
        logger.info(
            "store: %d continuing users in %.2f s; reading their states takes %.2f s and the model alone %.2f s",
            len(user_ids),
            continuing_seconds[-1],
            read,
            model,
        )

    # One behavior per user: the same reads, writes and commits with almost no model work.
    one_behavior_seconds = []
    for _ in range(args.store_repeats):
        sequences = [random_ids(generator, config, 1) for _ in user_ids]
        one_behavior_seconds.append(timed(lambda: store.update(user_ids, sequences)))
    logger.info("store: %d users absorbing one behavior each in %s s", len(user_ids), one_behavior_seconds)

    size = store_size_bytes(store.path)
    shapes = store.shapes
    payload = 4 * (shapes.num_layers * shapes.num_heads * shapes.head_dim**2 + shapes.hidden_size)
    continuing = statistics.median(continuing_seconds)
    model_share = statistics.median(model / total for model, total in zip(model_seconds, continuing_seconds))
    return {
        "users": len(user_ids),
        "new_behaviors_per_user": args.new_behaviors,
        "batch_size": store.batch_size,
        "new_users_seconds_single_run": new_users_seconds,
        "new_users_per_second": len(user_ids) / new_users_seconds,
        "continuing_users_all_seconds": continuing_seconds,
        "continuing_users_median_seconds": continuing,
        "continuing_users_per_second": len(user_ids) / continuing,
        "model_only_all_seconds": model_seconds,
        "read_states_all_seconds": read_seconds,
        "model_share_of_update": model_share,
        "read_share_of_update": statistics.median(read / total for read, total in zip(read_seconds, continuing_seconds)),
        "one_behavior_update_all_seconds": one_behavior_seconds,
        "one_behavior_update_median_seconds": statistics.median(one_behavior_seconds),
        "store_bytes": size,
        "store_bytes_per_user": size / len(user_ids),
        "tensor_bytes_per_user": payload,
    }


def model_and_read_seconds(store: UserStateStore, user_ids: list[str], sequences: list[list[int]]) -> tuple[float, float]:
    """Time reading the states (`get_state`) and `embed_step` alone, over the batches the store runs.

    The same users in the same order as `update` with equal-length sequences, so the batches match.
    """
    pad = store.model.config.pad_token_id
    read_total, model_total = 0.0, 0.0
    for start in range(0, len(user_ids), store.batch_size):
        batch_ids = user_ids[start : start + store.batch_size]
        read_start = time.perf_counter()
        state = store.get_state(batch_ids)
        read_total += time.perf_counter() - read_start
        batch = pad_batch(sequences[start : start + store.batch_size], pad)
        model_total += timed(lambda: embed_step(store.model, *batch, state))
    return read_total, model_total


def store_size_bytes(path: Path) -> int:
    """Checkpoint the WAL into the main file and return the file's size."""
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def markdown_table(one_user: list[dict], store: dict) -> str:
    lines = [
        "| history | stateful (s) | re-embed chunkwise (s) | parallel (s) | re-embed / stateful | parallel / stateful |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in one_user:
        medians = entry["median_seconds"]
        parallel = f"{medians['parallel']:.4f}" if "parallel" in medians else "skipped"
        parallel_ratio = f"{entry['parallel_over_stateful']:.1f}x" if "parallel" in medians else "-"
        lines.append(
            f"| {entry['history']} | {medians['stateful']:.4f} | {medians['reembed_chunkwise']:.4f} | {parallel} | "
            f"{entry['reembed_over_stateful']:.1f}x | {parallel_ratio} |"
        )
    lines += [
        "",
        f"Store, {store['users']} users x {store['new_behaviors_per_user']} new behaviors, batch {store['batch_size']}: "
        f"{store['continuing_users_per_second']:.1f} continuing users/s, {store['new_users_per_second']:.1f} new users/s; "
        f"the model takes {100 * store['model_share_of_update']:.0f}% of an update and reading the states "
        f"{100 * store['read_share_of_update']:.0f}%; an update of one behavior per user (store work, almost no model "
        f"work) takes {store['one_behavior_update_median_seconds']:.2f} s; "
        f"{store['store_bytes_per_user'] / 1024:.1f} KiB per user on disk "
        f"({store['tensor_bytes_per_user'] / 1024:.1f} KiB of tensors).",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    available = available_memory_bytes()
    if args.max_parallel_gib is not None:
        max_parallel_bytes = int(args.max_parallel_gib * 2**30)
    elif available is not None:
        max_parallel_bytes = available // 2
    else:
        raise SystemExit("cannot read the available memory from /proc/meminfo; pass --max_parallel_gib.")

    config = UserModelConfig(
        vocab_size=101,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_heads=args.num_heads,
        dropout=0.0,
    )
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "model"
        UserModel(config).save_pretrained(checkpoint)
        with UserStateStore.open(Path(folder) / "users.db", checkpoint, TOKENIZER, batch_size=args.batch_size) as store:
            model = store.model
            with torch.no_grad():
                embed_step(model, *pad_batch([[5] * 600], config.pad_token_id))  # warm-up, untimed
            one_user = bench_one_user(model, args, max_parallel_bytes)
            store_results = bench_store(store, args)

    stateful = [entry["median_seconds"]["stateful"] for entry in one_user]
    at_4000 = [entry["reembed_over_stateful"] for entry in one_user if entry["history"] == 4000]
    results = {
        "command": " ".join(["python", "bench/bench_state.py", *sys.argv[1:]]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "sqlite": sqlite3.sqlite_version,
            "available_memory_gib": None if available is None else available / 2**30,
            "load_average_at_end": os.getloadavg(),
        },
        "model": {
            "hidden_size": args.hidden_size,
            "num_layers": args.num_layers,
            "num_heads": args.num_heads,
            "vocab_size": config.vocab_size,
            "chunk_size": config.chunk_size,
            "parameters": sum(parameter.numel() for parameter in model.parameters()),
        },
        "repeats": args.repeats,
        "one_user": one_user,
        "store": store_results,
        "checks": {
            "stateful_max_over_min": max(stateful) / min(stateful),
            "reembed_over_stateful_at_4000": at_4000[0] if at_4000 else None,
        },
    }
    write_json(args.output, results, args.overwrite, "state")
    logger.info("results of %s:\n%s", args.output, markdown_table(one_user, store_results))


if __name__ == "__main__":
    main()
