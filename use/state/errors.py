"""Errors of the user state store. Each names the users involved and the way out."""

from .fingerprint import short_fingerprint

MAX_LISTED_USERS = 5


def list_users(user_ids: list[str]) -> str:
    """Format up to `MAX_LISTED_USERS` ids, then the number left out."""
    shown = ", ".join(repr(user_id) for user_id in user_ids[:MAX_LISTED_USERS])
    rest = len(user_ids) - MAX_LISTED_USERS
    return shown if rest <= 0 else f"{shown} and {rest} more"


class StateStoreError(Exception):
    """Base class of the store's errors."""


class UnsupportedModelError(StateStoreError, ValueError):
    """The model has no state to store (GPT-2) or does not match the store."""


class UnknownUserError(StateStoreError, KeyError):
    """Requested users have no row in the store."""

    def __init__(self, user_ids: list[str]):
        self.user_ids = user_ids
        super().__init__(
            f"{len(user_ids)} users are not in the store: {list_users(user_ids)}. Add them with update() first."
        )

    def __str__(self) -> str:
        # KeyError.__str__ would print the message as a quoted repr.
        return str(self.args[0])


class FingerprintMismatchError(StateStoreError):
    """Stored states were computed with another checkpoint than the store's model."""

    def __init__(self, user_ids: list[str], stored: list[str], current: str):
        self.user_ids = user_ids
        stored_short = sorted({short_fingerprint(fingerprint) for fingerprint in stored})
        super().__init__(
            f"{len(user_ids)} users have states computed with another checkpoint ({', '.join(stored_short)}) than the "
            f"loaded model ({short_fingerprint(current)}): {list_users(user_ids)}. A state only continues with the "
            "model that computed it. Pass reset_mismatched=True (CLI: --reset_mismatched) to restart these users "
            "from the new behaviors alone, or load the checkpoint they were computed with."
        )


class CorruptStateError(StateStoreError):
    """Stored rows that fail their checksum, do not parse, or have the wrong shapes."""

    def __init__(self, problems: dict[str, str], committed_users: int = 0):
        self.problems = problems
        details = "; ".join(f"{user_id!r}: {reason}" for user_id, reason in list(problems.items())[:MAX_LISTED_USERS])
        more = len(problems) - MAX_LISTED_USERS
        if more > 0:
            details += f"; and {more} more"
        committed = (
            f" {committed_users} users of earlier batches in this call were already updated and committed."
            if committed_users
            else ""
        )
        super().__init__(
            f"{len(problems)} stored rows are corrupt ({details}).{committed} Delete these users (delete()) and "
            "re-embed their history, or pass skip_invalid=True (CLI: --skip_invalid) to leave them out."
        )


class ExportNotMovedError(StateStoreError, OSError):
    """An update was committed, but its export could not be renamed from its temporary files onto its target."""
