"""Typed errors of the object store.

Every error names the bad thing (the object id, the type that would not pickle, the
capacity and what fills it) so that a failure far from its cause is still readable.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "GetTimeoutError",
    "ObjectExistsError",
    "ObjectNotFoundError",
    "ObjectStoreFullError",
    "SerializationError",
    "StoreClosedError",
    "StoreError",
]


def format_id(object_id: bytes) -> str:
    """A short printable form of an object id (hex, shortened when long)."""
    text = object_id.hex()
    return text if len(text) <= 40 else text[:36] + "…"


class StoreError(Exception):
    """Base class of every error raised by the object store."""


class SerializationError(StoreError, TypeError):
    """A value could not be serialised (or deserialised).

    ``type_name`` names the offending type and ``path`` the attribute path to it
    inside the value (``"<value>.model.lock"``) when it could be found cheaply.
    """

    def __init__(self, message: str, *, type_name: str | None = None, path: str | None = None):
        super().__init__(message)
        self.type_name = type_name
        self.path = path


class ObjectStoreFullError(StoreError):
    """``put`` found no room: nothing could be freed or spilled.

    Carries ``capacity``, ``used`` and ``requested`` (bytes) and a human summary of
    what holds the memory; ``holders`` is a list of ``(object id, size, reason)`` of
    the biggest objects that could not be evicted; ``detail`` says why the disk could
    not help (spilling or the disk fallback refused), ``""`` if it was not asked.
    """

    def __init__(
        self,
        message: str,
        *,
        capacity: int = 0,
        used: int = 0,
        requested: int = 0,
        holders: list[tuple[bytes, int, str]] | None = None,
        detail: str = "",
    ):
        super().__init__(message)
        self.capacity = capacity
        self.used = used
        self.requested = requested
        self.holders = holders or []
        self.detail = detail

    def __reduce__(self):  # keep the fields across a RemoteError round trip
        return (
            _rebuild_full,
            (str(self), self.capacity, self.used, self.requested, self.holders, self.detail),
        )


def _rebuild_full(message, capacity, used, requested, holders, detail=""):
    return ObjectStoreFullError(
        message, capacity=capacity, used=used, requested=requested, holders=holders,
        detail=detail,
    )


class ObjectNotFoundError(StoreError, KeyError):
    """No object with this id is in the store (never put, or already freed)."""

    def __init__(self, object_id: bytes, detail: str = ""):
        self.object_id = object_id
        msg = f"object {format_id(object_id)} is not in the store"
        super().__init__(msg + (f" ({detail})" if detail else ""))

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])

    def __reduce__(self):
        return (ObjectNotFoundError, (self.object_id,))


class ObjectExistsError(StoreError):
    """An object with this id was already created (objects are immutable)."""

    def __init__(self, object_id: bytes):
        self.object_id = object_id
        super().__init__(f"object {format_id(object_id)} already exists in the store")

    def __reduce__(self):
        return (ObjectExistsError, (self.object_id,))


class GetTimeoutError(StoreError, TimeoutError):
    """``get`` waited ``timeout`` seconds and the object was not sealed."""

    def __init__(self, object_id: bytes, timeout: float):
        self.object_id = object_id
        self.timeout = timeout
        super().__init__(
            f"object {format_id(object_id)} was not available within {timeout:g} s"
        )

    def __reduce__(self):
        return (GetTimeoutError, (self.object_id, self.timeout))


class StoreClosedError(StoreError):
    """The client was closed, or its connection to the store service was lost."""


class BadRequest(StoreError, ValueError):
    """The store refused a message: of a type it does not handle, or with fields of
    the wrong type (a client of another version, a bug). It serves on."""
