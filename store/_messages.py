"""The store's wire vocabulary: every message between a client and the service.

Each message is a frozen attrs class; the service (`_service.py`) and the client
(`_client.py`) each dispatch what they receive through one `transport.Dispatcher`,
which checks a message against the validators below before its handler runs. A
message of a class the endpoint does not handle, or with fields of the wrong type,
is refused with `store.BadRequest` (a request) or logged and dropped (a one-way
message), and the endpoint serves on.

Client to service, requests (answer in brackets):

  `Hello`                          [`StoreHello`: where the arena is, how to use it]
  `Get`(object_id, timeout)        [`InlineValue` | `SharedView` | `FileView`]
  `PutInline`(object_id, ...)      [None]  a small value inside the message
  `Create`(object_id, layout...)   [payload offset in the arena, or `OnDisk`]
                                   (``seal_follows``: lookups wait for its seal)
  `Seal`(object_id, with_view)     [the writer's view id, or None]
  `Contains`, `Pin`, `Delete`      [bool, None, bool]
  `Missing`(object_ids)            [those of them the store does not have]
  `ReadChunk`(object_id, offset, size) [the bytes, out of band]
  `Info`(object_id)                [`ObjectInfo`]
  `Claim`(refs, pins, views)       [new view ids] after a restart of the service
  `Statistics`                     [`store.StoreStatistics`]
  `WaitWarm`                       [None] once the warm margin is faulted in
  `WithReleases`(view_ids, request) a request carrying the client's pending releases

Client to service, one-way: `Release`, `AddRef`, `RemoveRef`, `Unpin`, `Abort`.
Service to client, request: `DropCache` [how many leases were dropped].

A value's layout in the arena or in a file is a `Location` (its fields ride in
`SharedView` and `FileView`).

Every message is on the per-request path of every small object, so it is built
for speed: a frozen attrs class without slots (its ``__init__`` writes the instance
dict, half the cost of a frozen slotted one), pickled as its class and a tuple of
its fields (`transport.compact`), and with its checks in field metadata
(`transport.check`): run once, by the receiving dispatcher, not by every sender nor
while unpickling.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
from attrs import validators as v

import transport

from ._serialize import SerializedValue

__all__ = [
    "Abort",
    "AddRef",
    "Adopt",
    "Claim",
    "Contains",
    "Create",
    "Delete",
    "DropCache",
    "FileView",
    "Get",
    "Missing",
    "Hello",
    "Info",
    "InlineValue",
    "Lend",
    "Lent",
    "Location",
    "ObjectInfo",
    "OnDisk",
    "Pending",
    "Pin",
    "PutInline",
    "Recall",
    "ReadChunk",
    "Release",
    "RemoveRef",
    "Seal",
    "SharedView",
    "Statistics",
    "WaitWarm",
    "StoreHello",
    "Unpin",
    "WithReleases",
]

_id = v.instance_of(bytes)  # object ids, metadata
_size = v.and_(v.instance_of(int), v.ge(0))
_flag = v.instance_of(bool)
_blob_types = (bytes, bytearray, memoryview)
_blob = v.instance_of(_blob_types)


def _sizes(instance: Any, attribute: Any, value: Any) -> None:
    """A tuple or list of ints >= 0 (cheaper than ``deep_iterable`` per message)."""
    if type(value) not in (tuple, list) or any(type(n) is not int or n < 0 for n in value):
        raise TypeError(f"'{attribute.name}' must be a sequence of ints >= 0, got {value!r:.100}")


def _view_ids(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not list or any(type(n) is not int for n in value):
        raise TypeError(f"'{attribute.name}' must be a list of ints, got {value!r:.100}")


def _blobs(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not list or any(not isinstance(b, _blob_types) for b in value):
        raise TypeError(f"'{attribute.name}' must be a list of bytes-like buffers, "
                        f"got {value!r:.100}")


def _adopts(instance: Any, attribute: Any, value: Any) -> None:
    if type(value) is not list or any(type(a) is not Adopt for a in value):
        raise TypeError(f"'{attribute.name}' must be a list of Adopt, got {value!r:.100}")


_timeout = v.optional(v.instance_of((int, float)))


def _as_tuple(sizes: Iterable[int]) -> tuple[int, ...]:
    return tuple(sizes)


# -- values and places -------------------------------------------------------------


@transport.message
class Location:
    """Where a sealed value's payload is in a mapping (the arena, or a file): its
    offset and its layout (metadata, pickle stream, out-of-band buffers). Built by
    the service (and by a writer for its own object), so not validated."""

    payload: int
    meta_len: int
    data_len: int
    buffer_sizes: tuple[int, ...] = attrs.field(converter=_as_tuple)


@transport.compact
@transport.message
class OnDisk:
    """`Create`'s answer when shared memory cannot take the object: it is created in
    the file ``path``, its payload at ``payload`` (the writer maps the file)."""

    path: str
    payload: int


@transport.compact
@transport.message
class InlineValue:
    """`Get`'s answer for a small value: a copy inside the reply (``buffers`` ride
    out of band)."""

    metadata: bytes
    data: Any
    buffers: list[Any]

    def value(self) -> SerializedValue:
        return SerializedValue(data=self.data, buffers=self.buffers, metadata=self.metadata)


@transport.compact
@transport.message
class SharedView:
    """`Get`'s answer: the value is in the arena at a `Location` (its fields here, in
    one record: every class in a reply costs a lookup to pickle and to unpickle);
    ``view_id`` holds it for this client until released."""

    view_id: int
    payload: int
    meta_len: int
    data_len: int
    buffer_sizes: tuple[int, ...]

    @property
    def location(self) -> Location:
        return Location(self.payload, self.meta_len, self.data_len, self.buffer_sizes)


@transport.compact
@transport.message
class FileView:
    """`Get`'s answer for a spilled value that could not be restored: the reader maps
    ``path`` read-only (still zero copy), the payload at a `Location` in it (its
    fields here); ``view_id`` holds the file."""

    view_id: int
    path: str
    payload: int
    meta_len: int
    data_len: int
    buffer_sizes: tuple[int, ...]

    @property
    def location(self) -> Location:
        return Location(self.payload, self.meta_len, self.data_len, self.buffer_sizes)


@transport.compact
@transport.message
class ObjectInfo:
    """`Info`'s answer: an object's state, size and payload layout (for transfers)."""

    state: str
    size: int
    payload_len: int
    meta_len: int
    data_len: int
    buffer_sizes: tuple[int, ...]


@transport.compact
@transport.message
class StoreHello:
    """`Hello`'s answer: the arena to map, the service's inline threshold, and how
    many bytes of the arena it keeps faulted in ahead of use (``warm``, 0: none)."""

    arena_path: str
    arena_size: int
    inline_threshold: int
    prefix: str
    warm: int = 0


# -- requests ----------------------------------------------------------------------


@transport.message
class Hello:
    pass


@transport.compact
@transport.message
class Get:
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    timeout: float | None = attrs.field(default=None, metadata=transport.check(_timeout))


@transport.compact
@transport.message
class PutInline:
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    metadata: bytes = attrs.field(metadata=transport.check(_id))
    data: Any = attrs.field(metadata=transport.check(_blob))
    buffers: list[Any] = attrs.field(metadata=transport.check(_blobs))
    take_ref: bool = attrs.field(metadata=transport.check(_flag))


@transport.compact
@transport.message
class Create:
    """Allocate an unsealed object. With ``seal_follows`` its writer sends the `Seal`
    without waiting for the answer and hands the object's id out at once: until
    the seal is applied (or the writer aborts or goes), every lookup of the object
    waits for it, as if it were sealed already."""

    object_id: bytes = attrs.field(metadata=transport.check(_id))
    meta_len: int = attrs.field(metadata=transport.check(_size))
    data_len: int = attrs.field(metadata=transport.check(_size))
    buffer_sizes: tuple[int, ...] = attrs.field(metadata=transport.check(_sizes))
    take_ref: bool = attrs.field(metadata=transport.check(_flag))
    seal_follows: bool = attrs.field(default=False, metadata=transport.check(_flag))


@transport.compact
@transport.message
class Seal:
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    with_view: bool = attrs.field(default=False, metadata=transport.check(_flag))


@transport.compact
@transport.message
class Contains:
    object_id: bytes = attrs.field(metadata=transport.check(_id))


@transport.compact
@transport.message
class Missing:
    """Which of ``object_ids`` the store does not have (one round trip for many: a
    reader checking that the values it was told are here still are)."""

    object_ids: list[bytes] = attrs.field(
        metadata=transport.check(v.deep_iterable(_id, v.instance_of(list))))


@transport.compact
@transport.message
class Pin:
    object_id: bytes = attrs.field(metadata=transport.check(_id))


@transport.compact
@transport.message
class Delete:
    object_id: bytes = attrs.field(metadata=transport.check(_id))


@transport.compact
@transport.message
class ReadChunk:
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    offset: int = attrs.field(metadata=transport.check(v.instance_of(int)))
    size: int = attrs.field(metadata=transport.check(v.instance_of(int)))


@transport.compact
@transport.message
class Info:
    object_id: bytes = attrs.field(metadata=transport.check(_id))


@transport.compact
@transport.message
class Claim:
    """Re-attach, after a restart of the service, the refs and pins a client held and
    the views under its live values, and seal what it had sealed unanswered;
    answered with the views' new ids."""

    refs: dict[bytes, int] = attrs.field(metadata=transport.check(
        v.deep_mapping(_id, v.instance_of(int), v.instance_of(dict))))
    pins: dict[bytes, int] = attrs.field(metadata=transport.check(
        v.deep_mapping(_id, v.instance_of(int), v.instance_of(dict))))
    views: list[bytes] = attrs.field(metadata=transport.check(v.deep_iterable(_id, v.instance_of(list))))
    #: Objects whose seal the client sent without waiting (`Create.seal_follows`)
    #: and never got the answer to: the old service may have died before reading
    #: it. Found unsealed in the arena, they are sealed now (their writer had
    #: written every byte before the seal left).
    sealed: list[bytes] = attrs.field(
        factory=list, metadata=transport.check(v.deep_iterable(_id, v.instance_of(list))))
    #: Adopts the client sent and never got the answer to, likewise: the blocks
    #: lent, found unsealed under their lend ids, become those objects now.
    adopts: list[Adopt] = attrs.field(factory=list, metadata=transport.check(_adopts))


@transport.message
class Statistics:
    pass


@transport.message
class WaitWarm:
    """Answered once the service's warmer has caught up (or gave up, or is off)."""


@transport.compact
@transport.message
class WithReleases:
    """A request carrying the view releases the client had pending: one frame, one
    write. The releases are applied first, then ``request`` is dispatched."""

    view_ids: list[int] = attrs.field(metadata=transport.check(_view_ids))
    request: Any


# -- one-way notices ------------------------------------------------------------------


@transport.compact
@transport.message
class Release:
    view_ids: list[int] = attrs.field(metadata=transport.check(_view_ids))


@transport.compact
@transport.message
class AddRef:
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    count: int = attrs.field(default=1, metadata=transport.check(v.instance_of(int)))


@transport.compact
@transport.message
class RemoveRef:
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    count: int = attrs.field(default=1, metadata=transport.check(v.instance_of(int)))


@transport.compact
@transport.message
class Unpin:
    object_id: bytes = attrs.field(metadata=transport.check(_id))


@transport.compact
@transport.message
class Abort:
    object_id: bytes = attrs.field(metadata=transport.check(_id))


# -- service to client -----------------------------------------------------------------


@transport.message
class DropCache:
    """The store runs out of spill candidates: let go of cached leases (the releases
    are sent before the answer)."""


# A block lent to a writer ahead of its puts (``store._core``, "Lending"): the
# writer copies its next large value into it without asking, then `Adopt`\s it.


@transport.compact
@transport.message
class Lend:
    """Lend this client a block of ``size`` bytes (an object's whole block: its
    header and payload) for a put to come, under an id starting with ``prefix``
    (lookups of such ids that find nothing ask the client first: `Pending`).
    Answered with `Lent`, or ``None`` when the block does not fit without
    spilling (nothing is spilled for a loan)."""

    size: int = attrs.field(metadata=transport.check(_size))
    prefix: bytes = attrs.field(metadata=transport.check(_id))


@transport.message
class Lent:
    """A block lent (built by the service, so not validated): its id in the store,
    its offset in the arena and its size. The writer's object goes at ``offset``,
    its payload right after the object's header (`store._arena.header_size`)."""

    lend_id: bytes
    offset: int
    size: int


@transport.compact
@transport.message
class Adopt:
    """The block lent as ``lend_id`` holds ``object_id`` now, written in full: the
    store makes it that object, sealed (the writer sends this without waiting and
    hands the id out at once). Answered as `Seal` ``with_view=take_ref`` is."""

    lend_id: bytes = attrs.field(metadata=transport.check(_id))
    object_id: bytes = attrs.field(metadata=transport.check(_id))
    meta_len: int = attrs.field(metadata=transport.check(_size))
    data_len: int = attrs.field(metadata=transport.check(_size))
    buffer_sizes: tuple[int, ...] = attrs.field(metadata=transport.check(_sizes))
    take_ref: bool = attrs.field(metadata=transport.check(_flag))


@transport.message
class Recall:
    """The store wants the block lent as ``lend_id`` back (sent by the service to its
    client when an allocation does not fit). Answered ``True``: given back, the
    writer will not touch it; ``False``: a put is writing into it, and its `Adopt`
    follows."""

    lend_id: bytes


@transport.message
class Pending:
    """Which objects the client adopted (`Adopt` sent) without the answer yet
    (sent by the service to a client it lent blocks to, before it tells a reader
    that an id with that client's prefix is not here)."""


# Each class above travels as its extension code, not its module and name
# (transport._codes).
transport.register_codes(*transport.classes_of(__name__))
