"""The core worker: the runtime inside every driver and worker process.

One class serves both: a driver's user program and a worker's task code call the same
methods (``submit_task``, ``get``, ``put``, ``wait``, ``cancel``), and nested tasks are
just tasks submitted from a worker.

Threads and loops
-----------------
The core worker owns a Trio loop (the *core loop*): in a driver it runs in a
background thread started by ``init()``; in a worker process it is the main thread.
User code runs in other threads (the driver's main thread; a worker's Pykka executor
threads). The core loop alone talks to the node over one transport connection and
alone sets entries ready.

Submitting never crosses into the core loop synchronously: ``submit_task`` and
``put`` serialise in the calling thread, append a message to ``_outq`` (a deque:
thread-safe appends) and, if no flush is pending, schedule one with
``TrioToken.run_sync_soon`` (no waiting). The core loop's sender task drains the
queue and coalesces consecutive submits into one `Submit` frame, so
under load many tasks travel per frame; the order of messages is kept (an export
always precedes the tasks that use it; a free follows the submit that used the ref).

A message that cannot be sent
-----------------------------
Only a dead link keeps a message queued (for the reconnect, see ``reconnected``).
A message the link refuses for what it is — a frame over the node's limit, a value
that does not pickle — would be refused again on every retry, and leaving it at the
head of the queue would hold back every later submission of this process for ever.
So it is taken out and its consumers fail instead (``_undeliverable``): a task or
actor call gets the error as its result (``get`` raises it), a put becomes an error
object at the node (a task taking it fails instead of waiting). The cases that can
be seen before anything is queued raise at ``.remote()`` already: a function too
large to export, arguments too large for the link when no store is reachable.
Large arguments normally never get near the limit: they travel by ref through the
object store (``_serialization.dumps_args``, ``put_argument``).

The local object table
----------------------
``_entries`` maps object id -> ``_Entry``. The owner of an object (the process that
submitted its task or put it) creates the entry at once; the node pushes the task's
results to their owner (`ObjectsReady`) without being asked, so ``get`` on an
owned ref costs no round trip. Refs that arrived from elsewhere are fetched from the
node with a `Fetch` request. ``get`` on entries that are all ready reads
them in the calling thread without entering the core loop; otherwise it waits in the
core loop (``trio.from_thread.run``) under the caller's timeout. A task blocked that
way tells the node (``blocked``/``unblocked``) so its CPU goes to other tasks: nested
tasks cannot deadlock a node.

Reference counting: every ``ObjectRef`` instance counts in ``_refcounts``; when the
last one of an owned object dies and it never escaped (was never pickled), the entry
is dropped and the node is told to free it (batched).

Unhandled errors: an owned object that holds a task's error nobody ever looked at
(``get``, ``await``, ``wait`` that saw it ready, or a task it was passed to) is
reported as "Unhandled error" when its last ref dies, as Ray does, so that the
failure of a task whose result was never read is not silent. A ref that dies before
its task finished keeps its entry (marked ``dropped``) until the result is here.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

import transport

from ..exceptions import (
    ActorcoreError,
    ActorcoreSystemError,
    GetTimeoutError,
    MessageTooLargeError,
    ObjectLostError,
    ObjectStoreFullError,
    SerializationError,
    TaskCancelledError,
    TaskError,
)
from ..protocol import _serialization
from ..protocol import _wire as w
from ..protocol._ids import new_put_id
from ..protocol._messages import ObjectData, TaskSpec
from . import _worker_state
from ._leased_tasks import LeasedTasks
from ._object_ref import ObjectRef
from ._store_link import STORE, StoreLink, encode_value
from ._worker_state import task_context

__all__ = ["CoreWorker", "LAZY_FLUSH", "SUBMIT_FRAME_BYTES"]

logger = logging.getLogger("actorcore.core_worker")

#: Longest a message queued with ``wake=False`` waits for company.
LAZY_FLUSH = 0.02

#: Coalesced submits stop growing a frame at about this many bytes of specs (or half
#: the node link's frame limit, if that is smaller): a batch of many tasks with
#: mid-sized arguments must never add up to a frame the node refuses.
SUBMIT_FRAME_BYTES = 4 << 20

#: What a spec weighs in a frame besides its arguments (ids, name, resources).
_SPEC_OVERHEAD = 512

#: Errors of a send that mean "the link is down": the message waits for a reconnect.
#: Any other error (a frame over the peer's limit, a message that does not pickle)
#: would fail the same way on every retry, so it is never put back in the queue.
_LINK_DOWN = (transport.ConnectionLost, trio.ClosedResourceError, trio.BrokenResourceError)

#: Messages that carry objects ``[(object_id, is_error, data), ...]``, and in which field.
_RESULT_FIELD: dict[type, str] = {w.Put: "objects", w.TaskDone: "results",
                                  w.ActorDone: "results", w.StreamItems: "results"}


@attrs.define(slots=True, eq=False)
class _Entry:
    """One object as this process knows it."""

    owned: bool
    ready: bool = False
    is_error: bool = False
    data: Any = None  # bytes (inline) or a store handle
    event: trio.Event | None = None  # created on demand, set in the core loop
    callbacks: list[Callable[[], None]] | None = None
    actor: bytes | None = None  # the actor, for an actor method call's result
    seen: bool = False  # its value (or error) was read, waited on or passed on
    dropped: bool = False  # its last ref died before it was ready




class CoreWorker:
    """See the module docstring. Construct it inside the core loop."""

    def __init__(
        self,
        *,
        role: str,
        worker_id: bytes,
        job_id: bytes,
        node_id: bytes,
        conn: Any,
        gcs_address: str | None = None,
        node_address: str | None = None,
    ) -> None:
        self.role = role
        self.worker_id = worker_id
        self.job_id = job_id
        self.node_id = node_id
        self.gcs_address = gcs_address
        self.node_address = node_address
        self.conn = conn
        self.pid = os.getpid()
        self.trio_token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._entries: dict[bytes, _Entry] = {}
        self._refcounts: dict[bytes, int] = {}
        self._escaped: set[bytes] = set()
        self._refs_lock = threading.Lock()
        self._exported: set[bytes] = set()
        self._export_lock = threading.Lock()
        self._outq: collections.deque = collections.deque()
        self._flush_pending = False
        self._solo = 0  # this many next specs go one per frame (after a refused batch)
        self._sender_busy = False
        self._wake_sender = trio.Event()
        self._lazy_armed = False
        self._lazy_event = trio.Event()
        self._fetching: set[bytes] = set()
        self._task_waiters: dict[bytes, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._cancelled_tasks: set[bytes] = set()
        self._closed = False
        self.lost_error: BaseException | None = None
        self.store: StoreLink | None = None
        # Hooks a worker process sets: the task a thread runs, block notification.
        self.current_task_id: Callable[[], bytes | None] = lambda: None
        self.on_blocked: Callable[[bytes, bool], None] | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        # task id -> the item ids pushed to us so far, of each generator task we own
        # whose ``ObjectRefGenerator`` lives (``register_stream``).
        self._streams: dict[bytes, set[bytes]] = {}
        # Direct task submission (``_leased_tasks``): set up by ``serve``.
        self.leased: LeasedTasks | None = None

    # ------------------------------------------------------------------ sending

    def _enqueue(self, message: Any, *, wake: bool = True) -> None:
        """Queue a one-way message for the node from any thread (never blocks).

        ``wake=False`` (frees, which nobody waits for): do not wake the core loop for
        it; it leaves with the next message, or within ``LAZY_FLUSH`` seconds. Waking
        a loop in another thread costs a GIL hand-off, about as much as a whole
        message, so the hot submit/get path wakes it once per task, not twice.
        """
        self._outq.append(message)
        if not wake:
            if not self._lazy_armed:
                self._lazy_armed = True
                try:
                    self.trio_token.run_sync_soon(self._lazy_event.set)
                except trio.RunFinishedError:
                    pass
            return
        if not self._flush_pending:
            self._flush_pending = True
            if threading.get_ident() == self._loop_thread:
                self._flush()
            else:
                try:
                    self.trio_token.run_sync_soon(self._flush)
                except trio.RunFinishedError:
                    pass

    def append_unsent(self, message: Any) -> None:
        """Queue a message without any wake-up: the caller flushes (``flush_now``)."""
        self._outq.append(message)

    def flush_now(self) -> None:
        """Send what is queued (core loop)."""
        if self._outq and not self._flush_pending:
            self._flush()

    def _next_message(self) -> Any:
        """Pop the next frame's message: consecutive submits coalesce into one, up to
        ``SUBMIT_FRAME_BYTES`` of specs (a longer run is split across frames)."""
        outq = self._outq
        batch: list = []
        used = 0
        budget = min(SUBMIT_FRAME_BYTES, self.frame_limit() // 2)
        solo = self._solo > 0
        while outq:
            m = outq[0]
            if type(m) is not w.Submit:
                if batch:
                    break
                return outq.popleft()
            outq.popleft()
            specs = m.specs
            for i, spec in enumerate(specs):
                size = len(spec.args) + 32 * len(spec.deps) + _SPEC_OVERHEAD
                if batch and (solo or used + size > budget):
                    outq.appendleft(w.Submit(list(specs[i:])))
                    self.stats["submit_frames"] += 1
                    return w.Submit(batch)
                batch.append(spec)
                used += size
                if solo:
                    self._solo -= 1
        if batch:
            self.stats["submit_frames"] += 1
            return w.Submit(batch)
        return None

    def frame_limit(self) -> int:
        """The largest message the node link takes (its peer's frame limit)."""
        return getattr(self.conn, "peer_max_frame_size", transport.DEFAULT_MAX_FRAME_SIZE)

    def check_fits(self, size: int, what: str, hint: str) -> None:
        """Raise ``MessageTooLargeError`` now if a message of ``size`` bytes about
        ``what`` could never be sent to the node."""
        limit = self.frame_limit()
        if size + _SPEC_OVERHEAD > limit:
            raise MessageTooLargeError(
                f"{what}: {_fmt_bytes(size)}, more than the node link's frame limit of "
                f"{_fmt_bytes(limit)}; {hint}"
            )

    def check_args_fit(self, name: str, blob: bytes) -> None:
        """Raise ``MessageTooLargeError`` now if a call's pickled arguments could never
        be sent (large ones go by ref, so only without a reachable store)."""
        if len(blob) >= _serialization.ARG_INLINE_THRESHOLD:
            self.check_fits(len(blob), f"the arguments of {name}()",
                            "the object store is not reachable from this process, so "
                            "they cannot be passed by ref; pass smaller values")

    def _undeliverable(self, message: Any, exc: BaseException) -> None:
        """``message`` can never be sent (not a dead link: see the module docstring):
        fail what waits on it and go on with the next message (core loop)."""
        kind = type(message)
        if (kind is w.Submit and len(message.specs) > 1
                and isinstance(exc, transport.FrameTooLarge)):
            # A batch too large as a whole: send its specs one per frame, so that
            # only one that is too large by itself fails.
            self._solo = len(message.specs)
            self._outq.appendleft(message)
            return
        too_large = isinstance(exc, transport.FrameTooLarge)
        logger.error("cannot send %s to the node, dropped: %s: %s", kind.__name__,
                     type(exc).__name__, exc)

        def error(what: str) -> BaseException:
            if too_large:
                return MessageTooLargeError(f"{what} could not be sent to the node: {exc}")
            return ActorcoreSystemError(
                f"{what} could not be sent to the node: {type(exc).__name__}: {exc}")

        if kind is w.Submit:
            for spec in message.specs:
                err = error(f"{type(spec).__name__} {getattr(spec, 'name', '')}".strip())
                payload = _serialization.dumps(err)
                ids = spec.return_ids()
                if not ids:
                    logger.error("%s is lost: %s", spec, err)
                for oid in ids:
                    entry = self._entries.get(oid)
                    if entry is not None:
                        self._set_ready(entry, True, payload)
        elif kind in _RESULT_FIELD:
            # Objects (a put, a task's or actor call's results): the node must still
            # learn of them, as errors, or whoever waits for them would wait for ever.
            field = _RESULT_FIELD[kind]
            if kind is w.TaskDone or kind is w.ActorDone:
                what = (f"the results of {'task' if kind is w.TaskDone else 'actor call'} "
                        f"{message.task_id.hex()} (here {{}})")
            else:
                what = "object {}"
            items = [(oid, True, _serialization.dumps(error(what.format(oid.hex()))))
                     for oid, _is_error, _data in getattr(message, field)]
            self._outq.appendleft(attrs.evolve(message, **{field: items}))

    def _flush(self) -> None:
        """Send what is queued now, without a task switch (core loop).

        ``send_nowait`` writes at once on an idle link. If the link is backed up
        (``WouldBlock``) the async sender takes over and waits for it to drain. A
        dead link keeps the message for the reconnect; any other failure drops it
        and fails its consumers (``_undeliverable``).
        """
        self._flush_pending = False
        if self._sender_busy:
            self._wake_sender.set()
            return
        while True:
            message = self._next_message()
            if message is None:
                return
            try:
                self.conn.send_nowait(message)
            except trio.WouldBlock:
                self._outq.appendleft(message)
                self._sender_busy = True
                self._wake_sender.set()
                return
            except _LINK_DOWN:  # keep it for after a reconnect
                self._outq.appendleft(message)
                return
            except Exception as exc:
                self._undeliverable(message, exc)

    async def run_lazy_flusher(self) -> None:
        while True:
            await self._lazy_event.wait()
            self._lazy_event = trio.Event()
            await trio.sleep(LAZY_FLUSH)
            self._lazy_armed = False
            if self._outq and not self._flush_pending:
                self._flush()

    async def run_sender(self) -> None:
        """The core loop's sender for a backed-up link: ``await send`` (backpressure)."""
        while True:
            await self._wake_sender.wait()
            self._wake_sender = trio.Event()
            while True:
                message = self._next_message()
                if message is None:
                    break
                try:
                    await self.conn.send(message)
                except _LINK_DOWN:  # keep it for after a reconnect
                    self._outq.appendleft(message)
                    break
                except Exception as exc:
                    self._undeliverable(message, exc)
            self._sender_busy = False

    # --------------------------------------------------------------- submission

    def submit_task(self, spec: TaskSpec, export: Any) -> None:
        """Record and send a task (from any thread)."""
        self._check_open()
        self.ensure_exported(export, "remote function")
        self.check_args_fit(spec.name, spec.args)
        entries = self._entries
        for oid in spec.return_ids():
            entries[oid] = _Entry(owned=True)
        if spec.deps:
            self.mark_seen(spec.deps)
        self.stats["tasks_submitted"] += 1
        leased = self.leased
        if leased is not None and leased.submit(spec):
            return
        self._enqueue(w.Submit([spec]))

    def ensure_exported(self, export: Any, kind: str) -> None:
        """Queue ``export`` (a function or class) once, before what uses it."""
        fid = export.function_id
        if fid in self._exported:
            return
        with self._export_lock:
            if fid in self._exported:
                return
            self.check_fits(
                len(export.blob), f"{kind} {export.name} pickled (its code and the "
                f"variables it captures)", "pass large data as an argument or with put() "
                "instead of capturing it")
            self._exported.add(fid)
            self._enqueue(w.Export(fid, export.blob, export.name, _sys_path()))

    # Large arguments (see ``_serialization.dumps_args``). The caller puts each one
    # in the store as an object it owns, holds it (a local ref) while the call needs
    # it and then frees it like any object: the free travels behind the call on this
    # process's ordered link, and the node pins a queued task's or node-routed call's
    # dependencies until it is done (an actor's constructor arguments while the actor
    # lives, for its restarts), so the object outlives the call exactly as long as
    # needed. A call on a direct actor link is not seen by the node: its caller
    # holds the arguments until the answer comes (``_direct_calls``).

    def arg_store(self) -> CoreWorker | None:
        """Where ``dumps_args`` puts large arguments: this core worker (an
        ``_serialization.ArgStore``), or ``None`` when no store is reachable from
        here (arguments then stay inline)."""
        return self if self.store is not None else None

    def put_argument(self, label: str, value: Any, serialized: Any) -> bytes:
        """Put a large argument in the store as an object this process owns, held
        (one local ref) until ``release_args``; the node hears of it before the call
        that takes it (any thread but the core loop)."""
        import store

        assert self.store is not None
        self._check_open()
        if serialized is None:
            try:
                serialized = store.serialize(value)
            except store.SerializationError as exc:
                raise SerializationError(f"could not serialize {label}: {exc}") from exc
        oid = new_put_id()
        try:
            self.store.put(oid, serialized)
        except ObjectStoreFullError as exc:
            raise ObjectStoreFullError(
                f"{label} is {_fmt_bytes(serialized.total_size)}: it is passed through the "
                f"object store, as every argument of "
                f"{_serialization.ARG_INLINE_THRESHOLD // 1024} KiB or more, and does not "
                f"fit there: {exc}"
            ) from exc
        self._entries[oid] = _Entry(owned=True, ready=True, data=STORE)
        self.add_local_ref(oid)
        self._enqueue(w.Put([(oid, False, STORE)]))
        self.stats["args_by_ref"] += 1
        return oid

    def release_args(self, object_ids: Sequence[bytes]) -> None:
        """The call that took these argument objects no longer needs them (any
        thread): free them, behind whatever this process queued before."""
        for oid in object_ids:
            self.remove_local_ref(oid)

    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` as a new object owned by this process."""
        self._check_open()
        if isinstance(value, ObjectRef):
            raise TypeError(
                "put() of an ObjectRef is not allowed: pass the ref itself, or put a "
                "container holding it, e.g. put([ref])"
            )
        oid = new_put_id()
        data = encode_value(value, oid, self.store, what="the value passed to put()")
        self._entries[oid] = _Entry(owned=True, ready=True, data=data)
        ref = ObjectRef(oid)
        # No wake-up of its own: whatever needs the object at the node (a task taking
        # it, a fetch after its ref was passed on) travels behind it on this queue.
        self._enqueue(w.Put([(oid, False, data)]), wake=False)
        return ref

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        self._check_open()
        leased = self.leased
        if leased is not None and leased.cancel(ref.task_id(), bool(force), bool(recursive)):
            return
        self._enqueue(w.CancelTask(ref.task_id(), bool(force), bool(recursive)))

    # ------------------------------------------------------------ ref counting

    def add_local_ref(self, oid: bytes) -> None:
        with self._refs_lock:
            self._refcounts[oid] = self._refcounts.get(oid, 0) + 1

    def remove_local_ref(self, oid: bytes) -> None:
        with self._refs_lock:
            n = self._refcounts.get(oid, 0) - 1
            if n > 0:
                self._refcounts[oid] = n
                return
            self._refcounts.pop(oid, None)
            if oid in self._escaped:
                return
        entry = self._entries.get(oid)
        if entry is not None and entry.owned and not self._closed:
            if entry.ready:
                del self._entries[oid]
                if entry.is_error and not entry.seen:
                    self._report_unhandled(oid, entry)
            else:
                entry.dropped = True  # kept until its result is here (_drop_late)
            self._enqueue(w.Free([oid]), wake=False)

    def _drop_late(self, oid: bytes, entry: _Entry) -> None:
        """The result of a ref that died before it was ready is here (core loop)."""
        with self._refs_lock:
            if self._refcounts.get(oid):  # a ref to it was made again meanwhile
                entry.dropped = False
                return
        if self._entries.get(oid) is entry:
            del self._entries[oid]
        if entry.is_error and not entry.seen:
            self._report_unhandled(oid, entry)

    def _report_unhandled(self, oid: bytes, entry: _Entry) -> None:
        """Log the error nobody read, as Ray's "Unhandled error" (any thread)."""
        if self._closed or _ignore_unhandled():
            return
        try:
            error: Any = _serialization.loads(entry.data)
        except Exception as exc:
            error = f"(the error of object {oid.hex()} could not be read: {exc!r})"
        _unhandled_logger().error(
            "Unhandled error (suppress with 'ACTORCORE_IGNORE_UNHANDLED_ERRORS=1'): %s", error)

    def mark_seen(self, oids: Iterable[bytes]) -> None:
        """``oids`` were passed to a task or call: their errors reach its caller."""
        entries = self._entries
        for oid in oids:
            e = entries.get(oid)
            if e is not None:
                e.seen = True

    def mark_escaped(self, oid: bytes) -> None:
        self._escaped.add(oid)

    # -------------------------------------------------------- receiving results

    def on_objects_ready(self, items: Iterable[ObjectData]) -> None:
        """The node pushed values (core loop)."""
        entries = self._entries
        for oid, is_error, data in items:
            entry = entries.get(oid)
            if entry is None:
                entry = self._stream_item(oid)
                if entry is None:
                    continue  # freed by its owner meanwhile
            self._set_ready(entry, is_error, data)
            if entry.dropped:
                self._drop_late(oid, entry)

    # ------------------------------------------------------- generator tasks

    # A generator task's items reach its owner as the node records them, before the
    # caller asks for them (the caller sees the first before the generator ends).
    # The owner has made no entry for them at submission (it does not know how many
    # there will be), so a pushed item of a stream it still iterates gets an owned
    # entry here, and the ``ObjectRefGenerator`` takes the same entry when it reaches
    # that item (``stream_entry``: either side may come first; ``setdefault`` makes
    # them meet). Items of a stream whose generator is gone are freed on arrival.

    def register_stream(self, task_id: bytes) -> None:
        """Items of ``task_id`` pushed to us are kept for its ``ObjectRefGenerator``."""
        self._streams.setdefault(task_id, set())

    def stream_entry(self, oid: bytes) -> _Entry:
        """The owned entry of a stream item (made if it has not arrived yet)."""
        entry = self._entries.get(oid)
        if entry is None:
            entry = self._entries.setdefault(oid, _Entry(owned=True))
        items = self._streams.get(oid[:16])
        if items is not None:
            items.add(oid)
        return entry

    def _stream_item(self, oid: bytes) -> _Entry | None:
        """The entry for a pushed item of a live stream (core loop), else ``None``;
        an item of a stream nobody iterates any more is freed at once."""
        from ..protocol._ids import is_stream_item

        if not is_stream_item(oid):
            return None
        items = self._streams.get(oid[:16])
        if items is None:  # its generator is gone: nobody will ask for it
            self._enqueue(w.Free([oid]), wake=False)
            return None
        items.add(oid)
        return self._entries.setdefault(oid, _Entry(owned=True))

    def drop_stream(self, task_id: bytes) -> None:
        """The ``ObjectRefGenerator`` of ``task_id`` is gone (any thread): items that
        arrived and that no ref holds are freed, and later ones when they come."""
        items = self._streams.pop(task_id, None)
        if not items or self._closed:
            return
        free = []
        with self._refs_lock:
            for oid in items:
                if self._refcounts.get(oid) or oid in self._escaped:
                    continue
                entry = self._entries.get(oid)
                if entry is not None and entry.ready:
                    del self._entries[oid]
                    if entry.is_error and not entry.seen:
                        self._report_unhandled(oid, entry)
                    free.append(oid)
                elif entry is not None:
                    entry.dropped = True
                    free.append(oid)
        if free:
            self._enqueue(w.Free(free), wake=False)

    def _set_ready(self, entry: _Entry, is_error: bool, data: Any) -> None:
        """Make ``entry`` ready and run its callbacks (core loop)."""
        with self._lock:
            if entry.ready:
                return
            entry.is_error = is_error
            entry.data = data
            entry.ready = True
            callbacks, entry.callbacks = entry.callbacks, None
        if callbacks:
            for cb in callbacks:
                try:
                    cb()
                except Exception:  # a user's callback must not break the loop
                    logger.exception("a callback on a ready object raised (ignored)")

    def reconnected(self, conn: Any) -> None:
        """A new link to the same node (core loop): resend what waited, and fetch
        the results of our tasks that the node pushed while the link was down."""
        self.conn = conn
        self._flush()
        pending = [oid for oid, e in list(self._entries.items()) if e.owned and not e.ready]
        if pending:
            self._nursery.start_soon(self._fetch, pending)

    def connection_lost(self, exc: BaseException) -> None:
        """The node link died for good: every waiter fails (core loop).

        ``exc`` is the error to give them: the driver passes a ``NodeDiedError``
        that says which node died and where its logs are; anything else is wrapped
        in an ``ActorcoreSystemError``. Calls on actors fail with ``ActorDiedError``
        carrying the same text.
        """
        self.lost_error = exc
        self._closed = True
        err = _serialization.dumps(self._link_error())
        actor_err: dict[bytes, bytes] = {}
        for oid, entry in list(self._entries.items()):
            if entry.dropped:  # nobody can read it any more
                del self._entries[oid]
                continue
            if not entry.ready:
                if entry.actor is not None:
                    blob = actor_err.get(entry.actor)
                    if blob is None:
                        blob = actor_err[entry.actor] = _serialization.dumps(
                            self.unreachable_error(entry))
                    self._set_ready(entry, True, blob)
                    continue
                self._set_ready(entry, True, err)

    def unreachable_error(self, entry: _Entry | None) -> ActorcoreError:
        """The error of an object not ready when the node link died for good: an
        actor call's says its actor is unreachable (``ActorDiedError``), anything
        else gets the link's error. ``connection_lost`` sets it on every such entry;
        a reader that finds the link closed first raises the same (any thread)."""
        if entry is not None and entry.actor is not None:
            from ..exceptions import ActorDiedError

            return ActorDiedError(f"The actor {entry.actor.hex()[:12]} is unreachable "
                                  f"because its node died: {self._link_error()}")
        return self._link_error()

    def _link_error(self, prefix: str = "") -> ActorcoreError:
        """A fresh error saying why this process lost its node (``lost_error``)."""
        lost = self.lost_error
        if isinstance(lost, ActorcoreError):
            return type(lost)(prefix + str(lost))
        return ActorcoreSystemError(prefix + f"the connection to the node was lost: {lost}")

    # ------------------------------------------------------------------ waiting
    #
    # Waiting never parks a thread inside the core loop. A waiting thread registers
    # a callback on each entry not yet ready (under ``_lock``, so it cannot miss a
    # ``_set_ready`` racing with it), then blocks on a plain ``threading.Lock`` that
    # the last needed callback releases from the core loop. Objects this process
    # does not own are fetched from the node (started in the core loop with
    # ``run_sync_soon``; the fetch's reply sets the entry ready like a push does).

    def _entry_for(self, oid: bytes) -> _Entry:
        """The entry for ``oid``; an unknown one is fetched from the node (any thread)."""
        entry = self._entries.get(oid)
        if entry is None:
            entry = self._entries.setdefault(oid, _Entry(owned=False))
        if not entry.owned and not entry.ready and oid not in self._fetching:
            self._fetching.add(oid)
            if self._in_loop():
                self._nursery.start_soon(self._fetch, [oid])
            else:
                self.trio_token.run_sync_soon(self._nursery.start_soon, self._fetch, [oid])
        return entry

    async def _fetch(self, oids: list[bytes]) -> None:
        try:
            items = (await self.conn.request(w.Fetch(oids), timeout=None)).objects
        except Exception as exc:
            err = ActorcoreSystemError(f"fetching {[o.hex() for o in oids]} failed: {exc}")
            items = [(oid, True, _serialization.dumps(err)) for oid in oids]
        finally:
            for oid in oids:
                self._fetching.discard(oid)
        for oid, is_error, data in items:
            entry = self._entries.get(oid)
            if entry is not None:
                self._set_ready(entry, is_error, data)
                if entry.dropped:
                    self._drop_late(oid, entry)

    def _register(self, entries: Sequence[_Entry], needed: int, fire: Callable[[], None],
                  fail_fast: bool = False) -> Callable:
        """Call ``fire()`` (core loop) once ``needed`` more of ``entries`` are ready,
        or, with ``fail_fast``, as soon as one of them is ready with an error.

        Returns the callback registered, for ``_unregister``. ``fire`` is called at
        most once; if enough are ready already, it is called now, in this thread.
        """
        state = [needed, False]

        def one() -> None:
            state[0] -= 1
            if state[0] <= 0 and not state[1]:
                state[1] = True
                fire()

        callback = one
        if fail_fast:
            # One callback for every entry: it must tell which one became ready
            # (``_set_ready`` sets ``is_error`` before it runs the callbacks).
            def one_of(entry: _Entry) -> None:
                if entry.is_error and not state[1]:
                    state[1] = True
                    fire()
                    return
                one()

            callback = _PerEntry(one_of)

        with self._lock:
            ready = 0
            failed = False
            for e in entries:
                if e.ready:
                    ready += 1
                    failed = failed or e.is_error
            state[0] -= ready
            if state[0] <= 0 or (fail_fast and failed):
                state[1] = True
            else:
                for e in entries:
                    if not e.ready:
                        cb = callback.bind(e) if fail_fast else callback  # type: ignore[attr-defined]
                        if e.callbacks is None:
                            e.callbacks = [cb]
                        else:
                            e.callbacks.append(cb)
        if state[1]:
            fire()
        return callback

    def _unregister(self, entries: Sequence[_Entry], callback: Callable) -> None:
        with self._lock:
            for e in entries:
                if e.callbacks:
                    try:
                        e.callbacks.remove(
                            callback.bound[id(e)] if isinstance(callback, _PerEntry)
                            and id(e) in callback.bound else callback)
                    except ValueError:
                        pass

    def _blocking_wait(self, oids: Sequence[bytes], num: int, timeout: float | None,
                       fail_fast: bool = False) -> list[bool]:
        """Block the calling thread until ``num`` of ``oids`` are ready or ``timeout``
        (with ``fail_fast``: or one of them is ready with an error)."""
        if self._in_loop():
            raise RuntimeError(
                "blocking actorcore calls (get, wait) cannot run inside the core loop; "
                "use `await ref` in async code"
            )
        entries = [self._entry_for(oid) for oid in oids]
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
            self._enqueue(w.Blocked(task_id))
            if self.on_blocked is not None:
                self.on_blocked(task_id, True)
        cb = self._register(entries, num, fire, fail_fast)
        try:
            gate.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            self._unregister(entries, cb)
            if task_id is not None:
                self._task_waiters.pop(task_id, None)
                self._enqueue(w.Unblocked(task_id))
                if self.on_blocked is not None:
                    self.on_blocked(task_id, False)
        if task_id is not None and task_id in self._cancelled_tasks:
            raise TaskCancelledError(task_id, "the task was cancelled while it waited in get")
        return [e.ready for e in entries]

    def cancel_task_waits(self, task_id: bytes) -> None:
        """Wake the task ``task_id`` out of ``get``/``wait`` (core loop)."""
        self._cancelled_tasks.add(task_id)
        fire = self._task_waiters.get(task_id)
        if fire is not None:
            with self._lock:
                fire()

    def task_finished(self, task_id: bytes) -> None:
        self._cancelled_tasks.discard(task_id)

    def current_job_id(self) -> bytes:
        """The job of the task or actor this thread runs (an actor method call's
        ``CallSpec`` has none: its actor's, recorded on the actor's threads, or
        the hosted actor's), else this process's."""
        job_id = getattr(getattr(task_context, "spec", None), "job_id", None)
        if job_id is None:
            job_id = getattr(task_context, "job_id", None)
        if job_id is not None:
            return job_id
        actor = _worker_state.actors.get(getattr(task_context, "actor_id", None) or "")
        return actor.job_id if actor is not None else self.job_id

    def _in_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _run_in_loop(self, fn: Callable, *args: Any) -> Any:
        if self._in_loop():
            raise RuntimeError("blocking actorcore calls cannot run inside the core loop")
        return trio.from_thread.run(fn, *args, trio_token=self.trio_token)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """The values of ``refs``; raises the first error among them as soon as one of
        them is ready with an error (the others are not waited for, as in Ray)."""
        entries = self._entries
        oids = [r._id for r in refs]
        for oid in oids:
            e = entries.get(oid)
            if e is None or not e.ready:
                break
        else:
            return [self._value_of(oid, entries[oid], timeout) for oid in oids]
        started = time.monotonic()
        if self._closed and self.lost_error is not None:
            # The link died for good: ``connection_lost`` fails (or is failing, in
            # the core loop) every entry not ready; do not wait for it to finish.
            for oid in oids:
                e = entries.get(oid)
                if e is None or not e.ready:
                    raise self.unreachable_error(e)
            return [self._value_of(oid, entries[oid], timeout) for oid in oids]
        flags = self._blocking_wait(oids, len(oids), timeout, fail_fast=True)
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

    def _value_of(self, oid: bytes, entry: _Entry, timeout: float | None = None) -> Any:
        """The value of a ready entry; ``timeout`` bounds a wait for a restarting store."""
        data = entry.data
        if data == STORE:
            if self.store is None:
                raise ActorcoreSystemError(f"object {oid.hex()} is in a store we cannot reach")
            try:
                return self.store.get(oid, timeout)
            except ObjectLostError:
                if self._in_loop() or self._closed:
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
            self._enqueue(w.Blocked(task_id))
            if self.on_blocked is not None:
                self.on_blocked(task_id, True)
        try:
            for attempt in range(2):
                is_error, data = self._run_in_loop(self._rebuild, oid, timeout)
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
                self._enqueue(w.Unblocked(task_id))
                if self.on_blocked is not None:
                    self.on_blocked(task_id, False)
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
            items = (await self.conn.request(w.Rebuild([oid]), timeout=timeout)).objects
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
        ``refs`` are known ready; else the calling thread blocks in `_blocking_wait`.

        One pass over the entries, because a program polling ``wait`` over thousands
        of refs pays for each one every call: no ``ObjectRef.__hash__`` (the duplicate
        check hashes the ids), and ``seen`` is set only on errors, the one kind of
        entry it matters for (an error a wait saw is not reported as unhandled).
        """
        oids = [r._id for r in refs]
        if len(set(oids)) != len(oids):
            raise ValueError("wait() got duplicate ObjectRefs in its list")
        entries = self._entries
        found = [entries.get(o) for o in oids]
        flags = [e is not None and e.ready for e in found]
        started = time.monotonic()
        while self._lost_among(oids, found, flags, num_returns):
            # Some were lost, now pending: the ready ones after them are checked too.
            flags = [e is not None and e.ready for e in found]
        if timeout is not None and timeout > 0:
            timeout = max(0.0, timeout - (time.monotonic() - started))
        n_ready = flags.count(True)
        if n_ready < num_returns:
            if timeout != 0:
                flags = self._blocking_wait(oids, num_returns, timeout)
                found = [entries.get(o) for o in oids]
            else:
                for oid in oids:  # timeout=0: start fetches so a later wait sees them
                    self._entry_for(oid)
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

    def _lost_among(self, oids: list[bytes], found: list[_Entry | None], flags: list[bool],
                    num_returns: int) -> bool:
        """Check with the store the large values among the first ``num_returns``
        ready entries; make the missing ones pending again (their rebuild asked
        for). Returns whether any was missing."""
        if self.store is None or self._closed or self._in_loop():
            return False
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
        return bool(self._run_in_loop(self._make_pending_if_lost, check))

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
            e = self._entries.get(oid)
            if e is None or not e.ready or e.data != STORE:
                continue
            with self._lock:
                e.ready = False  # its data stays STORE: a reader meanwhile asks too
            pending.append(oid)
            self._nursery.start_soon(self._rebuilt, oid, e)
        return pending

    async def _rebuilt(self, oid: bytes, entry: _Entry) -> None:
        """Ask the node for ``oid`` again, lost here; ready once it answers."""
        is_error, data = await self._rebuild(oid, None)
        if self._entries.get(oid) is not entry:
            return
        self._set_ready(entry, is_error, data)
        if entry.dropped:
            self._drop_late(oid, entry)

    def on_ready_callback(self, oids: Sequence[bytes], callback: Callable[[], None]) -> None:
        """Call ``callback`` once every object in ``oids`` is ready (core loop, or now)."""
        entries = [self._entry_for(oid) for oid in oids]
        self._register(entries, len(entries), callback)

    async def await_any(self, oids: Sequence[bytes]) -> None:
        """Return once one of ``oids`` is ready, in asyncio or Trio code (any thread)."""
        import sniffio

        entries = [self._entry_for(oid) for oid in oids]
        lib = sniffio.current_async_library()
        if lib == "trio":
            token = trio.lowlevel.current_trio_token()
            ev = trio.Event()
            if token is self.trio_token:
                cb = self._register(entries, 1, ev.set)
            else:
                cb = self._register(entries, 1, lambda: token.run_sync_soon(ev.set))
            try:
                await ev.wait()
            finally:
                self._unregister(entries, cb)
        elif lib == "asyncio":
            import asyncio

            loop = asyncio.get_running_loop()
            aev = asyncio.Event()
            cb = self._register(
                entries, 1, lambda: _discard(loop.call_soon_threadsafe(aev.set)))
            try:
                await aev.wait()
            finally:
                self._unregister(entries, cb)
        else:
            raise RuntimeError(f"async iteration of an ObjectRefGenerator is not supported under {lib}")

    async def await_ref(self, ref: ObjectRef) -> Any:
        """``await ref`` in asyncio or Trio code running on another thread's loop."""
        import sniffio

        entry = self._entries.get(ref._id)
        if entry is None or not entry.ready:
            lib = sniffio.current_async_library()
            if lib == "trio":
                token = trio.lowlevel.current_trio_token()
                ev = trio.Event()
                if token is self.trio_token:
                    self.on_ready_callback([ref._id], ev.set)
                else:
                    self.on_ready_callback([ref._id], lambda: token.run_sync_soon(ev.set))
                await ev.wait()
            elif lib == "asyncio":
                import asyncio

                loop = asyncio.get_running_loop()
                aev = asyncio.Event()
                self.on_ready_callback(
                    [ref._id], lambda: _discard(loop.call_soon_threadsafe(aev.set))
                )
                await aev.wait()
            else:
                raise RuntimeError(f"await ObjectRef is not supported under {lib}")
        return self._value_of(ref._id, self._entries[ref._id])

    # --------------------------------------------------------------- lifecycle

    def _check_open(self) -> None:
        if self._closed:
            if self.lost_error is not None:
                raise self._link_error("this process is no longer connected to an actorcore node: ")
            raise ActorcoreSystemError("this process is no longer connected to an actorcore node")

    async def serve(self, nursery: trio.Nursery, store_address: str | None = None,
                    token: bytes | None = None) -> None:
        """Start the core loop's background tasks in ``nursery``; connect the store."""
        self._nursery = nursery
        self.token = token  # for direct links to actor processes (issue 6)
        nursery.start_soon(self.run_sender)
        nursery.start_soon(self.run_lazy_flusher)
        if token is not None:
            self.leased = LeasedTasks(self)
            if self.leased.enabled:
                nursery.start_soon(self.leased.run_linger)
            else:
                self.leased = None
        if store_address is not None and token is not None:
            # Connected on first use (see _store_link: spares small-task programs the
            # pyarrow import).
            self.store = StoreLink(store_address, token, f"{self.role}-{self.pid}",
                                   self.trio_token)
            self.store.nursery = nursery

    async def call(self, name: str, *args: Any, request_timeout: float | None = 30.0) -> Any:
        """An introspection or admin request to the node (core loop).

        If the link is down (the node's rpc_server restarting), wait for the driver
        to reconnect (up to 10 s) and ask again.
        """
        import transport

        conn = self.conn
        try:
            return await conn.request(w.AdminCall(name, tuple(args)), timeout=request_timeout)
        except transport.ConnectionLost:
            with trio.move_on_after(10):
                while self.conn is conn and not self._closed:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            if self.conn is conn:
                raise
            return await self.conn.request(w.AdminCall(name, tuple(args)),
                                           timeout=request_timeout)

    def call_sync(self, name: str, *args: Any, timeout: float | None = 30.0) -> Any:
        return self._run_in_loop(self._call_kw, name, args, timeout)

    async def _call_kw(self, name: str, args: tuple, request_timeout: float | None) -> Any:
        return await self.call(name, *args, request_timeout=request_timeout)

    def close(self) -> None:
        self._closed = True


def _ignore_unhandled() -> bool:
    from ..session._config import env_value

    return bool(env_value("ACTORCORE_IGNORE_UNHANDLED_ERRORS")
                or os.environ.get("RAY_IGNORE_UNHANDLED_ERRORS"))


def _unhandled_logger() -> logging.Logger:
    """``actorcore.unhandled``: to stderr (the driver's console; a worker's output
    goes to the driver with ``log_to_driver``) and, propagated, the session log."""
    log = logging.getLogger("actorcore.unhandled")
    if not _stderr_handler:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s ERROR %(message)s"))
        log.addHandler(handler)
        _stderr_handler.append(handler)
    return log


_stderr_handler: list[logging.Handler] = []


class _PerEntry:
    """A ``_register`` callback made once per entry (``bind``), remembered by entry
    so that ``_unregister`` removes the right one from each."""

    __slots__ = ("fn", "bound")

    def __init__(self, fn: Callable[[_Entry], None]) -> None:
        self.fn = fn
        self.bound: dict[int, Callable[[], None]] = {}

    def bind(self, entry: _Entry) -> Callable[[], None]:
        cb = self.bound[id(entry)] = functools.partial(self.fn, entry)
        return cb

    def __call__(self) -> None:  # never registered itself
        raise AssertionError("_PerEntry is not a callback")


def _discard(_value: Any) -> None:
    pass


def _fmt_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB ({n} bytes)"
    return f"{n} bytes"


def _sys_path() -> list[str]:
    import sys

    return [p for p in sys.path if p]
