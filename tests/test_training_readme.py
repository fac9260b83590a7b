"""The README's pre-training command block, run through bash with only the exported values made small."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from use.embedding import load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "train"

# Smaller values for the README's export lines; every other line runs as users paste it.
SMALL_EXPORTS = {"batch_size": "4", "min_l": "20", "max_l": "32", "epoch": "1", "gap": "5"}


def readme_command(data_dir: Path) -> str:
    """Return the README's pre-training block with the small export values and the fixture data."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("export DATA_DIR=")
    end = readme.index("--training-objective ${obj}", start) + len("--training-objective ${obj}")
    lines = []
    for line in readme[start:end].splitlines():
        name = line.removeprefix("export ").split("=")[0] if line.startswith("export ") else None
        if name == "DATA_DIR":
            line = f"export DATA_DIR={data_dir}"
        elif name in SMALL_EXPORTS:
            line = f"export {name}={SMALL_EXPORTS[name]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_readme_block_contains_original_flags():
    command = readme_command(FIXTURES / "dna_users.txt")
    for flag in ("--n-iter 1", "--model ${model}", "--get-random-segment", "--training-objective ${obj}"):
        assert flag in command
    assert "export model=gpt2" in command
    assert "export obj=FEP_SUP" in command


def test_readme_command_runs_verbatim(tmp_path):
    # The block uses paths relative to the repository root: the script and ./tokenizer/<type>.
    (tmp_path / "tokenizer").symlink_to(REPO / "tokenizer")
    (tmp_path / "train_user_model.py").symlink_to(REPO / "train_user_model.py")
    script = tmp_path / "pretrain.sh"
    script.write_text(readme_command(FIXTURES / "dna_users.txt"))

    python_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": python_dir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        ["bash", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "finished at step" in completed.stderr
    assert "eval loss" in completed.stderr

    output = tmp_path / "artifacts_dna" / "retnet_FEP_SUP" / "clm"
    try:
        model, tokenizer = load_model_and_tokenizer(output, output)
        assert model.config.backbone_type == "gpt2"
        assert model.config.objective == "FEP_SUP"
        assert model.config.fep_window_size == 5
        assert model.config.max_position_embeddings == 32
        assert len(tokenizer) == 10
        assert (tmp_path / "cache_dna").is_dir()
        assert (output / "training_summary.json").is_file()
    finally:
        # The default-size model and its checkpoint take over 1 GB.
        shutil.rmtree(tmp_path / "artifacts_dna")
