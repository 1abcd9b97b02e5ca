"""Values large enough for shared memory, through the node's object store.

A value is serialised once with ``store.serialize`` (cloudpickle, protocol 5,
out-of-band buffers). Below the inline threshold (100 KiB) it travels inside the
messages as a plain pickle; at or above it, its producer writes it into the node's
shared-memory store and the messages carry only the marker ``STORE`` in place of
the data. Readers on the node get it zero-copy (numpy arrays come back as read-only
views of shared memory).

Who holds the store's references (the store frees an object nobody refs):

- the producer takes one when it writes (``put`` in a driver; a task's result in a
  worker);
- the node takes one as soon as it learns of the object (``put`` / ``done`` carrying
  ``STORE``), then tells a worker producer to drop its own (``release``); a driver
  keeps its ref while its ``ObjectRef`` lives;
- the node drops its ref when the object leaves its directory (owner freed it and no
  queued task needs it).

If the store component restarts, every link reconnects (``StoreClient.reconnect``)
and re-claims what it holds within the store's recovery grace period.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

import store
import transport

from ._serialization import dumps
from .exceptions import ObjectStoreFullError, SerializationError

__all__ = ["STORE", "StoreLink", "encode_value", "INLINE_THRESHOLD"]

logger = logging.getLogger("actorcore.store_link")

#: Stands for "the value is in the node's shared-memory store" in an object's data.
STORE = b"\x00actorcore-store"
INLINE_THRESHOLD = 100 * 1024


class StoreLink:
    """A core worker's (or node's) connection to the node's store service."""

    def __init__(self, client: store.StoreClient, trio_token: trio.lowlevel.TrioToken) -> None:
        self.client = client
        self.token = trio_token
        self.blocking = store.BlockingStoreClient(client, trio_token)
        self._reconnecting: trio.Event | None = None
        self.nursery: trio.Nursery | None = None

    @classmethod
    async def open(cls, address: str, token: bytes, name: str) -> StoreLink:
        client = await store.StoreClient.connect(address, token, name=name)
        return cls(client, trio.lowlevel.current_trio_token())

    async def reconnect(self) -> None:
        """Reconnect once, however many callers noticed the loss (core loop)."""
        if self._reconnecting is not None:
            await self._reconnecting.wait()
            return
        self._reconnecting = trio.Event()
        try:
            with trio.fail_after(30):
                while True:
                    try:
                        await self.client.reconnect(timeout=5)
                        return
                    except (transport.TransportError, OSError) as exc:
                        logger.info("store reconnect failed (%s); retrying", exc)
                        await trio.sleep(0.1)
        finally:
            self._reconnecting.set()
            self._reconnecting = None

    def _retrying(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call a blocking store operation; reconnect and retry once if the link died."""
        try:
            return fn(*args, **kwargs)
        except (transport.ConnectionLost, store.StoreClosedError):
            trio.from_thread.run(self.reconnect, trio_token=self.token)
            return fn(*args, **kwargs)

    def put(self, object_id: bytes, serialized: store.SerializedValue) -> None:
        """Write a large value (any thread but the core loop)."""
        try:
            self._retrying(self.blocking.put, object_id, serialized)
        except store.ObjectStoreFullError as exc:
            raise ObjectStoreFullError(str(exc)) from exc

    def get(self, object_id: bytes) -> Any:
        """Read a value, zero-copy (any thread but the core loop)."""
        return self._retrying(self.blocking.get, object_id, timeout=60)

    async def add_ref(self, object_id: bytes) -> None:
        """Take a ref and wait until the store has it (``add_ref`` itself is one-way;
        a request behind it on the same connection returns only after it was applied,
        so a producer's release sent after this cannot overtake it)."""
        try:
            await self.client.add_ref(object_id)
            await self.client.contains(object_id)
        except (transport.ConnectionLost, store.StoreClosedError):
            await self.reconnect()
            await self.client.add_ref(object_id)
            await self.client.contains(object_id)

    async def remove_ref(self, object_id: bytes) -> None:
        try:
            await self.client.remove_ref(object_id)
        except (transport.ConnectionLost, store.StoreClosedError):
            await self.reconnect()
            await self.client.remove_ref(object_id)

    def release_soon(self, object_ids: list[bytes]) -> None:
        """Drop this link's refs to ``object_ids`` later (any thread, never blocks)."""

        async def go() -> None:
            for oid in object_ids:
                try:
                    await self.remove_ref(oid)
                except Exception as exc:
                    logger.debug("remove_ref %s failed: %s", oid.hex(), exc)

        def spawn() -> None:
            if self.nursery is not None:
                self.nursery.start_soon(go)

        try:
            self.token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            pass

    async def statistics(self) -> dict:
        return await self.client.store_statistics()


def encode_value(
    value: Any, object_id: bytes, link: StoreLink | None, *, what: str = "value"
) -> bytes:
    """Serialise ``value``: inline pickle bytes, or ``STORE`` after writing it there."""
    try:
        ser = store.serialize(value)
    except store.SerializationError as exc:
        raise SerializationError(f"could not serialize {what}: {exc}") from exc
    if ser.total_size < INLINE_THRESHOLD or link is None:
        if not ser.buffers:
            return bytes(ser.data)
        return dumps(value, what=what)
    link.put(object_id, ser)
    return STORE
