"""Batch building: sample each user's segments, add [CLS]/[SEP], pad, and build the FEP targets."""

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..model import UserModelConfig
from ..objectives import behavior_mask, build_fep_targets, objective_parts
from .sampling import SegmentSettings, sample_segments


class SegmentCollator:
    """Turn dataset rows (one user each) into a model batch, drawing new segments every epoch.

    Each row needs `input_ids` (the user's behavior ids, no special tokens) and `row_id`. With SUP the
    two segments of user i are rows 2i and 2i+1, so a batch of n users has 2n rows and any split of
    the batch by users keeps pairs together.

    In training mode each user's segments come from a generator seeded with `(seed, epoch, row_id)`,
    so every epoch draws new segments, and a run resumed from a checkpoint draws the same segments
    as an uninterrupted run. The Trainer sets the epoch through `set_epoch` (see
    `training.SegmentEpochCallback`). With `deterministic=True` (evaluation) the generator is seeded
    from `seed` and the batch's row ids, so every evaluation of the same batch gets the same segments.

    Returns `input_ids` and `attention_mask` `(rows, seq)` and, with FEP, `fep_targets`
    `(rows, seq, num_behaviors)` bool and `fep_mask` `(rows, seq)` bool.
    """

    def __init__(
        self,
        config: UserModelConfig,
        settings: SegmentSettings,
        seed: int,
        deterministic: bool = False,
    ):
        parts = objective_parts(config.objective)
        if settings.pairs != ("SUP" in parts):
            raise ValueError(
                f"segment settings have pairs={settings.pairs} but objective {config.objective} "
                f"{'needs' if 'SUP' in parts else 'has no'} SUP pairs."
            )
        expected_window = config.fep_window_size if "FEP" in parts else 0
        if settings.fep_window != expected_window:
            raise ValueError(
                f"segment settings take {settings.fep_window} future behaviors but objective {config.objective} "
                f"with fep_window_size={config.fep_window_size} needs {expected_window}."
            )
        self.config = config
        self.settings = settings
        self.seed = seed
        self.deterministic = deterministic
        self.use_fep = "FEP" in parts
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the training epoch that, with the seed and row id, seeds each user's segment draw."""
        self.epoch = epoch

    def __call__(self, features: Sequence[dict]) -> dict[str, Tensor]:
        batch_rng = self._batch_rng(features) if self.deterministic else None
        config = self.config
        inputs, streams = [], []
        for feature in features:
            behaviors = np.asarray(feature["input_ids"], dtype=np.int64)
            # The sampler yields each user once per epoch (DDP repeats a few users to give every process
            # the same count), so a generator per user and epoch needs no state from earlier batches.
            user_seed = [self.seed, self.epoch, int(feature["row_id"])]
            rng = batch_rng if batch_rng is not None else np.random.default_rng(user_seed)
            for segment in sample_segments(len(behaviors), self.settings, rng):
                end = segment.start + segment.length
                inputs.append(_wrap(behaviors[segment.start : end], config.cls_token_id, config.sep_token_id))
                if self.use_fep:
                    # The FEP stream is [CLS] + the segment's behaviors + the behaviors after it.
                    stream = behaviors[segment.start : end + segment.future]
                    streams.append(np.concatenate([[config.cls_token_id], stream]))

        input_ids, attention_mask = _pad(inputs, config.pad_token_id)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_fep:
            batch["fep_targets"], batch["fep_mask"] = self._fep_targets(streams, attention_mask)
        return batch

    def _batch_rng(self, features: Sequence[dict]) -> np.random.Generator:
        row_ids = [int(feature["row_id"]) for feature in features]
        return np.random.default_rng([self.seed, *row_ids])

    def _fep_targets(self, streams: list[np.ndarray], attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        config = self.config
        stream_ids, stream_mask = _pad(streams, config.pad_token_id)
        content = behavior_mask(stream_ids, stream_mask, config.first_behavior_id, config.unk_token_id)
        targets, mask = build_fep_targets(
            stream_ids,
            content,
            window=config.fep_window_size,
            num_positions=attention_mask.shape[1],
            first_behavior_id=config.first_behavior_id,
            num_behaviors=config.num_behaviors,
            context_length=config.fep_context_length,
            frequency=config.fep_loss_frequency,
        )
        # A window reaching past the stream ends in padding, so [SEP] and padding positions are never
        # complete. The attention mask is applied as well, so that this does not rest on the padding id.
        return targets, mask & attention_mask.bool()


def _wrap(behaviors: np.ndarray, cls_id: int, sep_id: int) -> np.ndarray:
    return np.concatenate([[cls_id], behaviors, [sep_id]])


def _pad(rows: list[np.ndarray], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad rows into ids and a 0/1 mask, both `(len(rows), longest)` int64."""
    longest = max(len(row) for row in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
        mask[index, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
