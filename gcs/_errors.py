"""The GCS exception hierarchy.

Every error the GCS raises on purpose is a `GcsError`. Errors produced inside a
replica travel back to the client *as results* (pickled exception objects), not as
transport failures, so the client re-raises the exact typed error with its message;
that is also why every class keeps its extra fields in ``__dict__`` (restored by the
default exception pickling) and takes the message as its only positional argument.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "GcsError",
    "GcsUnavailable",
    "NameTaken",
    "SubscriptionLost",
    "UnknownTable",
    "ValueTooLarge",
    "VersionMismatch",
]


class GcsError(Exception):
    """Base class of every error raised by `gcs` on purpose."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.__dict__.update(fields)


class BadRequest(GcsError):
    """A request was malformed: wrong key or value type, unknown operation, bad argument.

    The shard that rejected it keeps serving.
    """


class UnknownTable(BadRequest):
    """The request named a table the GCS does not have (attribute ``table``)."""


class ValueTooLarge(BadRequest):
    """A value is larger than the GCS's ``max_value_bytes`` (attributes ``size``, ``limit``)."""


class VersionMismatch(GcsError):
    """A conditional write found another version than expected.

    Attributes ``table``, ``key``, ``expected``, ``actual`` (0 means "absent").
    """


class NameTaken(GcsError):
    """A name is already registered (attributes ``name``, ``namespace``, ``owner``)."""


class GcsUnavailable(GcsError):
    """The GCS (or the shard owning a key) did not answer within the operation timeout."""


class SubscriptionLost(GcsError):
    """A subscription could not resume without a gap (the replay buffer was too short).

    Attributes ``shard``, ``last_seq`` (the last sequence number delivered) and
    ``oldest`` (the oldest sequence number the shard could still replay).
    """
