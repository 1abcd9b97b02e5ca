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
and re-claims what it holds within the store's recovery grace period. The link
does that as soon as its connection drops (``_keep_connected``), not at its next
request: the restarted store keeps the objects it found in its arena only for that
grace period, and a process that reads nothing meanwhile (the node, which holds a
ref on every large object; a driver holding a zero-copy array) must still claim its
refs and views in time. A value the messages marked ``STORE`` was sealed before
the marker left its producer, so reading it never waits for a seal: the store has
it, or it is gone for good and ``get`` raises ``ObjectLostError`` at once.
"""

from __future__ import annotations

import functools
import logging
import pickle
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import cloudpickle
import trio

import transport

from ..exceptions import GetTimeoutError, ObjectLostError, ObjectStoreFullError
from ..protocol._ids import put_id_prefix
from ..protocol._serialization import dumps, plain

if TYPE_CHECKING:
    import store

__all__ = ["STORE", "StoreLink", "encode_value", "INLINE_THRESHOLD"]

logger = logging.getLogger("actorcore.store_link")

_T = TypeVar("_T")

#: Stands for "the value is in the node's shared-memory store" in an object's data.
STORE = b"\x00actorcore-store"
INLINE_THRESHOLD = 100 * 1024

_dumps = pickle.dumps
#: Longest a link keeps dialling a store that went away before giving up.
RECONNECT_WINDOW = 30.0
#: Longest one release (a one-way send) may hold back a cancellation of its task.
_RELEASE_SEND_TIMEOUT = 5.0


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
        #: How many times the link reconnected (a failed call retries only once per loss).
        self.generation = 0
        self._watching = False
        #: Where the link's own tasks run (the reconnect watcher, deferred releases).
        self.nursery: trio.Nursery | None = None
        #: Releases asked for while the link had no nursery (see ``serve_in``).
        self._deferred: list[bytes] = []

    @classmethod
    async def open(
        cls, address: str, token: bytes, name: str, nursery: trio.Nursery | None = None
    ) -> StoreLink:
        """A link connected now (the node's own)."""
        link = cls(address, token, name, trio.lowlevel.current_trio_token())
        link.nursery = nursery
        await link.connect()
        return link

    @property
    def connected(self) -> bool:
        return self.client is not None

    def _start(self, fn: Any) -> bool:
        """Start ``fn`` in the link's nursery; ``False`` if it has none (or it closed)."""
        if self.nursery is None:
            return False
        try:
            self.nursery.start_soon(fn)
        except RuntimeError:  # closed to new arrivals: its component is restarting
            return False
        return True

    def serve_in(self, nursery: trio.Nursery | None) -> None:
        """Run the link's own tasks in ``nursery`` from now on (``None``: nowhere).

        The node's link is served by its ``store_link`` component: each incarnation
        hands its nursery here (the reconnect watcher starts again in it, releases
        asked for while no incarnation ran are sent now) and ``None`` when it ends;
        the connection and the refs it holds outlive the component.
        """
        self.nursery = nursery
        if nursery is None:
            return
        if self.client is not None and not self._watching and self._start(self._keep_connected):
            self._watching = True
        if self._deferred:
            oids, self._deferred = self._deferred, []
            self.release_soon(oids)

    @property
    def deferred_releases(self) -> int:
        """Releases waiting for the link's tasks to run again."""
        return len(self._deferred)

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
            if not self._watching and self._start(self._keep_connected):
                self._watching = True
        finally:
            self._connecting.set()
            self._connecting = None

    async def map_ahead(self) -> None:
        """Connect now and map the store's warm margin into this process in the
        background (`store.StoreClient.map_ahead`): the driver's, at ``init()``, so
        that its first large put copies into pages it has mapped already, as every
        later one does; and have the store lend blocks to its puts
        (`store.StoreClient.lend_for`). A failure only leaves the pages to the first put (logged);
        the link connects again on first use."""
        errors: tuple[type[BaseException], ...] = (
            transport.TransportError, OSError, *_store_errors())
        try:
            await self.connect()
            # The driver's large puts copy into a block lent ahead: no round trip
            # to the store before the copy (``store._core``, "Lending").
            await self.client.lend_for(put_id_prefix())
            mapped = await self.client.map_ahead()
        except errors as exc:
            if self.client is None or not self.client.closed:  # not closed by us
                logger.info("%s: mapping the object store's arena ahead of use "
                            "failed: %s", self.name, exc)
            return
        logger.debug("%s: %d MiB of the object store's arena mapped ahead of use",
                     self.name, mapped >> 20)

    async def _keep_connected(self) -> None:
        """Reconnect the moment the store link drops (see the module docstring)."""
        try:
            while self.client is not None:
                await self.client.wait_lost()
                if self.client.closed:
                    return  # closed by us
                try:
                    await self.reconnect(since=self.generation)
                except (transport.TransportError, trio.TooSlowError) as exc:
                    # Logged by ``_redial``; requests meanwhile fail with the loss.
                    logger.debug("%s: store reconnect: %s", self.name, exc)
        finally:
            self._watching = False

    def _ensure(self) -> None:
        if self.client is None:
            trio.from_thread.run(self.connect, trio_token=self.token)

    async def reconnect(self, since: int | None = None, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Reconnect once, however many callers noticed the loss (core loop).

        ``since``: the ``generation`` the caller saw fail; if the link reconnected
        after that, there is nothing to do. ``timeout`` bounds this caller's wait
        (default ``RECONNECT_WINDOW``) with ``trio.TooSlowError``; the dialling goes
        on for the others. Raises ``ConnectError`` if the store did not come back.
        """
        if self.client is None:
            await self.connect()
            return
        if since is not None and since != self.generation:
            return
        generation = self.generation
        if self._reconnecting is None:
            self._reconnecting = trio.Event()
            if not self._start(self._redial):
                await self._redial()
        done = self._reconnecting
        if done is not None:
            with trio.fail_after(RECONNECT_WINDOW if timeout is None else timeout):
                await done.wait()
        if self.generation == generation:
            raise transport.ConnectError(
                f"the object store at {self.address} did not come back within "
                f"{RECONNECT_WINDOW} s"
            )

    async def _redial(self) -> None:
        """Dial the restarted store and re-claim what this link holds (one task)."""
        assert self.client is not None
        try:
            with trio.move_on_after(RECONNECT_WINDOW):
                while True:
                    try:
                        await self.client.reconnect(timeout=5)
                    except (transport.TransportError, OSError) as exc:
                        logger.info("%s: store reconnect failed (%s); retrying", self.name, exc)
                        await trio.sleep(0.05)
                        continue
                    self.generation += 1
                    logger.info("%s: reconnected to the object store at %s", self.name,
                                self.address)
                    return
            logger.warning("%s: the object store at %s did not come back within %s s",
                           self.name, self.address, RECONNECT_WINDOW)
        except Exception as exc:  # e.g. the store now serves another arena
            logger.warning("%s: reconnecting to the object store at %s failed: %s",
                           self.name, self.address, exc)
        finally:
            assert self._reconnecting is not None
            self._reconnecting.set()
            self._reconnecting = None

    def _reconnect_from_thread(self, since: int, timeout: float | None = None) -> None:  # noqa: ASYNC109
        trio.from_thread.run(
            functools.partial(self.reconnect, since=since, timeout=timeout), trio_token=self.token
        )

    def put(self, object_id: bytes, serialized: Any) -> None:
        """Write a large value (any thread but the core loop)."""
        import store

        self._ensure()
        since = self.generation
        try:
            try:
                try:
                    self.blocking.put(object_id, serialized)
                    return
                except _store_errors():
                    self._reconnect_from_thread(since)
                self.blocking.put(object_id, serialized)
            except store.ObjectExistsError:
                # Sealed already: by our first attempt just before the store went
                # away (its reply was lost), or by an earlier run of the same task
                # (a retry after its worker or its result message was lost). The
                # value is there; take the writer's ref on it.
                self.blocking.add_ref(object_id)
        except store.ObjectStoreFullError as exc:
            raise ObjectStoreFullError(
                str(exc), capacity=exc.capacity, used=exc.used, requested=exc.requested
            ) from exc

    def get(self, object_id: bytes, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """Read a sealed value, zero-copy (any thread but the core loop).

        Never waits for a seal (see the module docstring): an object the store does
        not have raises ``ObjectLostError`` at once. ``timeout`` bounds the wait for
        a store that is restarting (``GetTimeoutError``; default ``RECONNECT_WINDOW``).
        """
        import store

        self._ensure()
        since = self.generation
        try:
            try:
                return self.blocking.get(object_id, timeout=0)
            except _store_errors():
                try:
                    self._reconnect_from_thread(since, timeout)
                except trio.TooSlowError:
                    raise GetTimeoutError(
                        f"get of object {object_id.hex()} timed out after {timeout} s: the "
                        f"node's object store at {self.address} is not back yet"
                    ) from None
            return self.blocking.get(object_id, timeout=0)
        except (store.ObjectNotFoundError, store.GetTimeoutError):
            raise ObjectLostError(
                f"object {object_id.hex()} is no longer in the node's object store (it "
                f"was freed, or lost with the store's memory), so its value is gone"
            ) from None

    async def add_ref(self, object_id: bytes) -> bool:
        """Take a ref and wait until the store has it (``add_ref`` itself is one-way;
        a request behind it on the same connection returns only after it was applied,
        so a producer's release sent after this cannot overtake it).

        Returns whether the store holds the object once the ref is applied: a ref
        on an object the store no longer has (its only holder, a producer, died
        first) keeps nothing alive, and the caller must treat the value as lost."""
        await self.connect()
        since = self.generation
        try:
            await self.client.add_ref(object_id)
            return bool(await self.client.contains(object_id))
        except _store_errors():
            # Counted here before the send failed: if the reconnect's claim carried
            # it, the store now holds one ref more than we count — kept too long,
            # never freed too early.
            await self.reconnect(since=since)
            await self.client.add_ref(object_id)
            return bool(await self.client.contains(object_id))

    async def _once_more(self, call: Callable[[Any], Awaitable[_T]]) -> _T:
        """``await call(client)``, and once more on the new connection if the store
        restarted under it (the store keeps what it held across a restart)."""
        await self.connect()
        since = self.generation
        try:
            return await call(self.client)
        except _store_errors():
            await self.reconnect(since=since)
            return await call(self.client)

    async def contains(self, object_id: bytes) -> bool:
        """Whether the store holds ``object_id`` (sealed, in memory or spilled)."""
        return bool(await self._once_more(lambda client: client.contains(object_id)))

    async def missing(self, object_ids: list[bytes]) -> list[bytes]:
        """Those of ``object_ids`` the store does not have (one round trip)."""
        return await self._once_more(lambda client: client.missing(object_ids))

    async def payload(self, object_id: bytes) -> Any:
        """A read-only view of ``object_id``'s payload, for serving it to another
        node in slices (`store.StoreClient.payload`)."""
        return await self._once_more(lambda client: client.payload(object_id))

    async def remove_ref(self, object_id: bytes) -> None:
        if self.client is None:
            return  # never connected: we hold nothing
        since = self.generation
        try:
            await self.client.remove_ref(object_id)
        except _store_errors():
            # Uncounted here before the send failed, so the reconnect's claim does not
            # carry it: nothing to resend. (A claim already on its way when we
            # uncounted it keeps the object until this link closes: too long, never
            # too short.)
            await self.reconnect(since=since)

    def release_soon(self, object_ids: list[bytes]) -> None:
        """Drop this link's refs to ``object_ids`` later (any thread, never blocks)."""
        if self.client is None:
            return

        async def go() -> None:
            # Cancelled with the nursery it runs in (the node's ``store_link``
            # component crashed), it leaves the rest to the next one. Not within
            # one release: the store client uncounts a ref before it sends the
            # message, so a send cut off half way would keep the object in the store
            # for ever while a second try finds nothing to release. Each send is
            # shielded, and bounded.
            pending = list(object_ids)
            try:
                while pending:
                    await trio.lowlevel.checkpoint_if_cancelled()
                    with trio.move_on_after(_RELEASE_SEND_TIMEOUT, shield=True):
                        try:
                            await self.remove_ref(pending[0])
                        except Exception as exc:
                            logger.debug("remove_ref %s failed: %s", pending[0].hex(), exc)
                    pending.pop(0)
            finally:
                self._deferred.extend(pending)

        def spawn() -> None:
            # Runs later, from the loop: the nursery may have closed meanwhile (the
            # node's ``store_link`` component crashed); its next one sends them.
            if not self._start(go):
                self._deferred.extend(object_ids)

        try:
            self.token.run_sync_soon(spawn)
        except trio.RunFinishedError:
            pass

    async def statistics(self) -> store.StoreStatistics:
        """The node's store service's figures (`store.StoreStatistics`); reconnects
        once if the service restarted since the last call, like every other call."""
        stats: store.StoreStatistics = await self._once_more(
            lambda client: client.store_statistics())
        return stats

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def encode_value(
    value: Any, object_id: bytes, link: StoreLink | None, *, what: str = "value"
) -> bytes:
    """Serialise ``value``: inline pickle bytes, or ``STORE`` after writing it there."""
    if plain(value):
        data = _dumps(value, protocol=5)
        if len(data) < INLINE_THRESHOLD or link is None:
            return data
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

    # The pickle above is the store's serialised form already (protocol 5, buffers
    # out of band): no second pass over the value.
    link.put(object_id, store.SerializedValue.from_pickle(data, buffers))
    return STORE
