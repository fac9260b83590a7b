"""The state store under a killed writer and under readers running while a writer updates."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import torch

from use.embedding import embed_sequences
from use.state import UserStateStore

from .test_state import REPO, TOKENIZER, checkpoint, random_text, token_ids  # noqa: F401 (checkpoint is a fixture)

# Updates the store in a child process. Its arguments are the store, checkpoint, tokenizer, batch
# size, pause in seconds between updates, then the user ids. Each stdin line is one update call: one
# text per user, tab-separated.
WRITER = """
import sys, time
from use.state import UserStateStore
db, model_path, tokenizer_path, batch_size, pause, *user_ids = sys.argv[1:]
with UserStateStore.open(db, model_path, tokenizer_path, batch_size=int(batch_size)) as store:
    for line in sys.stdin:
        store.update(user_ids, line.rstrip("\\n").split("\\t"))
        time.sleep(float(pause))
"""


def start_writer(db, checkpoint, batch_size, pause, user_ids, updates) -> subprocess.Popen:
    command = [sys.executable, "-c", WRITER, str(db), str(checkpoint), str(TOKENIZER), str(batch_size), str(pause)]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        command + user_ids, stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=environment, text=True
    )
    # Texts use printable ASCII only, so tabs and newlines can separate them.
    writer.stdin.write("".join("\t".join(texts) + "\n" for texts in updates))
    writer.stdin.close()
    return writer


def count_users_with(db, num_behaviors: int) -> int:
    with sqlite3.connect(db, timeout=30) as connection:
        query = "SELECT COUNT(*) FROM users WHERE num_behaviors = ?"
        return connection.execute(query, (num_behaviors,)).fetchone()[0]


def printable_text(length: int, seed: int) -> str:
    return "".join(character for character in random_text(length * 2, seed) if character != "\n")[:length]


def test_sigkill_leaves_each_user_before_or_after(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    user_ids = [f"user{index:03d}" for index in range(120)]
    history = [printable_text(20, seed) for seed in range(120)]
    update = [printable_text(200, 1000 + seed) for seed in range(120)]
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        before = store.update(user_ids, history)
        after = embed_sequences(store.model, [token_ids(store, h + u) for h, u in zip(history, update)], progress=False)

    writer = start_writer(db, checkpoint, 1, 0, user_ids, [update])
    deadline = time.monotonic() + 120
    while count_users_with(db, 220) < 3:
        assert writer.poll() is None, f"the writer ended before it was killed: {writer.stderr.read()}"
        assert time.monotonic() < deadline, "the writer updated fewer than 3 users in 120 s"
        time.sleep(0.005)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        counts = [info.num_behaviors for info in store.info(user_ids)]
        assert set(counts) == {20, 220}, "the kill should land in the middle of the update"
        embeddings = store.get(user_ids)
        store.get_state(user_ids)
        for index, count in enumerate(counts):
            expected = before[index] if count == 20 else after[index]
            assert (embeddings[index] - expected).abs().max() <= 1e-4, user_ids[index]

        # Finishing the interrupted update gives every user the one-pass embedding.
        pending = [index for index, count in enumerate(counts) if count == 20]
        store.update([user_ids[index] for index in pending], [update[index] for index in pending])
        assert (store.get(user_ids) - after).abs().max() <= 1e-4


def test_readers_see_whole_batches(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    user_ids = [f"user{index}" for index in range(8)]
    steps = 6
    pieces = [[printable_text(15, 100 * step + index) for index in range(8)] for step in range(steps)]
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        prefixes = ["".join(pieces[step][index] for step in range(steps)) for index in range(8)]
        # expected[step][user]: one-pass embedding after `step + 1` updates.
        expected = torch.stack(
            [
                embed_sequences(store.model, [token_ids(store, prefix[: 15 * (step + 1)]) for prefix in prefixes], progress=False)
                for step in range(steps)
            ]
        )
        store.update(user_ids, pieces[0])

        writer = start_writer(db, checkpoint, 8, 0.2, user_ids, pieces[1:])
        seen_steps = set()
        while writer.poll() is None:
            state = store.get_state(user_ids)
            counts = set(state.count.tolist())
            assert len(counts) == 1, f"one read saw users at different updates: {state.count.tolist()}"
            step = counts.pop() // 15 - 1
            seen_steps.add(step)
            assert (state.mean() - expected[step]).abs().max() <= 1e-4
        assert writer.returncode == 0, writer.stderr.read()

        assert len(seen_steps) >= 3, f"the reader overlapped too few updates: {sorted(seen_steps)}"
        assert (store.get(user_ids) - expected[-1]).abs().max() <= 1e-4


def test_two_writers_lose_no_update(tmp_path, checkpoint):
    db = tmp_path / "users.db"
    user_ids = ["shared"]
    first = [[printable_text(10, seed)] for seed in range(5)]
    second = [[printable_text(10, 50 + seed)] for seed in range(5)]
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        store.update(user_ids, ["start"])
    writers = [start_writer(db, checkpoint, 1, 0, user_ids, updates) for updates in (first, second)]
    for writer in writers:
        writer.wait(timeout=120)
        assert writer.returncode == 0, writer.stderr.read()
    with UserStateStore.open(db, checkpoint, TOKENIZER) as store:
        assert store.info(user_ids)[0].num_behaviors == len("start") + 100
