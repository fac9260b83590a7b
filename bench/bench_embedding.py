"""Embedding throughput and peak memory: RetNet parallel vs chunkwise vs GPT-2 windows, and stateful updates.

Part 1 embeds the same users (default 32 x 4000 behaviors) with `embed_sequences` under each
configuration, each in its own worker process: RetNet in the parallel form, RetNet chunkwise at each
chunk size, and GPT-2 over windows of 500 behaviors. The workers embed one batch of users each in
turn, so the whole run alternates between configurations. Tokens/s is behaviors over the total
time, so the [CLS] of each sequence or window is not counted.

Part 2 compares, in one worker with one model, the stateful path (each user's history cut into
periods of 250 behaviors, each period run with `embed_step` from the previous period's state) with
embedding the same periods as independent stateless segments.

    .venv/bin/python bench/bench_embedding.py            # about 4 minutes on 2 CPU cores
    .venv/bin/python bench/bench_embedding.py --quick    # smoke run
"""

import argparse
import logging
import sys
from pathlib import Path

# The benchmark helpers sit beside this file; the repository root makes `use` importable from a checkout.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import torch  # noqa: E402

from common import (  # noqa: E402
    DTYPES,
    Timer,
    add_common_arguments,
    load_average,
    median,
    resolve_output,
    setup_logging,
    start_workers,
    target,
    write_results,
)
from use import UserModel, UserModelConfig  # noqa: E402
from use.embedding import embed_sequences, embed_step, pad_batch  # noqa: E402

logger = logging.getLogger("bench.embedding")

FIRST_BEHAVIOR_ID = 5
MAX_RSS_MB = 1536.0
MIN_SPEEDUP_OVER_PARALLEL = 3.0
MIN_STATEFUL_RATIO = 0.8


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "embedding")

    parser.add_argument("--users", type=int, default=32, help="users to embed (default: 32).")
    parser.add_argument("--behaviors", type=int, default=4000, help="behaviors per user (default: 4000).")
    parser.add_argument("--batch-size", type=int, default=8, help="users per embedding batch in part 1 (default: 8).")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (default: 256).")
    parser.add_argument("--layers", type=int, default=4, help="layers (default: 4).")
    parser.add_argument("--heads", type=int, default=4, help="heads (default: 4).")
    parser.add_argument("--num-behaviors", type=int, default=686, help="behavior vocabulary size (default: 686).")

    parser.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="+",
        default=[64, 128, 256, 512],
        help="RetNet chunk sizes (default: 64 128 256 512).",
    )
    parser.add_argument("--gpt2-window", type=int, default=500, help="GPT-2 window in behaviors (default: 500).")

    parser.add_argument(
        "--period", type=int, default=250, help="behaviors per stateful update in part 2 (default: 250)."
    )
    parser.add_argument(
        "--stateful-chunk-size",
        type=int,
        default=512,
        help="RetNet chunk size of the part-2 model (default: 512, the config default). A period of at most this "
        "many behaviors runs as one chunk.",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="passes over all periods per path in part 2 (default: 3)."
    )
    args = parser.parse_args(argv)

    if args.quick:
        args.users, args.behaviors, args.batch_size = 4, 300, 2
        args.hidden, args.layers, args.heads, args.num_behaviors = 32, 2, 4, 40
        args.chunk_sizes, args.gpt2_window, args.period, args.stateful_chunk_size, args.rounds = [32], 100, 50, 64, 1
    if args.users % args.batch_size:
        raise ValueError(
            f"--users {args.users} must be a multiple of --batch-size {args.batch_size}, so every batch is alike."
        )
    if args.behaviors % args.period:
        raise ValueError(f"--behaviors {args.behaviors} must be a multiple of --period {args.period}.")
    args.output = resolve_output(args.output, "embedding", args.overwrite)
    return args


def base_spec(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "seed": args.seed,
        "users": args.users,
        "behaviors": args.behaviors,
        "batch_size": args.batch_size,
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_heads": args.heads,
        "num_behaviors": args.num_behaviors,
        "period": args.period,
    }


def configuration_specs(args: argparse.Namespace) -> list[dict]:
    """Return the part-1 configurations, then the part-2 stateful worker."""
    base = base_spec(args)
    specs = [
        {**base, "name": "retnet parallel", "backbone_type": "retnet", "forward_mode": "parallel", "chunk_size": 512}
    ]
    for chunk_size in args.chunk_sizes:
        specs.append(
            {
                **base,
                "name": f"retnet chunkwise-{chunk_size}",
                "backbone_type": "retnet",
                "forward_mode": "chunkwise",
                "chunk_size": chunk_size,
            }
        )
    specs.append(
        {
            **base,
            "name": f"gpt2 windows-{args.gpt2_window}",
            "backbone_type": "gpt2",
            "forward_mode": "parallel",
            "chunk_size": 512,
            "window": args.gpt2_window,
        }
    )
    specs.append(
        {
            **base,
            "name": "retnet stateful",
            "backbone_type": "retnet",
            "forward_mode": "auto",
            "chunk_size": args.stateful_chunk_size,
            "stateful": True,
        }
    )
    return specs


def make_model(spec: dict) -> UserModel:
    """Build a randomly initialised model. Every RetNet configuration of one run gets the same weights."""
    torch.manual_seed(spec["seed"])
    config = UserModelConfig(
        backbone_type=spec["backbone_type"],
        objective="FEP_SUP",
        vocab_size=FIRST_BEHAVIOR_ID + spec["num_behaviors"],
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_heads=spec["num_heads"],
        forward_mode=spec["forward_mode"],
        chunk_size=spec["chunk_size"],
    )
    return UserModel(config).to(device=spec["device"], dtype=DTYPES[spec["dtype"]]).eval()


def make_users(spec: dict) -> list[list[int]]:
    generator = torch.Generator().manual_seed(spec["seed"] + 1)
    ids = torch.randint(
        FIRST_BEHAVIOR_ID,
        FIRST_BEHAVIOR_ID + spec["num_behaviors"],
        (spec["users"], spec["behaviors"]),
        generator=generator,
    )
    return ids.tolist()


def setup_embedding(spec: dict):
    """Build one configuration's model and users, warm up, and return its measurement function."""
    model = make_model(spec)
    users = make_users(spec)
    if spec.get("stateful"):
        return _setup_stateful(spec, model, users)

    window = spec.get("window")
    batch_size = spec["batch_size"]
    warmup_length = min(spec["behaviors"], 2 * spec["chunk_size"], 600)
    embed_sequences(model, [users[0][:warmup_length]], batch_size=1, window=window, progress=False)

    def measure(command: str) -> dict:
        batch_index = int(command.split()[1])
        rows = users[batch_index * batch_size : (batch_index + 1) * batch_size]
        with Timer(spec["device"]) as timer:
            embeddings = embed_sequences(model, rows, batch_size=batch_size, window=window, progress=False)
        return {
            "wall_s": timer.wall_s,
            "cpu_s": timer.cpu_s,
            "tokens": sum(len(row) for row in rows),
            "embeddings": embeddings.float().tolist(),
        }

    return measure


def _setup_stateful(spec: dict, model: UserModel, users: list[list[int]]):
    """Build the part-2 measurement: the same periods embedded with the state carried, or each from scratch."""
    period = spec["period"]
    pad_id = model.config.pad_token_id
    periods = [
        pad_batch([user[start : start + period] for user in users], pad_id)
        for start in range(0, spec["behaviors"], period)
    ]
    embed_step(model, *pad_batch([user[:period] for user in users[:1]], pad_id))

    def measure(command: str) -> dict:
        carried = command.split()[1] == "stateful"
        state = None
        with Timer(spec["device"]) as timer:
            for input_ids, attention_mask in periods:
                state = embed_step(model, input_ids, attention_mask, state if carried else None)
        result = {"wall_s": timer.wall_s, "cpu_s": timer.cpu_s, "tokens": spec["users"] * spec["behaviors"]}
        if carried:
            result["embeddings"] = state.mean().float().cpu().tolist()
        return result

    return measure


def summarise(name: str, measurements: list[dict], ready: dict, memory: dict) -> dict:
    wall = sum(item["wall_s"] for item in measurements)
    cpu = sum(item["cpu_s"] for item in measurements)
    tokens = sum(item["tokens"] for item in measurements)
    return {
        "name": name,
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "tokens_per_cpu_s": round(tokens / cpu, 1),
        "median_batch_wall_s": round(median([item["wall_s"] for item in measurements]), 4),
        "setup_peak_rss_mb": ready["setup_peak_rss_mb"],
        **memory,
    }


def max_abs_difference(first: list[list[float]], second: list[list[float]]) -> float:
    return float((torch.tensor(first) - torch.tensor(second)).abs().max())


def run_part_one(workers, args) -> tuple[dict, dict]:
    measurements = {worker.name: [] for worker in workers}
    for batch_index in range(args.users // args.batch_size):
        for worker in workers:
            measurements[worker.name].append(worker.measure(f"measure {batch_index}"))
        logger.info("batch %d/%d done", batch_index + 1, args.users // args.batch_size)
    embeddings = {
        name: [row for item in items for row in item.pop("embeddings")] for name, items in measurements.items()
    }
    return measurements, embeddings


def run_part_two(worker, args) -> tuple[dict, list[list[float]]]:
    measurements = {"stateful": [], "stateless": []}
    for round_index in range(args.rounds):
        # Alternate which path goes first, so a drift in machine load does not favour one of them.
        order = ("stateful", "stateless") if round_index % 2 == 0 else ("stateless", "stateful")
        for path in order:
            measurements[path].append(worker.measure(f"measure {path}"))
        logger.info("stateful round %d/%d done", round_index + 1, args.rounds)
    final_embeddings = measurements["stateful"][-1]["embeddings"]
    for item in measurements["stateful"]:
        item.pop("embeddings")
    return measurements, final_embeddings


def embedding_targets(results: dict[str, dict], args: argparse.Namespace) -> list[dict]:
    targets = []
    parallel = results["retnet parallel"]
    for chunk_size in args.chunk_sizes:
        chunkwise = results[f"retnet chunkwise-{chunk_size}"]
        targets.append(
            target(
                f"chunkwise-{chunk_size} peak RSS (MiB)",
                chunkwise["peak_rss_mb"],
                MAX_RSS_MB,
                "MiB",
                higher_is_better=False,
            )
        )
        targets.append(
            target(
                f"chunkwise-{chunk_size} tokens/s over parallel",
                chunkwise["tokens_per_s"] / parallel["tokens_per_s"],
                MIN_SPEEDUP_OVER_PARALLEL,
            )
        )
    stateful, stateless = results["retnet stateful (state carried)"], results["retnet stateless periods"]
    targets.append(
        target(
            f"stateful {args.period}-behavior periods tokens/s over stateless periods",
            stateful["tokens_per_s"] / stateless["tokens_per_s"],
            MIN_STATEFUL_RATIO,
        )
    )
    return targets


def main(argv=None) -> dict:
    setup_logging()
    args = parse_args(argv)
    load_before = load_average()
    specs = configuration_specs(args)
    workers = start_workers(setup_embedding, specs)
    try:
        part_one, embeddings = run_part_one(workers[:-1], args)
        part_two, stateful_embeddings = run_part_two(workers[-1], args)
        memories = {worker.name: worker.close() for worker in workers}
    finally:
        for worker in workers:
            worker.kill()

    ready = {worker.name: worker.ready for worker in workers}
    results = {name: summarise(name, items, ready[name], memories[name]) for name, items in part_one.items()}
    for name, items in part_one.items():
        if name.startswith("retnet"):
            results[name]["max_abs_diff_vs_parallel"] = max_abs_difference(
                embeddings[name], embeddings["retnet parallel"]
            )
    stateful_name = workers[-1].name
    results["retnet stateful (state carried)"] = summarise(
        "retnet stateful (state carried)", part_two["stateful"], ready[stateful_name], memories[stateful_name]
    )
    results["retnet stateful (state carried)"]["max_abs_diff_vs_parallel"] = max_abs_difference(
        stateful_embeddings, embeddings["retnet parallel"]
    )
    results["retnet stateless periods"] = summarise(
        "retnet stateless periods", part_two["stateless"], ready[stateful_name], memories[stateful_name]
    )

    settings = {
        "users": args.users,
        "behaviors": args.behaviors,
        "batch_size": args.batch_size,
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_heads": args.heads,
        "num_behaviors": args.num_behaviors,
        "gpt2_window": args.gpt2_window,
        "period": args.period,
        "stateful_batch": f"all {args.users} users per embed_step",
        "stateful_chunk_size": args.stateful_chunk_size,
        "stateful_rounds": args.rounds,
        "dtype": args.dtype,
        "note": "the two part-2 rows share one worker process, so they report the same peak RSS",
    }
    return write_results(
        args.output, "embedding", args, settings, list(results.values()), embedding_targets(results, args), load_before
    )


if __name__ == "__main__":
    main()
