"""Serialisation: cloudpickle with pickle protocol 5 out-of-band buffers.

A value becomes a small in-band pickle stream plus a list of raw buffers (the bodies
of numpy arrays, Arrow buffers, ``bytes``-like blobs that support protocol 5). The
buffers are never copied into the pickle stream: the store copies them once, straight
into shared memory, and ``deserialize`` hands the shared-memory views back to the
unpickler so that arrays come back as read-only views of the store (zero copy).

Arrow objects (``pyarrow.Array``, ``RecordBatch``, ``Table``, ``ChunkedArray``) pickle
their buffers out of band with protocol 5 already. Measured against the Arrow IPC
format on a 155 MB table (int64, float64 and string columns): serialise + copy into
place 11.4 ms with pickle 5, 11.5 ms for IPC written in place (36.7 ms through an IPC
buffer); zero-copy rebuild 16 µs (pickle) vs 7 µs (IPC). A tie on the write, 10 µs
on the read: not worth a second code path and a sizing pass, so every value takes
the pickle path and Arrow data comes back zero-copy from the same views (see tests).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import attrs
import cloudpickle

from ._errors import SerializationError

__all__ = ["SerializedValue", "deserialize", "serialize"]


def _nbytes(buf: Any) -> int:
    if isinstance(buf, memoryview):
        return buf.nbytes
    nbytes = getattr(buf, "nbytes", None)
    if nbytes is None:  # pickle.PickleBuffer, bytes, bytearray, …
        with memoryview(buf) as view:
            return view.nbytes
    return int(nbytes)


@attrs.frozen(eq=False)
class SerializedValue:
    """A value in serialised form: ``data`` (the in-band pickle stream), ``buffers``
    (out-of-band buffers, each exposing the buffer protocol, 1-d bytes), and a free
    ``metadata`` field that the runtime uses (e.g. to flag an error value).
    """

    data: bytes | memoryview
    buffers: Sequence[Any] = ()
    metadata: bytes = b""

    @classmethod
    def from_pickle(
        cls, data: bytes, buffers: Sequence[pickle.PickleBuffer], metadata: bytes = b""
    ) -> SerializedValue:
        """The value pickled already (protocol 5, ``buffers`` from its
        ``buffer_callback``), without pickling it again: what `serialize` returns."""
        return cls(data=data, buffers=[_raw(b) for b in buffers], metadata=metadata)

    @property
    def buffer_sizes(self) -> list[int]:
        return [_nbytes(b) for b in self.buffers]

    @property
    def total_size(self) -> int:
        """Bytes of metadata, pickle stream and buffers together."""
        return len(self.metadata) + _nbytes(self.data) + sum(self.buffer_sizes)


def _raw(buf: pickle.PickleBuffer) -> Any:
    try:
        return buf.raw()
    except BufferError:
        # A non-contiguous buffer: pickle it in a contiguous copy rather than fail.
        return memoryview(bytes(memoryview(buf)))


def serialize(value: Any, *, metadata: bytes = b"") -> SerializedValue:
    """Serialise ``value`` once (cloudpickle, protocol 5, out-of-band buffers).

    Raises `SerializationError` naming the type that would not pickle and, when it
    can be found by a cheap walk of containers and attributes, where it sits.
    """
    if isinstance(value, SerializedValue):
        return value
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        path, culprit = _find_culprit(value)
        type_name = _type_name(culprit)
        where = f" at {path}" if path != "<value>" else ""
        raise SerializationError(
            f"cannot serialise a value of type {_type_name(value)}: "
            f"{type_name}{where} is not picklable ({type(exc).__name__}: {exc})",
            type_name=type_name,
            path=path,
        ) from exc
    return SerializedValue.from_pickle(data, buffers, metadata)


def deserialize(
    value: SerializedValue | bytes | memoryview, buffers: Sequence[Any] | None = None
) -> Any:
    """Rebuild a value from a `SerializedValue`, or from ``(data, buffers)``.

    The buffers are used as they are (no copy): read-only shared-memory views give
    read-only numpy arrays and Arrow arrays backed by shared memory.
    """
    if isinstance(value, SerializedValue):
        data, buffers = value.data, value.buffers
    else:
        data = value
    try:
        return pickle.loads(data, buffers=buffers or ())
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialise a value ({type(exc).__name__}: {exc})",
            type_name=None,
        ) from exc


def _type_name(value: Any) -> str:
    cls = type(value)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value, protocol=5, buffer_callback=lambda b: None)
    except Exception:
        return False
    return True


def _children(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [(f"[{k!r}]", v) for k, v in list(value.items())[:1000]]
    if isinstance(value, list | tuple):
        return [(f"[{i}]", v) for i, v in enumerate(value[:1000])]
    if isinstance(value, set | frozenset):
        return [(f"{{{i}}}", v) for i, v in enumerate(list(value)[:1000])]
    attributes = getattr(value, "__dict__", None)
    if isinstance(attributes, dict):
        return [(f".{k}", v) for k, v in list(attributes.items())[:1000]]
    return []


def _find_culprit(value: Any, path: str = "<value>", depth: int = 0) -> tuple[str, Any]:
    """Walk into ``value`` to the innermost part that does not pickle (bounded)."""
    if depth >= 8:
        return path, value
    for suffix, child in _children(value):
        if not _picklable(child):
            return _find_culprit(child, path + suffix, depth + 1)
    return path, value
