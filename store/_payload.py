"""What a store client hands out and keeps: `Payload` (an object's bytes and layout,
for a transfer), the `_Lease` under zero-copy values (see the lifetime notes in
``store._client``), and the small helpers that lay a serialised value out as the
arena does."""

from __future__ import annotations

import logging
from typing import Any

import attrs

from . import _messages as m
from ._arena import Mapping, payload_layout
from ._serialize import SerializedValue

__all__ = ["Payload"]

logger = logging.getLogger("store.client")


def _location(payload: int, serialized: SerializedValue) -> m.Location:
    data_len = memoryview(serialized.data).nbytes
    return m.Location(payload, len(serialized.metadata), data_len, tuple(serialized.buffer_sizes))


class _Lease:
    """Keeps one object's memory from being reused while views of it live."""

    __slots__ = ("__weakref__", "client", "location", "mapping", "object_id", "view_ids")

    def __init__(self, client: Any, object_id: bytes, view_id: int,
                 location: m.Location, mapping: Mapping):
        self.client = client
        self.object_id = object_id
        self.view_ids = [view_id]
        self.location = location
        self.mapping = mapping

    def serialized(self) -> SerializedValue:
        location = self.location
        payload, meta_len, data_len = location.payload, location.meta_len, location.data_len
        sizes = location.buffer_sizes
        offsets, _ = payload_layout(meta_len, data_len, sizes)
        view = self.mapping.view
        base = self.mapping.address + payload
        import pyarrow as pa  # at first use: the module docstring

        buffers = [pa.foreign_buffer(base + o, s, base=self) for o, s in zip(offsets, sizes, strict=True)]
        return SerializedValue(
            data=bytes(view[payload + meta_len : payload + meta_len + data_len]),
            buffers=buffers,
            metadata=bytes(view[payload : payload + meta_len]),
        )

    def __del__(self) -> None:
        try:
            self.client._release_soon(self.view_ids)
        except Exception as exc:  # interpreter shutdown, loop gone: the connection drop frees it
            logger.debug("releasing %d view(s) failed: %r", len(self.view_ids), exc)


@attrs.frozen(kw_only=True)
class Payload:
    """An object's payload and layout, from `StoreClient.payload`: what a
    receiving store's `StoreClient.create` needs, and the bytes to fill it with."""

    meta_len: int
    data_len: int
    buffer_sizes: tuple[int, ...]
    view: memoryview  # read-only; keeps the object's memory leased while it lives

    @property
    def size(self) -> int:
        return self.view.nbytes


def _small_payload(value: SerializedValue) -> Payload:
    """The payload bytes of a small value the store copied out, laid out as in the
    arena (metadata, data, then each buffer at its aligned offset)."""
    meta = memoryview(value.metadata).cast("B")
    data = memoryview(value.data).cast("B")
    buffers = [memoryview(b).cast("B") for b in value.buffers]
    sizes = tuple(b.nbytes for b in buffers)
    offsets, length = payload_layout(meta.nbytes, data.nbytes, sizes)
    out = bytearray(length)
    out[: meta.nbytes] = meta
    out[meta.nbytes : meta.nbytes + data.nbytes] = data
    for offset, buffer in zip(offsets, buffers, strict=True):
        out[offset : offset + buffer.nbytes] = buffer
    return Payload(meta_len=meta.nbytes, data_len=data.nbytes, buffer_sizes=sizes,
                   view=memoryview(bytes(out)))


def _owned(value: SerializedValue) -> SerializedValue:
    """A copy that shares no memory with the caller's objects or a received frame."""
    return SerializedValue(
        data=bytes(value.data), buffers=[bytes(b) for b in value.buffers],
        metadata=bytes(value.metadata),
    )
