"""The README's pre-training command block, run through bash with only the exported values made small."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from use.embedding import load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "train"

# The README block with smaller values in the export lines; everything else is as users paste it.
README_COMMAND = """\
export DATA_DIR={data_dir}
export DATA_TYPE=dna # choose from ["dialog", "dna"]
export batch_size=4
export min_l=20
export max_l=32
export epoch=1
export gap=5
export learning_rate=4e-4
export gradient_accumulation_steps=2
export model=gpt2
export num_heads=12
export contrastive_embedding=token
export contrastive_type=Orig
export obj=FEP_SUP # select from CLM / FEP / SUP / FEP_SUP
export fep_window_size=5
export fep_context_length=0
export fep_loss_frequency=1
export run_name=retnet_${{obj}}

python train_user_model.py \\
    --run-name ${{run_name}} \\
    --data-dir ${{DATA_DIR}} \\
    --n-iter 1 \\
    --num-train-epochs ${{epoch}} \\
    --min-model-input-size ${{min_l}} \\
    --max-model-input-size ${{max_l}} \\
    --user-segments-gap ${{gap}} \\
    --per-device-batch-size ${{batch_size}} \\
    --test-size 0.01 \\
    --warmup-ratio 0.06 \\
    --learning-rate ${{learning_rate}} \\
    --gradient-accumulation-steps ${{gradient_accumulation_steps}} \\
    --tokenizer-path ./tokenizer/${{DATA_TYPE}} \\
    --model-output-path ./artifacts_${{DATA_TYPE}}/${{run_name}}/clm \\
    --fep-window-size ${{fep_window_size}} \\
    --eval-steps 50000 \\
    --save-steps 500 \\
    --cache-dir cache_${{DATA_TYPE}} \\
    --model ${{model}} \\
    --num-heads ${{num_heads}} \\
    --contrastive-embedding ${{contrastive_embedding}} \\
    --contrastive-type ${{contrastive_type}} \\
    --fep-context-length ${{fep_context_length}} \\
    --fep-loss-frequency ${{fep_loss_frequency}} \\
    --get-random-segment \\
    --training-objective ${{obj}}
"""


def test_readme_command_runs_verbatim(tmp_path):
    # The block uses paths relative to the repository root: the script and ./tokenizer/<type>.
    (tmp_path / "tokenizer").symlink_to(REPO / "tokenizer")
    (tmp_path / "train_user_model.py").symlink_to(REPO / "train_user_model.py")
    script = tmp_path / "pretrain.sh"
    script.write_text(README_COMMAND.format(data_dir=FIXTURES / "dna_users.txt"))

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
