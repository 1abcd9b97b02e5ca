"""Object transfer between nodes: the pull (paper §4.2.3).

A node that needs an object another node holds *pulls* it: ``await
node.transfers.pull(oid, locations)`` copies the object from one of ``locations``
(node ids, hex) into this node's store, sealed, with this node holding a store ref
on it; ``ObjectTransferError`` (an ``ObjectLostError``) names the object, its size
and every node tried when none could give it.

The wire (node-to-node ops, over the puller's link to the source, ``node.peers``)
-------------------------------------------------------------------------------
- ``PayloadInfo(oid)`` -> ``(meta_len, data_len, buffer_sizes, payload_len)``, or
  ``None`` when the source's store does not hold the object;
- ``PayloadChunk(oid, offset, length)`` -> ``length`` bytes of the payload at
  ``offset`` (a source that lost the object meanwhile fails the request).

The source answers a chunk with a slice of the object's payload *in its shared
memory* (``store.StoreClient.payload``: a read-only view leased from the store, so
the memory is not reused while the reply is on its way), sent out of band by the
transport: no copy in Python on the sending side. The puller creates the object in
its own store with the source's layout (``StoreClient.create``), and each chunk
arrives in its own frame buffer and is copied once, straight into the store's block
(``ObjectWriter.write``); only ``WINDOW`` chunks of ``CHUNK`` bytes are ever held
in Python memory, never the whole object.

Pipelining. One chunk at a time would pay a round trip per chunk and leave the link
idle meanwhile; ``WINDOW`` requests are kept in flight on the one link to the
source (a transport connection serves many requests at once), so the source
always has the next chunk to send while the puller copies the last one.

Concurrency and failure
-----------------------
Pulls of one object are one transfer: the first starts it as a task of the node
(``node.spawn``, so a caller that gives up does not cancel it for the others) and
every puller, the first included, awaits its outcome. An object already here
(pulled before, or in the local store) returns at once.

Locations are tried in order. A node that is not alive, cannot be reached, does
not hold the object, or dies (or loses the object) mid-transfer is recorded with
the reason, and the next is tried; the partly written object is aborted first
(``ObjectWriter.abort``: the store frees the unsealed block, nothing is left).
A value this node's store cannot take (full, even on disk) fails the pull at once
with ``ObjectStoreFullError`` naming this node and the store's figures: no other
location could help.

Copies and the GCS object table
-------------------------------
A pulled object is a *copy*: the node holds one store ref on it (taken at the seal)
and, on a multi-node cluster, registers itself in the GCS object table
(``objects.add_location``). The copy is dropped by ``drop_copy`` (its store ref
released, its location removed), which the node's object bookkeeping calls when
the object leaves its directory; a copy that never entered the directory lives
until ``drop_copy``. ``locations_of`` reads the table, for a puller that knows no
location. On a one-node cluster nothing here reads or writes the GCS.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Protocol

import attrs
import trio

import transport

from ...core_worker._store_link import RECONNECT_WINDOW, _store_errors
from ...exceptions import ObjectStoreFullError, ObjectTransferError
from ...protocol import _wire as w
from ...protocol._messages import max_frame_size
from ...session._config import env_value

__all__ = ["CHUNK", "WINDOW", "ObjectTransfers", "TransferStatistics", "TransfersHost"]

logger = logging.getLogger("actorcore.transfer")

#: Bytes per chunk request (a frame of its own; ``ACTORCORE_TRANSFER_CHUNK``).
CHUNK = int(env_value("ACTORCORE_TRANSFER_CHUNK"))
#: Chunk requests kept in flight on the link to the source
#: (``ACTORCORE_TRANSFER_WINDOW``).
WINDOW = int(env_value("ACTORCORE_TRANSFER_WINDOW"))
#: Seconds a source may take to answer `PayloadInfo`, and one chunk.
INFO_TIMEOUT = 10.0
CHUNK_TIMEOUT = 30.0
#: Times a location is tried again after the link to it was lost while it lives.
LINK_RETRIES = 2
#: Seconds a location write to the GCS may take before it is given up (logged).
GCS_TIMEOUT = 10.0
#: Payload views kept for transfers under way (see ``_served``).
_SERVING_MAX = 8
#: Room left in a frame for the reply's header and pickle stream.
_FRAME_MARGIN = 64 * 1024


class TransfersHost(Protocol):
    """What `ObjectTransfers` uses of the node (``node._runtime.NodeRuntime``)."""

    @property
    def node_hex(self) -> str: ...
    @property
    def view(self) -> Any: ...  # gcs_client.ClusterView
    @property
    def peers(self) -> Any: ...  # node._peers.NodePeers
    @property
    def control(self) -> Any: ...
    @property
    def store_link(self) -> Any: ...  # core_worker._store_link.StoreLink
    def spawn(self, fn: Any, *args: Any) -> bool: ...


@attrs.frozen(kw_only=True)
class TransferStatistics:
    """Figures of a node's transfers (``ObjectTransfers.statistics()``).

    Attributes:
      pulls: ``pull`` calls. local: of those, answered at once (already here).
      joined: of those, that awaited a transfer another pull had started.
      transfers: transfers started; ``failed`` of them ended without a copy.
      bytes_in: payload bytes received. bytes_out, chunks_out: served to others.
      copies: pulled copies held now. in_flight: transfers under way now.
    """

    pulls: int
    local: int
    joined: int
    transfers: int
    failed: int
    bytes_in: int
    bytes_out: int
    chunks_out: int
    copies: int
    in_flight: int


@attrs.define(eq=False)
class _Transfer:
    """One transfer under way; every pull of its object awaits ``done``."""

    oid: bytes
    done: trio.Event = attrs.Factory(trio.Event)
    error: ObjectTransferError | ObjectStoreFullError | None = None


@attrs.define(eq=False)
class _Serving:
    """An object being served to other nodes: its leased payload view, the bytes
    the transfers under way will ask for (`PayloadInfo` answers) and those sent."""

    payload: Any
    expected: int = 0
    served: int = 0


class _SourceFailed(Exception):
    """One location could not give the object (the message says why); ``size``:
    the payload size it announced, if it got that far."""

    def __init__(self, message: str, size: int | None = None, link_lost: bool = False) -> None:
        super().__init__(message)
        self.size = size
        self.link_lost = link_lost


class ObjectTransfers:
    """The node's pulls and the serving of its objects to others (module docstring)."""

    def __init__(self, node: TransfersHost) -> None:
        self.node = node
        #: oid -> registered in the GCS object table: the copies pulled here.
        self.copies: dict[bytes, bool] = {}
        self._inflight: dict[bytes, _Transfer] = {}
        self._pulls = self._local = self._joined = 0
        self._transfers = self._failed = 0
        self._bytes_in = self._bytes_out = self._chunks_out = 0
        #: Fault hook (`SlowChunks`): seconds the node waits before serving a chunk,
        #: so that a test can kill a source in the middle of a transfer.
        self.chunk_delay = 0.0
        #: Payload views of the objects being served now (oldest first).
        self._serving: dict[bytes, _Serving] = {}

    def register(self, dispatcher: Any) -> None:
        """Route the pulls of other nodes (and the admin and test hooks) here."""
        dispatcher.register(w.PayloadInfo, self._h_info)
        dispatcher.register(w.PayloadChunk, self._h_chunk)
        # Admin and test hooks: pull (or drop) a copy here; the figures.
        dispatcher.register(w.PullObject, self._h_pull)
        dispatcher.register(w.DropCopy, self._h_drop)
        dispatcher.register(w.GetTransferStatistics, self._h_statistics)
        dispatcher.register(w.LocateObject, self._h_where)
        dispatcher.register(w.SlowChunks, self._h_fault)

    # -- pulling -------------------------------------------------------------------

    async def pull(self, oid: bytes, locations: list[str]) -> None:
        """Copy ``oid`` from one of ``locations`` (node hex ids, tried in order; the
        GCS object table's if empty) into this node's store (see the module
        docstring). Raises ``ObjectTransferError`` if no location can give it."""
        self._pulls += 1
        if oid in self.copies:
            self._local += 1
            return
        transfer = self._inflight.get(oid)
        if transfer is None:
            transfer = self._inflight[oid] = _Transfer(oid)
            self._transfers += 1
            if not self.node.spawn(self._run, transfer, list(locations)):
                del self._inflight[oid]
                self._failed += 1
                raise ObjectTransferError(
                    f"cannot pull object {oid.hex()}: this node is stopping",
                    object_id=oid.hex())
        else:
            self._joined += 1
        await transfer.done.wait()
        if transfer.error is not None:
            err = transfer.error
            # A fresh instance per caller: one exception object raised in several
            # tasks would collect all their tracebacks.
            if isinstance(err, ObjectStoreFullError):
                raise ObjectStoreFullError(str(err), capacity=err.capacity, used=err.used,
                                           requested=err.requested)
            raise ObjectTransferError(str(err), object_id=err.object_id, size=err.size,
                                      tried=err.tried)

    async def locations_of(self, oid: bytes) -> list[str]:
        """The live nodes the GCS object table says hold ``oid`` (none on a one-node
        cluster, where nothing is registered)."""
        control = self.node.control
        if not self.node.view.multi or getattr(control, "backend", None) != "gcs":
            return []
        with trio.move_on_after(GCS_TIMEOUT):
            found = await control.call(lambda c: c.objects.locations(oid.hex()))
            view = self.node.view
            return sorted(str(n) for n in found
                          if (s := view.get(str(n))) is not None and s.alive)
        logger.warning("the GCS did not say where object %s is within %g s", oid.hex(),
                       GCS_TIMEOUT)
        return []

    def drop_copy(self, oid: bytes) -> None:
        """Let a pulled copy go: its store ref, and its location in the GCS."""
        registered = self.copies.pop(oid, None)
        if registered is None:
            return
        link = self.node.store_link
        if link is not None:
            link.release_soon([oid])
        if registered:
            self.node.spawn(self._set_location, oid, False)

    async def _run(self, transfer: _Transfer, locations: list[str]) -> None:
        oid = transfer.oid
        try:
            await self._transfer(oid, locations)
        except (ObjectTransferError, ObjectStoreFullError) as exc:
            transfer.error = exc
            self._failed += 1
        except BaseException as exc:
            transfer.error = ObjectTransferError(
                f"pulling object {oid.hex()} failed: {type(exc).__name__}: {exc}",
                object_id=oid.hex())
            self._failed += 1
            if not isinstance(exc, Exception):
                raise  # cancelled: the node stops
            logger.exception("pulling object %s failed", oid.hex())
        finally:
            self._inflight.pop(oid, None)
            transfer.done.set()

    async def _transfer(self, oid: bytes, locations: list[str]) -> None:
        node = self.node
        link = node.store_link
        if link is None:
            raise ObjectTransferError(f"cannot pull object {oid.hex()}: the node has no "
                                      f"object store yet", object_id=oid.hex())
        if await link.contains(oid):  # (asked again if this node's store restarted)
            # Put here meanwhile (by a process of this node): a copy all the same.
            await link.add_ref(oid)
            self.copies[oid] = False
            return
        if not locations:
            locations = await self.locations_of(oid)
        tried: dict[str, str] = {}
        size: int | None = None
        for loc in locations:
            if loc in tried:
                continue
            if loc == node.node_hex:
                tried[loc] = "this node (its store does not hold it)"
                continue
            try:
                size = await self._from_retrying(loc, oid)
            except _SourceFailed as exc:
                tried[loc] = str(exc)
                size = exc.size if exc.size is not None else size
                logger.info("pulling object %s from node %s failed: %s", oid.hex(), loc[:12], exc)
                continue
            except _ExistsHere:
                await link.add_ref(oid)
                self.copies[oid] = False
                return
            registered = node.view.multi and getattr(node.control, "backend", None) == "gcs"
            self.copies[oid] = registered
            if registered:
                await self._set_location(oid, True)
            return
        if not locations:
            why = "no location was given and the GCS object table lists none"
        else:
            why = "; ".join(f"node {n[:12]}: {r}" for n, r in tried.items())
        sized = "" if size is None else f" ({size} bytes)"
        raise ObjectTransferError(
            f"cannot pull object {oid.hex()}{sized} to node {node.node_hex[:12]}: "
            f"tried {len(tried)} node(s): {why}",
            object_id=oid.hex(), size=size, tried=tried)

    async def _from_retrying(self, loc: str, oid: bytes) -> int:
        """``_from``, tried again while only the link failed and the node lives: a
        restart of this node's ``node_links`` closes its links under the transfers
        in flight, which the source would have served."""
        first: _SourceFailed | None = None
        for attempt in range(LINK_RETRIES + 1):
            try:
                return await self._from(loc, oid)
            except _SourceFailed as exc:
                if first is not None:  # say what happened first, and its size
                    exc = _SourceFailed(f"{first}; tried again: {exc}",
                                        exc.size if exc.size is not None else first.size,
                                        exc.link_lost)
                status = self.node.view.get(loc)
                if not exc.link_lost or attempt == LINK_RETRIES or status is None \
                        or not status.alive:
                    raise exc from None
                first = first or exc
                logger.info("pulling object %s from node %s: %s; trying again", oid.hex(),
                            loc[:12], exc)
        raise AssertionError("unreachable")

    async def _from(self, loc: str, oid: bytes) -> int:
        """Copy ``oid`` from node ``loc``; returns its payload size. ``_SourceFailed``
        says why not (nothing is left in the store then)."""
        import store

        peers = self.node.peers
        try:
            info = await peers.request(loc, w.PayloadInfo(oid), timeout=INFO_TIMEOUT)
        except Exception as exc:
            raise _SourceFailed(_describe(exc),
                                link_lost=isinstance(exc, transport.ConnectionLost)) from exc
        if info is None:
            raise _SourceFailed("its store does not hold the object")
        meta_len, data_len, buffer_sizes, length = (info.meta_len, info.data_len,
                                                    info.buffer_sizes, info.payload_len)
        link = self.node.store_link
        since = link.generation
        client = link.client
        try:
            writer = await client.create(oid, meta_len=meta_len, data_len=data_len,
                                         buffer_sizes=buffer_sizes, take_ref=True)
        except _store_errors() as exc:
            # This node's store restarted under the pull: once the link is back,
            # the pull starts over (``_from_retrying``).
            await link.reconnect(since=since, timeout=RECONNECT_WINDOW)
            raise _SourceFailed(f"this node's store restarted ({exc})", length,
                                link_lost=True) from exc
        except store.ObjectExistsError:
            raise _ExistsHere() from None
        except store.ObjectStoreFullError as exc:
            # No other location can help: the value does not fit *here*.
            raise ObjectStoreFullError(
                f"cannot pull object {oid.hex()} ({length} bytes) to node "
                f"{self.node.node_hex[:12]}: that node's object store cannot take it: {exc}",
                capacity=exc.capacity, used=exc.used, requested=exc.requested) from None
        except store.StoreError as exc:  # the store is gone
            raise _SourceFailed(f"this node's store cannot take {length} bytes: {exc}",
                                length) from exc
        received = [0]
        try:
            await self._chunks(loc, oid, writer, length, received)
            await writer.seal()
        except BaseException as exc:
            writer.abort()  # the store frees the unsealed block: nothing is left
            if isinstance(exc, Exception):
                why = str(exc) if isinstance(exc, _SourceFailed) else _describe(exc)
                lost = isinstance(exc, _store_errors())
                if lost:  # this node's store restarted mid-pull: again, once it is back
                    with trio.move_on_after(RECONNECT_WINDOW):
                        await link.reconnect(since=since)
                raise _SourceFailed(
                    f"{why} (after {received[0]} of {length} bytes)", length,
                    link_lost=lost or isinstance(exc, transport.ConnectionLost)) from exc
            raise
        return int(length)

    async def _chunks(self, loc: str, oid: bytes, writer: Any, length: int,
                      received: list[int]) -> None:
        """Fill ``writer`` with ``length`` bytes from ``loc``, ``WINDOW`` chunk
        requests in flight. The first failure cancels the rest and is raised."""
        chunk = max(64 * 1024, min(CHUNK, max_frame_size() - _FRAME_MARGIN))
        offsets = iter(range(0, length, chunk))  # shared: each offset taken once
        peers = self.node.peers
        failure: list[BaseException] = []

        async def fetch(cancel: trio.CancelScope) -> None:
            try:
                for offset in offsets:
                    n = min(chunk, length - offset)
                    data = await peers.request(loc, w.PayloadChunk(oid, offset, n),
                                               timeout=CHUNK_TIMEOUT)
                    got = memoryview(data).nbytes
                    if got != n:
                        raise _SourceFailed(f"it sent {got} bytes for a chunk of {n} at "
                                            f"offset {offset}")
                    writer.write(offset, data)
                    received[0] += n
                    self._bytes_in += n
            except Exception as exc:
                if not failure:
                    failure.append(exc)
                cancel.cancel()

        async with trio.open_nursery() as nursery:
            for _ in range(WINDOW):
                nursery.start_soon(fetch, nursery.cancel_scope)
        if failure:
            raise failure[0]

    async def republish_locations(self) -> int:
        """The GCS restarted empty: register again the copies pulled here that were
        registered. Returns how many."""
        mine = [oid for oid, registered in self.copies.items() if registered]
        me = self.node.node_hex
        for oid in mine:
            await self.node.control.call(lambda c, o=oid: c.objects.add_location(o.hex(), me))
        return len(mine)

    async def _set_location(self, oid: bytes, present: bool) -> None:
        """Add (or remove) this node in ``oid``'s GCS locations; bounded, logged."""
        node = self.node
        me = node.node_hex
        with trio.move_on_after(GCS_TIMEOUT):
            try:
                if present:
                    await node.control.call(lambda c: c.objects.add_location(oid.hex(), me))
                else:
                    await node.control.call(lambda c: c.objects.remove_location(oid.hex(), me))
            except Exception as exc:
                logger.warning("%s location of object %s in the GCS failed: %s",
                               "registering the" if present else "removing the", oid.hex(), exc)
            return
        logger.warning("the GCS did not take the location of object %s within %g s",
                       oid.hex(), GCS_TIMEOUT)

    # -- serving -------------------------------------------------------------------

    async def _payload(self, oid: bytes) -> Any:
        """The object's payload view, kept while its chunks are being served (one
        store round trip per transfer, not per chunk); see ``_served``."""
        serving = self._serving.get(oid)
        if serving is not None:
            return serving.payload
        link = self.node.store_link
        if link is None:
            raise RuntimeError("this node has no object store yet")
        # Asked again if the store restarted (a crash of ``object_manager``): it
        # reopens its arena and keeps what it held.
        p = await link.payload(oid)
        serving = self._serving.get(oid)  # another request leased it meanwhile
        if serving is not None:
            return serving.payload
        self._serving[oid] = _Serving(p)
        while len(self._serving) > _SERVING_MAX:
            self._serving.pop(next(iter(self._serving)))
        return p

    def _served(self, oid: bytes, length: int) -> None:
        # Let the view (and its lease on this node's memory) go once every byte of
        # every transfer under way went out, so that an object freed here is not
        # held by a transfer that is over. Chunks are served concurrently (the
        # puller keeps ``WINDOW`` in flight), so the chunk at the end of the payload
        # is not the last one served: bytes are counted, against `PayloadInfo`'s
        # announcements (one per transfer). A transfer cut short leaves the view
        # until ``_SERVING_MAX`` newer ones replace it.
        serving = self._serving.get(oid)
        if serving is None:
            return
        serving.served += length
        if serving.served >= serving.expected:
            del self._serving[oid]

    def _h_info(self, conn: Any, m: w.PayloadInfo, reply: Any) -> None:
        oid = m.object_id

        async def answer() -> None:
            import store

            try:
                p = await self._payload(oid)
            except store.ObjectNotFoundError:
                reply.send(None)
                return
            except Exception as exc:
                reply.fail(exc)
                return
            serving = self._serving.get(oid)
            if serving is not None:
                serving.expected += p.size
                if not p.size:  # no chunk will follow
                    self._serving.pop(oid, None)
            reply.send(w.PayloadLayout(p.meta_len, p.data_len, p.buffer_sizes, p.size))

        if not self.node.spawn(answer):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_chunk(self, conn: Any, m: w.PayloadChunk, reply: Any) -> None:
        oid, offset, length = m.object_id, m.offset, m.length

        async def answer() -> None:
            try:
                if self.chunk_delay:
                    await trio.sleep(self.chunk_delay)
                p = await self._payload(oid)
                if offset < 0 or length < 0 or offset + length > p.size:
                    raise ValueError(f"chunk [{offset}, {offset + length}) is outside object "
                                     f"{oid.hex()} of {p.size} bytes")
                # A slice of the leased shared memory, out of band: no copy here.
                reply.send(pickle.PickleBuffer(p.view[offset : offset + length]))
                self._served(oid, length)
                self._bytes_out += length
                self._chunks_out += 1
            except Exception as exc:
                reply.fail(exc)

        if not self.node.spawn(answer):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_pull(self, conn: Any, m: w.PullObject, reply: Any) -> None:
        oid, locations = m.object_id, m.locations

        async def answer() -> None:
            try:
                await self.pull(oid, list(locations))
            except Exception as exc:
                reply.fail(exc)
                return
            reply.send(None)

        if not self.node.spawn(answer):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_drop(self, conn: Any, m: w.DropCopy, reply: Any) -> None:
        self.drop_copy(m.object_id)
        reply.send(None)

    def _h_where(self, conn: Any, m: w.LocateObject, reply: Any) -> None:
        async def answer() -> None:
            try:
                reply.send(await self.locations_of(m.object_id))
            except Exception as exc:
                reply.fail(exc)

        if not self.node.spawn(answer):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_fault(self, conn: Any, m: w.SlowChunks, reply: Any) -> None:
        self.chunk_delay = float(m.chunk_delay)  # checked (0 to 60 s) by the dispatcher
        reply.send(None)

    def _h_statistics(self, conn: Any, m: w.GetTransferStatistics, reply: Any) -> None:
        reply.send(self.statistics())

    def statistics(self) -> TransferStatistics:
        return TransferStatistics(
            pulls=self._pulls, local=self._local, joined=self._joined,
            transfers=self._transfers, failed=self._failed, bytes_in=self._bytes_in,
            bytes_out=self._bytes_out, chunks_out=self._chunks_out,
            copies=len(self.copies), in_flight=len(self._inflight),
        )


class _ExistsHere(Exception):
    """The object appeared in this node's store while the transfer was set up."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "it did not answer in time"
    if isinstance(exc, transport.RemoteError):
        return f"it failed the request: {exc.remote_type}: {exc.remote_message}"
    if isinstance(exc, transport.ConnectionLost):
        return f"the link to it was lost ({exc})"
    return f"{type(exc).__name__}: {exc}"
