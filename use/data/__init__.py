"""Training data: reading user sequence files, tokenizing and caching them, and sampling segments."""

from .collator import SegmentCollator
from .dataset import DataSettings, PreparedData, cache_key, prepare_user_datasets, split_users
from .files import DataError, read_user_sequences
from .sampling import Segment, SegmentSettings, sample_segments

__all__ = [
    "DataError",
    "DataSettings",
    "PreparedData",
    "Segment",
    "SegmentCollator",
    "SegmentSettings",
    "cache_key",
    "prepare_user_datasets",
    "read_user_sequences",
    "sample_segments",
    "split_users",
]
