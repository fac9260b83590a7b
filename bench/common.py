"""Shared parts of the benchmarks: command-line flags, machine facts, peak memory and measurement workers.

Every configuration under comparison runs in its own worker process, so each one's peak RSS is its own.
The parent sends "measure" to the workers in turn (round-robin), so load from other programs on the
machine falls on all configurations alike and the ratios between them stay meaningful even when the
absolute numbers are noisy. On CPU, workers are forked from the parent after imports and before any
tensor work, so a worker starts with the memory of a fresh Python process that imported torch and
`use`. CUDA workers are spawned instead, because a CUDA context cannot be used across a fork.

Each run writes its record to a new file named by the benchmark and the UTC start time, so committed
results are never replaced. An existing `--output` file is replaced only with `--overwrite`.
"""

import argparse
import datetime
import json
import logging
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Add the flags every benchmark shares: device, dtype, threads, quick mode and the output path."""
    parser.add_argument("--device", default="cpu", help="torch device to measure on, e.g. cpu or cuda (default: cpu).")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="compute dtype (default: float32). Training uses autocast in this dtype; embedding casts the model.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per measured process (default: 1, which keeps numbers stable on a shared machine; "
        "0 keeps PyTorch's default of one per core).",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: tiny sizes and few repetitions, numbers are meaningless."
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON file to write. An existing file is rejected unless --overwrite is given "
        f"(default: a new file bench/results/{name}-YYYYMMDDTHHMMSSZ.json, named by the UTC start time).",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the --output file if it already exists.")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random model weights and behavior ids (default: 0)."
    )


def resolve_output(
    output: Path | None,
    name: str,
    overwrite: bool,
    results_dir: Path = RESULTS_DIR,
    now: datetime.datetime | None = None,
) -> Path:
    """Return the path a benchmark writes its record to, and reject an existing `output` unless `overwrite`.

    Without `output`, the path is a new file in `results_dir` named by the benchmark and the UTC time
    (`now`, default the current time), such as `fep-20261204T235901Z.json`. When that name is taken,
    `-2`, `-3`, ... is appended, so a run never replaces an earlier record.
    """
    if output is None:
        now = now or datetime.datetime.now(datetime.timezone.utc)
        stem = f"{name}-{now.astimezone(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
        path = results_dir / f"{stem}.json"
        counter = 2
        while path.exists():
            path = results_dir / f"{stem}-{counter}.json"
            counter += 1
        return path
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"benchmark output {output} already exists; pass --overwrite to replace it, or choose another --output."
        )
    return output


def write_json(path: Path, record: dict, overwrite: bool, name: str) -> Path:
    """Write `record` as JSON to `path` and return the path written.

    Without `overwrite`, the file is created exclusively. If another process created `path` during the
    run, the record goes to a new date-time file beside it instead, and FileExistsError names both paths.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2) + "\n"
    try:
        with path.open("w" if overwrite else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError as error:
        fallback = resolve_output(None, name, overwrite=False, results_dir=path.parent)
        with fallback.open("x", encoding="utf-8") as handle:
            handle.write(text)
        raise FileExistsError(
            f"benchmark output {path} was created by another process during this run, so the record was "
            f"written to {fallback} instead."
        ) from error
    logger.info("wrote %s", path)
    return path


def configure_torch(threads: int, device: str) -> None:
    """Set the thread count (0 keeps PyTorch's default) and check that the device exists."""
    if threads < 0:
        raise ValueError(f"--threads {threads} is invalid; pass 0 for PyTorch's default or a positive count.")
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"--device {device} was requested but this PyTorch build sees no CUDA device; use --device cpu."
        )


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer read afterwards includes it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def peak_rss_mb() -> float:
    """Return the peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def memory_report(device: str) -> dict[str, float]:
    """Return the peak RSS in MiB and, on CUDA, the peak of memory allocated by PyTorch in MiB."""
    report = {"peak_rss_mb": round(peak_rss_mb(), 1)}
    if device.startswith("cuda"):
        report["cuda_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return report


class Timer:
    """Wall-clock and process CPU seconds of a block; the device is synchronised at both ends."""

    def __init__(self, device: str):
        self.device = device
        self.wall_s = 0.0
        self.cpu_s = 0.0

    def __enter__(self) -> "Timer":
        synchronize(self.device)
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        return self

    def __exit__(self, *exc_info) -> None:
        synchronize(self.device)
        self.wall_s = time.perf_counter() - self._wall
        self.cpu_s = time.process_time() - self._cpu


def machine_info(device: str, threads: int) -> dict[str, Any]:
    """Return the facts about the machine and software that a recorded number depends on."""
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads if threads else torch.get_num_threads(),
        "device": device,
        "git_commit": _git_commit(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def load_average() -> list[float]:
    """Return the 1, 5 and 15 minute load averages, as `uptime` shows them."""
    return [round(value, 2) for value in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _worker_main(connection, setup: Callable[[dict], Callable[[str], dict]], spec: dict) -> None:
    """Build the measured object with `setup(spec)`, then serve "measure ..." commands until "exit"."""
    try:
        configure_torch(spec["threads"], spec["device"])
        measure = setup(spec)
        connection.send({"ready": True, "setup_peak_rss_mb": round(peak_rss_mb(), 1)})
        while True:
            command = connection.recv()
            if command == "exit":
                connection.send(memory_report(spec["device"]))
                return
            connection.send(measure(command))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which raises it with the worker's name
        logger.exception("worker %s failed", spec.get("name"))
        connection.send({"error": f"{type(error).__name__}: {error}"})


class Worker:
    """One configuration measured in its own process; `measure(command)` returns the worker's result dict."""

    def __init__(self, setup: Callable[[dict], Callable[[str], dict]], spec: dict):
        # Forking skips re-importing torch and `use`, but CUDA does not survive a fork, so CUDA workers spawn.
        on_cuda = spec["device"].startswith("cuda")
        fork = "fork" in multiprocessing.get_all_start_methods() and not on_cuda
        context = multiprocessing.get_context("fork" if fork else "spawn")
        self.name = spec["name"]
        self._connection, child_connection = context.Pipe()
        self._process = context.Process(target=_worker_main, args=(child_connection, setup, spec), name=self.name)
        self._process.start()
        child_connection.close()
        self.ready = None

    def wait_ready(self) -> dict:
        self.ready = self._receive()
        return self.ready

    def measure(self, command: str = "measure") -> dict:
        self._connection.send(command)
        return self._receive()

    def close(self) -> dict:
        """Stop the worker and return its peak memory."""
        self._connection.send("exit")
        memory = self._receive()
        self._process.join(timeout=60)
        return memory

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)

    def _receive(self) -> dict:
        try:
            message = self._connection.recv()
        except EOFError as error:
            raise RuntimeError(
                f"benchmark worker {self.name!r} exited with code {self._process.exitcode} before replying; "
                "its log is above. Exit code -9 usually means it ran out of memory."
            ) from error
        if "error" in message:
            raise RuntimeError(f"benchmark worker {self.name!r} failed: {message['error']}")
        return message


def start_workers(setup: Callable[[dict], Callable[[str], dict]], specs: list[dict]) -> list[Worker]:
    """Start one worker per spec and wait until all have finished their set-up and warm-up."""
    workers = []
    try:
        for spec in specs:
            workers.append(Worker(setup, spec))
            # Set-up includes a warm-up run; doing them one at a time keeps them from slowing each other.
            workers[-1].wait_ready()
            logger.info("worker %s ready", spec["name"])
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    return workers


def write_results(
    path: Path | None,
    name: str,
    args: argparse.Namespace,
    settings: dict,
    results: list[dict],
    targets: list[dict],
    load_before: list[float],
) -> dict:
    """Write the benchmark's JSON record and return it.

    `path` None writes a new date-time file under bench/results; an existing `path` is replaced only
    with `args.overwrite`.
    """
    record = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(args.device, args.threads),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "settings": settings,
        "results": results,
        "targets": targets,
    }
    if path is None:
        path = resolve_output(None, name, overwrite=False)
    write_json(path, record, args.overwrite, name)
    return record


def target(name: str, value: float, threshold: float, unit: str = "ratio", higher_is_better: bool = True) -> dict:
    """Return a target record: its measured value, the threshold and whether it was met."""
    met = value >= threshold if higher_is_better else value <= threshold
    return {"name": name, "value": round(value, 3), "threshold": threshold, "unit": unit, "met": bool(met)}


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
