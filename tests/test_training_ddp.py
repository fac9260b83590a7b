"""DDP training with torchrun: two CPU processes (gloo) train one model and save it once.

Run as a script, this file is the torchrun worker: it trains through `use.training.train` and writes
what its process saw to `<record dir>/rank<R>.json`.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "train"
TRAIN_USERS = 19  # 24 fixture users minus ceil(0.2 * 24) test users
USERS_PER_DEVICE = 2


def state_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_worker(options_json: str, record_dir: str) -> None:
    from transformers import TrainerCallback

    from use.training import train
    from use.training_options import TrainingOptions

    class BatchCounter(TrainerCallback):
        def __init__(self):
            self.batches_per_epoch = None
            self.steps = 0

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            self.batches_per_epoch = len(train_dataloader)

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    counter = BatchCounter()
    result = train(TrainingOptions(**json.loads(options_json)), callbacks=[counter])
    record = {
        "rank": int(os.environ["RANK"]),
        "world_size": torch.distributed.get_world_size(),
        "batches_per_epoch": counter.batches_per_epoch,
        "steps": counter.steps,
        "checksum": state_checksum(result.model.state_dict()),
    }
    Path(record_dir, f"rank{record['rank']}.json").write_text(json.dumps(record))


def test_two_cpu_processes_train_one_model(tmp_path):
    options = dict(
        data_dir=str(FIXTURES / "dna_users.txt"),
        tokenizer_path=str(REPO / "tokenizer" / "dna"),
        model_output_path=str(tmp_path / "model"),
        cache_dir=str(tmp_path / "cache"),
        training_objective="FEP_SUP",
        hidden_size=32,
        num_hidden_layers=2,
        num_heads=2,
        min_model_input_size=20,
        max_model_input_size=40,
        user_segments_gap=5,
        fep_window_size=3,
        per_device_batch_size=USERS_PER_DEVICE,
        get_random_segment=True,
        max_steps=4,
        logging_steps=1,
        eval_steps=2,
        save_steps=2,
        test_size=0.2,
        learning_rate=3e-3,
        seed=0,
    )
    records = tmp_path / "records"
    records.mkdir()
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(Path(__file__)),
        json.dumps(options),
        str(records),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]

    ranks = [json.loads((records / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for record in ranks:
        assert record["world_size"] == 2
        assert record["steps"] == 4
        # The users are sharded: each process gets half of the (whole-user) batches of an epoch.
        assert record["batches_per_epoch"] == TRAIN_USERS // (2 * USERS_PER_DEVICE)
    assert ranks[0]["checksum"] == ranks[1]["checksum"]

    output = tmp_path / "model"
    assert state_checksum(load_file(output / "model.safetensors")) == ranks[0]["checksum"]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["processes"] == 2
    assert summary["global_step"] == 4
    assert math.isfinite(summary["eval_metrics"]["eval_loss"])
    state = json.loads((output / "checkpoint-4" / "trainer_state.json").read_text())
    losses = [entry for entry in state["log_history"] if "loss" in entry]
    assert [entry["step"] for entry in losses] == [1, 2, 3, 4]
    assert all(math.isfinite(entry["loss"]) and math.isfinite(entry["sup_loss"]) for entry in losses)


if __name__ == "__main__":
    run_worker(sys.argv[1], sys.argv[2])
