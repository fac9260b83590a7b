"""Each benchmark script runs end to end with --quick and writes the JSON keys that BENCHMARKS.md relies on.

Only the structure is checked, never the timings, so the scripts cannot silently break. The output
tests check that a run never replaces an earlier record unless --overwrite is given.
"""

import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORD_KEYS = {
    "benchmark",
    "command",
    "machine",
    "load_average_before",
    "load_average_after",
    "settings",
    "results",
    "targets",
}
TARGET_KEYS = {"name", "value", "threshold", "unit", "met"}


def run_script(script: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / script),
            "--quick",
            "--output",
            str(output),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--threads",
            "1",
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_quick(script: str, output: Path) -> dict:
    completed = run_script(script, output)
    assert completed.returncode == 0, completed.stderr[-3000:]
    record = json.loads(output.read_text())
    assert set(record) == RECORD_KEYS
    assert record["machine"]["threads"] == 1
    for item in record["targets"]:
        assert set(item) == TARGET_KEYS
    return record


def test_training_bench_quick(tmp_path):
    record = run_quick("bench_training.py", tmp_path / "training.json")

    names = [result["name"] for result in record["results"]]
    assert names == [
        "gpt2 CLM h32-l2-a4",
        "retnet CLM parallel h32-l2-a4",
        "gpt2 FEP_SUP h32-l2-a4",
        "retnet FEP_SUP parallel h32-l2-a4",
        "retnet FEP_SUP chunkwise-16 h32-l2-a4",
    ]
    for result in record["results"]:
        assert len(result["step_wall_s"]) == 2
        assert result["tokens_per_s"] > 0
        assert result["peak_rss_mb"] >= result["setup_peak_rss_mb"] > 0
    assert len(record["targets"]) == 2
    assert set(record["settings"]["retention_form_choice"]["h32-l2-a4, 4x64"]) == {
        "fastest_retnet_form",
        "fastest_over_parallel",
    }


def test_embedding_bench_quick(tmp_path):
    record = run_quick("bench_embedding.py", tmp_path / "embedding.json")

    results = {result["name"]: result for result in record["results"]}
    assert list(results) == [
        "retnet parallel",
        "retnet chunkwise-32",
        "gpt2 windows-100",
        "retnet stateful (state carried)",
        "retnet stateless periods",
    ]
    for result in results.values():
        assert result["tokens"] == 4 * 300
        assert result["peak_rss_mb"] > 0
    # The retention forms and the stateful path compute the same embeddings.
    assert results["retnet chunkwise-32"]["max_abs_diff_vs_parallel"] <= 1e-4
    assert results["retnet stateful (state carried)"]["max_abs_diff_vs_parallel"] <= 1e-4
    assert [item["name"] for item in record["targets"]] == [
        "chunkwise-32 peak RSS (MiB)",
        "chunkwise-32 tokens/s over parallel",
        "stateful 50-behavior periods tokens/s over stateless periods",
    ]


def test_fep_bench_quick(tmp_path):
    record = run_quick("bench_fep.py", tmp_path / "fep.json")

    assert record["settings"]["matches_reference"] is True
    assert [result["name"] for result in record["results"]] == [
        "build_fep_targets, W=5",
        "reference (unfold + scatter), W=5",
        "build_fep_targets, W=100",
        "reference (unfold + scatter), W=100",
    ]
    assert record["targets"][0]["met"] is True


@pytest.fixture(scope="module")
def bench_common():
    """bench/common.py, loaded from its path because bench/ is a folder of scripts, not a package."""
    spec = importlib.util.spec_from_file_location("bench_common", REPO_ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_output_named_by_utc_time(bench_common, tmp_path):
    start = datetime.datetime(2026, 12, 4, 23, 59, 1, tzinfo=datetime.timezone.utc)

    first = bench_common.resolve_output(None, "fep", overwrite=False, results_dir=tmp_path, now=start)
    assert first == tmp_path / "fep-20261204T235901Z.json"

    first.write_text("{}")
    second = bench_common.resolve_output(None, "fep", overwrite=False, results_dir=tmp_path, now=start)
    assert second == tmp_path / "fep-20261204T235901Z-2.json"


def test_existing_output_needs_overwrite(bench_common, tmp_path):
    existing = tmp_path / "fep.json"
    existing.write_text("{}")

    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        bench_common.resolve_output(existing, "fep", overwrite=False)
    assert bench_common.resolve_output(existing, "fep", overwrite=True) == existing


def test_output_created_during_run_is_kept(bench_common, tmp_path):
    existing = tmp_path / "fep.json"
    existing.write_text("{}")

    with pytest.raises(FileExistsError, match="was created by another process") as raised:
        bench_common.write_json(existing, {"benchmark": "fep"}, overwrite=False, name="fep")

    assert existing.read_text() == "{}"
    fallbacks = [path for path in tmp_path.iterdir() if path != existing]
    assert len(fallbacks) == 1
    assert fallbacks[0].name.startswith("fep-")
    assert str(fallbacks[0]) in str(raised.value)
    assert json.loads(fallbacks[0].read_text()) == {"benchmark": "fep"}


def test_fep_bench_keeps_existing_output(tmp_path):
    output = tmp_path / "fep.json"
    output.write_text("{}")

    rejected = run_script("bench_fep.py", output)
    assert rejected.returncode != 0
    assert "already exists; pass --overwrite" in rejected.stderr
    assert output.read_text() == "{}"

    replaced = run_script("bench_fep.py", output, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert json.loads(output.read_text())["benchmark"] == "fep"
