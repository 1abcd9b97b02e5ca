"""Frame format and the message codec.

A frame is a fixed 20-byte header followed by a body::

    header: body_len u32 | kind u8 | 3 pad bytes | nbufs u32 | request id u64   (little endian)
    body:   nbufs x u32 buffer lengths | pickle stream | buffer 0 | buffer 1 | ...

The pickle stream is stdlib pickle protocol 5 (the fastest codec we measured for
control messages, see benchmarks/README.md). Every `pickle.PickleBuffer` inside the
message travels out of band: its bytes are written straight from the sender's memory
(scatter/gather) and on the receiver the message gets `memoryview` slices of the one
frame-sized bytearray the frame was read into, never a copy. (Pickle refuses a
PickleBuffer over non-contiguous memory; the sender gets that PicklingError.)

Message classes registered with `register_codes` (``_codes``) are written as
copyreg extension codes (``EXT4``), which the receiver resolves without importing
their module; everything else pickles as usual.

The request id and kind sit in the header, not in the pickle, so a frame that fails
to unpickle can still be answered (a request) or routed to its waiter (a reply).

A one-way frame does not use the request id (0): a nonzero one there marks a *flat*
frame, whose pickle stream is the plain tuple of a message's fields and whose
request id is its class's code (``_flat``).
"""

from __future__ import annotations

import pickle
import struct
import traceback
from typing import Any

from ._errors import ProtocolError
from ._flat import build_flat, flat_encoders

__all__ = [
    "HEADER",
    "KIND_NAMES",
    "ONEWAY",
    "REPLY_ERR",
    "REPLY_OK",
    "REQUEST",
    "decode_body",
    "encode_error",
    "encode_frame",
]

HEADER = struct.Struct("<IB3xIQ")
HEADER_SIZE = HEADER.size
MAX_BODY = 2**32 - 1

ONEWAY = 0
REQUEST = 1
REPLY_OK = 2
REPLY_ERR = 3
KIND_NAMES = {ONEWAY: "oneway", REQUEST: "request", REPLY_OK: "reply", REPLY_ERR: "reply"}

# Frames whose pickle stream is at most this long are joined with their header into
# one bytes object (one small copy beats a second iovec entry); longer pickle streams
# are sent as their own chunk.
_JOIN_LIMIT = 64 * 1024

_pack_header = HEADER.pack
_dumps = pickle.dumps
_loads = pickle.loads
_flat_encoders = flat_encoders


def encode_frame(kind: int, rid: int, message: Any) -> tuple[list[bytes | memoryview], int]:
    """Pickle ``message`` into a frame; return its chunks and its total size in bytes.

    Pickling errors propagate unchanged (with a note) to the caller that sent the message.
    A one-way message of a class registered with ``register_flat`` goes as a flat
    frame (``_flat``).
    """
    if kind == ONEWAY and (flat := _flat_encoders.get(message.__class__)) is not None:
        # In band: no buffer callback (half the cost of pickling such a small tuple);
        # a flat class's fields are small by design.
        code, fields = flat
        try:
            values = fields(message)
            data = _dumps(values, 5) if values is not None else None
        except Exception as exc:
            exc.add_note(f"transport: cannot pickle message of type {type(message).__qualname__}")
            raise
        if data is not None:  # (None: a message its class sends as an ordinary frame)
            size = HEADER_SIZE + len(data)
            if len(data) <= _JOIN_LIMIT:
                return [_pack_header(len(data), kind, 0, code) + data], size
            return [_pack_header(len(data), kind, 0, code), data], size
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = _dumps(message, 5, buffer_callback=buffers.append)
    except Exception as exc:
        exc.add_note(f"transport: cannot pickle message of type {type(message).__qualname__}")
        raise
    # (pickle itself refuses non-contiguous buffers, so raw() cannot fail here)
    raws = [b.raw() for b in buffers] if buffers else []
    if not raws:
        size = HEADER_SIZE + len(data)
        if len(data) <= _JOIN_LIMIT:
            return [_pack_header(len(data), kind, 0, rid) + data], size
        return [_pack_header(len(data), kind, 0, rid), data], size
    lens = [r.nbytes for r in raws]
    prefix = struct.pack(f"<{len(lens)}I", *lens)
    body_len = len(prefix) + len(data) + sum(lens)
    size = HEADER_SIZE + body_len
    head = _pack_header(body_len, kind, len(raws), rid) + prefix
    chunks: list[bytes | memoryview]
    if len(data) <= _JOIN_LIMIT:
        chunks = [head + data]
    else:
        chunks = [head, data]
    chunks.extend(raws)
    return chunks, size


def decode_body(body: memoryview, nbufs: int, flat: int = 0) -> Any:
    """Unpickle a frame body; ``flat``: the request id of a one-way frame (nonzero:
    a flat frame's class code, ``_flat``).

    Raises `ProtocolError` if the buffer table is inconsistent (a corrupt frame: the
    connection must close); any other exception is a message that failed to unpickle.
    """
    if nbufs == 0:
        if flat:
            return build_flat(flat, _loads(body))
        return _loads(body)
    table = 4 * nbufs
    if table > len(body):
        raise ProtocolError(f"frame claims {nbufs} buffers but its body is {len(body)} bytes")
    lens = struct.unpack_from(f"<{nbufs}I", body)
    pickle_len = len(body) - table - sum(lens)
    if pickle_len < 0:
        raise ProtocolError(f"frame buffer lengths add up to more than its body ({len(body)} bytes)")
    offset = table + pickle_len
    buffers = []
    for n in lens:
        buffers.append(body[offset : offset + n])
        offset += n
    value = _loads(body[table : table + pickle_len], buffers=buffers)
    return build_flat(flat, value) if flat else value


def qualified_name(tp: type) -> str:
    module = getattr(tp, "__module__", None) or "?"
    return f"{module}.{tp.__qualname__}"


def encode_error(exc: BaseException) -> tuple[str, str, str, bytes | None]:
    """The plain-data form of a failed request: (type name, message, traceback, pickled exc)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob: bytes | None = pickle.dumps(exc, 5)
    except Exception:
        blob = None
    try:
        text = str(exc)
    except Exception as str_exc:  # a broken __str__ must not break the reply
        text = f"<str() failed: {str_exc!r}>"
    return qualified_name(type(exc)), text, tb, blob
