"""`ObjectStoreService`: the node's object store, a child-protocol service.

It owns the arena and the index (`StoreCore`) and serves clients over the transport.
Every message is a class of `_messages.py`, routed through one `transport.Dispatcher`
(`_dispatcher` lists them with their handlers); one the store does not handle, or
with fields of the wrong type, fails with `store.BadRequest` and the service serves
on. Requests that may wait (a ``get`` of an object not sealed yet, or spilled; a
``create`` that must spill first) are answered later from a task in the service's
nursery, so one slow request never blocks a connection; everything else is answered
inline, in arrival order.

Restarts. Cancelling `run` is a shutdown: the arena and spill files of the session
are removed (unless ``cleanup_on_cancel=False``). A crash (an exception out of `run`)
leaves them, and the next `run` of the same service object — a supervisor restart —
reopens the arena, rebuilds the index from the block headers and the spill
directory, and keeps what it found for ``recovery_grace`` seconds so that clients can
reconnect and reattach their refs, pins and views (`StoreClient.reconnect`; a request
on the lost connection raises `StoreClosedError` first). Unsealed blocks found at start belonged to writers
whose connections died with the old service; they are freed after the grace period
(a writer still copying into one cannot corrupt a new object meanwhile).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

import transport

from . import _messages as m
from ._arena import Arena, run_at_low_priority
from ._core import GetResult, StoreCore
from ._errors import BadRequest, ObjectNotFoundError
from ._serialize import SerializedValue
from ._session import DEFAULT_SHM_DIR, arena_path, cleanup_session
from ._statistics import StoreStatistics

__all__ = ["DEFAULT_WARM", "ObjectStoreService"]

logger = logging.getLogger("store")

#: Bytes of the arena kept faulted in ahead of use unless told otherwise (``warm``).
DEFAULT_WARM = 256 * 1024 * 1024
#: The warmer's step: `Arena.prefault` of this much in a thread of its own.
WARM_CHUNK = 32 * 1024 * 1024


class ObjectStoreService:
    """The per-node object store (tree name ``object_manager``).

    ``address = await nursery.start(service.run)`` reports the bound socket address.
    ``capacity`` is the shared-memory budget in bytes (the arena's size);
    ``spill_dir`` (``None``: no spilling) takes evicted objects, and objects that
    shared memory cannot take at all when ``disk_fallback`` is on (see ``_core``);
    the disk is used up to ``disk_threshold`` (a fraction) of its capacity. Values
    smaller than ``inline_threshold`` bytes travel inside messages; ``prefix`` names
    the session's files (``/dev/shm/<prefix>.arena``, ``<spill_dir>/<prefix>-*``).

    Warm memory: a put into pages nobody touched yet waits for the kernel to allocate
    and zero them, page by page, 10-100 times the cost of the copy itself (see
    ``_arena``). So from the start the service keeps the ``warm`` bytes above the
    highest allocated byte of the arena faulted in, from a background thread at the
    lowest CPU priority (start-up does not wait for it, nor compete with it), and
    extends that margin as objects fill the arena; ``prefault=True`` faults the whole
    arena the same way. It never goes past the arena: ``capacity`` stays the cap, and
    the memory it holds is what the arena would hold once used anyway. A put that
    lands on pages the warmer has not reached yet is correct, only slower (faulting
    pages in never changes bytes already written). ``warm=0`` turns it off.
    ``statistics()`` and the snapshot report ``prefaulted`` (bytes); the first time
    the margin is reached, the time it took is logged.
    """

    def __init__(
        self,
        address: str,
        token: bytes | str,
        *,
        capacity: int,
        spill_dir: str | None = None,
        inline_threshold: int = 100 * 1024,
        name: str = "object_manager",
        prefix: str | None = None,
        shm_dir: str = DEFAULT_SHM_DIR,
        prefault: bool = False,
        warm: int = DEFAULT_WARM,
        recovery_grace: float = 30.0,
        cleanup_on_cancel: bool = True,
        disk_fallback: bool = True,
        disk_threshold: float = 0.95,
    ):
        if capacity <= 0:
            raise ValueError(f"object store capacity must be positive, got {capacity!r}")
        if not 0.0 <= disk_threshold <= 1.0:
            raise ValueError(f"disk_threshold is a fraction in [0, 1], got {disk_threshold!r}")
        if warm < 0:
            raise ValueError(f"warm is a number of bytes >= 0, got {warm!r}")
        self.address = address
        self._token = token
        self.capacity = capacity
        self.spill_dir = spill_dir
        self.inline_threshold = inline_threshold
        self.name = name
        self.prefix = prefix or f"actorcore-{uuid.uuid4().hex[:12]}"
        self.shm_dir = shm_dir
        self.arena_path = arena_path(self.prefix, shm_dir)
        self.prefault = prefault
        self.warm = warm
        self.prefaulted = 0  # the arena's bytes [0, prefaulted) are faulted in
        self.prefault_seconds = 0.0  # time spent in the warmer's threads
        self._warm_idle = trio.Event()
        self.recovery_grace = recovery_grace
        self.cleanup_on_cancel = cleanup_on_cancel
        self.disk_fallback = disk_fallback
        self.disk_threshold = disk_threshold
        self.state = "stopped"
        self.runs = 0
        self._core: StoreCore | None = None
        self._nursery: trio.Nursery | None = None
        self._server: transport.Server | None = None
        self._crash_requested = trio.Event()
        self._crash_reason = ""
        #: The registry every client message goes through.
        self._routes = self._dispatcher()
        #: Set when the grace period after a (re)start is over (unclaimed objects gone).
        self.recovery_finished = trio.Event()

    # -- child protocol --------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        self.state = "starting"
        self.runs += 1
        self._crash_requested = trio.Event()
        if self.recovery_finished.is_set():
            self.recovery_finished = trio.Event()  # this run's grace period is ahead
        shutdown = False
        try:
            arena, recovered = Arena.open(
                self.arena_path, self.capacity,
                spill_dir=os.path.abspath(self.spill_dir) if self.spill_dir else None,  # noqa: ASYNC240
            )
            core = StoreCore(
                arena, prefix=self.prefix, spill_dir=self.spill_dir, recovered=recovered,
                inline_threshold=self.inline_threshold, disk_fallback=self.disk_fallback,
                disk_threshold=self.disk_threshold, reclaim=self._reclaim,
                recall=self._recall, pending=self._pending,
            )
            self._core = core
            if recovered or core.index.entries:
                logger.info(
                    "%s: recovered %d objects from %s and %s", self.name, len(core.index.entries),
                    self.arena_path, self.spill_dir,
                )
            self._server = transport.Server(
                self.address, self._token, self._routes, name=self.name,
                on_disconnect=self._on_disconnect,
            )
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                bound = await nursery.start(self._server.run)
                self.address = bound
                if core.index.recovering():
                    nursery.start_soon(self._end_recovery_later)
                else:
                    self.recovery_finished.set()
                self.prefaulted = 0
                if self.prefault or self.warm:
                    nursery.start_soon(self._keep_warm, arena)
                else:
                    self._warm_idle.set()
                self.state = "running"
                task_status.started(bound)
                await self._crash_requested.wait()
                raise RuntimeError(f"{self.name}: {self._crash_reason}")
        except BaseException as exc:
            shutdown = _is_cancellation(exc)
            raise
        finally:
            self._nursery = None
            self.state = "stopped"
            if shutdown and self.cleanup_on_cancel:
                self.remove_files()

    async def _keep_warm(self, arena: Arena) -> None:
        """Keep ``[0, high water + warm)`` of the arena faulted in (all of it with
        ``prefault``), one `WARM_CHUNK` at a time in a thread of low priority (`run_at_low_priority`).

        The arena's ``on_grow`` hook wakes this task when an allocation raises the
        high water mark; it goes back to work once the margin ahead has shrunk by a
        quarter (or to reach the arena's end), so a stream of small objects does not
        cost a thread round trip each. Everything but `Arena.prefault` itself runs
        on the service's loop, so no state is shared with the thread.
        """
        wakeup = trio.Event()

        def grew() -> None:
            wakeup.set()
            if self._warm_idle.is_set():  # ``wait_warm`` now waits for the decision
                self._warm_idle = trio.Event()

        arena.on_grow = grew
        first_pass = True
        working = True
        started = time.perf_counter()
        try:
            while True:
                end = arena.size
                target = end if self.prefault else min(end, _page(arena.high_water + self.warm))
                need = target - self.prefaulted
                if not working and need >= self.warm // 4 or need > 0 and target == end:
                    working = True
                if need <= 0 or not working:
                    working = False
                    if first_pass:
                        first_pass = False
                        logger.info(
                            "%s: %.0f MiB of the arena faulted in, %.3f s after start "
                            "(%.3f s in the background thread)", self.name,
                            self.prefaulted / (1 << 20), time.perf_counter() - started,
                            self.prefault_seconds,
                        )
                    self._warm_idle.set()
                    wakeup = trio.Event()
                    await wakeup.wait()
                    continue
                if self._warm_idle.is_set():
                    self._warm_idle = trio.Event()
                stop = min(target, self.prefaulted + WARM_CHUNK)
                t0 = time.perf_counter()
                try:
                    # Abandoned on shutdown rather than waited for: at nice 19 on a
                    # busy machine a step can take seconds (it only reserves and
                    # zeroes pages of a file that is about to go).
                    await trio.to_thread.run_sync(
                        run_at_low_priority, arena.prefault, self.prefaulted, stop,
                        abandon_on_cancel=True,
                    )
                except OSError as exc:
                    logger.warning(
                        "%s: could not fault in the arena's bytes %d-%d of %d (%s); puts "
                        "into the rest pay for their pages as they go", self.name,
                        self.prefaulted, stop, end, exc,
                    )
                    self._warm_idle.set()
                    return
                self.prefault_seconds += time.perf_counter() - t0
                self.prefaulted = stop
        finally:
            arena.on_grow = None

    async def wait_warm(self) -> None:
        """Return once the warmer has caught up with the arena's last growth (or gave
        up, or is off): for tests and benchmarks."""
        await self._warm_idle.wait()

    def crash(self, reason: str = "injected crash") -> None:
        """Fault injection: make `run` raise (a crash, so the session's files stay for
        the restarted service to recover)."""
        self._crash_reason = reason
        self._crash_requested.set()

    def snapshot(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": "object_store", "address": self.address, "pid": os.getpid(),
            # After a restart: objects found in the arena wait for their clients' claims.
            "recovering": self.state == "running" and not self.recovery_finished.is_set(),
        }
        if self._core is not None:
            stats = self._core.statistics()
            info.update(capacity=stats.capacity, used=stats.used, count=stats.count,
                        spilled=stats.spilled)
            info["prefaulted"] = self.prefaulted
        return info

    def statistics(self) -> StoreStatistics:
        """Bytes used of the capacity, object counts by state, spill counters."""
        if self._core is None:
            return StoreStatistics(capacity=self.capacity, inline_threshold=self.inline_threshold)
        stats = self._core.statistics(
            connections=len(self._server.connections) if self._server else 0)
        return attrs.evolve(stats, inline_threshold=self.inline_threshold,
                            prefaulted=self.prefaulted, prefault_seconds=self.prefault_seconds)

    def remove_files(self) -> list[str]:
        """Remove the arena and spill files of this session (the service is stopped)."""
        return cleanup_session(self.prefix, shm_dir=self.shm_dir, spill_dir=self.spill_dir)

    def read_chunk(self, object_id: bytes, offset: int, size: int) -> bytes:
        """In-process access for the node's transfer code (see `StoreClient.read_chunk`)."""
        return self._running_core().read_chunk(object_id, offset, size)

    def _running_core(self) -> StoreCore:
        if self._core is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._core

    async def _end_recovery_later(self) -> None:
        await trio.sleep(self.recovery_grace)
        if self._core is not None:
            self._core.end_recovery()
        self.recovery_finished.set()

    # -- requests ----------------------------------------------------------------------

    def _on_disconnect(self, conn: transport.Connection) -> None:
        # A client went: drop what it held — but not when every connection goes
        # because the service itself is stopping or crashing (its refs must survive
        # into the restarted service). The drop runs in a task of our nursery after a
        # checkpoint: if the nursery is being cancelled, that checkpoint raises and
        # nothing is dropped.
        if self._nursery is not None:
            self._nursery.start_soon(self._drop_client, conn)

    async def _drop_client(self, conn: transport.Connection) -> None:
        await trio.lowlevel.checkpoint()
        if self._core is not None:
            self._core.drop_client(conn)

    # Every message a client sends, and what answers it. A plain handler costs no
    # coroutine (the hot ones: get, put_inline, the one-way notices); those that
    # may wait (a get of an object not sealed yet, or spilled; a create that must
    # spill first) answer later from a task of the service's nursery, so one slow
    # request never blocks the connection.

    def _dispatcher(self) -> transport.Dispatcher:
        d = transport.Dispatcher(self.name, refuse=_refuse)
        d.register(m.WithReleases, self._on_with_releases)
        d.register(m.Release, self._on_release, oneway=True)
        d.register(m.AddRef, self._on_add_ref, oneway=True)
        d.register(m.RemoveRef, self._on_remove_ref, oneway=True)
        d.register(m.Unpin, self._on_unpin, oneway=True)
        d.register(m.Abort, self._on_abort, oneway=True)
        d.register(m.Hello, self._on_hello)
        d.register(m.Get, self._on_get)
        d.register(m.PutInline, self._on_put_inline)
        d.register(m.Create, self._on_create)
        d.register(m.Seal, self._on_seal)
        d.register(m.Lend, self._on_lend)
        d.register(m.Adopt, self._on_adopt)
        d.register(m.Contains, self._on_contains)
        d.register(m.Missing, self._on_missing)
        d.register(m.Pin, self._on_pin)
        d.register(m.Delete, self._on_delete)
        d.register(m.ReadChunk, self._on_read_chunk)
        d.register(m.Info, self._on_info)
        d.register(m.Claim, self._on_claim)
        d.register(m.Statistics, self._on_statistics)
        d.register(m.WaitWarm, self._on_wait_warm)
        return d

    async def _on_with_releases(self, conn: transport.Connection, msg: m.WithReleases,
                                reply: transport.Reply) -> None:
        self._running_core().release_views(conn, msg.view_ids)
        if isinstance(msg.request, m.WithReleases):
            reply.fail(BadRequest(f"{self.name}: releases inside releases"))
            return
        await self._routes.dispatch(conn, msg.request, reply)

    def _on_release(self, conn: transport.Connection, msg: m.Release) -> None:
        self._running_core().release_views(conn, msg.view_ids)

    def _on_add_ref(self, conn: transport.Connection, msg: m.AddRef) -> None:
        core = self._running_core()
        adopting = core.may_be_adopting(msg.object_id)
        core.add_ref(conn, msg.object_id, msg.count)
        if adopting and self._nursery is not None:  # kept aside: see `StoreCore.add_ref`
            self._nursery.start_soon(self._settle_refs, core, msg.object_id)

    @staticmethod
    async def _settle_refs(core: StoreCore, object_id: bytes) -> None:
        await core.adopted(object_id)
        core.drop_deferred_refs(object_id)

    def _on_remove_ref(self, conn: transport.Connection, msg: m.RemoveRef) -> None:
        self._running_core().remove_ref(conn, msg.object_id, msg.count)

    def _on_unpin(self, conn: transport.Connection, msg: m.Unpin) -> None:
        self._running_core().unpin(conn, msg.object_id)

    def _on_abort(self, conn: transport.Connection, msg: m.Abort) -> None:
        self._running_core().abort(conn, msg.object_id)

    def _on_hello(self, conn: transport.Connection, msg: m.Hello, reply: transport.Reply) -> None:
        reply.send(m.StoreHello(
            arena_path=self.arena_path, arena_size=self._running_core().arena.mapping.size,
            inline_threshold=self.inline_threshold, prefix=self.prefix, warm=self.warm))

    def _on_get(self, conn: transport.Connection, msg: m.Get, reply: transport.Reply) -> None:
        found = self._running_core().get_now(conn, msg.object_id)
        if found is not None:
            reply.send(_wire_value(found))
        else:
            self._later(reply, self._get, conn, msg.object_id, msg.timeout)

    def _on_put_inline(self, conn: transport.Connection, msg: m.PutInline,
                       reply: transport.Reply) -> None:
        core = self._running_core()
        value = SerializedValue(data=msg.data, buffers=msg.buffers, metadata=msg.metadata)
        if core.put_small_nowait(conn, msg.object_id, value, msg.take_ref):
            reply.send(None)
        else:
            self._later(reply, core.put_small, conn, msg.object_id, value, msg.take_ref)

    def _on_create(self, conn: transport.Connection, msg: m.Create, reply: transport.Reply) -> None:
        # Inline when the block fits without spilling (no task started: 0.1 ms less
        # per large put here); a create that must spill first answers later.
        core = self._running_core()
        payload = core.create_nowait(conn, msg.object_id, msg.meta_len, msg.data_len,
                                     msg.buffer_sizes, msg.take_ref, msg.seal_follows)
        if payload is not None:
            reply.send(payload)
        else:
            self._later(reply, core.create, conn, msg.object_id, msg.meta_len,
                        msg.data_len, msg.buffer_sizes, msg.take_ref, msg.seal_follows)

    def _on_seal(self, conn: transport.Connection, msg: m.Seal, reply: transport.Reply) -> None:
        reply.send(self._running_core().seal(conn, msg.object_id, msg.with_view))

    def _on_lend(self, conn: transport.Connection, msg: m.Lend, reply: transport.Reply) -> None:
        reply.send(self._running_core().lend(conn, msg.size, msg.prefix))

    def _on_adopt(self, conn: transport.Connection, msg: m.Adopt, reply: transport.Reply) -> None:
        reply.send(self._running_core().adopt(conn, msg))

    async def _recall(self, conn: Any, lend_id: bytes) -> bool:
        """Ask ``conn``'s client for the block lent to it as ``lend_id`` (`StoreCore`)."""
        try:
            return bool(await conn.request(m.Recall(lend_id), timeout=5.0))
        except transport.TransportError as exc:
            logger.info("%s: %s did not give back its lent block: %s", self.name,
                        conn.peer_name, exc)
            return False

    async def _pending(self, conn: Any) -> Sequence[bytes]:
        """Ask ``conn``'s client which adopts it sent unanswered (`StoreCore`)."""
        try:
            return list(await conn.request(m.Pending(), timeout=5.0))
        except transport.TransportError as exc:
            logger.info("%s: %s did not say which adopts it sent: %s", self.name,
                        conn.peer_name, exc)
            return []

    # Lookups of objects whose seal is on its way (``StoreCore.sealing``), or whose
    # adopt may be (``StoreCore.may_be_adopting``: the writer is asked), wait for it:
    # `_after_seals` answers at once when none of the ids is such an object (always,
    # but for the instant between a put's return and its seal being read), else
    # from a task once they are settled.

    def _after_seals(self, reply: transport.Reply, object_ids: Sequence[bytes],
                     answer: Callable[[], Any]) -> None:
        """Answer ``reply`` with ``answer()`` once none of ``object_ids`` is sealing."""
        core = self._running_core()
        if any(core.sealing(oid) or core.may_be_adopting(oid) for oid in object_ids):
            self._later(reply, self._settle_then, core, object_ids, answer)
        else:
            reply.send(answer())

    @staticmethod
    async def _settle_then(core: StoreCore, object_ids: Sequence[bytes],
                           answer: Callable[[], Any]) -> Any:
        for object_id in object_ids:
            if core.may_be_adopting(object_id):
                await core.adopted(object_id)
            await core.settled(object_id)
        return answer()

    def _on_contains(self, conn: transport.Connection, msg: m.Contains,
                     reply: transport.Reply) -> None:
        self._after_seals(reply, [msg.object_id],
                          functools.partial(self._running_core().contains, msg.object_id))

    def _on_missing(self, conn: transport.Connection, msg: m.Missing,
                    reply: transport.Reply) -> None:
        core = self._running_core()
        self._after_seals(reply, msg.object_ids,
                          lambda: [oid for oid in msg.object_ids if not core.contains(oid)])

    def _on_pin(self, conn: transport.Connection, msg: m.Pin, reply: transport.Reply) -> None:
        core = self._running_core()

        def pin() -> None:
            core.pin(conn, msg.object_id)

        self._after_seals(reply, [msg.object_id], pin)

    def _on_delete(self, conn: transport.Connection, msg: m.Delete, reply: transport.Reply) -> None:
        self._after_seals(reply, [msg.object_id],
                          functools.partial(self._running_core().delete, msg.object_id))

    def _on_read_chunk(self, conn: transport.Connection, msg: m.ReadChunk,
                       reply: transport.Reply) -> None:
        core = self._running_core()
        self._after_seals(reply, [msg.object_id], lambda: pickle.PickleBuffer(
            core.read_chunk(msg.object_id, msg.offset, msg.size)))

    def _on_info(self, conn: transport.Connection, msg: m.Info, reply: transport.Reply) -> None:
        core = self._running_core()

        def info() -> m.ObjectInfo:
            entry = core.visible(msg.object_id)
            if entry is None:
                raise ObjectNotFoundError(msg.object_id)
            return m.ObjectInfo(
                state=entry.state, size=entry.size, payload_len=core.payload_len(entry),
                meta_len=entry.meta_len, data_len=entry.data_len,
                buffer_sizes=tuple(entry.buffer_sizes))

        self._after_seals(reply, [msg.object_id], info)

    def _on_claim(self, conn: transport.Connection, msg: m.Claim, reply: transport.Reply) -> None:
        reply.send(self._running_core().claim(conn, msg.refs, msg.pins, msg.views, msg.sealed,
                                              msg.adopts))

    def _on_statistics(self, conn: transport.Connection, msg: m.Statistics,
                       reply: transport.Reply) -> None:
        reply.send(self.statistics())

    async def _reclaim(self, clients: set[Any]) -> None:
        """Ask ``clients`` to drop their cached views (they answer after sending the
        releases, so the releases are processed when this returns)."""

        async def ask(conn: transport.Connection) -> None:
            try:
                await conn.request(m.DropCache(), timeout=5.0)
            except transport.TransportError as exc:
                logger.info("%s: %s did not drop its cache: %s", self.name, conn.peer_name, exc)

        async with trio.open_nursery() as nursery:
            for conn in clients:
                if isinstance(conn, transport.Connection) and not conn.closed:
                    nursery.start_soon(ask, conn)

    def _on_wait_warm(self, conn: transport.Connection, msg: m.WaitWarm,
                      reply: transport.Reply) -> None:
        self._later(reply, self.wait_warm)

    def _later(self, reply: Any, fn: Any, *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._answer, reply, fn, *args)

    @staticmethod
    async def _answer(reply: Any, fn: Any, *args: Any) -> None:
        try:
            result = await fn(*args)
        except Exception as exc:
            reply.fail(exc)
        else:
            reply.send(result)

    async def _get(self, conn: transport.Connection, object_id: bytes, timeout: float | None) -> Any:  # noqa: ASYNC109
        return _wire_value(await self._running_core().get(conn, object_id, timeout))


def _page(n: int) -> int:
    return -(-n // 4096) * 4096


def _wire_value(result: GetResult) -> m.InlineValue | m.SharedView | m.FileView:
    """A get's answer as it travels: a small value's buffers go out of band."""
    if isinstance(result, SerializedValue):
        return m.InlineValue(result.metadata, result.data,
                             [pickle.PickleBuffer(b) for b in result.buffers])
    return result


def _refuse(conn: transport.Connection, reply: transport.Reply,
            error: transport.BadMessage) -> None:
    """A message the store does not handle: the client raises `store.BadRequest`."""
    reply.fail(BadRequest(str(error)))


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(trio.Cancelled)[1]
        return rest is None
    return False
