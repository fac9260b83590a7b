"""Each benchmark script runs end to end with --quick and writes the JSON keys that BENCHMARKS.md relies on.

Only the structure is checked, never the timings, so the scripts cannot silently break.
"""

import json
import subprocess
import sys
from pathlib import Path

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


def run_quick(script: str, output: Path) -> dict:
    completed = subprocess.run(
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
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
