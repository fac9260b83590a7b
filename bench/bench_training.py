"""Training throughput: tokens/s of one optimiser step (forward, backward, AdamW) for RetNet and GPT-2.

Every backbone/objective/retention-form combination runs in its own worker process; the workers take
one step each in turn, for `--steps` rounds after `--warmup-steps`, and the median step time gives
tokens/s = batch x seq_len / median. A FEP_SUP batch contains two segments of each user in rows 2i
and 2i+1. Its FEP targets come from `build_fep_targets` on a stream that runs W behaviors past the
input, as the collator builds them. Building them is not timed here (bench_fep.py times it).

    .venv/bin/python bench/bench_training.py            # about 4 minutes on 2 CPU cores
    .venv/bin/python bench/bench_training.py --quick    # smoke run
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
from use.objectives import behavior_mask, build_fep_targets  # noqa: E402

logger = logging.getLogger("bench.training")

FIRST_BEHAVIOR_ID = 5
REFERENCE_SIZE = (256, 4, 4)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "training")

    parser.add_argument(
        "--hidden", type=int, default=REFERENCE_SIZE[0], help="hidden size of the demo-size model (default: 256)."
    )
    parser.add_argument(
        "--layers", type=int, default=REFERENCE_SIZE[1], help="layers of the demo-size model (default: 4)."
    )
    parser.add_argument(
        "--heads", type=int, default=REFERENCE_SIZE[2], help="heads of the demo-size model (default: 4)."
    )

    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step, an even number (default: 16).")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence, [CLS] included (default: 512).")
    parser.add_argument("--num-behaviors", type=int, default=686, help="behavior vocabulary size (default: 686).")
    parser.add_argument("--fep-window", type=int, default=5, help="FEP window W in behaviors (default: 5).")

    parser.add_argument(
        "--chunk-sizes",
        type=int,
        nargs="*",
        default=[64, 128, 256],
        help="RetNet chunk sizes to measure chunkwise training with, besides the parallel form (default: 64 128 256).",
    )
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed steps per configuration (default: 1).")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (default: 5).")
    args = parser.parse_args(argv)

    if args.quick:
        args.hidden, args.layers, args.heads = 32, 2, 4
        args.batch_size, args.seq_len, args.num_behaviors = 4, 64, 40
        args.chunk_sizes = [16]
        args.warmup_steps, args.steps = 1, 2
    if args.batch_size < 2 or args.batch_size % 2:
        raise ValueError(f"--batch-size {args.batch_size} is invalid; FEP_SUP needs an even batch of user pairs.")
    if args.steps < 1:
        raise ValueError(f"--steps {args.steps} must be at least 1.")
    args.output = resolve_output(args.output, "training", args.overwrite)
    return args


def model_sizes(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    """Return the demo size given on the command line, plus the 256/4/4 reference size when it differs."""
    sizes = [(args.hidden, args.layers, args.heads)]
    if not args.quick and sizes[0] != REFERENCE_SIZE:
        sizes.append(REFERENCE_SIZE)
    return sizes


def configuration_specs(args: argparse.Namespace) -> list[dict]:
    """Return one spec per measured configuration: each size x {GPT-2, RetNet} x {CLM, FEP_SUP} x retention forms."""
    base = {
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "num_behaviors": args.num_behaviors,
        "fep_window": args.fep_window,
        "warmup_steps": args.warmup_steps,
    }
    specs = []
    for hidden, layers, heads in model_sizes(args):
        size = {"hidden_size": hidden, "num_hidden_layers": layers, "num_heads": heads}
        suffix = f"h{hidden}-l{layers}-a{heads}"
        for objective in ("CLM", "FEP_SUP"):
            specs.append(
                {
                    **base,
                    **size,
                    "name": f"gpt2 {objective} {suffix}",
                    "backbone_type": "gpt2",
                    "objective": objective,
                    "forward_mode": "parallel",
                    "chunk_size": args.seq_len,
                }
            )
            specs.append(
                {
                    **base,
                    **size,
                    "name": f"retnet {objective} parallel {suffix}",
                    "backbone_type": "retnet",
                    "objective": objective,
                    "forward_mode": "parallel",
                    "chunk_size": args.seq_len,
                }
            )
        for chunk_size in args.chunk_sizes:
            specs.append(
                {
                    **base,
                    **size,
                    "name": f"retnet FEP_SUP chunkwise-{chunk_size} {suffix}",
                    "backbone_type": "retnet",
                    "objective": "FEP_SUP",
                    "forward_mode": "chunkwise",
                    "chunk_size": chunk_size,
                }
            )
    return specs


def make_batch(spec: dict) -> dict:
    """Build a batch of user pairs, where rows 2i and 2i+1 are consecutive segments of user i after a [CLS].

    Returns input_ids and attention_mask `(batch, seq_len)`, and FEP targets `(batch, seq_len,
    num_behaviors)` and mask `(batch, seq_len)` from a stream that runs W behaviors past each input.
    """
    generator = torch.Generator().manual_seed(spec["seed"])
    batch, seq_len, window = spec["batch_size"], spec["seq_len"], spec["fep_window"]
    segment = seq_len - 1 + window  # behaviors per segment: the input's and the W after it
    users = batch // 2
    behaviors = torch.randint(
        FIRST_BEHAVIOR_ID, FIRST_BEHAVIOR_ID + spec["num_behaviors"], (users, 2 * segment), generator=generator
    )
    segments = behaviors.view(users, 2, segment).reshape(batch, segment)  # rows 2i, 2i+1: user i's two segments
    stream = torch.cat([torch.ones(batch, 1, dtype=torch.long), segments], dim=1)  # [CLS] = 1
    content = behavior_mask(stream, None, FIRST_BEHAVIOR_ID, unk_token_id=0)
    fep_targets, fep_mask = build_fep_targets(
        stream, content, window, seq_len, FIRST_BEHAVIOR_ID, spec["num_behaviors"]
    )
    input_ids = stream[:, :seq_len]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "fep_targets": fep_targets,
        "fep_mask": fep_mask,
    }


def setup_training(spec: dict):
    """Build the model, optimiser and batch of one configuration, run the warm-up, and return its step timer."""
    torch.manual_seed(spec["seed"])
    device, dtype = spec["device"], DTYPES[spec["dtype"]]
    config = UserModelConfig(
        backbone_type=spec["backbone_type"],
        objective=spec["objective"],
        vocab_size=FIRST_BEHAVIOR_ID + spec["num_behaviors"],
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_heads=spec["num_heads"],
        max_position_embeddings=max(1024, spec["seq_len"]),
        forward_mode=spec["forward_mode"],
        chunk_size=spec["chunk_size"],
        fep_window_size=spec["fep_window"],
    )
    model = UserModel(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == torch.float16)
    batch = {key: value.to(device) for key, value in make_batch(spec).items()}
    if "FEP" not in spec["objective"]:
        batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    tokens = batch["input_ids"].numel()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    for _ in range(spec["warmup_steps"]):
        step()

    def measure(command: str) -> dict:
        with Timer(device) as timer:
            loss = step()
        return {"wall_s": timer.wall_s, "cpu_s": timer.cpu_s, "tokens": tokens, "loss": loss}

    return measure


def summarise(spec: dict, steps: list[dict], ready: dict, memory: dict) -> dict:
    wall = [step["wall_s"] for step in steps]
    cpu = [step["cpu_s"] for step in steps]
    tokens = steps[0]["tokens"]
    return {
        "name": spec["name"],
        "backbone_type": spec["backbone_type"],
        "objective": spec["objective"],
        "forward_mode": spec["forward_mode"],
        "chunk_size": spec["chunk_size"] if spec["forward_mode"] == "chunkwise" else None,
        "hidden_size": spec["hidden_size"],
        "num_hidden_layers": spec["num_hidden_layers"],
        "num_heads": spec["num_heads"],
        "batch_size": spec["batch_size"],
        "seq_len": spec["seq_len"],
        "step_wall_s": [round(value, 4) for value in wall],
        "median_step_s": round(median(wall), 4),
        "tokens_per_s": round(tokens / median(wall), 1),
        "tokens_per_cpu_s": round(tokens / median(cpu), 1),
        "final_loss": round(steps[-1]["loss"], 4),
        "setup_peak_rss_mb": ready["setup_peak_rss_mb"],
        **memory,
    }


def training_targets(results: list[dict], args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Compare RetNet FEP_SUP (its fastest retention form, and the parallel form) with GPT-2 CLM, per model size.

    Also returns, per size, which retention form trained fastest and its speed-up over the parallel form.
    """
    targets, choices = [], {}
    for hidden, layers, heads in model_sizes(args):
        same_size = [
            r for r in results if (r["hidden_size"], r["num_hidden_layers"], r["num_heads"]) == (hidden, layers, heads)
        ]
        gpt2_clm = next(r for r in same_size if r["backbone_type"] == "gpt2" and r["objective"] == "CLM")
        retnet_fep_sup = [r for r in same_size if r["backbone_type"] == "retnet" and r["objective"] == "FEP_SUP"]
        parallel = next(r for r in retnet_fep_sup if r["forward_mode"] == "parallel")
        fastest = max(retnet_fep_sup, key=lambda r: r["tokens_per_s"])
        suffix = f"h{hidden}-l{layers}-a{heads}, {args.batch_size}x{args.seq_len}"
        choices[suffix] = {
            "fastest_retnet_form": fastest["name"],
            "fastest_over_parallel": round(fastest["tokens_per_s"] / parallel["tokens_per_s"], 3),
        }
        targets.append(
            target(
                f"RetNet FEP_SUP ({fastest['forward_mode']}) tokens/s over GPT-2 CLM, {suffix}",
                fastest["tokens_per_s"] / gpt2_clm["tokens_per_s"],
                1.0,
            )
        )
        targets.append(
            target(
                f"RetNet FEP_SUP (parallel) tokens/s over GPT-2 CLM, {suffix}",
                parallel["tokens_per_s"] / gpt2_clm["tokens_per_s"],
                1.0,
            )
        )
    return targets, choices


def main(argv=None) -> dict:
    setup_logging()
    args = parse_args(argv)
    load_before = load_average()
    specs = configuration_specs(args)
    workers = start_workers(setup_training, specs)
    try:
        steps = {worker.name: [] for worker in workers}
        for round_index in range(args.steps):
            for worker in workers:
                steps[worker.name].append(worker.measure())
            logger.info("round %d/%d done", round_index + 1, args.steps)
        memories = {worker.name: worker.close() for worker in workers}
    finally:
        for worker in workers:
            worker.kill()

    results = [
        summarise(spec, steps[spec["name"]], worker.ready, memories[spec["name"]])
        for spec, worker in zip(specs, workers)
    ]
    targets, choices = training_targets(results, args)
    settings = {
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "num_behaviors": args.num_behaviors,
        "fep_window": args.fep_window,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "dtype": args.dtype,
        "optimizer": "AdamW(lr=1e-4)",
        "dropout": 0.1,
        "retention_form_choice": choices,
    }
    return write_results(args.output, "training", args, settings, results, targets, load_before)


if __name__ == "__main__":
    main()
