"""FEP target construction: positions/s of `build_fep_targets` for short and long windows.

Each call builds the multi-hot targets `(batch, seq_len, num_behaviors)` and loss mask of one batch
(default 16 x 512 positions, 686 behaviors) from a stream that runs W behaviors past the input.
`build_fep_targets` and a plain unfold + scatter construction (the reference) are called alternately,
and positions/s = batch x seq_len / median call time. Before timing, both are checked to give
identical targets and masks on a grid of cases (window sizes from 1 to longer than the sequence,
padding, [UNK], out-of-vocabulary ids, context length and loss frequency).

    .venv/bin/python bench/bench_fep.py            # under a minute
    .venv/bin/python bench/bench_fep.py --quick    # smoke run
"""

import argparse
import logging
import sys
from pathlib import Path

# The benchmark helpers sit beside this file; the repository root makes `use` importable from a checkout.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common import (  # noqa: E402
    Timer,
    add_common_arguments,
    configure_torch,
    load_average,
    median,
    memory_report,
    resolve_output,
    setup_logging,
    target,
    write_results,
)
from use.objectives import behavior_mask, build_fep_targets  # noqa: E402

logger = logging.getLogger("bench.fep")

FIRST_BEHAVIOR_ID = 5
UNK_ID, PAD_ID = 0, 3
MIN_POSITIONS_PER_S = 10e6


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(parser, "fep")
    parser.add_argument("--windows", type=int, nargs="+", default=[5, 100], help="FEP window sizes W (default: 5 100).")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch (default: 16).")
    parser.add_argument("--seq-len", type=int, default=512, help="positions per sequence (default: 512).")
    parser.add_argument("--num-behaviors", type=int, default=686, help="behavior vocabulary size (default: 686).")
    parser.add_argument(
        "--repeats", type=int, default=200, help="timed calls per implementation and window (default: 200)."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len, args.repeats = 4, 64, 5
    args.output = resolve_output(args.output, "fep", args.overwrite)
    return args


def reference_fep_targets(
    stream_ids, content, window, num_positions, first_behavior_id, num_behaviors, context_length=0, frequency=1
):
    """Build targets and mask by scattering every window's classes into a zeroed bool tensor, one column spare."""
    batch, stream_len = stream_ids.shape
    needed = num_positions + window
    if stream_len < needed:
        stream_ids = F.pad(stream_ids, (0, needed - stream_len), value=0)
        content = F.pad(content, (0, needed - stream_len), value=False)
    classes = stream_ids - first_behavior_id
    is_class = content & (classes >= 0) & (classes < num_behaviors)
    classes = torch.where(is_class, classes, torch.full_like(classes, num_behaviors))
    class_windows = classes[:, 1:needed].unfold(1, window, 1)  # (batch, num_positions, window)
    content_windows = content[:, 1:needed].unfold(1, window, 1)
    targets = torch.zeros(batch, num_positions, num_behaviors + 1, dtype=torch.bool, device=stream_ids.device)
    targets.scatter_(2, class_windows, True)
    positions = torch.arange(num_positions, device=stream_ids.device)
    keep = (positions >= context_length) & ((positions + 1) % frequency == 0)
    return targets[..., :num_behaviors], content_windows.all(dim=-1) & keep[None, :]


def make_stream(batch: int, length: int, num_behaviors: int, device: str, seed: int, special: bool) -> tuple:
    """Build behavior ids after a [CLS] and their content mask, with `special` also [UNK], unknown ids and padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(FIRST_BEHAVIOR_ID, FIRST_BEHAVIOR_ID + num_behaviors, (batch, length), generator=generator)
    ids[:, 0] = 1
    attention_mask = torch.ones_like(ids)
    if special:
        ids[0, length // 3] = UNK_ID
        ids[-1, length // 2] = FIRST_BEHAVIOR_ID + num_behaviors + 7
        padded_from = length - length // 4
        ids[-1, padded_from:] = PAD_ID
        attention_mask[-1, padded_from:] = 0
    content = behavior_mask(ids, attention_mask, FIRST_BEHAVIOR_ID, UNK_ID)
    return ids.to(device), content.to(device)


def check_against_reference(args: argparse.Namespace) -> list[dict]:
    """Compare `build_fep_targets` with the reference on a grid of cases; return the mismatching cases."""
    windows = sorted({1, 2, 5, 9, 10, 63, 64, 65, 100, 129, args.seq_len + 7, *args.windows})
    mismatches = []
    for window in windows:
        for num_positions, stream_extra in ((args.seq_len, window), (args.seq_len, 0), (args.seq_len - 3, window + 5)):
            ids, content = make_stream(
                3, num_positions + stream_extra, args.num_behaviors, args.device, window, special=True
            )
            for context_length, frequency in ((0, 1), (4, 3)):
                arguments = (
                    ids,
                    content,
                    window,
                    num_positions,
                    FIRST_BEHAVIOR_ID,
                    args.num_behaviors,
                    context_length,
                    frequency,
                )
                targets, mask = build_fep_targets(*arguments)
                expected_targets, expected_mask = reference_fep_targets(*arguments)
                if not (torch.equal(targets, expected_targets) and torch.equal(mask, expected_mask)):
                    mismatches.append(
                        {
                            "window": window,
                            "num_positions": num_positions,
                            "stream_extra": stream_extra,
                            "context_length": context_length,
                            "frequency": frequency,
                        }
                    )
    return mismatches


def time_window(args: argparse.Namespace, window: int) -> list[dict]:
    """Time both implementations, called alternately, and return their median wall and CPU times for one window."""
    ids, content = make_stream(
        args.batch_size, args.seq_len + window, args.num_behaviors, args.device, args.seed, special=False
    )
    arguments = (ids, content, window, args.seq_len, FIRST_BEHAVIOR_ID, args.num_behaviors)
    implementations = {"build_fep_targets": build_fep_targets, "reference (unfold + scatter)": reference_fep_targets}
    times = {name: {"wall": [], "cpu": []} for name in implementations}
    for _ in range(3):
        for function in implementations.values():
            function(*arguments)
    for _ in range(args.repeats):
        for name, function in implementations.items():
            with Timer(args.device) as timer:
                function(*arguments)
            times[name]["wall"].append(timer.wall_s)
            times[name]["cpu"].append(timer.cpu_s)

    positions = args.batch_size * args.seq_len
    return [
        {
            "name": f"{name}, W={window}",
            "implementation": name,
            "window": window,
            "positions": positions,
            "median_call_ms": round(1e3 * median(measured["wall"]), 4),
            "positions_per_s": round(positions / median(measured["wall"]), 1),
            "positions_per_cpu_s": round(positions / max(median(measured["cpu"]), 1e-9), 1),
        }
        for name, measured in times.items()
    ]


def main(argv=None) -> dict:
    setup_logging()
    args = parse_args(argv)
    configure_torch(args.threads, args.device)
    load_before = load_average()

    mismatches = check_against_reference(args)
    if mismatches:
        logger.error(
            "build_fep_targets differs from the reference in %d cases, first: %s", len(mismatches), mismatches[0]
        )
    results = []
    for window in args.windows:
        results.extend(time_window(args, window))
        logger.info("W=%d timed", window)

    targets = [
        target("build_fep_targets matches the reference on every checked case", float(not mismatches), 1.0, "bool")
    ]
    for result in results:
        if result["implementation"] == "build_fep_targets" and result["window"] == 100:
            targets.append(
                target("positions/s at W=100", result["positions_per_s"], MIN_POSITIONS_PER_S, "positions/s")
            )
    settings = {
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "num_behaviors": args.num_behaviors,
        "repeats": args.repeats,
        "matches_reference": not mismatches,
        "mismatches": mismatches,
        **memory_report(args.device),
    }
    return write_results(args.output, "fep", args, settings, results, targets, load_before)


if __name__ == "__main__":
    main()
