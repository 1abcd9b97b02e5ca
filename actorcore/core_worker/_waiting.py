"""Waiting for objects: ``get``, ``wait`` and ``await`` of refs, fetching refs this
process does not own, and rebuilding values lost from the store.

Waiting never parks a thread inside the core loop. A waiting thread registers a
callback on each entry not yet ready (``ReferenceTable.register``, under the
table's lock, so it cannot miss a ``set_ready`` racing with it), then blocks on a
plain ``threading.Lock`` that the last needed callback releases from the core loop.
Objects this process does not own are fetched from the node (started in the core
loop with ``run_sync_soon``; the fetch's reply sets the entry ready like a push
does). ``get`` on entries that are all ready reads them in the calling thread
without entering the core loop.

A task blocked in ``get`` or ``wait`` tells the node (``Blocked``/``Unblocked``) so
its CPU goes to other tasks: nested tasks cannot deadlock a node. A task cancelled
while it waits is woken (``cancel_task_waits``) and raises ``TaskCancelledError``.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio

import transport

from ..exceptions import (
    ActorcoreSystemError,
    GetTimeoutError,
    ObjectLostError,
    TaskCancelledError,
    TaskError,
)
from ..protocol import _serialization
from ..protocol import _wire as w
from ._loop import CoreLoop
from ._node_link import NodeLink
from ._object_ref import ObjectRef, ids_of
from ._references import Entry, ReferenceTable
from ._store_link import STORE, StoreLink

__all__ = ["ObjectWaits"]

logger = logging.getLogger("actorcore.core_worker")

_ready_of = operator.attrgetter("ready")
_data_of = operator.attrgetter("data")


class ObjectWaits:
    """``get``, ``wait`` and ``await`` over a process's reference table (see the
    module docstring)."""

    def __init__(self, loop: CoreLoop, link: NodeLink, references: ReferenceTable) -> None:
        self._loop = loop
        self._link = link
        self._references = references
        #: The node's object store, once the core worker serves (``attach_store``).
        self.store: StoreLink | None = None
        #: The task the calling thread runs (a worker process sets it).
        self.current_task_id: Callable[[], bytes | None] = lambda: None
        #: Told when a task starts or stops waiting, instead of the node: it sends
        #: `Blocked` / `Unblocked` itself (a worker process sets it).
        self.on_blocked: Callable[[bytes, bool], None] | None = None
        #: The direct link the answer of a result ``(object id, entry)`` comes on,
        #: for a waiting thread to read itself (``_reply_reads``), or ``None``.
        self.reply_reads_for: Callable[[bytes, Entry], Any] | None = None
        self._fetching: set[bytes] = set()
        self._task_waiters: dict[bytes, Callable[[], None]] = {}
        self._cancelled_tasks: set[bytes] = set()

    def attach_store(self, store: StoreLink) -> None:
        """Read large values through ``store`` from now on."""
        self.store = store

    def entry_for(self, oid: bytes) -> Entry:
        """The entry for ``oid``; an unknown one is fetched from the node (any thread)."""
        entry = self._references.entries.get(oid)
        if entry is None:
            entry = self._references.entries.setdefault(oid, Entry(owned=False))
        if not entry.owned and not entry.ready and oid not in self._fetching:
            self._fetching.add(oid)
            if self._loop.in_loop():
                self._loop.start_soon(self.fetch, [oid])
            else:
                self._loop.trio_token.run_sync_soon(self._loop.start_soon, self.fetch, [oid])
        return entry

    async def fetch(self, oids: list[bytes]) -> None:
        try:
            items = (await self._link.conn.request(w.Fetch(oids), timeout=None)).objects
        except Exception as exc:
            err = ActorcoreSystemError(f"fetching {[o.hex() for o in oids]} failed: {exc}")
            items = [(oid, True, _serialization.dumps(err)) for oid in oids]
        finally:
            for oid in oids:
                self._fetching.discard(oid)
        for oid, is_error, data in items:
            entry = self._references.entries.get(oid)
            if entry is not None:
                self._references.set_ready(entry, is_error, data)
                if entry.dropped:
                    self._references.drop_late(oid, entry)


    def blocking_wait(self, oids: Sequence[bytes], num: int, timeout: float | None,
                       fail_fast: bool = False) -> list[bool]:
        """Block the calling thread until ``num`` of ``oids`` are ready or ``timeout``
        (with ``fail_fast``: or one of them is ready with an error)."""
        self._check_not_in_loop()
        entries = [self.entry_for(oid) for oid in oids]
        task_id = self.current_task_id()
        gate = threading.Lock()
        gate.acquire()
        released = [False]

        def fire() -> None:
            if not released[0]:
                released[0] = True
                gate.release()

        if task_id is not None:
            if task_id in self._cancelled_tasks:
                raise TaskCancelledError(task_id, "the task was cancelled")
            self._task_waiters[task_id] = fire
            self._say_blocked(task_id, True)
        cb = self._references.register(entries, num, fire, fail_fast)
        try:
            gate.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            self._references.unregister(entries, cb)
            if task_id is not None:
                self._task_waiters.pop(task_id, None)
                self._say_blocked(task_id, False)
        if task_id is not None and task_id in self._cancelled_tasks:
            raise TaskCancelledError(task_id, "the task was cancelled while it waited in get")
        return [e.ready for e in entries]

    def _say_blocked(self, task_id: bytes, blocked: bool) -> None:
        """Tell the node that ``task_id`` starts (or stops) waiting: ``on_blocked``
        does, when set, so that its own record of the change and the message
        are one step (``worker._process``, "In step with the node")."""
        hook = self.on_blocked
        if hook is not None:
            hook(task_id, blocked)
        else:
            self._link.enqueue(w.Blocked(task_id) if blocked else w.Unblocked(task_id))

    def _check_not_in_loop(self) -> None:
        if self._loop.in_loop():
            raise RuntimeError(
                "blocking actorcore calls (get, wait) cannot run inside the core loop; "
                "use `await ref` in async code"
            )

    def _wait_one(self, oid: bytes, timeout: float | None) -> bool:
        """``blocking_wait`` for one object, outside any task (a driver's ``get`` of
        one ref, the sync call's path): no counting callback and no Blocked/Unblocked
        for the node, only the lock the core loop releases (``register_one``); or,
        for the answer of a direct call or leased task, the thread reads it off its
        link itself (``_reply_reads``)."""
        self._check_not_in_loop()
        entry = self.entry_for(oid)
        if self.reply_reads_for is not None and not entry.ready:
            reads = self.reply_reads_for(oid, entry)
            if reads is not None:
                return reads.wait(entry, timeout)
        gate = threading.Lock()
        gate.acquire()
        fire = gate.release
        if self._references.register_one(entry, fire):
            try:
                gate.acquire(timeout=-1 if timeout is None else timeout)
            finally:
                self._references.unregister([entry], fire)
        return entry.ready

    def cancel_task_waits(self, task_id: bytes) -> None:
        """Wake the task ``task_id`` out of ``get``/``wait`` (core loop)."""
        self._cancelled_tasks.add(task_id)
        fire = self._task_waiters.get(task_id)
        if fire is not None:
            with self._references.lock:
                fire()

    def task_finished(self, task_id: bytes) -> None:
        self._cancelled_tasks.discard(task_id)


    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """The values of ``refs``; raises the first error among them as soon as one of
        them is ready with an error (the others are not waited for, as in Ray)."""
        entries = self._references.entries
        oids = ids_of(refs)
        for oid in oids:
            e = entries.get(oid)
            if e is None or not e.ready:
                break
        else:
            return [self._value_of(oid, entries[oid], timeout) for oid in oids]
        started = time.monotonic()
        if self._link.closed and self._link.lost_error is not None:
            # The link died for good: ``connection_lost`` fails (or is failing, in
            # the core loop) every entry not ready; do not wait for it to finish.
            for oid in oids:
                e = entries.get(oid)
                if e is None or not e.ready:
                    raise self._link.unreachable_error(e.actor if e is not None else None)
            return [self._value_of(oid, entries[oid], timeout) for oid in oids]
        if len(oids) == 1 and self.current_task_id() is None:
            flags = [self._wait_one(oids[0], timeout)]
        else:
            flags = self.blocking_wait(oids, len(oids), timeout, fail_fast=True)
        for oid, flag in zip(oids, flags, strict=True):
            if flag and (e := entries.get(oid)) is not None and e.is_error:
                self._value_of(oid, e, timeout)  # raises it
        if not all(flags):
            missing = [oid.hex() for oid, f in zip(oids, flags, strict=True) if not f]
            raise GetTimeoutError(
                f"get timed out after {timeout} s: {len(missing)} of {len(oids)} "
                f"object(s) not ready (first: {missing[0]})"
            )
        out = []
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        for oid in oids:
            e = entries.get(oid)
            if e is None:
                raise ActorcoreSystemError(f"object {oid.hex()} vanished while being read")
            out.append(self._value_of(oid, e, left))
        return out

    def get_one(self, ref: ObjectRef, timeout: float | None) -> Any:
        """``get`` of one ref (``ray.get(ref)``, the sync call's): the value, without
        the lists of `get`. The same steps in the same order: a ready value at once;
        outside a task, with the link up, `_wait_one` (whose thread may read the
        answer off its direct link); anything else goes the general way."""
        oid = ref._id
        entry = self._references.entries.get(oid)
        if entry is not None and entry.ready:
            return self._value_of(oid, entry, timeout)
        if self.current_task_id() is not None or self._link.closed:
            return self.get([ref], timeout)[0]
        started = time.monotonic() if timeout is not None else 0.0
        if not self._wait_one(oid, timeout):
            raise GetTimeoutError(f"get timed out after {timeout} s: 1 of 1 object(s) not "
                                  f"ready (first: {oid.hex()})")
        entry = self._references.entries.get(oid)
        if entry is None:
            raise ActorcoreSystemError(f"object {oid.hex()} vanished while being read")
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return self._value_of(oid, entry, left)

    def _value_of(self, oid: bytes, entry: Entry, timeout: float | None = None) -> Any:
        """The value of a ready entry; ``timeout`` bounds a wait for a restarting store."""
        data = entry.data
        if data == STORE:
            if self.store is None:
                raise ActorcoreSystemError(f"object {oid.hex()} is in a store we cannot reach")
            try:
                return self.store.get(oid, timeout)
            except ObjectLostError:
                if self._loop.in_loop() or self._link.closed:
                    raise
                return self.read_lost(oid, timeout)
        value = _serialization.loads(data)
        if entry.is_error or data is not entry.data:
            entry.seen = True
            if isinstance(value, TaskError):
                raise value.as_instanceof_cause()
            if isinstance(value, BaseException):
                raise value
        return value

    def read_lost(self, oid: bytes, timeout: float | None = None) -> Any:
        """The value of ``oid``, which the store no longer has (say, its spill file
        vanished): the node rebuilds it from its lineage, or answers the error that
        says why not, which is raised. Any thread but the core loop's.

        One path for every reader that finds a value gone (a ``get``, a task's
        argument): the node decides. Its answer may still be STORE when it had not
        seen the loss yet (the request can reach it before the object's own
        registration, which leaves through the queued messages): then the second
        ask finds it lost. A task that waits here tells the node it is blocked, as
        in ``get``: the rebuild may need the CPU it holds.
        """
        task_id = self.current_task_id()
        if task_id is not None:
            self._say_blocked(task_id, True)
        try:
            for attempt in range(2):
                is_error, data = self._loop.run(self._rebuild, oid, timeout)
                if is_error or data != STORE:
                    break
                assert self.store is not None  # (a STORE value came from it)
                try:
                    return self.store.get(oid, timeout)
                except ObjectLostError:
                    if attempt:
                        raise
        finally:
            if task_id is not None:
                self._say_blocked(task_id, False)
        value = _serialization.loads(data)
        if isinstance(value, TaskError):
            raise value.as_instanceof_cause()
        if isinstance(value, BaseException):
            raise value
        return value

    async def _rebuild(self, oid: bytes, timeout: float | None) -> tuple[bool, Any]:  # noqa: ASYNC109
        """Ask the node to rebuild ``oid``, lost from its store (core loop); its
        answer once it is ready again: ``(is_error, data)``."""
        try:
            items = (await self._link.conn.request(w.Rebuild([oid]), timeout=timeout)).objects
        except transport.RequestTimeout:
            # The rebuild goes on (a later get finds it done); this reader's wait is over.
            err: Exception = GetTimeoutError(
                f"get timed out after {timeout} s: object {oid.hex()} was lost from the "
                f"node's object store and is being rebuilt")
            return True, _serialization.dumps(err)
        except Exception as exc:
            err = ObjectLostError(f"object {oid.hex()} is no longer in the node's object "
                                  f"store, and asking the node to rebuild it failed: {exc}")
            return True, _serialization.dumps(err)
        _oid, is_error, data = items[0]
        return is_error, data

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """``wait`` (the API checked its arguments but duplicates): answered from this
        process's own entries, with no round trip and no thread hop, when enough of
        ``refs`` are known ready; else the calling thread blocks in `blocking_wait`.

        One pass over the entries, because a program polling ``wait`` over thousands
        of refs pays for each one every call: no ``ObjectRef.__hash__`` (the duplicate
        check hashes the ids), and ``seen`` is set only on errors, the one kind of
        entry it matters for (an error a wait saw is not reported as unhandled).
        """
        oids = ids_of(refs)
        if len(set(oids)) != len(oids):
            raise ValueError("wait() got duplicate ObjectRefs in its list")
        entries = self._references.entries
        found = list(map(entries.get, oids))
        if None in found:
            flags = [e is not None and e.ready for e in found]
        else:  # (the usual case: C-level passes over thousands of entries)
            flags = list(map(_ready_of, found))
        started = time.monotonic()
        while self._lost_among(oids, found, flags, num_returns):
            # Some were lost, now pending: the ready ones after them are checked too.
            flags = [e is not None and e.ready for e in found]
        if timeout is not None and timeout > 0:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        n_ready = flags.count(True)
        if n_ready < num_returns:
            if timeout != 0:
                flags = self.blocking_wait(oids, num_returns, timeout)
                found = [entries.get(o) for o in oids]
            else:
                for oid in oids:  # timeout=0: start fetches so a later wait sees them
                    self.entry_for(oid)
        elif n_ready == len(oids):  # all ready: the first num_returns of them
            for e in found[:num_returns]:
                if e.is_error:  # type: ignore[union-attr]
                    e.seen = True  # type: ignore[union-attr]
            return list(refs[:num_returns]), list(refs[num_returns:])
        ready: list[ObjectRef] = []
        not_ready: list[ObjectRef] = []
        for ref, flag, e in zip(refs, flags, found, strict=True):
            if flag and len(ready) < num_returns:
                ready.append(ref)
                if e is not None and e.is_error:
                    e.seen = True  # as Ray: an error a wait saw is not unhandled
            else:
                not_ready.append(ref)
        return ready, not_ready

    # ``wait`` reports an object ready when its value can be read here, as Ray's
    # ``wait`` (``fetch_local=True``) does: a large value whose every copy is lost
    # (a spill file deleted, its node's store gone) is not ready, and asking for it
    # starts its rebuild, as a ``get`` would. Its entry here says ``STORE`` (the
    # value is in this node's store), so the entries a wait would report ready with
    # that marker are checked with the store first (one round trip for them all;
    # small values travel inline and cannot be lost; a value this process holds a
    # view of cannot be lost either, and needs no asking). One found missing becomes
    # pending again and the node is asked for it (`Rebuild`: it pulls it from
    # another node or re-runs its task, or answers the error saying why not); the
    # answer makes it ready again, and the wait goes on as for any pending object.

    def _lost_among(self, oids: list[bytes], found: list[Entry | None], flags: list[bool],
                    num_returns: int) -> bool:
        """Check with the store the large values among the first ``num_returns``
        ready entries; make the missing ones pending again (their rebuild asked
        for). Returns whether any was missing."""
        if self.store is None or self._link.closed or self._loop.in_loop():
            return False
        if None not in found and STORE not in map(_data_of, found):
            return False  # all inline: nothing to check (one C-level pass)
        client = self.store.client
        holds = client.holds if client is not None else None
        check = []
        seen = 0
        for oid, e, ready in zip(oids, found, flags, strict=True):
            if not ready or e is None:
                continue
            if not e.is_error and e.data == STORE and not (holds is not None and holds(oid)):
                check.append(oid)
            seen += 1
            if seen >= num_returns:
                break
        if not check:
            return False
        return bool(self._loop.run(self._make_pending_if_lost, check))

    async def _make_pending_if_lost(self, oids: list[bytes]) -> list[bytes]:
        """The large values among ``oids`` that this node's store no longer has,
        each made pending again while the node rebuilds it (core loop)."""
        store = self.store
        assert store is not None
        try:
            missing = await store.missing(oids)
        except Exception as exc:  # the store restarting: ready, as the entries say
            logger.debug("wait: asking the store for %d objects failed: %r", len(oids), exc)
            return []
        pending = []
        for oid in missing:
            e = self._references.entries.get(oid)
            if e is None or not e.ready or e.data != STORE:
                continue
            self._references.make_pending(e)
            pending.append(oid)
            self._loop.start_soon(self._rebuilt, oid, e)
        return pending

    async def _rebuilt(self, oid: bytes, entry: Entry) -> None:
        """Ask the node for ``oid`` again, lost here; ready once it answers."""
        is_error, data = await self._rebuild(oid, None)
        if self._references.entries.get(oid) is not entry:
            return
        self._references.set_ready(entry, is_error, data)
        if entry.dropped:
            self._references.drop_late(oid, entry)

    def on_ready_callback(self, oids: Sequence[bytes], callback: Callable[[], None]) -> None:
        """Call ``callback`` once every object in ``oids`` is ready (core loop, or now)."""
        entries = [self.entry_for(oid) for oid in oids]
        self._references.register(entries, len(entries), callback)

    async def await_any(self, oids: Sequence[bytes]) -> None:
        """Return once one of ``oids`` is ready, in asyncio or Trio code (any thread)."""
        import sniffio

        entries = [self.entry_for(oid) for oid in oids]
        lib = sniffio.current_async_library()
        if lib == "trio":
            token = trio.lowlevel.current_trio_token()
            ev = trio.Event()
            if token is self._loop.trio_token:
                cb = self._references.register(entries, 1, ev.set)
            else:
                cb = self._references.register(entries, 1, lambda: token.run_sync_soon(ev.set))
            try:
                await ev.wait()
            finally:
                self._references.unregister(entries, cb)
        elif lib == "asyncio":
            import asyncio

            loop = asyncio.get_running_loop()
            aev = asyncio.Event()
            cb = self._references.register(
                entries, 1, lambda: _discard(loop.call_soon_threadsafe(aev.set)))
            try:
                await aev.wait()
            finally:
                self._references.unregister(entries, cb)
        else:
            raise RuntimeError(f"async iteration of an ObjectRefGenerator is not supported under {lib}")

    async def await_ref(self, ref: ObjectRef) -> Any:
        """``await ref`` in asyncio or Trio code running on another thread's loop."""
        import sniffio

        oid = ref.binary()
        entry = self._references.entries.get(oid)
        if entry is None or not entry.ready:
            lib = sniffio.current_async_library()
            if lib == "trio":
                token = trio.lowlevel.current_trio_token()
                ev = trio.Event()
                if token is self._loop.trio_token:
                    self.on_ready_callback([oid], ev.set)
                else:
                    self.on_ready_callback([oid], lambda: token.run_sync_soon(ev.set))
                await ev.wait()
            elif lib == "asyncio":
                import asyncio

                loop = asyncio.get_running_loop()
                aev = asyncio.Event()
                self.on_ready_callback(
                    [oid], lambda: _discard(loop.call_soon_threadsafe(aev.set))
                )
                await aev.wait()
            else:
                raise RuntimeError(f"await ObjectRef is not supported under {lib}")
        return self._value_of(oid, self._references.entries[oid])

def _discard(_value: Any) -> None:
    pass

