"""The demo pipeline end to end at its smallest settings, on the committed DNA subset (no download)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = ("USE", "USE-CLM", "Trans-CLM", "RetNet (untrained)", "tf-idf")


@pytest.mark.slow
def test_quick_demo_writes_summary():
    for folder in ("results/demo-quick/dna", "artifacts_demo_quick/dna", "data/dna-quick"):
        shutil.rmtree(REPO / folder, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "scripts/run_demo.py", "--data", "dna", "--quick"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    summary = (REPO / "results/demo-quick/dna/summary.md").read_text(encoding="utf-8")
    for model in MODELS:
        assert f"| {model} | recompute |" in summary
    assert "| USE | stateful |" in summary
    assert "| Trans-CLM | stateful |" not in summary
    assert "Sanity check: trained USE" in summary
    for name in ("USE", "USE-CLM", "Trans-CLM"):
        assert (REPO / "artifacts_demo_quick/dna" / name / "model.safetensors").is_file()
