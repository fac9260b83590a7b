"""Measure what pre-training changes: stateful re-ID MRR of each trained RetNet against its own initial weights.

The demo's sanity check compares one training run with its starting weights. One run cannot tell a
training effect from the spread between seeds, so this script repeats it over settings and seeds.
Each run trains with `train_user_model.py` and the demo's flags (`MODEL` in `scripts/run_demo.py`)
with the given changes, saves the weights that the run started from, and evaluates both with
`eval_reid.py --strategies stateful`. The demo's data must be prepared first (`make demo` does it).

    python scripts/training_effect.py --setting demo: --setting w20:fep_window_size=20,batch_users=32 \\
        --seeds 42 7

writes `results/training_effect/<dataset>/summary.md` and `runs.json`. Finished runs are skipped on a rerun.
"""

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import run_demo

logger = logging.getLogger("training_effect")

# Settings that a --setting may change, with the type of their values. They are the keys of MODEL.
CHANGEABLE = {
    "objective": str,
    "batch_users": int,
    "max_steps": int,
    "learning_rate": float,
    "dropout": float,
    "fep_window_size": int,
    "gap": int,
    "max_input": int,
    "min_input": int,
}
OBJECTIVES = ("CLM", "FEP", "SUP", "FEP_SUP", "FEP_CLM", "FEP_CLM_SUP")
# Ranges [low, high) that a changed value must fall in, so that a bad value fails before any run trains.
VALID_RANGES = {
    "batch_users": (1, math.inf),
    "max_steps": (1, math.inf),
    "learning_rate": (1e-12, math.inf),
    "dropout": (0.0, 1.0),
    "fep_window_size": (1, math.inf),
    "gap": (0, math.inf),
    "max_input": (3, math.inf),
    "min_input": (3, math.inf),
}
# The demo's settings before any change; run_demo.train reads run_demo.MODEL, which each run resets from this.
DEMO_MODEL = dict(run_demo.MODEL)


def parse_setting(text: str) -> tuple[str, dict]:
    """Parse `NAME:key=value,key=value` into the name and the changes to the demo's settings."""
    name, separator, assignments = text.partition(":")
    if not separator or not name:
        raise argparse.ArgumentTypeError(
            f"--setting {text!r} is invalid; expected NAME:key=value,... (for example w20:fep_window_size=20)"
        )
    changes = {}
    for assignment in filter(None, assignments.split(",")):
        key, _, value = assignment.partition("=")
        if key not in CHANGEABLE:
            raise argparse.ArgumentTypeError(
                f"--setting {text!r} changes {key!r}; the settings that can change are {', '.join(CHANGEABLE)}"
            )
        try:
            changes[key] = CHANGEABLE[key](value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--setting {text!r}: {key}={value!r} is not a valid {CHANGEABLE[key].__name__}"
            )
        low, high = VALID_RANGES.get(key, (None, None))
        number = changes[key]
        if low is not None and not (low <= number < high):
            raise argparse.ArgumentTypeError(f"--setting {text!r}: {key}={value} must be in [{low}, {high}).")
    if changes.get("objective", "FEP_SUP") not in OBJECTIVES:
        raise argparse.ArgumentTypeError(f"--setting {text!r}: objective must be one of {', '.join(OBJECTIVES)}")
    return name, changes


def stateful_mrr(model_dir: Path, dataset: str, data_dir: Path, output: Path, log: Path) -> dict:
    """Evaluate stateful re-ID once and return the MRR at the last period and its mean over periods."""
    if not output.exists():
        settings = run_demo.DATASETS[dataset]
        run_demo.run(
            [
                sys.executable, "eval_reid.py",
                "--model_path", str(model_dir),
                "--dataset_dir", str(data_dir / "eval.tsv"),
                "--tokenizer_path", settings["tokenizer"],
                "--max_len", str(settings["max_len"]),
                "--period_len", str(settings["period_len"]),
                "--strategies", "stateful",
                "--batch_size", "16",
                "--output", str(output),
            ],
            log,
        )
    periods = json.loads(output.read_text(encoding="utf-8"))["results"]["stateful"]
    return {"last": periods[-1]["mrr"], "mean": run_demo.mean_mrr(periods)}


def measure(name: str, changes: dict, seed: int, dataset: str, out_dir: Path, models_dir: Path) -> dict:
    """Train one setting with one seed, and evaluate it and its initial weights."""
    run_name = f"{name}-seed{seed}"
    model_dir = models_dir / run_name
    untrained_dir = models_dir / f"{run_name}-initial"
    logs = out_dir / "logs"
    data_dir = run_demo.REPO_ROOT / run_demo.DATASETS[dataset]["data_dir"]

    check_same_setting(out_dir / f"{run_name}-setting.json", run_name, changes)
    run_demo.MODEL.clear()
    run_demo.MODEL.update(DEMO_MODEL)
    run_demo.MODEL.update({key: value for key, value in changes.items() if key != "objective"}, seed=seed)
    objective = changes.get("objective", "FEP_SUP")
    run_demo.train(run_name, "retnet", objective, dataset, data_dir, model_dir, logs)
    run_demo.save_untrained(model_dir, untrained_dir, dataset)

    trained = stateful_mrr(model_dir, dataset, data_dir, out_dir / f"{run_name}.json", logs / f"{run_name}_reid.log")
    initial = stateful_mrr(
        untrained_dir, dataset, data_dir, out_dir / f"{run_name}-initial.json", logs / f"{run_name}-initial_reid.log"
    )
    return {"setting": name, "changes": changes, "objective": objective, "seed": seed, "initial": initial, "trained": trained}


def check_same_setting(record: Path, run_name: str, changes: dict) -> None:
    """Record a run's changes, or stop if an earlier run of the same name had other changes.

    Finished runs are skipped by name, so a name reused with other changes would report the old run.
    """
    if record.exists():
        earlier = json.loads(record.read_text(encoding="utf-8"))
        if earlier != changes:
            raise SystemExit(
                f"run {run_name!r} was trained with changes {earlier}, not {changes}. Give this setting another "
                f"name, or delete {record} and the run's model folder to train it again."
            )
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(changes) + "\n", encoding="utf-8")


def write_summary(dataset: str, runs: list[dict], out_dir: Path) -> Path:
    lines = [
        f"# Training effect on {dataset}",
        "",
        "Stateful re-identification MRR of each trained RetNet and of the weights its training started from. "
        "Settings not listed are the demo's (`MODEL` in `scripts/run_demo.py`).",
        "",
        "| setting | changes | seed | initial (last) | trained (last) | change (last) | initial (mean) | trained (mean) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        changes = ", ".join(f"{key}={value}" for key, value in run["changes"].items()) or "none"
        initial, trained = run["initial"], run["trained"]
        lines.append(
            f"| {run['setting']} | {changes} | {run['seed']} | {initial['last']:.3f} | {trained['last']:.3f} | "
            f"{trained['last'] - initial['last']:+.3f} | {initial['mean']:.3f} | {trained['mean']:.3f} |"
        )
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "runs.json").write_text(json.dumps(runs, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(run_demo.DATASETS), default="dialog", help="prepared demo dataset")
    parser.add_argument(
        "--setting", dest="settings", action="append", type=parse_setting, required=True,
        help="NAME:key=value,... changes to the demo's settings (NAME: alone keeps them); repeat for more settings. "
        f"Keys: {', '.join(CHANGEABLE)}",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[42], help="training seeds, each a separate run")
    parser.add_argument(
        "--output-dir", help="folder for the results (default: results/training_effect, with --quick results/training_effect-quick)"
    )
    parser.add_argument(
        "--artifacts-dir",
        help="folder for the trained models (default: artifacts_training_effect, with --quick artifacts_training_effect-quick)",
    )
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sizes and data")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.settings]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(f"--setting names must differ, but {', '.join(repeated)} is given more than once.")
    suffix = "-quick" if args.quick else ""
    args.output_dir = args.output_dir or f"results/training_effect{suffix}"
    args.artifacts_dir = args.artifacts_dir or f"artifacts_training_effect{suffix}"
    if args.quick:
        run_demo.DATASETS.update(run_demo.QUICK_DATASETS)
        DEMO_MODEL.update(run_demo.QUICK_MODEL)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    data_file = run_demo.REPO_ROOT / run_demo.DATASETS[args.data]["data_dir"] / "eval.tsv"
    if not data_file.is_file():
        prepare = " ".join(run_demo.DATASETS[args.data]["prepare"])
        raise SystemExit(f"{data_file} is missing; prepare the data first with `python {prepare}`.")
    out_dir = run_demo.REPO_ROOT / args.output_dir / args.data
    models_dir = run_demo.REPO_ROOT / args.artifacts_dir / args.data
    out_dir.mkdir(parents=True, exist_ok=True)

    runs = [
        measure(name, changes, seed, args.data, out_dir, models_dir)
        for name, changes in args.settings
        for seed in args.seeds
    ]
    path = write_summary(args.data, runs, out_dir)
    print(path.read_text(encoding="utf-8"))
    logger.info("Wrote %s", path)


if __name__ == "__main__":
    main()
