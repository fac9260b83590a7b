"""Fingerprint of a saved checkpoint, so a stored state is never continued with another model."""

import hashlib
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_PATTERN = "*.safetensors"
_READ_BLOCK_BYTES = 1 << 20


def checkpoint_fingerprint(model_path: str | Path) -> str:
    """Return "sha256:<hex>" over the checkpoint's config.json and its safetensors weight files.

    Files are hashed in name order, each preceded by its name, so a sharded checkpoint
    (model-00001-of-00002.safetensors, ...) is covered as well as a single model.safetensors.
    Re-saving the same weights with another `transformers` version changes config.json and so the
    fingerprint.
    """
    folder = Path(model_path)
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no {CONFIG_FILE}; pass the folder written by save_pretrained (or by training)."
        )
    weights = sorted(folder.glob(WEIGHTS_PATTERN))
    if not weights:
        raise FileNotFoundError(
            f"{str(folder)!r} has no {WEIGHTS_PATTERN} weight file; save the model with save_pretrained, which "
            "writes model.safetensors by default."
        )

    digest = hashlib.sha256()
    for file in [config, *weights]:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            while block := handle.read(_READ_BLOCK_BYTES):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def short_fingerprint(fingerprint: str) -> str:
    """Return the first 12 hex digits of a fingerprint, enough to tell checkpoints apart in messages."""
    return fingerprint.removeprefix("sha256:")[:12]
