"""Run the USE demo end to end on real public data: prepare, pre-train, evaluate, summarise.

`make demo` (or `make demo DATA=dna`) calls this script. It runs the project's own command-line
scripts in subprocesses, exactly as a user would:

1. `scripts/prepare_data.py` turns the public source into `data/<dataset>/{train.csv,eval.tsv}`.
2. `train_user_model.py` pre-trains, with one size and budget for all of them:
   USE (RetNet, FEP_SUP), USE-CLM (RetNet, CLM) and Trans-CLM (GPT-2, CLM).
   An untrained RetNet of the same size is saved as a sanity baseline.
3. `eval_reid.py` and `eval_classification.py` evaluate each model and the tf-idf baseline.
4. The numbers go to `results/demo/<dataset>/summary.md`, beside each run's JSON and PNG.

Every size and step count lives in `DATASETS` and `MODEL` below. Finished steps are skipped on a
rerun (training resumes from its last checkpoint), so an interrupted demo continues where it stopped.
"""

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from transformers import set_seed

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from use import UserModel, UserModelConfig  # noqa: E402  (the path above makes the package importable)

logger = logging.getLogger("run_demo")

# Per dataset: the command that prepares it, the tokenizer, the evaluation lengths, and the model
# settings that differ from MODEL.
DATASETS = {
    "dialog": {
        "prepare": [
            "scripts/prepare_data.py", "dialog", "--output-dir", "data/dialog", "--max-len", "1000",
            "--num-eval-users", "200", "--max-train-len", "6000",
        ],
        "data_dir": "data/dialog",
        "tokenizer": "tokenizer/dialog",
        "max_len": 1000,
        "period_len": 125,
        "model": {},
    },
    "dna": {
        "prepare": [
            "scripts/prepare_data.py", "dna", "--output-dir", "data/dna", "--max-len", "1000",
            "--num-eval-users", "200", "--max-train-users", "8000", "--max-train-len", "3000",
        ],
        "data_dir": "data/dna",
        "tokenizer": "tokenizer/dna",
        "max_len": 1000,
        "period_len": 125,
        # SUP segments 300 bases apart, because 10 apart left USE's re-ID below its initial weights, likely
        # since nearby segments share their rRNA region more than their species. README.md has the runs.
        "model": {"gap": 300},
    },
    "movielens": {
        "prepare": ["scripts/prepare_movielens.py", "--output-dir", "data/movielens", "--context-events", "32"],
        "data_dir": "data/movielens",
        "tokenizer": "tokenizer/movielens",
        "max_len": 32,
        "period_len": 8,
        "model": {"max_input": 66, "min_input": 9, "gap": 5},
    },
}

# One size and one budget for every pre-trained model, so the comparison is fair.
MODEL = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_heads": 4,
    "max_input": 258,  # positions including [CLS] and [SEP]: 256 behaviors
    "min_input": 130,
    "batch_users": 16,
    # At this size and budget, the research code's 4e-4 with dropout 0.1 left USE's re-ID near or below
    # its initial weights, and 1e-4 without dropout raised it clearly. README.md lists the runs.
    "max_steps": 400,
    "learning_rate": 1e-4,
    "dropout": 0.0,
    "fep_window_size": 5,
    "gap": 10,
    # Seed of the weights, data order and segments. The untrained RetNet starts from the same weights.
    "seed": 42,
}

# `--quick`: the same pipeline at the smallest sizes that exercise every step, in separate folders.
QUICK_DATASETS = {
    "dialog": {
        "prepare": [
            "scripts/prepare_data.py", "dialog", "--output-dir", "data/dialog-quick", "--max-len", "200",
            "--num-eval-users", "12", "--max-train-users", "60", "--max-train-len", "2000",
        ],
        "data_dir": "data/dialog-quick",
        "tokenizer": "tokenizer/dialog",
        "max_len": 200,
        "period_len": 50,
        "model": {},
    },
    "dna": {
        "prepare": [
            "scripts/prepare_data.py", "dna", "--output-dir", "data/dna-quick", "--max-len", "200",
            "--num-eval-users", "12", "--max-train-users", "60", "--max-train-len", "2000",
        ],
        "data_dir": "data/dna-quick",
        "tokenizer": "tokenizer/dna",
        "max_len": 200,
        "period_len": 50,
        "model": {},
    },
    "movielens": {
        "prepare": [
            "scripts/prepare_movielens.py", "--output-dir", "data/movielens-quick", "--tokenizer-output",
            "tokenizer/movielens-quick", "--context-events", "16", "--eval-size", "12",
        ],
        "data_dir": "data/movielens-quick",
        "tokenizer": "tokenizer/movielens-quick",
        "max_len": 16,
        "period_len": 8,
        "model": {"max_input": 34, "min_input": 9, "gap": 5},
    },
}
QUICK_MODEL = {"hidden_size": 32, "num_hidden_layers": 1, "num_heads": 2, "max_input": 66, "min_input": 34, "batch_users": 4, "max_steps": 10}

TRAINED = {
    "USE": ("retnet", "FEP_SUP"),
    "USE-CLM": ("retnet", "CLM"),
    "Trans-CLM": ("gpt2", "CLM"),
}
UNTRAINED = "RetNet (untrained)"
BASELINE = "tf-idf"


def run(command: list[str], log_path: Path) -> None:
    """Run one project script, streaming its output to the terminal and to `log_path`."""
    logger.info("$ %s", " ".join(command))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
        if process.wait() != 0:
            raise SystemExit(f"step failed with exit code {process.returncode}: {' '.join(command)} (log: {log_path})")


def prepare(dataset: str, logs: Path) -> None:
    run([sys.executable, *DATASETS[dataset]["prepare"]], logs / "prepare.log")


def train(name: str, backbone: str, objective: str, dataset: str, data_dir: Path, model_dir: Path, logs: Path) -> None:
    if (model_dir / "model.safetensors").exists():
        logger.info("%s is already trained in %s; skipping", name, model_dir)
        return
    model = {**MODEL, **DATASETS[dataset]["model"]}
    heads_flag = "--num-heads" if backbone == "retnet" else "--num-attention-heads"
    command = [
        sys.executable, "train_user_model.py",
        "--run-name", f"demo-{dataset}-{name}",
        "--data-dir", str(data_dir / "train.csv"),
        "--tokenizer-path", DATASETS[dataset]["tokenizer"],
        "--model-output-path", str(model_dir),
        "--cache-dir", str(REPO_ROOT / f"cache_{dataset}"),
        "--model", backbone,
        "--training-objective", objective,
        "--hidden-size", str(model["hidden_size"]),
        "--num-hidden-layers", str(model["num_hidden_layers"]),
        heads_flag, str(model["num_heads"]),
        "--max-model-input-size", str(model["max_input"]),
        "--min-model-input-size", str(model["min_input"]),
        "--user-segments-gap", str(model["gap"]),
        "--fep-window-size", str(model["fep_window_size"]),
        "--per-device-batch-size", str(model["batch_users"]),
        "--max-steps", str(model["max_steps"]),
        "--learning-rate", str(model["learning_rate"]),
        "--dropout", str(model["dropout"]),
        "--warmup-ratio", "0.06",
        "--test-size", "0.05",
        "--eval-steps", str(model["max_steps"]),
        "--save-steps", "100",
        "--logging-steps", "25",
        "--get-random-segment",
        "--seed", str(model["seed"]),
    ]
    run(command, logs / f"train_{name}.log")


def save_untrained(reference_dir: Path, model_dir: Path, dataset: str) -> None:
    """Save the weights that the training of `reference_dir` started from, and its tokenizer.

    `train_user_model.py` seeds with `--seed` and then builds the model from its config. Doing the
    same here gives USE's own initial weights, so the sanity check measures what training changed
    rather than the luck of one random initialisation.
    """
    if (model_dir / "model.safetensors").exists():
        logger.info("the untrained RetNet is already saved in %s; skipping", model_dir)
        return
    set_seed(MODEL["seed"])
    config = UserModelConfig.from_pretrained(reference_dir)
    UserModel(config).save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((REPO_ROOT / DATASETS[dataset]["tokenizer"] / name).read_bytes())
    logger.info("Saved USE's initial weights (seed %d) as the untrained RetNet in %s", MODEL["seed"], model_dir)


def evaluate(name: str, model_dir: Path | None, dataset: str, data_dir: Path, out_dir: Path, logs: Path) -> None:
    """Run both evaluation scripts; the second loads the embeddings that the first saved."""
    settings = DATASETS[dataset]
    slug = name.replace(" ", "_").replace("(", "").replace(")", "")
    for script, task in (("eval_reid.py", "reid"), ("eval_classification.py", "classification")):
        output = out_dir / f"{slug}_{task}.json"
        if output.exists():
            logger.info("%s already exists; skipping", output)
            continue
        command = [
            sys.executable, script,
            "--dataset_dir", str(data_dir / "eval.tsv"),
            "--tokenizer_path", settings["tokenizer"],
            "--max_len", str(settings["max_len"]),
            "--period_len", str(settings["period_len"]),
            "--batch_size", "16",
            "--output", str(output),
            "--plot", str(out_dir / f"{slug}_{task}.png"),
        ]
        if model_dir:
            command += ["--model_path", str(model_dir), "--embedding_cache", str(model_dir.parent / "embedding_cache")]
        else:
            command += ["--method_type", BASELINE]
        run(command, logs / f"{slug}_{task}.log")


def read_metrics(out_dir: Path, name: str) -> dict:
    slug = name.replace(" ", "_").replace("(", "").replace(")", "")
    reid = json.loads((out_dir / f"{slug}_reid.json").read_text())["results"]
    classification = json.loads((out_dir / f"{slug}_classification.json").read_text())["results"]
    return {"reid": reid, "classification": classification}


def mean_mrr(periods: list[dict]) -> float:
    return sum(period["mrr"] for period in periods) / len(periods)


def summary_rows(name: str, metrics: dict) -> list[str]:
    rows = []
    for strategy, periods in metrics["reid"].items():
        last = periods[-1]
        classified = metrics["classification"].get(strategy)
        auc = f"{classified[-1]['auc_mean']:.3f}" if classified else "n/a"
        f1 = f"{classified[-1]['macro_f1_mean']:.3f}" if classified else "n/a"
        rows.append(f"| {name} | {strategy} | {last['mrr']:.3f} | {last['top_1']:.3f} | {mean_mrr(periods):.3f} | {auc} | {f1} |")
    return rows


def record_wall_time(out_dir: Path, seconds: float) -> list[float]:
    """Append this invocation's wall time to `wall_times.json` and return all of them, oldest first.

    A rerun skips finished steps, so only the sum over invocations is the demo's cost.
    """
    path = out_dir / "wall_times.json"
    times = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
    times.append(round(seconds, 1))
    path.write_text(json.dumps(times) + "\n", encoding="utf-8")
    return times


def write_summary(dataset: str, out_dir: Path, names: list[str], times: list[float], command: str) -> Path:
    settings = DATASETS[dataset]
    model = {**MODEL, **settings["model"]}
    periods = settings["max_len"] // settings["period_len"]
    lines = [
        f"# USE demo on {dataset}",
        "",
        f"Command: `{command}`. Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}. "
        f"Date: {date.today().isoformat()}. Wall time: {sum(times) / 60:.1f} minutes over {len(times)} "
        f"invocation(s), the last one {times[-1] / 60:.1f} minutes (a rerun skips finished steps).",
        "",
        f"Models: hidden {model['hidden_size']}, {model['num_hidden_layers']} layer(s), {model['num_heads']} heads, "
        f"{model['max_steps']} steps of {model['batch_users']} users at learning rate {model['learning_rate']:g}, "
        f"dropout {model['dropout']:g}, segments of up to {model['max_input'] - 2} behaviors. "
        f"Evaluation: history of {settings['max_len']} behaviors, {periods} periods of {settings['period_len']} new behaviors.",
        "",
        "MRR and top-1 are re-identification at the last period; mean MRR is over all periods. "
        "AUC (one-vs-rest) and macro F1 are classification at the last period, mean over seeds.",
        "",
        "| model | strategy | MRR (last) | top-1 (last) | MRR (mean over periods) | AUC (last) | macro F1 (last) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        lines += summary_rows(name, read_metrics(out_dir, name))
    path = out_dir / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sanity_check(out_dir: Path) -> str:
    """Return whether the trained USE beats its own initial weights on stateful MRR.

    The verdict is on the last period; the mean over periods is given beside it.
    """
    trained = read_metrics(out_dir, "USE")["reid"]["stateful"]
    untrained = read_metrics(out_dir, UNTRAINED)["reid"]["stateful"]
    verdict = "beats" if trained[-1]["mrr"] > untrained[-1]["mrr"] else "does NOT beat"
    return (
        f"Sanity check: trained USE (stateful MRR {trained[-1]['mrr']:.3f} at the last period, "
        f"{mean_mrr(trained):.3f} mean over periods) {verdict} the untrained RetNet, which has the weights "
        f"USE started from (MRR {untrained[-1]['mrr']:.3f} and {mean_mrr(untrained):.3f})."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(DATASETS), default="dialog", help="dataset to run the demo on")
    parser.add_argument("--output-dir", default="results/demo", help="folder for the results (one sub-folder per dataset)")
    parser.add_argument("--artifacts-dir", default="artifacts_demo", help="folder for the trained models")
    parser.add_argument(
        "--quick", action="store_true",
        help="smoke run at the smallest sizes (10 steps, 12 users), into results/demo-quick and artifacts_demo_quick",
    )
    args = parser.parse_args(argv)
    if args.quick:
        DATASETS.update(QUICK_DATASETS)
        MODEL.update(QUICK_MODEL)
        args.output_dir, args.artifacts_dir = "results/demo-quick", "artifacts_demo_quick"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    started = time.perf_counter()
    dataset = args.data
    data_dir = REPO_ROOT / DATASETS[dataset]["data_dir"]
    out_dir = REPO_ROOT / args.output_dir / dataset
    models_dir = REPO_ROOT / args.artifacts_dir / dataset
    logs = out_dir / "logs"

    prepare(dataset, logs)
    for name, (backbone, objective) in TRAINED.items():
        train(name, backbone, objective, dataset, data_dir, models_dir / name, logs)
    save_untrained(models_dir / "USE", models_dir / UNTRAINED, dataset)

    for name in [*TRAINED, UNTRAINED]:
        evaluate(name, models_dir / name, dataset, data_dir, out_dir, logs)
    evaluate(BASELINE, None, dataset, data_dir, out_dir, logs)

    times = record_wall_time(out_dir, time.perf_counter() - started)
    command = f"python scripts/run_demo.py --quick --data {dataset}" if args.quick else f"make demo DATA={dataset}"
    path = write_summary(dataset, out_dir, [*TRAINED, UNTRAINED, BASELINE], times, command)
    verdict = sanity_check(out_dir)
    with path.open("a", encoding="utf-8") as summary:
        summary.write(f"\n{verdict}\n")
    logger.info("%s", verdict)
    print(path.read_text(encoding="utf-8"))
    logger.info("Wrote %s", path)


if __name__ == "__main__":
    main()
