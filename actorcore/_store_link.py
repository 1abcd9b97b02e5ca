"""Values large enough for shared memory, through the node's object store.

A value is pickled once (cloudpickle, protocol 5, out-of-band buffers). Below the
inline threshold (100 KiB) it travels inside the messages as a plain pickle; at or
above it, its producer writes it into the node's shared-memory store
(``store.serialize``) and the messages carry only the marker ``STORE`` in place of
the data. Readers on the node get it zero-copy (numpy arrays come back as read-only
views of shared memory).

A driver or worker connects to the store lazily, on its first large object: the
store client maps the arena with pyarrow, and importing pyarrow costs ~100 ms of
start-up that a program of small tasks never needs.

Who holds the store's references (the store frees an object nobody refs):

- the producer takes one when it writes (``put`` in a driver; a task's result in a
  worker);
- the node takes one as soon as it learns of the object (``put`` / ``done`` carrying
  ``STORE``), waits until the store has applied it, then tells the producer to drop
  its own (``release``);
- the node drops its ref when the object leaves its directory (owner freed it and no
  queued task needs it).

If the store component restarts, every link reconnects (``StoreClient.reconnect``)
and re-claims what it holds within the store's recovery grace period.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import cloudpickle
import trio

import transport

from ._serialization import dumps
from .exceptions import ObjectStoreFullError, SerializationError

if TYPE_CHECKING:
    import store

__all__ = ["STORE", "StoreLink", "encode_value", "INLINE_THRESHOLD"]

logger = logging.getLogger("actorcore.store_link")

#: Stands for "the value is in the node's shared-memory store" in an object's data.
STORE = b"\x00actorcore-store"
INLINE_THRESHOLD = 100 * 1024


def _store_errors() -> tuple[type[BaseException], ...]:
    import store

    return (transport.ConnectionLost, store.StoreClosedError)


class StoreLink:
    """A core worker's (or node's) connection to the node's store service.

    Connected on first use (``connect``); from a thread other than the core loop the
    first use enters the loop once to dial.
    """

    def __init__(
        self, address: str, token: bytes, name: str, trio_token: trio.lowlevel.TrioToken
    ) -> None:
        self.address = address
        self._auth = token
        self.name = name
        self.token = trio_token
        self.client: Any = None
        self.blocking: Any = None
        self._connecting: trio.Event | None = None
        self._reconnecting: trio.Event | None = None
        self.nursery: trio.Nursery | None = None

    @classmethod
    async def open(cls, address: str, token: bytes, name: str) -> StoreLink:
        """A link connected now (the node's own)."""
        link = cls(address, token, name, trio.lowlevel.current_trio_token())
        await link.connect()
        return link

    @property
    def connected(self) -> bool:
        return self.client is not None

    async def connect(self) -> None:
        """Dial the store once, however many callers ask at the same time (core loop)."""
        if self.client is not None:
            return
        if self._connecting is not None:
            await self._connecting.wait()
            if self.client is None:
                raise transport.ConnectError(f"cannot reach the object store at {self.address}")
            return
        self._connecting = trio.Event()
        try:
            import store

            client = await store.StoreClient.connect(self.address, self._auth, name=self.name)
            self.blocking = store.BlockingStoreClient(client, self.token)
            self.client = client
        finally:
            self._connecting.set()
            self._connecting = None

    def _ensure(self) -> None:
        if self.client is None:
            trio.from_thread.run(self.connect, trio_token=self.token)

    async def reconnect(self) -> None:
        """Reconnect once, however many callers noticed the loss (core loop)."""
        if self.client is None:
            await self.connect()
            return
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

    def _retrying(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a blocking store operation; reconnect and retry once if the link died."""
        self._ensure()
        try:
            return getattr(self.blocking, fn_name)(*args, **kwargs)
        except _store_errors():
            trio.from_thread.run(self.reconnect, trio_token=self.token)
            return getattr(self.blocking, fn_name)(*args, **kwargs)

    def put(self, object_id: bytes, serialized: Any) -> None:
        """Write a large value (any thread but the core loop)."""
        import store

        try:
            self._retrying("put", object_id, serialized)
        except store.ObjectStoreFullError as exc:
            raise ObjectStoreFullError(
                str(exc), capacity=exc.capacity, used=exc.used, requested=exc.requested
            ) from exc

    def get(self, object_id: bytes) -> Any:
        """Read a value, zero-copy (any thread but the core loop)."""
        return self._retrying("get", object_id, timeout=60)

    async def add_ref(self, object_id: bytes) -> None:
        """Take a ref and wait until the store has it (``add_ref`` itself is one-way;
        a request behind it on the same connection returns only after it was applied,
        so a producer's release sent after this cannot overtake it)."""
        await self.connect()
        try:
            await self.client.add_ref(object_id)
            await self.client.contains(object_id)
        except _store_errors():
            await self.reconnect()
            await self.client.add_ref(object_id)
            await self.client.contains(object_id)

    async def remove_ref(self, object_id: bytes) -> None:
        if self.client is None:
            return  # never connected: we hold nothing
        try:
            await self.client.remove_ref(object_id)
        except _store_errors():
            await self.reconnect()
            await self.client.remove_ref(object_id)

    def release_soon(self, object_ids: list[bytes]) -> None:
        """Drop this link's refs to ``object_ids`` later (any thread, never blocks)."""
        if self.client is None:
            return

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

    async def statistics(self) -> store.StoreStatistics:
        """The node's store service's figures (`store.StoreStatistics`); reconnects
        once if the service restarted since the last call, like every other call."""
        await self.connect()
        try:
            stats: store.StoreStatistics = await self.client.store_statistics()
        except _store_errors():
            await self.reconnect()
            stats = await self.client.store_statistics()
        return stats

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def encode_value(
    value: Any, object_id: bytes, link: StoreLink | None, *, what: str = "value"
) -> bytes:
    """Serialise ``value``: inline pickle bytes, or ``STORE`` after writing it there."""
    buffers: list[Any] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception:
        dumps(value, what=what)  # raises SerializationError naming the type
        raise
    size = len(data) + sum(memoryview(b).nbytes for b in buffers)
    if size < INLINE_THRESHOLD or link is None:
        if not buffers:
            return data
        return dumps(value, what=what)  # small arrays: buffers in band
    import store

    try:
        ser = store.serialize(value)
    except store.SerializationError as exc:
        raise SerializationError(f"could not serialize {what}: {exc}") from exc
    link.put(object_id, ser)
    return STORE
