"""Persistent per-user RetNet states: update a user's embedding with new behavior, without their history."""

from .errors import (
    CorruptStateError,
    ExportNotMovedError,
    FingerprintMismatchError,
    StateStoreError,
    UnknownUserError,
    UnsupportedModelError,
)
from .export import ids_path_for
from .fingerprint import checkpoint_fingerprint
from .store import UpdateReport, UserInfo, UserStateStore

__all__ = [
    "CorruptStateError",
    "ExportNotMovedError",
    "FingerprintMismatchError",
    "StateStoreError",
    "UnknownUserError",
    "UnsupportedModelError",
    "UpdateReport",
    "UserInfo",
    "UserStateStore",
    "checkpoint_fingerprint",
    "ids_path_for",
]
