"""Segment sampling: which behaviors of a user's sequence go into one training example.

Sizes here count model input positions, so one segment of `max_input_size` positions contains
`max_input_size - 2` behaviors between its [CLS] and [SEP]. With FEP, a segment also takes up to W
behaviors that follow it, so that its last input positions can have a complete future window.
"""

from dataclasses import dataclass

import numpy as np

# [CLS] and [SEP] around every segment.
SPECIAL_POSITIONS = 2


@dataclass(frozen=True)
class SegmentSettings:
    """Settings that decide where segments are cut from a user's behaviors.

    max_input_size / min_input_size: model input positions of a segment, [CLS] and [SEP] included;
    the minimum applies to the first segment of a SUP pair only.
    gap: behaviors skipped between the two segments of a SUP pair.
    fep_window: future behaviors taken after each segment for FEP targets (0 without FEP).
    pairs: cut two segments per user (SUP) instead of one.
    random_start: start at a uniformly random position instead of the first behavior.
    """

    max_input_size: int
    min_input_size: int
    gap: int
    fep_window: int
    pairs: bool
    random_start: bool

    @property
    def max_behaviors(self) -> int:
        return self.max_input_size - SPECIAL_POSITIONS

    @property
    def min_behaviors(self) -> int:
        return self.min_input_size - SPECIAL_POSITIONS

    @property
    def min_user_length(self) -> int:
        """Minimum number of behaviors per user: a SUP pair of minimum-length segments, or one behavior."""
        if self.pairs:
            return 2 * self.min_behaviors + self.gap
        return 1


@dataclass(frozen=True)
class Segment:
    """Behaviors `[start, start + length)` form the model input; the next `future` feed FEP targets only."""

    start: int
    length: int
    future: int


def sample_segments(num_behaviors: int, settings: SegmentSettings, rng: np.random.Generator) -> list[Segment]:
    """Draw the segment (or the SUP pair of segments) of one user with `num_behaviors` behaviors."""
    if num_behaviors < settings.min_user_length:
        raise ValueError(
            f"a user with {num_behaviors} behaviors is shorter than the {settings.min_user_length} these settings "
            "need; such users are filtered out when the data set is prepared."
        )
    if settings.pairs:
        return _sample_pair(num_behaviors, settings, rng)
    return [_sample_single(num_behaviors, settings, rng)]


def _sample_single(num_behaviors: int, settings: SegmentSettings, rng: np.random.Generator) -> Segment:
    length = min(settings.max_behaviors, num_behaviors)
    # Leave room for the FEP window after the segment where the user has enough behaviors.
    span = min(num_behaviors, length + settings.fep_window)
    start = int(rng.integers(0, num_behaviors - span + 1)) if settings.random_start else 0
    future = min(settings.fep_window, num_behaviors - start - length)
    return Segment(start, length, future)


def _sample_pair(num_behaviors: int, settings: SegmentSettings, rng: np.random.Generator) -> list[Segment]:
    # The first segment's length is drawn from [min, max] so that length alone cannot tell users apart.
    # Its upper end leaves room for the gap and a second segment of at least the minimum length.
    longest_first = min(settings.max_behaviors, num_behaviors - settings.gap - settings.min_behaviors)
    first_length = int(rng.integers(settings.min_behaviors, longest_first + 1))
    second_length = min(settings.max_behaviors, num_behaviors - first_length - settings.gap)

    used = first_length + settings.gap + second_length
    span = used + min(settings.fep_window, num_behaviors - used)
    start = int(rng.integers(0, num_behaviors - span + 1)) if settings.random_start else 0

    # The gap is at least W when FEP is on, so the first segment's window stays inside the gap.
    first = Segment(start, first_length, min(settings.fep_window, settings.gap))
    second_start = start + first_length + settings.gap
    second_future = min(settings.fep_window, num_behaviors - second_start - second_length)
    return [first, Segment(second_start, second_length, second_future)]
