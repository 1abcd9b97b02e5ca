"""`BlockingStoreClient`: a `StoreClient` for a thread that is not running Trio."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

import trio

import transport

from . import _messages as m
from ._arena import header_size, payload_layout
from ._client import StoreClient
from ._errors import StoreClosedError
from ._payload import _location
from ._serialize import SerializedValue, deserialize
from ._statistics import StoreStatistics

__all__ = ["BlockingStoreClient"]


class BlockingStoreClient:
    """`StoreClient` for a thread that is not running Trio (a worker's user code).

    Calls hop into the Trio run with `trio.from_thread.run` (``trio_token`` defaults
    to the current run's when built inside it), but for a large ``put``: it
    serialises and copies in the calling thread, which asks the store for the block
    (``create``) itself, the answer handed to it by the connection's reader
    (`transport.Connection.request_from_thread`: no hop into the loop and out, 0.3 ms
    each on this machine), and sends the seal without waiting for the answer
    (`Create.seal_follows`). Values from ``get`` are deserialised in the calling
    thread, over the same zero-copy views.
    """

    def __init__(self, client: StoreClient, trio_token: trio.lowlevel.TrioToken | None = None):
        self._client = client
        self._token = trio_token or client._token

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def put(self, object_id: bytes, value: Any, *, metadata: bytes = b"", take_ref: bool = True,
            timeout: float | None = 60.0) -> int:
        client = self._client
        serialized = client._serialize(value, metadata)
        if serialized.total_size < client.inline_threshold:
            return self._run(_put, client, object_id, serialized, take_ref, timeout)
        meta_len, data_len = len(serialized.metadata), memoryview(serialized.data).nbytes
        sizes = tuple(serialized.buffer_sizes)
        need = header_size(len(object_id), len(sizes)) + payload_layout(meta_len, data_len, sizes)[1]
        lent = client._take_lent(object_id, need)
        if lent is not None:
            return self._put_lent(object_id, serialized, lent, need, take_ref)
        reply = client._call_from_thread(m.Create(
            object_id, len(serialized.metadata), memoryview(serialized.data).nbytes,
            tuple(serialized.buffer_sizes), take_ref, seal_follows=True), timeout)
        client._lend_soon(object_id, need)  # for the next put: answered as this one copies
        try:
            mapping, payload = client._where(reply)
            client._write(mapping, payload, serialized)
        except BaseException:
            self._abort(object_id)
            raise
        # The seal goes without waiting for its answer (`Create.seal_follows`: the
        # store makes every lookup of the object wait for it); the answer, on the
        # loop, leases the writer's view (`_on_sealed`). The writer's ref is counted
        # here, before the seal leaves, and not on the loop: waking the loop thread
        # now makes it take the GIL from this one as the seal is written (measured:
        # 0.2-23.6 ms, median 6.8, at load 9). That is safe because no one else
        # touches this id's count before this returns (nobody else knows the id;
        # a retry of the put runs in this thread), `Counter` creates the key in one
        # store, and what the loop does with other keys meanwhile is its own.
        location = _location(payload, serialized)
        if take_ref:
            client.refs[object_id] += 1
        client._unanswered_seals[object_id] = None
        try:
            client._conn.request_soon_from_thread(
                m.Seal(object_id, take_ref),
                functools.partial(client._on_sealed, object_id, take_ref, location, mapping))
        except BaseException as exc:
            # Not sent: nothing was counted (a retry creates the object afresh; the
            # service dropped the unsealed block with our connection).
            client._unanswered_seals.pop(object_id, None)
            _not_sent(client, object_id, take_ref, exc)
        return serialized.total_size

    def _put_lent(self, object_id: bytes, serialized: SerializedValue, lent: m.Lent,
                  need: int, take_ref: bool) -> int:
        """`put` into the block the store lent ahead (``store._core``, "Lending"): no
        request waited for before the copy; the `Adopt` after it goes without
        waiting, like a seal that follows."""
        client = self._client
        sizes = tuple(serialized.buffer_sizes)
        payload = lent.offset + header_size(len(object_id), len(sizes))
        client._lend_soon(object_id, need)  # the next put's: answered as this one copies
        try:
            client._write(client._mapping, payload, serialized)
        except BaseException:
            client._untake(lent.lend_id)
            raise
        adopt = m.Adopt(lent.lend_id, object_id, len(serialized.metadata),
                        memoryview(serialized.data).nbytes, sizes, take_ref)
        # The ref is counted here, as for a seal that follows (see `put`).
        if take_ref:
            client.refs[object_id] += 1
        client._adopting(adopt)
        try:
            client._conn.request_soon_from_thread(adopt, functools.partial(
                client._on_adopted, object_id, take_ref, _location(payload, serialized)))
        except BaseException as exc:
            client._unanswered_adopts.pop(object_id, None)
            client._untake(lent.lend_id)
            _not_sent(client, object_id, take_ref, exc)
        return serialized.total_size

    def _abort(self, object_id: bytes) -> None:
        """Give up an unsealed object (from this thread if the link is idle)."""
        try:
            if self._client._conn.send_from_thread(m.Abort(object_id)):
                return
            trio.from_thread.run_sync(self._client._abort, object_id, trio_token=self._token)
        except (trio.RunFinishedError, transport.TransportError):
            pass  # the service drops our unsealed blocks with the connection

    def get(self, object_id: bytes, *, timeout: float | None = None) -> Any:
        return deserialize(self.get_serialized(object_id, timeout=timeout))

    def get_serialized(self, object_id: bytes, *, timeout: float | None = None) -> SerializedValue:
        lease = self._client._leases.get(object_id)
        if lease is not None:  # no hop at all
            return lease.serialized()
        small = self._client._small.get(object_id)
        if small is not None:
            return small
        return self._run(_get_serialized, self._client, object_id, timeout)

    def contains(self, object_id: bytes) -> bool:
        return self._run(self._client.contains, object_id)

    def add_ref(self, object_id: bytes, count: int = 1) -> None:
        self._run(self._client.add_ref, object_id, count)

    def remove_ref(self, object_id: bytes, count: int = 1) -> None:
        self._run(self._client.remove_ref, object_id, count)

    def pin(self, object_id: bytes) -> None:
        self._run(self._client.pin, object_id)

    def unpin(self, object_id: bytes) -> None:
        self._run(self._client.unpin, object_id)

    def delete(self, object_id: bytes) -> bool:
        return self._run(self._client.delete, object_id)

    def store_statistics(self) -> StoreStatistics:
        return self._run(self._client.store_statistics)


async def _put(client: StoreClient, object_id: bytes, serialized: SerializedValue,
               take_ref: bool, timeout: float | None) -> int:  # noqa: ASYNC109
    return await client.put(object_id, serialized, take_ref=take_ref, timeout=timeout)


async def _get_serialized(client: StoreClient, object_id: bytes, timeout: float | None):  # noqa: ASYNC109
    return await client.get_serialized(object_id, timeout=timeout)


def _not_sent(client: Any, object_id: bytes, take_ref: bool, exc: BaseException) -> NoReturn:
    """A `Seal` or `Adopt` could not be sent: take back the ref counted for it, and
    raise ``exc``, as `StoreClosedError` where the store is gone."""
    if take_ref:
        if client.refs[object_id] <= 1:
            del client.refs[object_id]
        else:
            client.refs[object_id] -= 1
    if isinstance(exc, trio.RunFinishedError):
        raise StoreClosedError("the store client's Trio run has finished") from None
    if isinstance(exc, transport.ConnectionLost):
        raise StoreClosedError(f"connection to the object store lost: {exc}") from exc
    raise exc
