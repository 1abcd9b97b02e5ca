"""The core worker: the runtime inside every driver and worker process.

One class serves both: a driver's user program and a worker's task code call the same
methods (``submit_task``, ``get``, ``put``, ``wait``, ``cancel``), and nested tasks are
just tasks submitted from a worker.

Threads and loops
-----------------
The core worker owns a Trio loop (the *core loop*, ``_loop``): in a driver it runs
in a background thread started by ``init()``; in a worker process it is the main
thread. User code runs in other threads (the driver's main thread; a worker's
executor threads). The core loop alone talks to the node over one transport
connection and alone sets entries ready.

Its parts
---------
``CoreWorker`` assembles parts that each own one job and the state for it, and is
the facade that the API, the worker process and the direct calls use:

- ``_loop.CoreLoop``: the loop's thread, token and nursery;
- ``_node_link.NodeLink``: the connection to the node and the outbox to it (queued
  one-way messages, coalesced submits, the sender, what cannot be sent);
- ``_references.ReferenceTable``: the objects this process knows (entries, local
  refs, escaped refs, generator streams, unhandled errors);
- ``_waiting.ObjectWaits``: ``get``/``wait``/``await``, fetching refs owned
  elsewhere, rebuilding lost values.

Submission (tasks, puts, exports, large arguments by ref) stays here: it writes to
the reference table and the outbox together.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from ..exceptions import ObjectStoreFullError, SerializationError
from ..protocol import _serialization
from ..protocol import _wire as w
from ..protocol._ids import new_put_id
from ..protocol._messages import ObjectData, TaskSpec
from . import _worker_state
from ._leased_tasks import LeasedTasks
from ._loop import CoreLoop
from ._node_link import NodeLink, format_bytes
from ._object_ref import ObjectRef
from ._references import Entry, ReferenceTable
from ._store_link import STORE, StoreLink, encode_value
from ._waiting import ObjectWaits
from ._worker_state import task_context

__all__ = ["CoreWorker"]


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
        self.pid = os.getpid()
        self.stats: collections.Counter[str] = collections.Counter()
        self.loop = CoreLoop()
        self.trio_token = self.loop.trio_token
        self.link = NodeLink(conn, self.loop, self.stats, self._fail_object)
        self.references = ReferenceTable(self.link)
        self.waits = ObjectWaits(self.loop, self.link, self.references)
        #: actor id -> this process's route to the actor (``_direct_calls``).
        self.actor_routes: dict[bytes, Any] = {}
        self.store: StoreLink | None = None
        self.token: bytes | None = None
        self._exported: set[bytes] = set()
        self._export_lock = threading.Lock()
        #: Queue a one-way message for the node from any thread (``NodeLink.enqueue``;
        #: bound here: the hot path pays no call of ours in between).
        self.enqueue = self.link.enqueue
        # Direct task submission (``_leased_tasks``): set up by ``serve``.
        self.leased: LeasedTasks | None = None

    def _fail_object(self, oid: bytes, payload: bytes) -> None:
        """A message about ``oid`` can never be sent: it fails (core loop)."""
        self.references.fail_object(oid, payload)

    # ------------------------------------------------------------ the node link

    @property
    def conn(self) -> Any:
        """The transport connection to the node."""
        return self.link.conn

    @property
    def closed(self) -> bool:
        """Whether this process has left its node (or lost it for good)."""
        return self.link.closed

    @property
    def lost_error(self) -> BaseException | None:
        """Why this process lost its node, if it did."""
        return self.link.lost_error

    def check_open(self) -> None:
        """Raise ``ActorcoreSystemError`` (or why the node was lost) once closed."""
        self.link.check_open()

    def append_unsent(self, message: Any) -> None:
        """Queue a message without any wake-up: the caller flushes (``flush_now``)."""
        self.link.append_unsent(message)

    def flush_now(self) -> None:
        """Send what is queued (core loop)."""
        self.link.flush_now()

    def has_queued(self) -> bool:
        """Whether one-way messages still wait to be sent."""
        return self.link.has_queued()

    def frame_limit(self) -> int:
        """The largest message the node link takes (its peer's frame limit)."""
        return self.link.frame_limit()

    def check_fits(self, size: int, what: str, hint: str) -> None:
        """Raise ``MessageTooLargeError`` now if a message of ``size`` bytes about
        ``what`` could never be sent to the node."""
        self.link.check_fits(size, what, hint)

    def check_args_fit(self, name: str, blob: bytes) -> None:
        """Raise ``MessageTooLargeError`` now if a call's pickled arguments could never
        be sent (large ones go by ref, so only without a reachable store)."""
        self.link.check_args_fit(name, blob)

    # ------------------------------------------------------------- the core loop

    def in_loop(self) -> bool:
        """Whether the calling thread is the core loop's."""
        return self.loop.in_loop()

    def run_in_loop(self, fn: Callable, *args: Any) -> Any:
        """Run the async ``fn(*args)`` in the core loop (any other thread)."""
        return self.loop.run(fn, *args)

    # ----------------------------------------------------------------- the hooks
    # A worker process sets these after construction (``worker._process``).

    @property
    def current_task_id(self) -> Callable[[], bytes | None]:
        """The task the calling thread runs (``None`` in a driver)."""
        return self.waits.current_task_id

    @current_task_id.setter
    def current_task_id(self, fn: Callable[[], bytes | None]) -> None:
        self.waits.current_task_id = fn

    @property
    def on_blocked(self) -> Callable[[bytes, bool], None] | None:
        """Told when a task starts (``True``) or stops waiting in ``get``/``wait``."""
        return self.waits.on_blocked

    @on_blocked.setter
    def on_blocked(self, fn: Callable[[bytes, bool], None] | None) -> None:
        self.waits.on_blocked = fn

    # --------------------------------------------------------------- submission

    def submit_task(self, spec: TaskSpec, export: Any,
                    return_ids: list[bytes] | None = None) -> None:
        """Record and send a task (from any thread). ``return_ids``: its return ids,
        the very objects its refs hold, so that a queued task's entry keys them
        without a copy (53 bytes a task); made from the spec if not given."""
        self.check_open()
        self.ensure_exported(export, "remote function")
        self.check_args_fit(spec.name, spec.args)
        entries = self.references.entries
        for oid in return_ids if return_ids is not None else spec.return_ids():
            entries[oid] = Entry(owned=True)
        if spec.deps:
            self.mark_seen(spec.deps)
        self.stats["tasks_submitted"] += 1
        leased = self.leased
        if leased is not None and leased.submit(spec):
            return
        self.enqueue(w.Submit([spec]))

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
            self.enqueue(w.Export(fid, export.blob, export.name, _sys_path()))

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
        self.check_open()
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
                f"{label} is {format_bytes(serialized.total_size)}: it is passed through the "
                f"object store, as every argument of "
                f"{_serialization.ARG_INLINE_THRESHOLD // 1024} KiB or more, and does not "
                f"fit there: {exc}"
            ) from exc
        self.references.add(oid, Entry(owned=True, ready=True, data=STORE))
        self.add_local_ref(oid)
        self.enqueue(w.Put([(oid, False, STORE)]))
        self.stats["args_by_ref"] += 1
        return oid

    def release_args(self, object_ids: Sequence[bytes]) -> None:
        """The call that took these argument objects no longer needs them (any
        thread): free them, behind whatever this process queued before."""
        for oid in object_ids:
            self.remove_local_ref(oid)

    def put(self, value: Any) -> ObjectRef:
        """Store ``value`` as a new object owned by this process."""
        self.check_open()
        if isinstance(value, ObjectRef):
            raise TypeError(
                "put() of an ObjectRef is not allowed: pass the ref itself, or put a "
                "container holding it, e.g. put([ref])"
            )
        oid = new_put_id()
        data = encode_value(value, oid, self.store, what="the value passed to put()")
        self.references.add(oid, Entry(owned=True, ready=True, data=data))
        ref = ObjectRef(oid)
        # No wake-up of its own: whatever needs the object at the node (a task taking
        # it, a fetch after its ref was passed on) travels behind it on this queue.
        self.enqueue(w.Put([(oid, False, data)]), wake=False)
        return ref

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        self.check_open()
        leased = self.leased
        if leased is not None and leased.cancel(ref.task_id(), bool(force), bool(recursive)):
            return
        self.enqueue(w.CancelTask(ref.task_id(), bool(force), bool(recursive)))

    # ------------------------------------------------------------------ references

    def add_local_ref(self, oid: bytes) -> None:
        """One more ``ObjectRef`` to ``oid`` lives in this process."""
        self.references.add_local_ref(oid)

    def remove_local_ref(self, oid: bytes) -> None:
        """An ``ObjectRef`` to ``oid`` died; the last one frees an owned object."""
        self.references.remove_local_ref(oid)

    def mark_seen(self, oids: Iterable[bytes]) -> None:
        """``oids`` were passed to a task or call: their errors reach its caller."""
        self.references.mark_seen(oids)

    def mark_escaped(self, oid: bytes) -> None:
        """A ref to ``oid`` was pickled: it is never freed from here."""
        self.references.mark_escaped(oid)

    def on_objects_ready(self, items: Iterable[ObjectData]) -> None:
        """The node pushed values (core loop)."""
        self.references.on_objects_ready(items)

    def register_stream(self, task_id: bytes) -> None:
        """Items of ``task_id`` pushed to us are kept for its ``ObjectRefGenerator``."""
        self.references.register_stream(task_id)

    def stream_entry(self, oid: bytes) -> Entry:
        """The owned entry of a stream item (made if it has not arrived yet)."""
        return self.references.stream_entry(oid)

    def drop_stream(self, task_id: bytes) -> None:
        """The ``ObjectRefGenerator`` of ``task_id`` is gone (any thread)."""
        self.references.drop_stream(task_id)

    # ------------------------------------------------------------------ waiting

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        """The values of ``refs`` (``ObjectWaits.get``)."""
        return self.waits.get(refs, timeout)

    def get_one(self, ref: ObjectRef, timeout: float | None) -> Any:
        """The value of one ref (``ObjectWaits.get_one``)."""
        return self.waits.get_one(ref, timeout)

    def wait(
        self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        """``wait`` (``ObjectWaits.wait``)."""
        return self.waits.wait(refs, num_returns, timeout)

    def read_lost(self, oid: bytes, timeout: float | None = None) -> Any:
        """The value of ``oid``, lost from the store: rebuilt, or its error raised."""
        return self.waits.read_lost(oid, timeout)

    def on_ready_callback(self, oids: Sequence[bytes], callback: Callable[[], None]) -> None:
        """Call ``callback`` once every object in ``oids`` is ready (core loop, or now)."""
        self.waits.on_ready_callback(oids, callback)

    async def await_any(self, oids: Sequence[bytes]) -> None:
        """Return once one of ``oids`` is ready, in asyncio or Trio code (any thread)."""
        await self.waits.await_any(oids)

    async def await_ref(self, ref: ObjectRef) -> Any:
        """``await ref`` in asyncio or Trio code running on another thread's loop."""
        return await self.waits.await_ref(ref)

    def cancel_task_waits(self, task_id: bytes) -> None:
        """Wake the task ``task_id`` out of ``get``/``wait`` (core loop)."""
        self.waits.cancel_task_waits(task_id)

    def task_finished(self, task_id: bytes) -> None:
        """The task ``task_id`` ended (its thread, before its `TaskDone` is queued):
        forget that it was cancelled; its children still waiting for a lease go to
        the node ahead of its end (``_leased_tasks``)."""
        self.waits.task_finished(task_id)
        leased = self.leased
        if leased is not None:
            leased.parent_ended(task_id)

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

    # --------------------------------------------------------------- lifecycle

    def reconnected(self, conn: Any) -> None:
        """A new link to the same node (core loop): resend what waited, and fetch
        the results of our tasks that the node pushed while the link was down."""
        self.link.reconnect(conn)
        pending = self.references.pending_owned()
        if pending:
            self.loop.start_soon(self.waits.fetch, pending)

    def connection_lost(self, exc: BaseException) -> None:
        """The node link died for good: every waiter fails (core loop).

        ``exc`` is the error to give them: the driver passes a ``NodeDiedError``
        that says which node died and where its logs are; anything else is wrapped
        in an ``ActorcoreSystemError``. Calls on actors fail with ``ActorDiedError``
        carrying the same text.
        """
        self.link.lost(exc)
        err = _serialization.dumps(self.link.link_error())

        def actor_error(actor_id: bytes) -> bytes:
            return _serialization.dumps(self.link.unreachable_error(actor_id))

        self.references.fail_all_pending(err, actor_error)

    async def serve(self, nursery: trio.Nursery, store_address: str | None = None,
                    token: bytes | None = None) -> None:
        """Start the core loop's background tasks in ``nursery``; connect the store."""
        self.loop.attach(nursery)
        self.token = token  # for direct links to actor processes (issue 6)
        nursery.start_soon(self.link.run_sender)
        nursery.start_soon(self.link.run_lazy_flusher)
        if token is not None:
            from ._direct_calls import reply_reads_for

            self.waits.reply_reads_for = functools.partial(reply_reads_for, self)
            leased = LeasedTasks(self)
            if leased.supported:  # (``enabled`` may be switched on later)
                self.leased = leased
                nursery.start_soon(leased.run_linger)
        if store_address is not None and token is not None:
            # Connected on first use (see _store_link: spares small-task programs the
            # pyarrow import).
            self.store = StoreLink(store_address, token, f"{self.role}-{self.pid}",
                                   self.trio_token)
            self.store.nursery = nursery
            self.waits.attach_store(self.store)

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
                while self.conn is conn and not self.closed:  # noqa: ASYNC110
                    await trio.sleep(0.02)
            if self.conn is conn:
                raise
            return await self.conn.request(w.AdminCall(name, tuple(args)),
                                           timeout=request_timeout)

    def call_sync(self, name: str, *args: Any, timeout: float | None = 30.0) -> Any:
        """``call`` from a thread other than the core loop's."""
        return self.loop.run(self._call_kw, name, args, timeout)

    async def _call_kw(self, name: str, args: tuple, request_timeout: float | None) -> Any:
        return await self.call(name, *args, request_timeout=request_timeout)

    def close(self) -> None:
        """This process leaves its node: nothing more is submitted."""
        self.link.close()


def _sys_path() -> list[str]:
    import sys

    return [p for p in sys.path if p]
